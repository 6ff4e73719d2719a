package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// command is one subcommand: its flags, each of which may also come from an
// environment variable, and its help.
type command struct {
	name     string
	args     string // positional arguments, for the usage line
	summary  string
	examples string
	fs       *flag.FlagSet
	env      map[string]string // flag name -> environment variable
}

func newCommand(name, args, summary, examples string) *command {
	c := &command{name: name, args: args, summary: summary, examples: examples,
		fs: flag.NewFlagSet(name, flag.ContinueOnError), env: map[string]string{}}
	c.fs.Usage = func() { c.usage(c.fs.Output()) }
	return c
}

// usage prints the command's help. Defaults are shown; values taken from the
// environment are not, so that --help never prints a password.
func (c *command) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: wxtoken %s [flags] %s\n\n%s\n\nFlags:\n", c.name, c.args, c.summary)
	c.fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(w, " %s", name)
		}
		fmt.Fprintf(w, "\n    \t%s", strings.ReplaceAll(usage, "\n", "\n    \t"))
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		if env := c.env[f.Name]; env != "" {
			fmt.Fprintf(w, " [$%s]", env)
		}
		fmt.Fprintln(w)
	})
	if c.examples != "" {
		fmt.Fprintf(w, "\nExamples:\n%s\n", c.examples)
	}
}

func (c *command) String(p *string, name, env, def, usage string) {
	c.fs.StringVar(p, name, def, usage)
	c.bindEnv(name, env)
}

func (c *command) Bool(p *bool, name, env string, def bool, usage string) {
	c.fs.BoolVar(p, name, def, usage)
	c.bindEnv(name, env)
}

func (c *command) Int(p *int, name, env string, def int, usage string) {
	c.fs.IntVar(p, name, def, usage)
	c.bindEnv(name, env)
}

func (c *command) Float(p *float64, name, env string, def float64, usage string) {
	c.fs.Float64Var(p, name, def, usage)
	c.bindEnv(name, env)
}

func (c *command) Duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	c.fs.DurationVar(p, name, def, usage)
	c.bindEnv(name, env)
}

func (c *command) bindEnv(name, env string) {
	if env != "" {
		c.env[name] = env
	}
}

// errHelp is returned after --help printed the usage.
var errHelp = flag.ErrHelp

// parse parses args, flags before and after positional arguments alike; a
// flag not given takes its environment variable, if set. It returns the
// positional arguments.
func (c *command) parse(args []string, getenv func(string) string) ([]string, error) {
	c.fs.SetOutput(io.Discard) // errors are returned, help printed by the caller
	var positional []string
	for {
		if err := c.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, fmt.Errorf("%w (see wxtoken %s --help)", err, c.name)
		}
		rest := c.fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			positional = append(positional, rest...) // everything after "--"
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	given := map[string]bool{}
	c.fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for name, env := range c.env {
		if given[name] {
			continue
		}
		if v := getenv(env); v != "" {
			if err := c.fs.Set(name, v); err != nil {
				return nil, fmt.Errorf("$%s: %w", env, err)
			}
		}
	}
	return positional, nil
}

func (c *command) Int64(p *int64, name, env string, def int64, usage string) {
	c.fs.Int64Var(p, name, def, usage)
	c.bindEnv(name, env)
}

// given reports whether the flag was set, on the command line or by its
// environment variable.
func (c *command) given(name string) bool {
	set := false
	c.fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
