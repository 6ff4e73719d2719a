package test

import (
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wxtoken/wxtoken/internal/agent"
)

// TestDeployInstallLinesRunAgain: the install lines of both units, and the
// README's Deploying commands, succeed on a fresh host and again on a host
// they ran on: an upgrade runs them again, and a host with the refresher
// and the agent runs the user and group lines of both.
func TestDeployInstallLinesRunAgain(t *testing.T) {
	refresherLines := installLines(t, "../deploy/wxtoken.service")
	agentLines := installLines(t, "../deploy/wxtoken-agent.service")
	natsLines, agentReadme, _ := readmeDeployLines(t)
	for _, install := range []struct {
		name  string
		lines []string
	}{
		{"the refresher alone", refresherLines},
		{"the agent alone", slices.Concat(agentLines, agentReadme)},
		{"NATS, the refresher and the agent on one host", slices.Concat(natsLines, refresherLines, agentLines, agentReadme)},
	} {
		t.Run(install.name, func(t *testing.T) {
			h := newHost()
			for run := 1; run <= 2; run++ {
				for _, line := range install.lines {
					if err := h.run(line); err != nil {
						t.Errorf("run %d: %v", run, err)
					}
				}
			}
		})
	}
}

// TestDeployGivesTheAgentsClientsTheSocketAndNoSecret: on a host with NATS,
// the refresher and the agent installed as the unit files and the README
// say, the agent's clients reach its socket and no secret
// (checkSecretsApart).
func TestDeployGivesTheAgentsClientsTheSocketAndNoSecret(t *testing.T) {
	refresher := loadUnit(t, "../deploy/wxtoken.service")
	agentUnit := loadUnit(t, "../deploy/wxtoken-agent.service")
	natsLines, agentReadme, _ := readmeDeployLines(t)
	h := newHost()
	for _, line := range slices.Concat(natsLines, installLines(t, refresher.path), installLines(t, agentUnit.path), agentReadme) {
		if err := h.run(line); err != nil {
			t.Errorf("installing: %v", err) // TestDeployInstallLinesRunAgain says more
		}
	}
	checkSecretsApart(t, h, refresher, agentUnit)
}

// TestDeployUpgradeFromTheEarlierUnits: a host set up by the units before
// the agent had a user and a socket group of its own (the agent as user
// wxtoken, agent.env beside the refresher's env, the PHP-FPM user in group
// wxtoken, which read the AppSecrets) ends, after the new install lines
// and the README's upgrade commands, as a fresh host would: its clients
// reach the socket and read no secret.
func TestDeployUpgradeFromTheEarlierUnits(t *testing.T) {
	refresher := loadUnit(t, "../deploy/wxtoken.service")
	agentUnit := loadUnit(t, "../deploy/wxtoken-agent.service")
	_, agentReadme, upgrade := readmeDeployLines(t)
	if len(upgrade) == 0 {
		t.Fatal("the README's Deploying section has no upgrade commands")
	}
	h := newHost()
	earlier := []string{ // the units' install lines at e4999a7, and the README's advice then
		"useradd --system --no-create-home --shell /usr/sbin/nologin wxtoken",
		"install -d -m 750 -o root -g wxtoken /etc/wxtoken",
		"install -m 640 -o root -g wxtoken apps.yaml env /etc/wxtoken/",
		"install -m 640 -o root -g wxtoken agent.env /etc/wxtoken/",
		"usermod -a -G wxtoken www-data",
	}
	for _, line := range earlier {
		if err := h.run(line); err != nil {
			t.Fatalf("the earlier install: %v", err)
		}
	}
	for _, line := range slices.Concat(installLines(t, refresher.path), installLines(t, agentUnit.path), agentReadme, upgrade) {
		if err := h.run(line); err != nil {
			t.Errorf("upgrading: %v", err)
		}
	}
	if h.nodes["/etc/wxtoken/agent.env"] != nil {
		t.Error("the earlier agent.env is still in /etc/wxtoken")
	}
	checkSecretsApart(t, h, refresher, agentUnit)
}

