package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// The authorizers of third-party platforms live in the platform bucket
// (kv.DefaultPlatformBucket). Their refresh tokens are secrets that WeChat
// gives once: nothing here prints one, in output or in an error; a token
// shows only as its fingerprint.

const authorizersOverview = `Usage: wxtoken authorizers import [flags] FILE
       wxtoken authorizers list [flags]

The authorizers of third-party platforms (开放平台): the accounts that
authorized a platform, each with the refresh token that gets its
access_token. WeChat gives a refresh token once, so they live in the
platform bucket, which only the refresher's NATS user may read or write:
run these commands as that user.
  import   take authorizers' refresh tokens in from another system
  list     show each authorizer's state and each platform's verify ticket

Run "wxtoken authorizers import --help" or "wxtoken authorizers list --help"
for their flags and examples.
`

func authorizers(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("need a subcommand, import or list (see wxtoken authorizers --help)")
	}
	switch args[0] {
	case "import":
		return importAuthorizers(args[1:], getenv, stdout, stderr)
	case "list":
		return listAuthorizers(args[1:], getenv, stdout)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, authorizersOverview)
		return errHelp
	}
	return usagef("unknown subcommand %q: use import or list (see wxtoken authorizers --help)", args[0])
}

// fingerprint names a refresh token without giving it away.
func fingerprint(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:4])
}

// isAuthorizerAppID reports whether s can be a platform's or an
// authorizer's appid.
func isAuthorizerAppID(s string) bool { return kv.ValidateID(s) == nil }

// platformFlags are the flags both subcommands take besides the NATS ones.
func platformFlags(c *command, component, bucket *string, componentUsage string) {
	c.String(component, "component", "", "", componentUsage)
	c.String(bucket, "platform-bucket", "WXTOKEN_PLATFORM_BUCKET", kv.DefaultPlatformBucket, "name of the platform KV bucket")
}

// checkPlatformFlags refuses a bad --component or --platform-bucket.
func checkPlatformFlags(component, bucket string) error {
	if component != "" && !isAuthorizerAppID(component) {
		return usagef("--component %q is not a component appid", component)
	}
	if err := kv.ValidateBucketName(bucket); err != nil {
		return usagef("--platform-bucket: %v", err)
	}
	return nil
}

// errNoPlatformBucket is wrapped by bindPlatform's error when the bucket
// does not exist: no refresher with a platform has run against this NATS.
var errNoPlatformBucket = errors.New("no platform bucket")

// bindPlatform binds the platform bucket; only `wxtoken serve` creates it.
func bindPlatform(ctx context.Context, nc *nats.Conn, name string) (jetstream.KeyValue, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	b, err := js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("%w %q at this NATS: `wxtoken serve` creates it when its apps file has the platform (under \"platforms:\")", errNoPlatformBucket, name)
	}
	if err != nil {
		return nil, describeNATSError(err)
	}
	return b, nil
}

const importSummary = `Take authorizers' refresh tokens in from another system, into the platform
bucket, for the refresher to keep their access_tokens fresh. FILE ("-" for
stdin) holds either lines
  AUTHORIZER_APPID REFRESH_TOKEN
(spaces, a tab or a comma between; blank lines, # comments and a header line
authorizer_appid,refresh_token are skipped), or a JSON array of objects with
authorizer_appid and authorizer_refresh_token (or appid and refresh_token)
and, optionally, component_appid.
The whole file is checked before anything is written: one problem anywhere
and nothing is. An authorizer that holds a refresh token already keeps it,
unless --replace. Tokens are never printed, only their fingerprints
(sha256: and the first 8 hex digits of the token's SHA-256).
A platform that no refresher serves (wxtoken serve records the platforms
of its apps file in the platform bucket) is refused, unless --force.`

const importExamples = `  wxtoken authorizers import --component wx1234567890abcdef authorizers.txt
  wxtoken authorizers import --dry-run exported.json
  mysql -N -e 'SELECT appid, refresh_token FROM authorizers' |
    wxtoken authorizers import --component wx1234567890abcdef --nats-user refresher -`

