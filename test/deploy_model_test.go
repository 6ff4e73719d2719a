package test

// A model of a Debian host as far as the install lines of deploy/*.service
// and the README's Deploying commands change it: users, groups, and the
// files and directories those lines make, with owners and modes; and of
// the processes systemd starts from the units, with the credentials it
// gives them. TestDeploy* (deploy_test.go) asks it what each process and
// each user may do, as the kernel would answer.

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// host is the model: users, groups and nodes (files, directories, sockets).
type host struct {
	users  map[string]*account
	groups map[string]bool
	nodes  map[string]*node // by absolute path
}

// account is a user: its primary group (/etc/passwd) and the groups it is
// a member of (/etc/group).
type account struct {
	primary string
	member  map[string]bool
}

type node struct {
	owner, group string
	mode         fs.FileMode // the permission bits
	dir          bool
}

// The permissions a process asks for: read, write, and search (execute,
// which lets it through a directory).
const (
	mayRead   fs.FileMode = 4
	mayWrite  fs.FileMode = 2
	maySearch fs.FileMode = 1
)

// newHost is a Debian host before any install line: root, the PHP-FPM
// pools' user www-data, and the system's directories.
func newHost() *host {
	h := &host{users: map[string]*account{}, groups: map[string]bool{}, nodes: map[string]*node{}}
	for _, name := range []string{"root", "www-data"} {
		h.groups[name] = true
		h.users[name] = &account{primary: name, member: map[string]bool{}}
	}
	for _, d := range []string{"/", "/etc", "/etc/systemd", "/etc/systemd/system", "/run", "/usr", "/usr/local", "/usr/local/bin", "/var", "/var/lib"} {
		h.nodes[d] = &node{owner: "root", group: "root", mode: 0o755, dir: true}
	}
	return h
}

// run runs one line of shell as root: commands joined by "&&", each of
// which must succeed; "getent group|passwd NAME >/dev/null || CMD"; and
// "... | tee FILE".
func (h *host) run(line string) error {
	for _, cmd := range strings.Split(stripComment(line), "&&") {
		if err := h.command(strings.TrimSpace(cmd)); err != nil {
			return fmt.Errorf("%s: %w", strings.TrimSpace(cmd), err)
		}
	}
	return nil
}

func (h *host) command(cmd string) error {
	if guard, then, ok := strings.Cut(cmd, "||"); ok {
		exists, err := h.getent(words(guard))
		if err != nil || exists {
			return err
		}
		return h.command(strings.TrimSpace(then))
	}
	if _, right, ok := strings.Cut(cmd, "|"); ok {
		w := unsudo(words(right))
		if len(w) != 2 || w[0] != "tee" {
			return fmt.Errorf("the model knows only a pipe into tee FILE")
		}
		return h.put(w[1], "root", "root", 0o644) // root's umask, 022
	}
	w := unsudo(words(cmd))
	if len(w) == 0 {
		return nil
	}
	switch w[0] {
	case "install":
		return h.install(w[1:])
	case "useradd":
		return h.useradd(w[1:])
	case "groupadd":
		return h.groupadd(w[1:])
	case "usermod":
		return h.usermod(w[1:])
	case "gpasswd":
		return h.gpasswd(w[1:])
	case "rm":
		return h.rm(w[1:])
	case "chmod":
		return h.chmod(w[1:])
	case "chown":
		return h.chown(w[1:])
	case "apt", "apt-get":
		if slices.Contains(w, "nats-server") { // the package makes its user
			h.groups["nats"] = true
			if h.users["nats"] == nil {
				h.users["nats"] = &account{primary: "nats", member: map[string]bool{}}
			}
		}
		return nil
	case "systemctl":
		return nil
	}
	return fmt.Errorf("the model does not know the command %q: teach it (test/deploy_model_test.go)", w[0])
}

func unsudo(w []string) []string {
	if len(w) > 0 && w[0] == "sudo" {
		return w[1:]
	}
	return w
}

// getent answers "getent group NAME >/dev/null" and "getent passwd NAME
// >/dev/null": whether NAME exists.
func (h *host) getent(w []string) (bool, error) {
	w = unsudo(w)
	if len(w) != 4 || w[0] != "getent" || w[3] != ">/dev/null" {
		return false, fmt.Errorf("the model knows only getent group|passwd NAME >/dev/null || ...")
	}
	switch w[1] {
	case "group":
		return h.groups[w[2]], nil
	case "passwd":
		return h.users[w[2]] != nil, nil
	}
	return false, fmt.Errorf("getent %s: not group or passwd", w[1])
}

