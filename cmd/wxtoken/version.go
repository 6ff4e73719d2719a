package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/wxtoken/wxtoken/publisher"
)

// versionCommand prints the version: wxtoken's own, then what the Go
// toolchain recorded of the build, when it did (the module's version, the
// commit, the Go version).
func versionCommand(args []string, _ func(string) string, stdout, _ io.Writer) error {
	if len(args) > 0 {
		return usagef("version takes no arguments")
	}
	printVersion(stdout)
	return nil
}

func printVersion(w io.Writer) {
	fmt.Fprintf(w, "wxtoken %s\n", publisher.Version)
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Fprintf(w, "go      %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return
	}
	fmt.Fprintf(w, "module  %s %s\n", bi.Main.Path, bi.Main.Version)
	vcs := map[string]string{}
	for _, s := range bi.Settings {
		vcs[s.Key] = s.Value
	}
	if rev := vcs["vcs.revision"]; rev != "" {
		if vcs["vcs.modified"] == "true" {
			rev += " (modified)"
		}
		if at := vcs["vcs.time"]; at != "" {
			rev += ", " + at
		}
		fmt.Fprintf(w, "commit  %s\n", rev)
	}
	fmt.Fprintf(w, "go      %s %s/%s\n", bi.GoVersion, runtime.GOOS, runtime.GOARCH)
}
