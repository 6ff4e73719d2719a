package test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestPackageDocsSpeakOfTheirOwnPackage: a package's overview, as `go doc`
// prints it, has no paragraph that begins as another package's doc
// ("Package wxtokentest gives ..."), which reads as that package's
// documentation printed in the wrong place.
func TestPackageDocsSpeakOfTheirOwnPackage(t *testing.T) {
	other := regexp.MustCompile(`^Package (\w+) `)
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if name := d.Name(); path != ".." && (strings.HasPrefix(name, ".") || name == "testdata") {
			return filepath.SkipDir
		}
		pkgs, err := parser.ParseDir(token.NewFileSet(), path, func(fi os.FileInfo) bool {
			return !strings.HasSuffix(fi.Name(), "_test.go")
		}, parser.ParseComments|parser.PackageClauseOnly)
		if err != nil {
			return err
		}
		for name, pkg := range pkgs {
			for file, f := range pkg.Files {
				if f.Doc == nil {
					continue
				}
				for i, paragraph := range strings.Split(f.Doc.Text(), "\n\n") {
					if m := other.FindStringSubmatch(paragraph); m != nil && (i > 0 || m[1] != name) {
						t.Errorf("%s: the doc of package %s has a paragraph about package %s: %.60q", file, name, m[1], paragraph)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