// install is GNU install as root: -d makes directories (and their missing
// parents, 0755 root:root); otherwise it copies SRC to DEST, or SRC... into
// the directory DEST. The mode is 0755 unless -m, the owner root:root
// unless -o and -g.
func (h *host) install(args []string) error {
	owner, group, mode, directories := "root", "root", fs.FileMode(0o755), false
	var operands []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-d", "--directory":
			directories = true
		case "-m", "--mode", "-o", "--owner", "-g", "--group":
			if i++; i == len(args) {
				return fmt.Errorf("install: %s needs a value", a)
			}
			switch a {
			case "-m", "--mode":
				m, err := strconv.ParseUint(args[i], 8, 12)
				if err != nil {
					return fmt.Errorf("install: the model knows only octal modes, not %q", args[i])
				}
				mode = fs.FileMode(m)
			case "-o", "--owner":
				owner = args[i]
			default:
				group = args[i]
			}
		default:
			if strings.HasPrefix(a, "-") {
				return fmt.Errorf("install: the model does not know %s", a)
			}
			operands = append(operands, a)
		}
	}
	if h.users[owner] == nil {
		return fmt.Errorf("install: invalid user %q", owner)
	}
	if !h.groups[group] {
		return fmt.Errorf("install: invalid group %q", group)
	}
	if directories {
		for _, d := range operands {
			h.mkdirAll(path.Dir(d))
			h.nodes[d] = &node{owner: owner, group: group, mode: mode, dir: true}
		}
		return nil
	}
	if len(operands) < 2 {
		return fmt.Errorf("install: a source and a destination")
	}
	dest, sources := operands[len(operands)-1], operands[:len(operands)-1]
	into := strings.HasSuffix(dest, "/") || (h.nodes[dest] != nil && h.nodes[dest].dir)
	if !into && len(sources) > 1 {
		return fmt.Errorf("install: target %s is not a directory", dest)
	}
	for _, src := range sources {
		if strings.HasPrefix(src, "/etc/") && h.nodes[src] == nil {
			return fmt.Errorf("install: cannot stat '%s': No such file or directory", src)
		}
		target := dest
		if into {
			target = path.Join(dest, path.Base(src))
		}
		if err := h.put(target, owner, group, mode); err != nil {
			return err
		}
	}
	return nil
}

// rm removes files (not directories; no options).
func (h *host) rm(args []string) error {
	for _, p := range args {
		n := h.nodes[path.Clean(p)]
		switch {
		case strings.HasPrefix(p, "-"):
			return fmt.Errorf("rm: the model does not know %s", p)
		case n == nil:
			return fmt.Errorf("rm: cannot remove '%s': No such file or directory", p)
		case n.dir:
			return fmt.Errorf("rm: cannot remove '%s': Is a directory", p)
		}
		delete(h.nodes, path.Clean(p))
	}
	return nil
}

// chmod OCTAL PATH...
func (h *host) chmod(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("chmod: a mode and a path")
	}
	m, err := strconv.ParseUint(args[0], 8, 12)
	if err != nil {
		return fmt.Errorf("chmod: the model knows only octal modes, not %q", args[0])
	}
	for _, p := range args[1:] {
		n := h.nodes[path.Clean(p)]
		if n == nil {
			return fmt.Errorf("chmod: cannot access '%s': No such file or directory", p)
		}
		n.mode = fs.FileMode(m)
	}
	return nil
}

// chown USER:GROUP PATH...
func (h *host) chown(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("chown: an owner and a path")
	}
	owner, group, ok := strings.Cut(args[0], ":")
	switch {
	case !ok:
		return fmt.Errorf("chown: the model knows only USER:GROUP, not %q", args[0])
	case h.users[owner] == nil:
		return fmt.Errorf("chown: invalid user: '%s'", args[0])
	case !h.groups[group]:
		return fmt.Errorf("chown: invalid group: '%s'", args[0])
	}
	for _, p := range args[1:] {
		n := h.nodes[path.Clean(p)]
		if n == nil {
			return fmt.Errorf("chown: cannot access '%s': No such file or directory", p)
		}
		n.owner, n.group = owner, group
	}
	return nil
}

