// Package yamlfile decodes the YAML files an operator writes (the apps
// file, the agent's auth file) with errors the operator can act on: each
// names its line, as file:line when the file has a name; an unknown key is
// listed against the keys valid at its place; a value of the wrong shape
// says which shape is wanted. No error names a Go type or quotes a value
// (values may be secrets).
package yamlfile

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Error is a problem at a line of a file. It reads "file:line: msg", as
// compilers and editors write it, or "line N: msg" for text of no file.
type Error struct {
	File string // "" when the text has no file
	Line int    // 0 when the problem has none
	Msg  string
}

func (e *Error) Error() string {
	switch {
	case e.File == "" && e.Line == 0:
		return e.Msg
	case e.File == "":
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	case e.Line == 0:
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// maxErrors bounds the problems one error lists.
const maxErrors = 10

// Decode decodes the YAML document data, the content of file (or "" for
// text of no file), into v, a pointer to a struct whose fields carry yaml
// tags. Every key of the document must be a field's; each value must have
// its field's shape (a list, keys and values, or a single value).
func Decode(file string, data []byte, v any) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return syntaxError(file, data, err)
	}
	if len(doc.Content) == 0 {
		return nil // an empty file: every field keeps its zero value
	}
	c := checker{file: file, seen: map[visit]bool{}}
	c.check(doc.Content[0], reflect.TypeOf(v).Elem(), "")
	if len(c.errs) > 0 {
		return joined(c.errs)
	}
	if err := doc.Content[0].Decode(v); err != nil {
		return decodeError(file, err)
	}
	return nil
}

// At is err at a line of file (0: none), in the form Decode's errors take.
func At(file string, line int, err error) error {
	return &Error{File: file, Line: line, Msg: err.Error()}
}

// joined lists the problems found, at most maxErrors of them, in one line.
func joined(errs []error) error {
	msgs := make([]string, 0, min(len(errs), maxErrors)+1)
	for _, err := range errs[:min(len(errs), maxErrors)] {
		msgs = append(msgs, err.Error())
	}
	if len(errs) > maxErrors {
		msgs = append(msgs, fmt.Sprintf("and %d more", len(errs)-maxErrors))
	}
	return errors.New(strings.Join(msgs, "; "))
}

// checker finds the keys a document has no field for and the values
// whose shape is not their field's.
type checker struct {
	file string
	errs []error
	// seen is every node checked against each type: an alias is checked
	// where its anchor is, once, however often it is used (a file of
	// aliases of aliases would otherwise take exponential time).
	seen map[visit]bool
}

type visit struct {
	n *yaml.Node
	t reflect.Type
}

// check checks n against t. where names n's place ("apps[0]"), "" for
// the document.
func (c *checker) check(n *yaml.Node, t reflect.Type, where string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if c.seen[visit{n, t}] {
		return
	}
	c.seen[visit{n, t}] = true
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // "key:" with no value: the zero value
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			c.fail(n.Line, "%s must be keys and values (key: value), not %s", named(where), shape(n))
			return
		}
		c.checkKeys(n, t, where)
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			c.fail(n.Line, "%s must be a list (entries starting with \"- \", or [a, b]), not %s", named(where), shape(n))
			return
		}
		for i, el := range n.Content {
			c.check(el, t.Elem(), fmt.Sprintf("%s[%d]", where, i))
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			c.fail(n.Line, "%s must be keys and values (key: value), not %s", named(where), shape(n))
			return
		}
		for i := 1; i < len(n.Content); i += 2 {
			c.check(n.Content[i], t.Elem(), join(where, n.Content[i-1].Value))
		}
	default:
		if n.Kind != yaml.ScalarNode {
			c.fail(n.Line, "%s must be a single value, not %s", named(where), shape(n))
		}
	}
}

// checkMerged checks what a merge key ("<<: *defaults", or a list of
// them) merges into a mapping of t.
func (c *checker) checkMerged(n *yaml.Node, t reflect.Type, where string) {
	if n.Kind == yaml.SequenceNode {
		for _, el := range n.Content {
			c.check(el, t, where)
		}
		return
	}
	c.check(n, t, where)
}