func importAuthorizers(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var n natsFlags
	var component, bucket string
	var replace, dryRun, force bool
	c := newCommand("authorizers import", "FILE", importSummary, importExamples)
	n.register(c, "NATS server URLs (default "+nats.DefaultURL+")", 0)
	platformFlags(c, &component, &bucket, "component `appid` of the platform the authorizers authorized (required unless\nevery JSON entry has its component_appid)")
	c.Bool(&replace, "replace", "", false, "overwrite the refresh token of an authorizer that holds one (default: keep it)")
	c.Bool(&dryRun, "dry-run", "", false, "check the file and report what would be done; write nothing")
	c.Bool(&force, "force", "", false, "import for a platform the refresher does not serve (yet): its authorizers wait for it")
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usagef(`need one FILE of authorizers, or "-" for stdin (see wxtoken authorizers import --help)`)
	}
	if err := checkPlatformFlags(component, bucket); err != nil {
		return err
	}
	name, data, err := readImportFile(rest[0])
	if err != nil {
		return err
	}
	entries, problems, err := parseImport(data, component)
	if err != nil {
		return err
	}
	switch {
	case len(problems) == 1:
		return fmt.Errorf("%s: %s; nothing was written", name, problems[0])
	case len(problems) > 1:
		const shown = 20
		for _, p := range problems[:min(len(problems), shown)] {
			fmt.Fprintf(stderr, "%s: %s\n", name, p)
		}
		if len(problems) > shown {
			fmt.Fprintf(stderr, "%s: and %d more\n", name, len(problems)-shown)
		}
		return fmt.Errorf("%d problems in %s; nothing was written", len(problems), name)
	case len(entries) == 0:
		return fmt.Errorf("%s: no authorizers in it", name)
	}

	nc, err := n.connect("wxtoken authorizers import")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := signalContext()
	defer stop()
	var b jetstream.KeyValue
	bindCtx, cancel := context.WithTimeout(ctx, clientTimeout)
	defer cancel()
	if err := nc.do(bindCtx, func(ctx context.Context) (err error) {
		if b, err = bindPlatform(ctx, nc.Conn, bucket); err != nil || force {
			return err
		}
		return checkServed(ctx, b, entries)
	}); err != nil {
		return err
	}
	var results []importResult
	err = nc.do(ctx, func(ctx context.Context) (err error) {
		results, err = importAll(ctx, b, entries, replace, dryRun)
		return err
	})
	reportImport(stdout, entries, results, dryRun)
	written := "; the summary above says what was written"
	if dryRun {
		written = ""
	}
	if ctx.Err() != nil {
		return errors.New("interrupted" + written)
	}
	if err != nil {
		return fmt.Errorf("%w%s", err, written)
	}
	return nil
}

// readImportFile reads FILE, or stdin for "-", and returns the name to
// report problems under.
func readImportFile(path string) (string, []byte, error) {
	if path == "-" {
		data, err := io.ReadAll(os.Stdin)
		return "stdin", data, err
	}
	data, err := os.ReadFile(path)
	return path, data, err
}

// importEntry is one authorizer of the file to import.
type importEntry struct {
	where        string // "line 3" or "entry 3", for messages
	component    string
	authorizer   string
	refreshToken string
}

// parseImport reads the authorizers of an import file and checks them
// all. The problems name lines or entries and appids, never a token. A
// missing --component is a usage error.
func parseImport(data []byte, component string) ([]importEntry, []string, error) {
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	start := bytes.TrimLeftFunc(data, unicode.IsSpace)
	var entries []importEntry
	var problems []string
	switch {
	case len(start) == 0:
		return nil, nil, nil
	case start[0] == '[':
		entries, problems = parseImportJSON(data)
	case start[0] == '{':
		return nil, []string{`a JSON file holds an array of objects: [{"authorizer_appid": ..., "authorizer_refresh_token": ...}, ...]`}, nil
	default:
		entries, problems = parseImportLines(data)
	}
	seen := map[[2]string]string{}
	for i := range entries {
		e := &entries[i]
		switch {
		case e.component == "" && component == "":
			if strings.HasPrefix(e.where, "line") {
				return nil, nil, usagef("--component is required: the lines name no platform (see wxtoken authorizers import --help)")
			}
			return nil, nil, usagef("--component is required: %s has no component_appid", e.where)
		case e.component == "":
			e.component = component
		case !isAuthorizerAppID(e.component):
			problems = append(problems, e.where+": component_appid is not an appid")
			continue
		case component != "" && e.component != component:
			problems = append(problems, fmt.Sprintf("%s: component_appid %s, not --component %s", e.where, e.component, component))
			continue
		}
		switch {
		case e.authorizer == "":
			problems = append(problems, e.where+": no authorizer appid")
		case !isAuthorizerAppID(e.authorizer):
			// Not quoted: a token in the wrong column must not be printed.
			problems = append(problems, e.where+": the authorizer appid is not an appid (letters, digits and _)")
		case e.refreshToken == "":
			problems = append(problems, fmt.Sprintf("%s: %s has no refresh token", e.where, e.authorizer))
		case kv.ValidateToken(e.refreshToken) != nil:
			problems = append(problems, fmt.Sprintf("%s: the refresh token of %s is not 1 to %d printable characters", e.where, e.authorizer, kv.MaxTokenLength))
		default:
			key := [2]string{e.component, e.authorizer}
			if first, dup := seen[key]; dup {
				problems = append(problems, fmt.Sprintf("%s: %s of platform %s again (first on %s)", e.where, e.authorizer, e.component, first))
				continue
			}
			seen[key] = e.where
		}
	}
	return entries, problems, nil
}

