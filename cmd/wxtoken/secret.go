package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/secretset"
	"github.com/wxtoken/wxtoken/kv"
)

const secretOverview = `Usage: wxtoken secret set KEY [flags] < SECRET_FILE

  set   give every replica of the refresher a new secret for an app, without a restart

Run "wxtoken secret set --help" for its flags and how it works.
`

func secretCommand(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("need a subcommand: set (see wxtoken secret --help)")
	}
	switch args[0] {
	case "set":
		return secretSet(args[1:], getenv, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, secretOverview)
		return errHelp
	}
	return usagef("unknown subcommand %q: use set (see wxtoken secret --help)", args[0])
}

const secretSetSummary = `Give every replica of the refresher a new secret for an app, without a
restart: after resetting it in WeChat's console, or to replace a leaked one.
KEY is an appid, a WeCom app's CORPID-AGENT, or a third-party platform's
component appid, as in the apps file.

The secret is read from stdin (a pipe or a redirect) or from --file, never
from the command line, where ps and the shell's history would show it. A
terminal on stdin is refused, so that the secret is not echoed on screen.

What happens:
 1. The replicas are found: each answers with an X25519 public key made at
    its start, for --wait, or until --replicas of them have answered.
 2. The leader checks the secret with WeChat, with a call that changes
    nothing there (stable_token in normal mode; WeCom: gettoken; a
    platform: api_start_push_ticket). If WeChat refuses it, nothing changes
    anywhere, and WeChat's errcode and its meaning are printed.
 3. Every replica, the leader and each standby, checks it again from where
    it stands (its own address, its own whitelist) and takes it: it uses it
    at once (a token refused for the old secret is fetched again now), and
    writes it to the app's secret_file (or WECHAT_APPSECRET_FILE). A secret
    that came from an environment variable or from the apps file itself is
    held in memory only: the line says what to update before the next
    restart. A line is printed per replica.

Each replica's copy is sealed to its key (ECDH, HKDF-SHA256, AES-256-GCM,
bound to the app, the replica and the step): the secret never crosses NATS
in the clear, and only that replica can open its copy. The NATS user must
be allowed to publish on <prefix>.admin.secret.> (nats.conf: the admin).

Exit status: 0 when every replica took the secret; 1 when the leader refused
it (nothing changed), when a replica did not take it, or when fewer than
--replicas answered; 2 for a usage error.`

const secretSetExamples = `  wxtoken secret set wx1234567890abcdef < new-secret.txt
  wxtoken secret set wx1234567890abcdef --file /run/secrets/new_wx_main --replicas 3
  printf %s "$NEW_SECRET" | wxtoken secret set ww1234567890abcdef-1000002`

// Bounds of secret set's NATS calls: a check or a take probes WeChat once
// (serve's --upstream-timeout, 5s by default) and may write a file.
const (
	secretDiscoverWait = 2 * time.Second
	secretAskTimeout   = 30 * time.Second
	maxSecretSize      = 4 << 10
)

func secretSet(args []string, getenv func(string) string, stdout, _ io.Writer) error {
	var n natsFlags
	var file string
	var wait time.Duration
	var replicas int
	c := newCommand("secret set", "KEY", secretSetSummary, secretSetExamples)
	n.register(c, "NATS server URLs (default "+nats.DefaultURL+")", withSubject)
	c.String(&file, "file", "", "", "read the secret from this `file` instead of stdin")
	c.Duration(&wait, "wait", "", secretDiscoverWait, "how long to wait for the replicas to answer")
	c.Int(&replicas, "replicas", "", 0, "the number of replicas: stop waiting once so many answered, and fail if fewer did")
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	switch {
	case len(rest) == 0:
		return usagef("need the KEY whose secret to set: an appid, CORPID-AGENT or a component appid (see wxtoken secret set --help)")
	case len(rest) > 1:
		// Not quoted: it may well be the secret.
		return usagef("only KEY is an argument: the secret is never taken from the command line (ps and the shell's history would show it); pipe it on stdin or give --file")
	}
	key := rest[0]
	if err := kv.ValidateAppID(key); err != nil {
		return usageError{err.Error()}
	}
	if wait <= 0 || replicas < 0 {
		return usagef("--wait must be positive and --replicas at least 0")
	}
	secret, err := readNewSecret(file, os.Stdin)
	if err != nil {
		return err
	}
	nc, err := n.connect("wxtoken secret set")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait+2*secretAskTimeout)
	defer cancel()
	return nc.do(ctx, func(ctx context.Context) error {
		return setSecret(ctx, nc.Conn, n.prefix, key, secret, wait, replicas, stdout)
	})
}

