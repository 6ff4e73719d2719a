package test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// The platforms and authorizers of these tests.
const (
	platformC = "wxc00000000000000c"
	platformD = "wxd00000000000000d"
	authA     = "wxa00000000000000a"
	authB     = "wxb00000000000000b"
	authE     = "wxe00000000000000e"
	authF     = "wxf00000000000000f"
	authG     = "wx000000000000000g"
)

// platformNATS starts a NATS server with the platform bucket, as `wxtoken
// serve` creates it with platformC and platformD in its apps file, and
// returns the bucket and the environment of a wxtoken command that talks
// to it.
func platformNATS(t *testing.T, ctx context.Context) (jetstream.JetStream, jetstream.KeyValue, []string) {
	t.Helper()
	js, b, env := emptyPlatformNATS(t, ctx)
	servedSince = time.Now().Add(-time.Hour)
	for _, c := range []string{platformC, platformD} {
		if _, err := kv.RecordPlatform(ctx, b, c, servedSince); err != nil {
			t.Fatal(err)
		}
	}
	return js, b, env
}

// servedSince is when the refresher of the last platformNATS first served
// its platforms: an hour before the test, whenever it runs (the tests that
// use it do not run in parallel).
var servedSince time.Time

// emptyPlatformNATS is platformNATS with no platform recorded in the
// bucket.
func emptyPlatformNATS(t *testing.T, ctx context.Context) (jetstream.JetStream, jetstream.KeyValue, []string) {
	t.Helper()
	srv := testenv.NATS(t)
	js, err := jetstream.New(testenv.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultPlatformBucket, History: 16})
	if err != nil {
		t.Fatal(err)
	}
	return js, b, []string{"NATS_URL=" + srv.ClientURL()}
}

// runWxtokenInput is runWxtoken with stdin.
func runWxtokenInput(t *testing.T, env []string, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(wxtokenBinary(t), args...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

// importFile writes content to a file of its own and returns its path.
func importFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "authorizers")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// fingerprintOf is how wxtoken shows a refresh token.
func fingerprintOf(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:])[:8]
}

// noSecrets fails the test if any secret is in the output.
func noSecrets(t *testing.T, secrets []string, outputs ...string) {
	t.Helper()
	for _, secret := range secrets {
		for _, out := range outputs {
			if strings.Contains(out, secret) {
				t.Errorf("a secret (%.12s...) is in the output:\n%s", secret, out)
			}
		}
	}
}