// gpasswd -d USER GROUP takes USER out of GROUP (not its primary group).
func (h *host) gpasswd(args []string) error {
	if len(args) != 3 || args[0] != "-d" {
		return fmt.Errorf("gpasswd: the model knows only -d USER GROUP")
	}
	acct := h.users[args[1]]
	switch {
	case acct == nil:
		return fmt.Errorf("gpasswd: user '%s' does not exist", args[1])
	case !h.groups[args[2]]:
		return fmt.Errorf("gpasswd: group '%s' does not exist", args[2])
	case !acct.member[args[2]]:
		return fmt.Errorf("gpasswd: user '%s' is not a member of '%s'", args[1], args[2])
	}
	delete(acct.member, args[2])
	return nil
}

// put writes a file at p, whose directory must exist.
func (h *host) put(p, owner, group string, mode fs.FileMode) error {
	p = path.Clean(p)
	if d := h.nodes[path.Dir(p)]; d == nil || !d.dir {
		return fmt.Errorf("%s: no such directory", path.Dir(p))
	}
	if n := h.nodes[p]; n != nil && n.dir {
		return fmt.Errorf("%s is a directory", p)
	}
	h.nodes[p] = &node{owner: owner, group: group, mode: mode}
	return nil
}

func (h *host) mkdirAll(d string) {
	if h.nodes[d] != nil {
		return
	}
	h.mkdirAll(path.Dir(d))
	h.nodes[d] = &node{owner: "root", group: "root", mode: 0o755, dir: true}
}

// useradd is Debian's: a user that exists is an error (status 9); with no
// --gid it makes a group of the user's name, and a group of that name
// that exists already is an error too.
func (h *host) useradd(args []string) error {
	gid, userGroup := "", true
	var name string
	var groups []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-r", "--system", "-M", "--no-create-home", "-U", "--user-group":
		case "-N", "--no-user-group":
			userGroup = false
		case "-s", "--shell", "-d", "--home-dir", "-g", "--gid", "-G", "--groups", "-c", "--comment":
			if i++; i == len(args) {
				return fmt.Errorf("useradd: %s needs a value", a)
			}
			switch a {
			case "-g", "--gid":
				gid = args[i]
			case "-G", "--groups":
				groups = strings.Split(args[i], ",")
			}
		default:
			if strings.HasPrefix(a, "-") {
				return fmt.Errorf("useradd: the model does not know %s", a)
			}
			name = a
		}
	}
	switch {
	case name == "":
		return fmt.Errorf("useradd: no user name")
	case h.users[name] != nil:
		return fmt.Errorf("useradd: user '%s' already exists", name)
	case gid != "" && !h.groups[gid]:
		return fmt.Errorf("useradd: group '%s' does not exist", gid)
	case gid == "" && userGroup && h.groups[name]:
		return fmt.Errorf("useradd: group %s exists - if you want to add this user to that group, use -g", name)
	case gid == "" && !userGroup:
		return fmt.Errorf("useradd: the model does not know the default group of -N")
	}
	if gid == "" {
		gid = name
		h.groups[name] = true
	}
	acct := &account{primary: gid, member: map[string]bool{}}
	for _, g := range groups {
		if !h.groups[g] {
			return fmt.Errorf("useradd: group '%s' does not exist", g)
		}
		acct.member[g] = true
	}
	h.users[name] = acct
	return nil
}

// groupadd fails for a group that exists (status 9), unless -f.
func (h *host) groupadd(args []string) error {
	force := false
	var name string
	for _, a := range args {
		switch a {
		case "-r", "--system":
		case "-f", "--force":
			force = true
		default:
			if strings.HasPrefix(a, "-") {
				return fmt.Errorf("groupadd: the model does not know %s", a)
			}
			name = a
		}
	}
	if h.groups[name] && !force {
		return fmt.Errorf("groupadd: group '%s' already exists", name)
	}
	h.groups[name] = true
	return nil
}

// usermod -a -G GROUPS USER adds USER to GROUPS; without -a, GROUPS
// replace the user's groups.
func (h *host) usermod(args []string) error {
	appendTo := false
	var groups []string
	var name string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-a", "--append":
			appendTo = true
		case "-G", "--groups", "-aG":
			appendTo = appendTo || a == "-aG"
			if i++; i == len(args) {
				return fmt.Errorf("usermod: %s needs a value", a)
			}
			groups = strings.Split(args[i], ",")
		default:
			if strings.HasPrefix(a, "-") {
				return fmt.Errorf("usermod: the model does not know %s", a)
			}
			name = a
		}
	}
	acct := h.users[name]
	if acct == nil {
		return fmt.Errorf("usermod: user '%s' does not exist", name)
	}
	if !appendTo {
		acct.member = map[string]bool{}
	}
	for _, g := range groups {
		if !h.groups[g] {
			return fmt.Errorf("usermod: group '%s' does not exist", g)
		}
		acct.member[g] = true
	}
	return nil
}