// checkSecretsApart starts both units on h and checks that a member of the
// group of the agent's socket (PHP-FPM's user) may connect to the socket
// and read no secret: not the refresher's environment file (its NATS
// password, AppSecrets), apps file and secret files, not the agent's
// environment file, not NATS's passwords. The socket's group grants
// nothing else. Each service reads what it needs, and the agent none of
// the refresher's secrets.
func checkSecretsApart(t *testing.T, h *host, refresher, agentUnit unit) {
	t.Helper()
	refresherProc, err := h.start(refresher, 0)
	if err != nil {
		t.Fatal(err)
	}
	agentProc, err := h.start(agentUnit, socketMode(t))
	if err != nil {
		t.Fatal(err)
	}
	socketPath, ok := strings.CutPrefix(agentUnit.flag("--listen"), "unix:")
	if !ok {
		t.Fatalf("%s listens on %q, not a unix socket", agentUnit.path, agentUnit.flag("--listen"))
	}
	clientGroup := h.nodes[socketPath].group

	// The socket's group is the clients' alone, and grants the socket.
	for p, n := range h.nodes {
		if n.group == clientGroup && p != socketPath && p != path.Dir(socketPath) {
			t.Errorf("group %s, the agent socket's, also has %s (%04o): its members get that too", clientGroup, p, n.mode)
		}
	}
	if refresherProc.groups[clientGroup] {
		t.Errorf("the refresher is in group %s, the agent socket's: the group reaches the refresher's files", clientGroup)
	}
	clients := []proc{h.clientOf(clientGroup)}
	for name, acct := range h.users {
		if acct.member[clientGroup] && name != agentProc.user {
			clients = append(clients, h.login(name))
		}
	}
	if len(clients) == 1 {
		t.Errorf("no install line adds a user to group %s, the agent socket's: the README should show the PHP-FPM user's", clientGroup)
	}

	secrets := h.secretFiles(refresher, agentUnit)
	refresherDir := path.Dir(refresher.flag("--apps")) // where secret_files go
	var agentDirs []string                             // where an --auth-file goes
	for _, f := range agentUnit.envFiles {
		agentDirs = append(agentDirs, path.Dir(f))
	}
	for _, c := range clients {
		if err := h.may(c, socketPath, mayWrite); err != nil {
			t.Errorf("a client may not connect to the agent: %v", err)
		}
		for _, s := range secrets {
			if h.may(c, s, mayRead) == nil {
				n := h.nodes[s]
				t.Errorf("%s may read %s (%s:%s %04o)", c.name, s, n.owner, n.group, n.mode)
			}
		}
		for _, d := range append([]string{refresherDir}, agentDirs...) {
			if h.may(c, d, maySearch) == nil {
				t.Errorf("%s may enter %s: any secret file put there with a loose mode is its", c.name, d)
			}
		}
	}

	// Each service reads what it needs, and the agent, which serves the
	// clients, none of the refresher's secrets.
	if err := h.may(refresherProc, refresherDir, maySearch); err != nil {
		t.Errorf("the refresher cannot read its secret files: %v", err)
	}
	for _, d := range agentDirs {
		if err := h.may(agentProc, d, maySearch); err != nil {
			t.Errorf("the agent cannot read an --auth-file beside its environment file: %v", err)
		}
	}
	for _, s := range slices.Concat(refresher.envFiles, []string{refresher.flag("--apps")}) {
		if h.may(agentProc, s, mayRead) == nil {
			t.Errorf("the agent may read the refresher's %s: a client that takes the agent over has the AppSecrets", s)
		}
	}
	if h.may(agentProc, refresherDir, maySearch) == nil {
		t.Errorf("the agent may enter %s, where the refresher's secret files are", refresherDir)
	}
}

// clientOf is a process of a new user in group alone (and its own): the
// least a client of the agent needs.
func (h *host) clientOf(group string) proc {
	return proc{name: "a user in group " + group, user: "a-client", gid: "a-client", groups: map[string]bool{"a-client": true, group: true}}
}

// secretFiles returns every file the install lines put in /etc but the
// units (NATS's configuration and passwords, the refresher's and the
// agent's files), and the files the units name: each must exist.
func (h *host) secretFiles(units ...unit) []string {
	var files []string
	for p, n := range h.nodes {
		if !n.dir && strings.HasPrefix(p, "/etc/") && !strings.HasPrefix(p, "/etc/systemd/") {
			files = append(files, p)
		}
	}
	for _, u := range units {
		for _, f := range append(slices.Clone(u.envFiles), u.flag("--apps")) {
			if f != "" && !slices.Contains(files, f) {
				files = append(files, f) // start() has checked that it exists
			}
		}
	}
	slices.Sort(files)
	return files
}

// socketMode is the mode the agent gives its unix socket: one made by
// agent.Listen, as the agent makes it.
func socketMode(t *testing.T) fs.FileMode {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := agent.Listen("unix:"+sock, agent.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}