// readNewSecret reads the secret from file, or from stdin when file is "".
// A stdin that is a device is refused: a terminal would show the secret as
// it is typed, and /dev/null (what a service manager or `< /dev/null`
// gives) holds none; either way the secret was meant to come another way.
func readNewSecret(file string, stdin *os.File) ([]byte, error) {
	var data []byte
	var err error
	if file != "" {
		data, err = os.ReadFile(file)
	} else {
		if fi, serr := stdin.Stat(); serr == nil && fi.Mode()&os.ModeCharDevice != 0 {
			return nil, usagef("stdin is a device (a terminal, which would show the secret as it is typed, or /dev/null), not a pipe or a file: " +
				"pipe the secret in (printf %%s \"$SECRET\" | wxtoken secret set KEY), redirect a file (< FILE) or give --file")
		}
		data, err = io.ReadAll(io.LimitReader(stdin, maxSecretSize+1))
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read the secret: %w", err)
	}
	secret := strings.TrimSpace(string(data))
	switch {
	case secret == "":
		return nil, usagef("the secret is empty: give it on stdin or in --file")
	case len(data) > maxSecretSize || strings.ContainsAny(secret, " \t\r\n"):
		return nil, usagef("that is not a secret: one line without spaces is expected")
	}
	return []byte(secret), nil
}

// setSecret finds the replicas, has the leader check secret, then asks
// every replica to take it and prints a line each.
func setSecret(ctx context.Context, nc *nats.Conn, prefix, key string, secret []byte, wait time.Duration, want int, stdout io.Writer) error {
	found, err := secretset.Discover(ctx, nc, prefix, wait, want)
	if err != nil {
		return describeNATSError(err)
	}
	if len(found) == 0 {
		return fmt.Errorf("no replica answered on %s within %s: is `wxtoken serve` running against this NATS, with --subject-prefix %s, and may its user subscribe to %s.admin.secret.> (nats.conf)?",
			secretset.Subjects{Prefix: prefix}.Replicas(), wait, prefix, prefix)
	}
	leader := found[0]
	if !leader.Leading {
		return fmt.Errorf("none of the %d replicas that answered leads (an election under way?): nothing changed; try again in a few seconds", len(found))
	}
	checkCtx, cancel := context.WithTimeout(ctx, secretAskTimeout)
	defer cancel()
	a, err := secretset.Check(checkCtx, nc, prefix, leader, key, secret)
	if err != nil {
		return fmt.Errorf("the leader %s did not answer the check: %w; nothing changed", leader.Instance, describeNATSError(err))
	}
	if a.Outcome != secretset.Checked {
		return fmt.Errorf("the leader %s refused the secret of %s: %s; nothing changed", leader.Instance, key, cmp.Or(a.Message, string(a.Outcome)))
	}
	fmt.Fprintf(stdout, "checked by the leader %s: WeChat accepts the secret of %s\n", leader.Instance, key)

	answers := takeEverywhere(ctx, nc, prefix, key, secret, found)
	took := 0
	for i, r := range found {
		role := ""
		if r.Leading {
			role = " (leader)"
		}
		fmt.Fprintf(stdout, "%s%s: %s\n", r.Instance, role, answers[i])
		if answers[i].took {
			took++
		}
	}
	switch {
	case took < len(found):
		return fmt.Errorf("%d of %d replicas took the secret of %s: see above, and run the command again once that is fixed", took, len(found), key)
	case want > 0 && len(found) < want:
		return fmt.Errorf("only %d of the %d replicas expected (--replicas) answered within %s; those took the secret of %s", len(found), want, wait, key)
	}
	return nil
}

// takeAnswer is one replica's answer to a take, as a line.
type takeAnswer struct {
	took bool
	line string
}

func (t takeAnswer) String() string { return t.line }

// takeEverywhere asks every replica at once to take secret.
func takeEverywhere(ctx context.Context, nc *nats.Conn, prefix, key string, secret []byte, replicas []secretset.Replica) []takeAnswer {
	answers := make([]takeAnswer, len(replicas))
	var wg sync.WaitGroup
	for i, r := range replicas {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, secretAskTimeout)
			defer cancel()
			a, err := secretset.Take(ctx, nc, prefix, r, key, secret)
			if err != nil {
				answers[i] = takeAnswer{line: "no answer: " + describeNATSError(err).Error()}
				return
			}
			answers[i] = takeAnswer{took: a.Took(), line: describeAnswer(a)}
		})
	}
	wg.Wait()
	return answers
}

// describeAnswer says a replica's answer in words.
func describeAnswer(a secretset.Answer) string {
	switch a.Outcome {
	case secretset.Taken, secretset.Held:
		return "taken, " + a.Message
	case secretset.Refused, secretset.Unknown:
		return "refused: " + a.Message
	}
	if a.Message != "" {
		return string(a.Outcome) + ": " + a.Message
	}
	return string(a.Outcome)
}