// words splits a command line into words, as the shell does with quotes.
func words(s string) []string {
	var out []string
	var word strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			word.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				out = append(out, word.String())
				word.Reset()
				inWord = false
			}
		default:
			word.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		out = append(out, word.String())
	}
	return out
}

// stripComment cuts a line at a "#" that starts a word outside quotes.
func stripComment(line string) string {
	var quote rune
	for i, r := range line {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return line[:i]
		}
	}
	return line
}

// unit is what the model needs of a systemd unit's [Service] section.
type unit struct {
	path          string
	user, group   string
	supplementary []string
	envFiles      []string
	runtimeDirs   []string
	runtimeMode   fs.FileMode
	umask         fs.FileMode
	exec          []string // ExecStart's words
}

// loadUnit reads a unit file's [Service] section.
func loadUnit(t *testing.T, file string) unit {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{path: file, runtimeMode: 0o755, umask: 0o022}
	section, logical := "", ""
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if strings.HasSuffix(line, `\`) { // continued on the next line
			logical += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		line, logical = logical+line, ""
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "["):
			section = line
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not KEY=VALUE", file, line)
		}
		if section != "[Service]" {
			continue
		}
		octal := func() fs.FileMode {
			m, err := strconv.ParseUint(value, 8, 12)
			if err != nil {
				t.Fatalf("%s: %s=%s is not an octal mode", file, key, value)
			}
			return fs.FileMode(m)
		}
		switch key {
		case "User":
			u.user = value
		case "Group":
			u.group = value
		case "SupplementaryGroups":
			u.supplementary = append(u.supplementary, strings.Fields(value)...)
		case "EnvironmentFile":
			u.envFiles = append(u.envFiles, strings.TrimPrefix(value, "-"))
		case "RuntimeDirectory":
			u.runtimeDirs = append(u.runtimeDirs, strings.Fields(value)...)
		case "RuntimeDirectoryMode":
			u.runtimeMode = octal()
		case "UMask":
			u.umask = octal()
		case "ExecStart":
			u.exec = words(value)
		case "DynamicUser", "RuntimeDirectoryPreserve", "ReadWritePaths", "StateDirectory", "ConfigurationDirectory", "LoadCredential":
			t.Fatalf("%s: the model does not know %s: teach it (test/deploy_model_test.go)", file, key)
		}
	}
	if u.user == "" || u.user == "root" {
		t.Fatalf("%s: User= is %q, want a user of its own", file, u.user)
	}
	return u
}

// flag returns the value of --name in the unit's ExecStart, or "".
func (u unit) flag(name string) string {
	for i, w := range u.exec {
		if w == name && i+1 < len(u.exec) {
			return u.exec[i+1]
		}
		if v, ok := strings.CutPrefix(w, name+"="); ok {
			return v
		}
	}
	return ""
}

// installLines returns the install commands at the top of a unit file: the
// first run of comment lines indented by three spaces or more.
func installLines(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	for s := bufio.NewScanner(f); s.Scan(); {
		if rest, ok := strings.CutPrefix(s.Text(), "#   "); ok {
			lines = append(lines, strings.TrimSpace(rest))
		} else if len(lines) > 0 {
			break
		}
	}
	if len(lines) == 0 {
		t.Fatalf("%s: no install lines at its top", file)
	}
	return lines
}

// readmeDeployLines returns the lines of the sh blocks of the README's
// Deploying section: those before its agent step, those from it on, and
// those of its paragraph on upgrading a host set up by the earlier units,
// which are not for a fresh host.
func readmeDeployLines(t *testing.T) (beforeAgent, agent, upgrade []string) {
	t.Helper()
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## Deploying\n")
	if !ok {
		t.Fatal("README.md has no Deploying section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	inBlock, seenAgent, seenUpgrade := false, false, false
	for line := range strings.Lines(section) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "**4. The agent**"):
			seenAgent = true
		case strings.HasPrefix(line, "*Upgrading"):
			seenUpgrade = true
		case line == "```sh":
			inBlock = true
		case strings.HasPrefix(line, "```"):
			if inBlock && seenUpgrade {
				seenUpgrade = false // the upgrade's block ended
			}
			inBlock = false
		case inBlock && seenUpgrade:
			upgrade = append(upgrade, line)
		case inBlock && seenAgent:
			agent = append(agent, line)
		case inBlock:
			beforeAgent = append(beforeAgent, line)
		}
	}
	if !seenAgent {
		t.Fatal(`README.md's Deploying section has no "**4. The agent**" step`)
	}
	return beforeAgent, agent, upgrade
}