// parseImportLines reads "AUTHORIZER_APPID REFRESH_TOKEN" lines.
func parseImportLines(data []byte) ([]importEntry, []string) {
	var entries []importEntry
	var problems []string
	header := true // a first line of column names is skipped
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		where := fmt.Sprintf("line %d", i+1)
		fields := strings.FieldsFunc(line, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
		if header && len(fields) == 2 && isColumnNames(fields) {
			header = false
			continue
		}
		header = false
		if len(fields) != 2 {
			problems = append(problems, fmt.Sprintf("%s: want AUTHORIZER_APPID REFRESH_TOKEN, found %d field%s", where, len(fields), plural(len(fields))))
			continue
		}
		entries = append(entries, importEntry{where: where, authorizer: fields[0], refreshToken: fields[1]})
	}
	return entries, problems
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// isColumnNames reports whether a first line names the columns.
func isColumnNames(fields []string) bool {
	appid, token := strings.ToLower(fields[0]), strings.ToLower(fields[1])
	return (appid == "authorizer_appid" || appid == "appid") && (token == "authorizer_refresh_token" || token == "refresh_token")
}

// importObject is one entry of a JSON import file: WeChat's names, or the
// short ones.
type importObject struct {
	ComponentAppID         string `json:"component_appid"`
	AuthorizerAppID        string `json:"authorizer_appid"`
	AppID                  string `json:"appid"`
	AuthorizerRefreshToken string `json:"authorizer_refresh_token"`
	RefreshToken           string `json:"refresh_token"`
}

// parseImportJSON reads a JSON array of importObjects.
func parseImportJSON(data []byte) ([]importEntry, []string) {
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			line := 1 + bytes.Count(data[:min(int(syntax.Offset), len(data))], []byte("\n"))
			return nil, []string{fmt.Sprintf("line %d: not JSON: %v", line, err)}
		}
		return nil, []string{fmt.Sprintf("not a JSON array of objects: %v", err)}
	}
	var entries []importEntry
	var problems []string
	for i, m := range raw {
		where := fmt.Sprintf("entry %d", i+1)
		var o importObject
		if err := json.Unmarshal(m, &o); err != nil {
			var typ *json.UnmarshalTypeError
			if errors.As(err, &typ) && typ.Field != "" {
				problems = append(problems, fmt.Sprintf("%s: %s is a JSON %s, not a string", where, typ.Field, typ.Value))
			} else {
				problems = append(problems, where+": not a JSON object")
			}
			continue
		}
		if o.AuthorizerAppID != "" && o.AppID != "" && o.AuthorizerAppID != o.AppID {
			problems = append(problems, where+": authorizer_appid and appid differ")
			continue
		}
		if o.AuthorizerRefreshToken != "" && o.RefreshToken != "" && o.AuthorizerRefreshToken != o.RefreshToken {
			problems = append(problems, where+": authorizer_refresh_token and refresh_token differ")
			continue
		}
		entries = append(entries, importEntry{where: where, component: o.ComponentAppID,
			authorizer:   cmp.Or(o.AuthorizerAppID, o.AppID),
			refreshToken: cmp.Or(o.AuthorizerRefreshToken, o.RefreshToken)})
	}
	return entries, problems
}

// What import does with an authorizer.
type outcome int

const (
	notDone outcome = iota // not reached: a failure stopped the import first
	imported
	kept
	replaced
)

