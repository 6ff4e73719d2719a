package main

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The README's tables of flags, by the heading they are under: serve's and
// the agent's, each a table of its own, and the client commands' one
// table, whose "commands" column says which commands take each flag
// ("every": all of them).
const (
	serveTable  = "## Configuration"
	agentTable  = "### Its flags"
	clientTable = "### The client commands' flags"
)

// clientCommands are the commands that only talk to NATS.
var clientCommands = []string{"get", "watch", "refresh", "status", "sign", "authorizers import", "authorizers list", "region add", "secret set"}

// TestREADMETablesMatchHelp: every flag a command's --help prints is in
// the README's table for that command, with the environment variable
// --help gives it, or, for a flag that has none, a reason in its place;
// and no row names a flag the command does not have.
func TestREADMETablesMatchHelp(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	checkCommandsCovered(t)
	for _, c := range []struct{ command, heading string }{{"serve", serveTable}, {"agent", agentTable}} {
		rows := flagRows(t, readme, c.heading)
		help := helpFlags(t, c.command)
		for _, problem := range compare(help, rows) {
			t.Errorf("wxtoken %s --help and the README's table under %q: %s", c.command, c.heading, problem)
		}
	}
	// wxtoken demo reject and demo fetch take serve's --demo-wechat-listen,
	// as given to serve --demo: serve's table documents it.
	for _, demo := range []string{"demo reject", "demo fetch"} {
		var demoRows []flagRow
		demoHelp := helpFlags(t, demo)
		for _, r := range flagRows(t, readme, serveTable) {
			if slices.ContainsFunc(r.flags, func(f string) bool { _, ok := demoHelp[f]; return ok }) {
				demoRows = append(demoRows, r)
			}
		}
		for _, problem := range compare(demoHelp, demoRows) {
			t.Errorf("wxtoken %s --help and the README's table under %q: %s", demo, serveTable, problem)
		}
	}
	rows := flagRows(t, readme, clientTable)
	for _, command := range clientCommands {
		var mine []flagRow
		for _, r := range rows {
			if r.commands == "every" || slices.Contains(backticked(r.commands), command) {
				mine = append(mine, r)
			}
		}
		for _, problem := range compare(helpFlags(t, command), mine) {
			t.Errorf("wxtoken %s --help and the README's table under %q: %s", command, clientTable, problem)
		}
	}
}

// checkCommandsCovered fails if the overview lists a command that has no
// table here.
func checkCommandsCovered(t *testing.T) {
	t.Helper()
	// version takes no flags.
	known := append([]string{"serve", "agent", "demo reject", "version"}, clientCommands...)
	for _, m := range regexp.MustCompile(`(?m)^  wxtoken (\S+) ?(\S*)`).FindAllStringSubmatch(overview, -1) {
		names := []string{m[1]}
		if m[1] == "authorizers" || m[1] == "demo" || m[1] == "region" || m[1] == "secret" { // "authorizers import|list", "demo reject", "region add", "secret set"
			names = nil
			for _, sub := range strings.Split(m[2], "|") {
				names = append(names, m[1]+" "+sub)
			}
		}
		for _, name := range names {
			if !slices.Contains(known, name) {
				t.Errorf("wxtoken %s is in the overview, and this test knows no README table for it", name)
			}
		}
	}
}

// flagRow is a row of a README table of flags.
type flagRow struct {
	line     string
	flags    []string // without "--"
	envs     []string // the variables, in the order of the flags; none if the flags have none
	envCell  string
	commands string // the client table's commands cell
}