// proc is a process's credentials: its user, its group, and every group
// it is in (the group and the supplementary ones).
type proc struct {
	name, user, gid string
	groups          map[string]bool
}

// login is a process of user's as PHP-FPM starts a pool's workers
// (initgroups): the user's primary group and the groups it is a member of.
func (h *host) login(user string) proc {
	acct := h.users[user]
	p := proc{name: "a process of user " + user, user: user, gid: acct.primary, groups: map[string]bool{acct.primary: true}}
	for g := range acct.member {
		p.groups[g] = true
	}
	return p
}

// start starts u's process as systemd would: its runtime directories,
// owned by User= and Group=; then, as the process, the socket it listens
// on, made with mode socketMode. systemd reads EnvironmentFile= as root,
// before the process starts; the process reads --apps itself.
func (h *host) start(u unit, socketMode fs.FileMode) (proc, error) {
	acct := h.users[u.user]
	if acct == nil {
		return proc{}, fmt.Errorf("%s: User=%s does not exist", u.path, u.user)
	}
	p := proc{name: "the process of " + path.Base(u.path), user: u.user, gid: u.group, groups: map[string]bool{}}
	if p.gid == "" {
		p.gid = acct.primary
	}
	// getgrouplist(User, Group): the group and the user's memberships,
	// not the primary group of /etc/passwd unless it is Group=.
	for _, g := range append([]string{p.gid}, u.supplementary...) {
		if !h.groups[g] {
			return proc{}, fmt.Errorf("%s: group %s does not exist", u.path, g)
		}
		p.groups[g] = true
	}
	for g := range acct.member {
		p.groups[g] = true
	}
	for _, f := range u.envFiles {
		if n := h.nodes[f]; n == nil || n.dir {
			return proc{}, fmt.Errorf("%s: EnvironmentFile=%s is not installed", u.path, f)
		}
	}
	for _, d := range u.runtimeDirs {
		h.nodes["/run/"+d] = &node{owner: p.user, group: p.gid, mode: u.runtimeMode, dir: true}
	}
	if apps := u.flag("--apps"); apps != "" {
		if err := h.may(p, apps, mayRead); err != nil {
			return proc{}, err
		}
	}
	if sock, ok := strings.CutPrefix(u.flag("--listen"), "unix:"); ok {
		if err := h.may(p, path.Dir(sock), mayWrite|maySearch); err != nil {
			return proc{}, fmt.Errorf("the agent cannot make its socket: %w", err)
		}
		h.nodes[sock] = &node{owner: p.user, group: p.gid, mode: socketMode}
	}
	return p, nil
}

// may says why p may not do want to the node at target, or nil if it may:
// every directory on the way must let it through, and the node must grant
// want to the first of owner, group and others that p is.
func (h *host) may(p proc, target string, want fs.FileMode) error {
	target = path.Clean(target)
	if h.nodes[target] == nil {
		return fmt.Errorf("%s does not exist", target)
	}
	if p.user == "root" {
		return nil
	}
	for d := path.Dir(target); ; d = path.Dir(d) {
		n := h.nodes[d]
		if n == nil {
			return fmt.Errorf("%s does not exist", d)
		}
		if !p.granted(n, maySearch) {
			return fmt.Errorf("%s may not enter %s (%s:%s %04o)", p.name, d, n.owner, n.group, n.mode)
		}
		if d == "/" {
			break
		}
	}
	if n := h.nodes[target]; !p.granted(n, want) {
		return fmt.Errorf("%s may not %s %s (%s:%s %04o)", p.name, verb(want), target, n.owner, n.group, n.mode)
	}
	return nil
}

func (p proc) granted(n *node, want fs.FileMode) bool {
	bits := n.mode & 7
	switch {
	case n.owner == p.user:
		bits = n.mode >> 6 & 7
	case p.groups[n.group]:
		bits = n.mode >> 3 & 7
	}
	return bits&want == want
}

func verb(want fs.FileMode) string {
	switch want {
	case mayRead:
		return "read"
	case maySearch:
		return "enter"
	}
	return "write"
}