// putAuthorizer stores a and returns its revision.
func putAuthorizer(t *testing.T, ctx context.Context, b jetstream.KeyValue, a kv.Authorizer) uint64 {
	t.Helper()
	data, err := kv.EncodeAuthorizer(a)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := b.Put(ctx, kv.AuthorizerKey(a.ComponentAppID, a.AppID), data)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// authorizerIn returns the record of an authorizer and its revision.
func authorizerIn(t *testing.T, ctx context.Context, b jetstream.KeyValue, component, authorizer string) (kv.Authorizer, uint64) {
	t.Helper()
	key := kv.AuthorizerKey(component, authorizer)
	e, err := b.Get(ctx, key)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	a, err := kv.DecodeAuthorizer(key, e.Value())
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return a, e.Revision()
}

// lastSequence is the platform bucket's newest revision: it moves with
// every write.
func lastSequence(t *testing.T, ctx context.Context, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(ctx, "KV_"+kv.DefaultPlatformBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// wantImported checks that an authorizer holds token, imported between
// from and to, active.
func wantImported(t *testing.T, ctx context.Context, b jetstream.KeyValue, component, authorizer, token string, from, to time.Time) kv.Authorizer {
	t.Helper()
	a, _ := authorizerIn(t, ctx, b, component, authorizer)
	if a.RefreshToken != token || a.Unauthorized || a.IssuedAt.Before(from) || a.IssuedAt.After(to) {
		t.Errorf("%s of %s: unauthorized %v, issued %s (import ran %s to %s), token %s, want %s", authorizer, component,
			a.Unauthorized, a.IssuedAt, from, to, fingerprintOf(a.RefreshToken), fingerprintOf(token))
	}
	return a
}

func TestAuthorizersImportLines(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	_, b, env := platformNATS(t, ctx)
	tokens := []string{"refreshtoken@@@one-Xy_9", "refreshtoken@@@two-Xy_9", "refreshtoken@@@three-Xy_9"}
	file := importFile(t, "# exported from the old system\n"+
		"authorizer_appid,refresh_token\n"+
		"\n"+
		authA+" "+tokens[0]+"\n"+
		authB+","+tokens[1]+"\r\n"+
		"  \t"+authE+"\t , "+tokens[2]+"  \n"+
		"   # the end\n")
	from := time.Now()
	out, errOut, code := runWxtoken(t, env, "authorizers", "import", "--component", platformC, file)
	to := time.Now()
	if code != 0 || out != "3 imported, 0 kept (already held), 0 replaced\n" || errOut != "" {
		t.Fatalf("exit %d, stderr %q:\n%s", code, errOut, out)
	}
	noSecrets(t, tokens, out, errOut)
	for i, authorizer := range []string{authA, authB, authE} {
		wantImported(t, ctx, b, platformC, authorizer, tokens[i], from, to)
	}
}

func TestAuthorizersImportJSON(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	_, b, env := platformNATS(t, ctx)
	tokens := []string{"refreshtoken@@@json-one", "refreshtoken@@@json-two", "refreshtoken@@@json-three"}
	// WeChat's names, the short ones, and two platforms: no --component.
	input := `
	[
	  {"component_appid": "` + platformC + `", "authorizer_appid": "` + authA + `", "authorizer_refresh_token": "` + tokens[0] + `",
	   "func_info": [{"funcscope_category": {"id": 1}}]},
	  {"component_appid": "` + platformC + `", "appid": "` + authB + `", "refresh_token": "` + tokens[1] + `"},
	  {"component_appid": "` + platformD + `", "authorizer_appid": "` + authA + `", "refresh_token": "` + tokens[2] + `"}
	]`
	from := time.Now()
	out, errOut, code := runWxtokenInput(t, env, input, "authorizers", "import", "-")
	to := time.Now()
	if code != 0 || out != "3 imported, 0 kept (already held), 0 replaced\n" || errOut != "" {
		t.Fatalf("exit %d, stderr %q:\n%s", code, errOut, out)
	}
	noSecrets(t, tokens, out, errOut)
	wantImported(t, ctx, b, platformC, authA, tokens[0], from, to)
	wantImported(t, ctx, b, platformC, authB, tokens[1], from, to)
	wantImported(t, ctx, b, platformD, authA, tokens[2], from, to)

	// --component stands for the entries that name none.
	input = `[{"appid": "` + authE + `", "refresh_token": "refreshtoken@@@json-four"}]`
	if out, errOut, code := runWxtokenInput(t, env, input, "authorizers", "import", "--component", platformD, "-"); code != 0 || out != "1 imported, 0 kept (already held), 0 replaced\n" {
		t.Fatalf("with --component: exit %d, stderr %q:\n%s", code, errOut, out)
	}
	wantImported(t, ctx, b, platformD, authE, "refreshtoken@@@json-four", from, time.Now())
}

func TestAuthorizersImportRefusesBadFilesAndWritesNothing(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	js, _, env := platformNATS(t, ctx)
	before := lastSequence(t, ctx, js)
	long := "refreshtoken@@@" + strings.Repeat("L", kv.MaxTokenLength)
	secrets := []string{"refreshtoken@@@good-one", "refreshtoken@@@good-two", "refreshtoken@@@dup", "refreshtoken@@@swapped", long, "refreshtoken@@@other"}
	good := authA + " refreshtoken@@@good-one\n" + authB + " refreshtoken@@@good-two\n"
	for _, tc := range []struct {
		name  string
		input string
		flags []string
		code  int
		inErr string // in the last line of stderr
	}{
		{"a duplicate line", good + "\n" + authA + " refreshtoken@@@dup\n", nil, 1,
			"line 4: " + authA + " of platform " + platformC + " again (first on line 1); nothing was written"},
		{"a line of three fields", good + authE + " refreshtoken@@@other extra\n", nil, 1, "line 3: want AUTHORIZER_APPID REFRESH_TOKEN, found 3 fields"},
		{"a line of one field", good + "refreshtoken@@@other\n", nil, 1, "line 3: want AUTHORIZER_APPID REFRESH_TOKEN, found 1 field"},
		{"columns swapped", "refreshtoken@@@swapped " + authA + "\n", nil, 1, "line 1: the authorizer appid is not an appid"},
		{"a WeCom key for an appid", "ww00000000000000c1-1000002 refreshtoken@@@other\n", nil, 1, "line 1: the authorizer appid is not an appid"},
		{"a token too long", good + authE + " " + long + "\n", nil, 1, "line 3: the refresh token of " + authE + " is not 1 to 2048 printable characters"},
		{"a bad --component in the file", `[{"component_appid": "wx-bad", "appid": "` + authA + `", "refresh_token": "refreshtoken@@@other"}]`, nil, 1, "entry 1: component_appid is not an appid"},
		{"a duplicate entry", `[{"appid": "` + authA + `", "refresh_token": "refreshtoken@@@good-one"},
		  {"authorizer_appid": "` + authB + `", "refresh_token": "refreshtoken@@@good-two"},
		  {"component_appid": "` + platformC + `", "authorizer_appid": "` + authA + `", "authorizer_refresh_token": "refreshtoken@@@dup"}]`,
			nil, 1, "entry 3: " + authA + " of platform " + platformC + " again (first on entry 1)"},
		{"names that differ", `[{"appid": "` + authA + `", "authorizer_appid": "` + authB + `", "refresh_token": "refreshtoken@@@other"}]`, nil, 1, "entry 1: authorizer_appid and appid differ"},
		{"tokens that differ", `[{"appid": "` + authA + `", "refresh_token": "refreshtoken@@@other", "authorizer_refresh_token": "refreshtoken@@@dup"}]`, nil, 1,
			"entry 1: authorizer_refresh_token and refresh_token differ"},
		{"another platform than --component", `[{"component_appid": "` + platformD + `", "appid": "` + authA + `", "refresh_token": "refreshtoken@@@other"}]`, nil, 1,
			"entry 1: component_appid " + platformD + ", not --component " + platformC},
		{"no token", `[{"appid": "` + authA + `"}]`, nil, 1, "entry 1: " + authA + " has no refresh token"},
		{"a number for a string", `[{"appid": "` + authA + `", "refresh_token": 42}]`, nil, 1, "entry 1: refresh_token is a JSON number, not a string"},
		{"not JSON", "[\n  {\"appid\": \"" + authA + "\", \"refresh_token\": \"refreshtoken@@@other\"\n  {\n]", nil, 1, "line 3: not JSON"},
		{"an object", `{"appid": "` + authA + `", "refresh_token": "refreshtoken@@@other"}`, nil, 1, "a JSON file holds an array of objects"},
		{"an empty file", "# nothing yet\n\n", nil, 1, "no authorizers in it"},
		{"many problems", "refreshtoken@@@swapped " + authA + "\n" + authB + "\n" + authE + " " + long + "\n", nil, 1, "3 problems in "},
		{"lines and no --component", good, []string{}, 2, "--component is required: the lines name no platform"},
		{"an entry and no --component", `[{"component_appid": "` + platformC + `", "appid": "` + authA + `", "refresh_token": "refreshtoken@@@good-one"},
		  {"appid": "` + authB + `", "refresh_token": "refreshtoken@@@good-two"}]`, []string{}, 2, "--component is required: entry 2 has no component_appid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flags := tc.flags
			if flags == nil {
				flags = []string{"--component", platformC}
			}
			args := append(append([]string{"authorizers", "import"}, flags...), importFile(t, tc.input))
			out, errOut, code := runWxtoken(t, env, args...)
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			if code != tc.code || !strings.Contains(lines[len(lines)-1], tc.inErr) || out != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d and %q", code, out, errOut, tc.code, tc.inErr)
			}
			if !strings.HasPrefix(errOut, "wxtoken authorizers: ") && tc.name != "many problems" {
				t.Errorf("stderr %q", errOut)
			}
			noSecrets(t, secrets, out, errOut)
			if seq := lastSequence(t, ctx, js); seq != before {
				t.Fatalf("the bucket was written to (revision %d, was %d)", seq, before)
			}
		})
	}
	t.Run("each of many problems is a line", func(t *testing.T) {
		_, errOut, _ := runWxtoken(t, env, "authorizers", "import", "--component", platformC,
			importFile(t, "refreshtoken@@@swapped "+authA+"\n"+authB+"\n"+authE+" "+long+"\n"))
		for _, want := range []string{
			": line 1: the authorizer appid is not an appid",
			": line 2: want AUTHORIZER_APPID REFRESH_TOKEN, found 1 field",
			": line 3: the refresh token of " + authE + " is not 1 to",
			"wxtoken authorizers: 3 problems in ",
		} {
			if !strings.Contains(errOut, want) {
				t.Errorf("stderr lacks %q:\n%s", want, errOut)
			}
		}
	})
}

// TestAuthorizersImportKeepsOrReplaces: an authorizer that holds a refresh
// token keeps it unless --replace; one awaiting its code exchange, or
// unauthorized, takes the file's; --dry-run says so and writes nothing.
func TestAuthorizersImportKeepsOrReplaces(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	js, b, env := platformNATS(t, ctx)
	long := time.Now().Add(-90 * 24 * time.Hour)
	event := time.Now().Add(-time.Hour).Truncate(time.Second)
	held := kv.Authorizer{ComponentAppID: platformC, AppID: authA, RefreshToken: "refreshtoken@@@held", IssuedAt: long}
	heldRev := putAuthorizer(t, ctx, b, held)
	putAuthorizer(t, ctx, b, kv.Authorizer{ComponentAppID: platformC, AppID: authB, Code: "queryauthcode@@@b",
		CodeExpiresAt: event.Add(time.Hour), EventTime: event})
	putAuthorizer(t, ctx, b, kv.Authorizer{ComponentAppID: platformC, AppID: authE, Unauthorized: true, EventTime: event})
	// Issued later than now: a refresher whose clock is ahead. The newest
	// issued wins, --replace or not.
	putAuthorizer(t, ctx, b, kv.Authorizer{ComponentAppID: platformC, AppID: authG, RefreshToken: "refreshtoken@@@ahead", IssuedAt: time.Now().Add(time.Hour)})
	file := importFile(t, authA+" refreshtoken@@@new-a\n"+authB+" refreshtoken@@@new-b\n"+authE+" refreshtoken@@@new-e\n"+authF+" refreshtoken@@@new-f\n"+
		authG+" refreshtoken@@@new-g\n")
	secrets := []string{"refreshtoken@@@held", "refreshtoken@@@ahead", "refreshtoken@@@new-a", "refreshtoken@@@new-b", "refreshtoken@@@new-e", "refreshtoken@@@new-f",
		"refreshtoken@@@new-g", "queryauthcode@@@b"}
	keptLine := authA + " of platform " + platformC + ": it holds another refresh token, " + fingerprintOf(held.RefreshToken) +
		" (the file's is " + fingerprintOf("refreshtoken@@@new-a") + "; --replace overwrites it)\n"
	aheadLine := authG + " of platform " + platformC + ": it holds another refresh token, " + fingerprintOf("refreshtoken@@@ahead") +
		" (the file's is " + fingerprintOf("refreshtoken@@@new-g") + "; it was issued later than now by this clock)\n"

	before := lastSequence(t, ctx, js)
	out, errOut, code := runWxtoken(t, env, "authorizers", "import", "--component", platformC, "--dry-run", file)
	if code != 0 || out != "would keep "+keptLine+"would keep "+aheadLine+"dry run, nothing written: 3 to import, 2 to keep (already held), 0 to replace\n" {
		t.Errorf("--dry-run: exit %d, stderr %q:\n%s", code, errOut, out)
	}
	if seq := lastSequence(t, ctx, js); seq != before {
		t.Fatalf("--dry-run wrote: revision %d, was %d", seq, before)
	}

	from := time.Now()
	out, errOut, code = runWxtoken(t, env, "authorizers", "import", "--component", platformC, file)
	to := time.Now()
	if code != 0 || out != "kept "+keptLine+"kept "+aheadLine+"3 imported, 2 kept (already held), 0 replaced\n" {
		t.Errorf("exit %d, stderr %q:\n%s", code, errOut, out)
	}
	noSecrets(t, secrets, out, errOut)
	if a, rev := authorizerIn(t, ctx, b, platformC, authA); rev != heldRev || a.RefreshToken != held.RefreshToken {
		t.Errorf("the token held was not kept: revision %d, was %d", rev, heldRev)
	}
	if got := wantImported(t, ctx, b, platformC, authB, "refreshtoken@@@new-b", from, to); got.Code != "queryauthcode@@@b" || !got.EventTime.Equal(event) {
		t.Errorf("the code awaiting its exchange, or its event time, was lost: code kept %v, event time %s", got.Code != "", got.EventTime)
	}
	if got := wantImported(t, ctx, b, platformC, authE, "refreshtoken@@@new-e", from, to); !got.EventTime.IsZero() || got.Code != "" {
		t.Errorf("the unauthorized record's event time was kept: %s", got.EventTime)
	}
	wantImported(t, ctx, b, platformC, authF, "refreshtoken@@@new-f", from, to)

	// Again with --replace: the token held is replaced, the one issued
	// later is kept, the three others hold the file's tokens already.
	before = lastSequence(t, ctx, js)
	out, errOut, code = runWxtoken(t, env, "authorizers", "import", "--component", platformC, "--replace", "--dry-run", file)
	if code != 0 || out != "would keep "+aheadLine+"dry run, nothing written: 0 to import, 4 to keep (already held), 1 to replace\n" || lastSequence(t, ctx, js) != before {
		t.Errorf("--replace --dry-run: exit %d, stderr %q:\n%s", code, errOut, out)
	}
	from = time.Now()
	out, errOut, code = runWxtoken(t, env, "authorizers", "import", "--component", platformC, "--replace", file)
	if code != 0 || out != "kept "+aheadLine+"0 imported, 4 kept (already held), 1 replaced\n" {
		t.Errorf("--replace: exit %d, stderr %q:\n%s", code, errOut, out)
	}
	noSecrets(t, secrets, out, errOut)
	wantImported(t, ctx, b, platformC, authA, "refreshtoken@@@new-a", from, time.Now())
	if a, _ := authorizerIn(t, ctx, b, platformC, authG); a.RefreshToken != "refreshtoken@@@ahead" {
		t.Error("--replace replaced a token issued later")
	}
	if seq := lastSequence(t, ctx, js); seq != before+1 {
		t.Errorf("--replace wrote %d records, want 1", seq-before)
	}
}

func TestAuthorizersList(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	js, b, env := platformNATS(t, ctx)
	now := time.Now()
	secrets := []string{"refreshtoken@@@list-a", "refreshtoken@@@list-f", "queryauthcode@@@list-b", "componentverifyticket@@@c", "accesstoken@@@list-a"}
	ticket, err := kv.EncodeVerifyTicket(kv.VerifyTicket{ComponentAppID: platformC, Ticket: "componentverifyticket@@@c",
		CreateTime: now.Add(-5 * time.Minute), ReceivedAt: now.Add(-5 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, kv.VerifyTicketKey(platformC), ticket); err != nil {
		t.Fatal(err)
	}
	putAuthorizer(t, ctx, b, kv.Authorizer{ComponentAppID: platformC, AppID: authA, RefreshToken: "refreshtoken@@@list-a", IssuedAt: now.Add(-time.Hour)})
	putAuthorizer(t, ctx, b, kv.Authorizer{ComponentAppID: platformC, AppID: authB, Code: "queryauthcode@@@list-b", CodeExpiresAt: now.Add(time.Hour), EventTime: now})
	putAuthorizer(t, ctx, b, kv.Authorizer{ComponentAppID: platformC, AppID: authE, Unauthorized: true, EventTime: now})
	putAuthorizer(t, ctx, b, kv.Authorizer{ComponentAppID: platformD, AppID: authF, RefreshToken: "refreshtoken@@@list-f", IssuedAt: now})
	if _, err := b.Put(ctx, kv.AuthorizerKey(platformD, authB), []byte(`{"garbage":true}`)); err != nil {
		t.Fatal(err)
	}
	// authA's access_token, in the token bucket under its appid.
	tokens, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket})
	if err != nil {
		t.Fatal(err)
	}
	access, _ := kv.EncodeCredential(kv.NewCredential(authA, "accesstoken@@@list-a", 2*time.Hour, now))
	if _, err := tokens.Put(ctx, authA, access); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := runWxtoken(t, env, "authorizers", "list")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q:\n%s", code, errOut, out)
	}
	noSecrets(t, secrets, out, errOut)
	for _, row := range []string{
		`(?m)^PLATFORM\s+AUTHORIZERS\s+VERIFY TICKET$`,
		`(?m)^` + platformC + `\s+3\s+received 5m\d+s ago$`,
		`(?m)^` + platformD + `\s+2\s+none: waiting for WeChat's first push since ` + regexp.QuoteMeta(servedSince.UTC().Format(time.RFC3339)) + `, 1h0m\d+s ago$`,
		`(?m)^COMPONENT\s+AUTHORIZER\s+STATE\s+REFRESH TOKEN\s+ISSUED\s+ACCESS TOKEN$`,
		`(?m)^` + platformC + `\s+` + authA + `\s+active\s+` + fingerprintOf("refreshtoken@@@list-a") + `\s+1h0m\d+s ago\s+expires in (1h59m\d+s|2h0m0s)$`,
		`(?m)^` + platformC + `\s+` + authB + `\s+awaiting code exchange\s+-\s+-\s+-$`,
		`(?m)^` + platformC + `\s+` + authE + `\s+unauthorized\s+-\s+-\s+-$`,
		`(?m)^` + platformD + `\s+` + authB + `\s+invalid record: .*\s+-\s+-\s+-$`,
		`(?m)^` + platformD + `\s+` + authF + `\s+active\s+` + fingerprintOf("refreshtoken@@@list-f") + `\s+\d+s ago\s+-$`,
	} {
		if !regexp.MustCompile(row).MatchString(out) {
			t.Errorf("no row %s in:\n%s", row, out)
		}
	}

	t.Run("status", func(t *testing.T) {
		out, errOut, code := runWxtoken(t, env, "status", "--platforms")
		if code != 0 || errOut != "" {
			t.Fatalf("exit %d, stderr %q:\n%s", code, errOut, out)
		}
		noSecrets(t, secrets, out, errOut)
		for _, row := range []string{
			`(?m)^` + authA + `\s+access_token\s`,
			`(?m)^` + platformC + `\s+3\s+received 5m\d+s ago$`,
			`(?m)^` + platformD + `\s+2\s+none: waiting for WeChat's first push since ` + regexp.QuoteMeta(servedSince.UTC().Format(time.RFC3339)) + `, 1h0m\d+s ago$`,
		} {
			if !regexp.MustCompile(row).MatchString(out) {
				t.Errorf("no row %s in:\n%s", row, out)
			}
		}
		if out, _, _ := runWxtoken(t, env, "status"); strings.Contains(out, "PLATFORM") {
			t.Errorf("status without --platforms shows them:\n%s", out)
		}
	})

	t.Run("json", func(t *testing.T) {
		out, errOut, code := runWxtoken(t, env, "authorizers", "list", "--json")
		var list struct {
			Bucket      string `json:"bucket"`
			TokenBucket string `json:"token_bucket"`
			Platforms   []struct {
				ComponentAppID   string    `json:"component_appid"`
				Authorizers      int       `json:"authorizers"`
				ConfiguredAt     time.Time `json:"configured_at"`
				TicketCreateTime time.Time `json:"verify_ticket_create_time"`
				TicketReceivedAt time.Time `json:"verify_ticket_received_at"`
			} `json:"platforms"`
			Authorizers []struct {
				ComponentAppID       string    `json:"component_appid"`
				AppID                string    `json:"authorizer_appid"`
				State                string    `json:"state"`
				Fingerprint          string    `json:"refresh_token_fingerprint"`
				IssuedAt             time.Time `json:"issued_at"`
				CodeExpiresAt        time.Time `json:"code_expires_at"`
				Revision             uint64    `json:"revision"`
				AccessTokenExpiresAt time.Time `json:"access_token_expires_at"`
				Error                string    `json:"error"`
			} `json:"authorizers"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil || code != 0 {
			t.Fatalf("exit %d, %v, stderr %q:\n%s", code, err, errOut, out)
		}
		noSecrets(t, secrets, out, errOut)
		if list.Bucket != kv.DefaultPlatformBucket || list.TokenBucket != kv.DefaultBucket || len(list.Platforms) != 2 ||
			list.Platforms[0].ComponentAppID != platformC || list.Platforms[0].Authorizers != 3 || list.Platforms[0].TicketReceivedAt.IsZero() ||
			list.Platforms[1].ComponentAppID != platformD || !list.Platforms[1].TicketReceivedAt.IsZero() || !list.Platforms[1].ConfiguredAt.Equal(servedSince) {
			t.Errorf("platforms %+v", list.Platforms)
		}
		var states []string
		for _, a := range list.Authorizers {
			states = append(states, a.ComponentAppID+"/"+a.AppID+" "+a.State)
		}
		want := []string{platformC + "/" + authA + " active", platformC + "/" + authB + " awaiting code exchange", platformC + "/" + authE + " unauthorized",
			platformD + "/" + authB + " invalid record", platformD + "/" + authF + " active"}
		if strings.Join(states, ", ") != strings.Join(want, ", ") {
			t.Fatalf("authorizers %v, want %v", states, want)
		}
		a := list.Authorizers[0]
		if a.Fingerprint != fingerprintOf("refreshtoken@@@list-a") || a.IssuedAt.IsZero() || a.Revision == 0 ||
			a.AccessTokenExpiresAt.Before(now.Add(time.Hour)) {
			t.Errorf("active authorizer %+v", a)
		}
		if awaiting := list.Authorizers[1]; awaiting.Fingerprint != "" || awaiting.CodeExpiresAt.IsZero() {
			t.Errorf("awaiting authorizer %+v", awaiting)
		}
		if list.Authorizers[3].Error == "" || !list.Authorizers[4].AccessTokenExpiresAt.IsZero() {
			t.Errorf("authorizers %+v", list.Authorizers)
		}
	})
	t.Run("one platform", func(t *testing.T) {
		out, errOut, code := runWxtoken(t, env, "authorizers", "list", "--component", platformD)
		if code != 0 || strings.Contains(out, platformC) || !strings.Contains(out, authF) || !strings.Contains(out, "waiting for WeChat's first push since") {
			t.Errorf("exit %d, stderr %q:\n%s", code, errOut, out)
		}
		out, _, code = runWxtoken(t, env, "authorizers", "list", "--component", "wx0000000000000new")
		if code != 0 || !regexp.MustCompile(`(?m)^wx0000000000000new\s+0\s+none: no refresher serves this platform$`).MatchString(out) {
			t.Errorf("a platform with nothing yet: exit %d:\n%s", code, out)
		}
	})
	t.Run("without the token bucket", func(t *testing.T) {
		out, errOut, code := runWxtoken(t, env, "authorizers", "list", "--bucket", "no_such_bucket")
		if code != 0 || !regexp.MustCompile(`(?m)^`+platformC+`\s+`+authA+`\s+active\s+\S+\s+1h0m\d+s ago\s+-$`).MatchString(out) {
			t.Errorf("exit %d, stderr %q:\n%s", code, errOut, out)
		}
	})
}

// TestAuthorizersImportRefusesAPlatformNobodyServes: authorizers imported
// for a platform no refresher serves would be kept by nobody; the import
// says so, names the platforms served, and writes nothing, unless --force.
func TestAuthorizersImportRefusesAPlatformNobodyServes(t *testing.T) {
	const platformX = "wx000000000000000x"
	ctx := testenv.Context(t, 30*time.Second)
	js, b, env := platformNATS(t, ctx)
	lines := importFile(t, authA+" refreshtoken@@@served-or-not\n")
	before := lastSequence(t, ctx, js)
	for _, tc := range []struct {
		name  string
		args  []string
		input string
		inErr string
	}{
		{"lines", []string{"--component", platformX, lines}, "",
			"platform " + platformX + " is not served by the refresher (it serves " + platformC + ", " + platformD + "): add it to the apps file under platforms:"},
		{"a dry run", []string{"--component", platformX, "--dry-run", lines}, "", "platform " + platformX + " is not served by the refresher"},
		{"entries of a platform served and two not", []string{"-"},
			`[{"component_appid": "` + platformC + `", "appid": "` + authA + `", "refresh_token": "refreshtoken@@@served-or-not"},
			  {"component_appid": "` + platformX + `", "appid": "` + authA + `", "refresh_token": "refreshtoken@@@served-or-not"},
			  {"component_appid": "wx000000000000000y", "appid": "` + authA + `", "refresh_token": "refreshtoken@@@served-or-not"}]`,
			"platforms " + platformX + ", wx000000000000000y are not served by the refresher (it serves "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runWxtokenInput(t, env, tc.input, append([]string{"authorizers", "import"}, tc.args...)...)
			if code != 1 || out != "" || !strings.Contains(errOut, tc.inErr) || !strings.Contains(errOut, "or give --force to import anyway; nothing was written") ||
				strings.Count(errOut, "\n") != 1 {
				t.Errorf("exit %d, stdout %q, stderr %q; want 1 and %q", code, out, errOut, tc.inErr)
			}
			noSecrets(t, []string{"refreshtoken@@@served-or-not"}, out, errOut)
			if seq := lastSequence(t, ctx, js); seq != before {
				t.Errorf("the bucket was written to (revision %d, was %d)", seq, before)
			}
		})
	}
	if out, errOut, code := runWxtoken(t, env, "authorizers", "import", "--component", platformX, "--force", lines); code != 0 || out != "1 imported, 0 kept (already held), 0 replaced\n" {
		t.Errorf("--force: exit %d, stderr %q:\n%s", code, errOut, out)
	}
	wantImported(t, ctx, b, platformX, authA, "refreshtoken@@@served-or-not", time.Now().Add(-time.Minute), time.Now())

	_, _, env = emptyPlatformNATS(t, ctx)
	if _, errOut, code := runWxtoken(t, env, "authorizers", "import", "--component", platformC, lines); code != 1 ||
		!strings.Contains(errOut, "platform "+platformC+" is not served by the refresher (it serves none yet)") {
		t.Errorf("no platform served: exit %d, stderr %q", code, errOut)
	}
}

func TestAuthorizersWithoutTheBucket(t *testing.T) {
	env := []string{"NATS_URL=" + testenv.NATS(t).ClientURL()}
	file := importFile(t, authA+" refreshtoken@@@nowhere\n")
	for _, args := range [][]string{
		{"authorizers", "import", "--component", platformC, file},
		{"authorizers", "import", "--component", platformC, "--dry-run", file},
		{"authorizers", "list"},
	} {
		out, errOut, code := runWxtoken(t, env, args...)
		if code != 1 || out != "" || !strings.Contains(errOut, `no platform bucket "wechat_platform"`) ||
			!strings.Contains(errOut, "`wxtoken serve` creates it when its apps file has the platform") || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
		noSecrets(t, []string{"refreshtoken@@@nowhere"}, out, errOut)
	}
}

// TestStatusPlatformsWithoutTheBucket: a NATS where no refresher with a
// platform has run has no platform bucket; `status --platforms` says so
// beside the tokens, and exits 0: it is not an error.
func TestStatusPlatformsWithoutTheBucket(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	js, err := jetstream.New(testenv.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket})
	if err != nil {
		t.Fatal(err)
	}
	access, _ := kv.EncodeCredential(kv.NewCredential(authA, "accesstoken@@@status", 2*time.Hour, time.Now()))
	if _, err := tokens.Put(ctx, authA, access); err != nil {
		t.Fatal(err)
	}
	env := []string{"NATS_URL=" + srv.ClientURL()}
	const note = `no platform bucket "wechat_platform" at this NATS: ` + "`wxtoken serve` creates it when its apps file has the platform"
	out, errOut, code := runWxtoken(t, env, "status", "--platforms")
	if code != 0 || errOut != "" || !regexp.MustCompile(`(?m)^`+authA+`\s+access_token\s`).MatchString(out) ||
		!strings.Contains(out, "\nplatforms: none: "+note) {
		t.Errorf("exit %d, stderr %q:\n%s", code, errOut, out)
	}
	out, errOut, code = runWxtoken(t, env, "status", "--platforms", "--json")
	var status struct {
		Tokens    []json.RawMessage `json:"tokens"`
		Platforms []json.RawMessage `json:"platforms"`
		Note      string            `json:"platforms_note"`
	}
	if err := json.Unmarshal([]byte(out), &status); code != 0 || err != nil || len(status.Tokens) != 1 || status.Platforms == nil ||
		len(status.Platforms) != 0 || !strings.HasPrefix(status.Note, note) {
		t.Errorf("--json: exit %d, %v, stderr %q:\n%s", code, err, errOut, out)
	}
}

// TestAuthorizersImportFailureExits: a write the server refuses (here, a
// bucket whose values must be tiny) fails the import, after the summary
// of what was written.
func TestAuthorizersImportFailureExits(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	js, err := jetstream.New(testenv.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultPlatformBucket, History: 16, MaxValueSize: 16}); err != nil {
		t.Fatal(err)
	}
	// --force: a platform's record does not fit in the bucket either.
	out, errOut, code := runWxtoken(t, []string{"NATS_URL=" + srv.ClientURL()}, "authorizers", "import", "--component", platformC, "--force",
		importFile(t, authA+" refreshtoken@@@refused\n"))
	if code != 1 || out != "0 imported, 0 kept (already held), 0 replaced\n" ||
		!strings.HasPrefix(errOut, "wxtoken authorizers: line 1, "+authA+" of platform "+platformC+": ") || strings.Count(errOut, "\n") != 1 {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	noSecrets(t, []string{"refreshtoken@@@refused"}, out, errOut)
}

func TestAuthorizersCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		code  int
		inErr string
	}{
		{[]string{"authorizers"}, 2, "need a subcommand, import or list"},
		{[]string{"authorizers", "frob"}, 2, `unknown subcommand "frob"`},
		{[]string{"authorizers", "import"}, 2, "need one FILE"},
		{[]string{"authorizers", "import", "a", "b"}, 2, "need one FILE"},
		{[]string{"authorizers", "import", "--component", "ww00000000000000c1-1000002", "f"}, 2, "is not a component appid"},
		{[]string{"authorizers", "import", "--platform-bucket", "a.b", "f"}, 2, "--platform-bucket"},
		{[]string{"authorizers", "import", "--no-such-flag", "f"}, 2, "see wxtoken authorizers import --help"},
		{[]string{"authorizers", "import", "--component", platformC, "/no/such/file"}, 1, "no such file"},
		{[]string{"authorizers", "list", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"authorizers", "list", "--replace"}, 2, "not defined: -replace"},
	} {
		_, errOut, code := runWxtoken(t, nil, tc.args...)
		if code != tc.code || !strings.HasPrefix(errOut, "wxtoken authorizers: ") || !strings.Contains(errOut, tc.inErr) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errOut, tc.code, tc.inErr)
		}
	}
	for _, help := range [][]string{{"authorizers", "--help"}, {"authorizers", "help"}} {
		out, _, code := runWxtoken(t, nil, help...)
		if code != 0 || !strings.Contains(out, "wxtoken authorizers import [flags] FILE") || !strings.Contains(out, "wxtoken authorizers list [flags]") {
			t.Errorf("%v: exit %d:\n%s", help, code, out)
		}
	}
	for sub, flags := range map[string][]string{
		"import": {"--component", "--platform-bucket", "--replace", "--dry-run", "--force", "--nats-url", "--nats-user"},
		"list":   {"--component", "--platform-bucket", "--bucket", "--json", "--nats-url"},
	} {
		out, _, code := runWxtoken(t, nil, "authorizers", sub, "--help")
		if code != 0 || !strings.Contains(out, "Usage: wxtoken authorizers "+sub) || !strings.Contains(out, "Examples:") {
			t.Errorf("authorizers %s --help: exit %d:\n%s", sub, code, out)
		}
		for _, flag := range flags {
			if !strings.Contains(out, "  "+flag+" ") && !strings.Contains(out, "  "+flag+"\n") {
				t.Errorf("authorizers %s --help lacks %s:\n%s", sub, flag, out)
			}
		}
	}
	if out, _, _ := runWxtoken(t, nil, "--help"); !strings.Contains(out, "wxtoken authorizers import|list") {
		t.Errorf("wxtoken --help lacks authorizers:\n%s", out)
	}
}