// flagRows reads the first table under heading.
func flagRows(t *testing.T, readme, heading string) []flagRow {
	t.Helper()
	_, section, found := strings.Cut(readme, "\n"+heading+"\n")
	if !found {
		t.Fatalf("the README has no heading %q", heading)
	}
	var header []string
	var rows []flagRow
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "|") {
			if header != nil {
				break // the table ended
			}
			if strings.HasPrefix(line, "#") {
				break // no table in the section
			}
			continue
		}
		cells := splitRow(line)
		if header == nil {
			header = cells
			continue
		}
		if strings.HasPrefix(cells[0], "---") {
			continue
		}
		cell := func(name string) string {
			if i := slices.Index(header, name); i >= 0 && i < len(cells) {
				return cells[i]
			}
			return ""
		}
		r := flagRow{line: line, envCell: cell("environment"), commands: cell("commands")}
		for _, f := range backticked(cell("flag")) {
			if name, ok := strings.CutPrefix(f, "--"); ok {
				r.flags = append(r.flags, name)
			}
		}
		for _, e := range backticked(r.envCell) {
			if regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`).MatchString(e) {
				r.envs = append(r.envs, e)
			}
		}
		rows = append(rows, r)
	}
	if !slices.Contains(header, "flag") || !slices.Contains(header, "environment") {
		t.Fatalf("the table under %q has no flag and environment columns (header %q)", heading, header)
	}
	return rows
}

// splitRow splits a table row into its cells; "\|" is a | in a cell.
func splitRow(line string) []string {
	line = strings.ReplaceAll(strings.Trim(line, "|"), `\|`, "\x00")
	cells := strings.Split(line, "|")
	for i, c := range cells {
		cells[i] = strings.TrimSpace(strings.ReplaceAll(c, "\x00", "|"))
	}
	return cells
}

// backticked returns what is between backticks in s.
func backticked(s string) []string {
	var out []string
	for _, m := range regexp.MustCompile("`([^`]*)`").FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// helpFlags runs `wxtoken COMMAND --help` and returns each flag it prints
// with its environment variable, "" for none.
func helpFlags(t *testing.T, command string) map[string]string {
	t.Helper()
	out, _, code := runCommand(t, nil, append(strings.Fields(command), "--help")...)
	if code != 0 {
		t.Fatalf("wxtoken %s --help: exit %d", command, code)
	}
	flags := map[string]string{}
	var last string
	env := regexp.MustCompile(`\[\$([A-Z0-9_]+)\]$`)
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "  --"); ok {
			last, _, _ = strings.Cut(rest, " ")
			flags[last] = ""
			continue
		}
		if last != "" && strings.HasPrefix(line, "    \t") {
			if m := env.FindStringSubmatch(line); m != nil {
				flags[last] = m[1]
			}
			continue
		}
		last = ""
	}
	if len(flags) == 0 {
		t.Fatalf("wxtoken %s --help printed no flags:\n%s", command, out)
	}
	return flags
}

// compare lists what the table gets wrong about the flags help printed.
func compare(help map[string]string, rows []flagRow) []string {
	var problems []string
	documented := map[string]bool{}
	for _, r := range rows {
		if len(r.flags) == 0 {
			continue // variables of no flag (serve's WECHAT_APPID)
		}
		if len(r.envs) > 0 && len(r.envs) != len(r.flags) {
			problems = append(problems, fmt.Sprintf("the row %q names %d flags and %d variables", r.line, len(r.flags), len(r.envs)))
			continue
		}
		for i, name := range r.flags {
			want, exists := help[name]
			switch {
			case !exists:
				problems = append(problems, fmt.Sprintf("the row %q names --%s, which the command does not have", r.line, name))
			case want != "" && (len(r.envs) == 0 || r.envs[i] != want):
				problems = append(problems, fmt.Sprintf("--%s has the variable %s; the row %q says otherwise", name, want, r.line))
			case want == "" && len(r.envs) > 0:
				problems = append(problems, fmt.Sprintf("--%s has no variable; the row %q gives it %s", name, r.line, r.envs[i]))
			case want == "" && r.envCell == "":
				problems = append(problems, fmt.Sprintf("--%s has no variable, and the row %q does not say why", name, r.line))
			}
			documented[name] = true
		}
	}
	for name, env := range help {
		if !documented[name] {
			problems = append(problems, fmt.Sprintf("--%s (variable %q) is not in the table", name, env))
		}
	}
	slices.Sort(problems)
	return problems
}