// importResult is what import did, or would do, with one entry.
type importResult struct {
	outcome outcome
	held    string // the fingerprint of the token kept
	same    bool   // the token kept is the file's
	newer   bool   // the token kept was issued after the import's now
}

// apply returns the record to store for e over the one held (found false:
// none, or an undecodable one), and what that is. The file's token goes
// in as one issued now, by kv's rule: the newest issued wins, and an
// authorization code not yet exchanged stays for the refresher.
func (e importEntry) apply(held kv.Authorizer, found, replace bool, now time.Time) (kv.Authorizer, importResult) {
	if !found || held.Unauthorized {
		held = kv.Authorizer{} // an import authorizes a withdrawn account anew
	}
	keep := func() (kv.Authorizer, importResult) {
		return held, importResult{outcome: kept, held: fingerprint(held.RefreshToken), same: held.RefreshToken == e.refreshToken,
			newer: held.IssuedAt.After(now)}
	}
	if held.RefreshToken != "" && (held.RefreshToken == e.refreshToken || !replace) {
		return keep()
	}
	next, newer := held.WithRefreshToken(e.refreshToken, now, "")
	switch {
	case !newer:
		// A token issued after now, by a refresher whose clock is ahead,
		// is newer than the file's.
		return keep()
	case held.RefreshToken == "":
		return next, importResult{outcome: imported}
	}
	return next, importResult{outcome: replaced}
}

// importWorkers is how many authorizers are written at once.
const importWorkers = 16

// importAll writes the entries, or with dryRun only reads what they would
// change, until the first failure.
func importAll(ctx context.Context, b jetstream.KeyValue, entries []importEntry, replace, dryRun bool) ([]importResult, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	results := make([]importResult, len(entries))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(importWorkers, len(entries)) {
		wg.Go(func() {
			for i := range next {
				r, err := importOne(ctx, b, entries[i], replace, dryRun)
				if err != nil {
					cancel(fmt.Errorf("%s, %s of platform %s: %w", entries[i].where, entries[i].authorizer, entries[i].component, describeNATSError(err)))
					continue
				}
				results[i] = r
			}
		})
	}
feed:
	for i := range entries {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if ctx.Err() != nil {
		return results, context.Cause(ctx)
	}
	return results, nil
}

// importOne writes one entry with a compare-and-swap, or with dryRun reads
// what it would change.
func importOne(ctx context.Context, b jetstream.KeyValue, e importEntry, replace, dryRun bool) (importResult, error) {
	ctx, cancel := context.WithTimeout(ctx, clientTimeout)
	defer cancel()
	var r importResult
	change := func(held kv.Authorizer, found bool) (kv.Authorizer, bool) {
		var next kv.Authorizer
		next, r = e.apply(held, found, replace, time.Now())
		return next, r.outcome != kept
	}
	if !dryRun {
		_, _, _, err := kv.UpdateAuthorizer(ctx, b, e.component, e.authorizer, change)
		return r, err
	}
	key := kv.AuthorizerKey(e.component, e.authorizer)
	held, found := kv.Authorizer{}, false
	entry, err := b.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return importResult{}, err
	default:
		if a, derr := kv.DecodeAuthorizer(key, entry.Value()); derr == nil {
			held, found = a, true
		}
	}
	change(held, found)
	return r, nil
}

// reportImport prints each authorizer kept with a token other than the
// file's, then the counts.
func reportImport(w io.Writer, entries []importEntry, results []importResult, dryRun bool) {
	var counts [4]int
	for i, r := range results {
		counts[r.outcome]++
		if r.outcome == kept && !r.same {
			verb := "kept"
			if dryRun {
				verb = "would keep"
			}
			e := entries[i]
			why := "--replace overwrites it"
			if r.newer {
				why = "it was issued later than now by this clock"
			}
			fmt.Fprintf(w, "%s %s of platform %s: it holds another refresh token, %s (the file's is %s; %s)\n",
				verb, e.authorizer, e.component, r.held, fingerprint(e.refreshToken), why)
		}
	}
	if dryRun {
		fmt.Fprintf(w, "dry run, nothing written: %d to import, %d to keep (already held), %d to replace\n", counts[imported], counts[kept], counts[replaced])
		return
	}
	fmt.Fprintf(w, "%d imported, %d kept (already held), %d replaced\n", counts[imported], counts[kept], counts[replaced])
}
