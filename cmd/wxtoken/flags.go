package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
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
	// badValue is the last value a typed flag refused, in words that say
	// what to write instead: the flag package's error would not.
	badValue error
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
		if v, ok := f.Value.(*typedValue); ok && name == "value" {
			name = v.kind
		}
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
	*p = def
	c.typed(name, env, "int", usage, func(s string) error {
		n, err := strconv.ParseInt(s, 10, strconv.IntSize)
		if err != nil {
			return errors.New("not a whole number: write one such as 3")
		}
		*p = int(n)
		return nil
	}, func() string { return strconv.Itoa(*p) })
}

func (c *command) Int64(p *int64, name, env string, def int64, usage string) {
	*p = def
	c.typed(name, env, "int", usage, func(s string) error {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return errors.New("not a whole number: write one such as 42")
		}
		*p = n
		return nil
	}, func() string { return strconv.FormatInt(*p, 10) })
}

func (c *command) Float(p *float64, name, env string, def float64, usage string) {
	*p = def
	c.typed(name, env, "number", usage, func(s string) error {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return errors.New("not a number: write one such as 50 or 0.5")
		}
		*p = f
		return nil
	}, func() string { return strconv.FormatFloat(*p, 'g', -1, 64) })
}

func (c *command) Duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	*p = def
	c.typed(name, env, "duration", usage, func(s string) error {
		d, err := time.ParseDuration(s)
		if err != nil {
			return errors.New("not a duration: write one such as 10m, 30s or 1h30m")
		}
		*p = d
		return nil
	}, func() string { return p.String() })
}

// Size is a number of bytes, written plain or with a binary unit: 32MiB.
func (c *command) Size(p *int64, name, env string, def int64, usage string) {
	*p = def
	c.typed(name, env, "size", usage, func(s string) error {
		n, err := parseSize(s)
		if err != nil {
			return err
		}
		*p = n
		return nil
	}, func() string { return formatSize(*p) })
}

// typed defines a flag that is not a string or a bool.
func (c *command) typed(name, env, kind, usage string, parse func(string) error, show func() string) {
	c.fs.Var(&typedValue{c: c, name: name, kind: kind, parse: parse, show: show}, name, usage)
	c.bindEnv(name, env)
}

// typedValue is a flag that is not a string or a bool. A value it cannot
// take is kept with the flag's name, so that the error reads
// `--refresh-before "10": not a duration: write one such as 10m, ...`.
type typedValue struct {
	c     *command
	name  string
	kind  string // its placeholder in --help
	parse func(string) error
	show  func() string
}

func (v *typedValue) Set(s string) error {
	err := v.parse(s)
	if err != nil {
		v.c.badValue = fmt.Errorf("--%s %q: %w", v.name, s, err)
	}
	return err
}

func (v *typedValue) String() string {
	if v == nil || v.show == nil {
		return "" // the flag package's zero value, made by reflection
	}
	return v.show()
}

// sizeUnits are the units a size takes: binary ones, as the README writes
// sizes (32MiB). KB and MB are refused rather than guessed at: some mean
// 1000, some 1024.
var sizeUnits = []struct {
	suffix string
	bytes  int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}

// parseSize parses a number of bytes, such as 1048576, 1024KiB or 32MiB.
func parseSize(s string) (int64, error) {
	number, factor := s, int64(1)
	for _, u := range sizeUnits {
		if len(s) > len(u.suffix) && strings.EqualFold(s[len(s)-len(u.suffix):], u.suffix) {
			number, factor = s[:len(s)-len(u.suffix)], u.bytes
			break
		}
	}
	n, err := strconv.ParseInt(number, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/factor {
		return 0, errors.New("not a size: write one such as 32MiB, 512KiB or 1048576 (bytes); the units are KiB, MiB and GiB")
	}
	return n * factor, nil
}

// formatSize writes n bytes in the largest unit that divides it.
func formatSize(n int64) string {
	for _, u := range sizeUnits {
		if n != 0 && n%u.bytes == 0 {
			return strconv.FormatInt(n/u.bytes, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
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
			if c.badValue != nil {
				err = c.badValue
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
				// Only typed flags refuse a value, and none of them is a
				// secret: the value may be shown.
				return nil, fmt.Errorf("$%s %q: %w", env, v, err)
			}
		}
	}
	return positional, nil
}

// given reports whether the flag was set, on the command line or by its
// environment variable.
func (c *command) given(name string) bool {
	set := false
	c.fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
