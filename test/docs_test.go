package test

import (
	"go/parser"
	"go/token"
	"io/fs"
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
		files, err := filepath.Glob(filepath.Join(path, "*.go"))
		if err != nil {
			return err
		}
		for _, file := range files {
			if strings.HasSuffix(file, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ParseComments|parser.PackageClauseOnly)
			if err != nil {
				return err
			}
			if f.Doc == nil {
				continue
			}
			for i, paragraph := range strings.Split(f.Doc.Text(), "\n\n") {
				if m := other.FindStringSubmatch(paragraph); m != nil && (i > 0 || m[1] != f.Name.Name) {
					t.Errorf("%s: the doc of package %s has a paragraph about package %s: %.60q", file, f.Name.Name, m[1], paragraph)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