func (c *checker) fail(line int, format string, args ...any) {
	c.errs = append(c.errs, &Error{File: c.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// checkKeys checks the keys of the mapping n against the fields of the
// struct t, and each value against its field.
func (c *checker) checkKeys(n *yaml.Node, t reflect.Type, where string) {
	fields := fieldsOf(t)
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, value := n.Content[i], n.Content[i+1]
		if key.Value == "<<" { // a merge key: the mappings it merges in have the same keys
			c.checkMerged(value, t, where)
			continue
		}
		field, ok := fields[key.Value]
		if !ok {
			c.fail(key.Line, "%s", unknownKey(key.Value, where, fields))
			continue
		}
		c.check(value, field, join(where, key.Value))
	}
}

// unknownKey says that key is not one of fields, and which keys are.
func unknownKey(key, where string, fields map[string]reflect.Type) string {
	valid := make([]string, 0, len(fields))
	for name := range fields {
		valid = append(valid, name)
	}
	slices.Sort(valid)
	place := "at the top of the file"
	if where != "" {
		place = "in " + where
	}
	msg := fmt.Sprintf("unknown key %.40q %s", key, place)
	if near := nearest(key, valid); near != "" {
		msg += fmt.Sprintf(" (did you mean %s?)", near)
	}
	return msg + "; the keys there are " + strings.Join(valid, ", ")
}

// fieldsOf maps the YAML keys of struct t to their fields' types.
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case name == "-":
			continue
		case strings.Contains(opts, "inline"):
			for k, v := range fieldsOf(f.Type) {
				fields[k] = v
			}
			continue
		case name == "":
			name = strings.ToLower(f.Name) // yaml.v3's default key
		}
		fields[name] = f.Type
	}
	return fields
}

// nearest returns the valid key within two edits of key, if there is one:
// a typo's likely intent.
func nearest(key string, valid []string) string {
	best, bestDist := "", 3
	for _, v := range valid {
		if d := editDistance(key, v); d < bestDist {
			best, bestDist = v, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func join(where, key string) string {
	if where == "" {
		return key
	}
	return where + "." + key
}

func named(where string) string {
	if where == "" {
		return "the file"
	}
	return where
}

// shape names what n is, for an error.
func shape(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "keys and values"
	}
	return "a single value"
}

// syntaxMessage is how yaml.v3 words a syntax error.
var syntaxMessage = regexp.MustCompile(`^yaml: (?:line (\d+): )?(.*)$`)

// syntaxError makes a syntax error name the line the problem is at.
// yaml.v3 names the line where the block around the problem began (the
// "apps:" of a mis-indented key ten lines down), so the line is the first
// at which the document, cut there, fails with the same message.
func syntaxError(file string, data []byte, err error) error {
	m := syntaxMessage.FindStringSubmatch(err.Error())
	if m == nil {
		return &Error{File: file, Msg: "not YAML: " + err.Error()}
	}
	msg := m[2]
	lines := strings.SplitAfter(string(data), "\n")
	line := firstFailing(lines, msg)
	if line == 0 {
		line, _ = strconv.Atoi(m[1])
	}
	if line > 0 && line <= len(lines) {
		msg += hint(msg, lines[line-1])
	}
	return &Error{File: file, Line: line, Msg: "not YAML: " + msg}
}

// firstFailing returns the fewest lines of the document that fail to
// parse with msg, or 0. Cutting a document short rarely makes it fail
// with the same message before the problem, so a binary search will do.
func firstFailing(lines []string, msg string) int {
	fails := func(n int) bool {
		var node yaml.Node
		err := yaml.Unmarshal([]byte(strings.Join(lines[:n], "")), &node)
		if err == nil {
			return false
		}
		m := syntaxMessage.FindStringSubmatch(err.Error())
		return m != nil && m[2] == msg
	}
	lo, hi := 1, len(lines)
	if !fails(hi) {
		return 0
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// hint says what usually causes a syntax error.
func hint(msg, line string) string {
	switch {
	case strings.Contains(line, "\t") && strings.Contains(msg, "cannot start any token"):
		return " (YAML indents with spaces, not tabs)"
	case strings.Contains(msg, "did not find expected '-' indicator"), strings.Contains(msg, "did not find expected key"),
		strings.Contains(msg, "not allowed in this context"):
		return " (check the indentation: the keys of one entry line up under its first key)"
	}
	return ""
}

// typeErrorLine is how yaml.v3 words each problem of a TypeError.
var typeErrorLine = regexp.MustCompile(`^line (\d+): (.*)$`)

// decodeError rewords what decoding found after check (a key given twice,
// say) with the file's name.
func decodeError(file string, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return &Error{File: file, Msg: err.Error()}
	}
	errs := make([]error, 0, len(te.Errors))
	for _, e := range te.Errors {
		m := typeErrorLine.FindStringSubmatch(e)
		if m == nil {
			errs = append(errs, &Error{File: file, Msg: e})
			continue
		}
		line, _ := strconv.Atoi(m[1])
		errs = append(errs, &Error{File: file, Line: line, Msg: m[2]})
	}
	return joined(errs)
}
