package publisher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/wxtoken/wxtoken/internal/secretset"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// A secret set at run time (`wxtoken secret set`, issue 23): the command
// has the leader check a new secret, then asks every replica to take it.
// A replica takes it only after probing it itself (source/probe.go: a call
// that changes nothing at WeChat), uses it at once (a credential paused
// for the old secret's refusal goes again now), and writes it where the
// old one came from if that is a file. A secret from the environment or
// from the apps file itself is held in memory only, and a reload that
// reads the old one again keeps the one set (see verifySecrets).

// secretSource is where an app's secret was read.
type secretSource struct {
	file   string // secret_file, WECHAT_APPSECRET_FILE
	env    string // secret_env, WECHAT_APPSECRET
	inline bool   // secret: in the apps file
}

// held is a secret set at run time that its source does not have: was is
// what the source still gives, now what is used.
type held struct{ was, now string }

// secretKeeper checks and takes the secrets sent to this replica, and
// verifies a secret changed by a reload before it is used.
type secretKeeper struct {
	r *Refresher
	// mu makes a take and a reload one at a time, probes included: a
	// reload must not put back a secret a take replaced meanwhile.
	mu   sync.Mutex
	held map[string]held // by app key, under mu
}

// serveSecrets answers `wxtoken secret set` until the returned func is
// called.
func (r *Refresher) serveSecrets() (func(), error) {
	// A take probes (one call to WeChat) and writes a file.
	s, err := secretset.Serve(r.nc, r.cfg.SubjectPrefix, r.cfg.Instance, r.Leading, r.keeper, 2*r.cfg.UpstreamTimeout)
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	return func() { _ = s.Close() }, nil
}

// Check probes secret for the app key from this replica; nothing changes.
func (k *secretKeeper) Check(ctx context.Context, key string, secret []byte) secretset.Answer {
	app, ok := k.r.apps.app(key)
	if !ok {
		return unknownApp(key)
	}
	if a, ok := k.probe(ctx, app, NewSecret(string(secret))); !ok {
		return a
	}
	return secretset.Answer{Outcome: secretset.Checked, Message: "WeChat accepts it from " + k.r.cfg.Instance}
}

// Take probes secret for the app key from this replica and, if WeChat
// accepts it, uses it and persists it where it can.
func (k *secretKeeper) Take(ctx context.Context, key string, secret []byte) secretset.Answer {
	k.mu.Lock()
	defer k.mu.Unlock()
	app, ok := k.r.apps.app(key)
	if !ok {
		return unknownApp(key)
	}
	s := NewSecret(string(secret))
	if a, ok := k.probe(ctx, app, s); !ok {
		return a
	}
	if err := k.r.apps.setSecret(key, s); err != nil {
		return secretset.Answer{Outcome: secretset.Refused, Message: err.Error()}
	}
	k.r.probes.passed(key) // the probe above is the verdict on the secret in use
	k.r.log.Info("secret set: the new secret is in use", "appid", key)
	return k.persist(app, s)
}

// persist writes secret where app's secret was read, or says that it is
// held in memory only and what to update before the next restart.
func (k *secretKeeper) persist(app App, secret Secret) secretset.Answer {
	from, key := app.secretFrom, app.Key()
	var fix string
	switch {
	case from.file != "":
		err := writeSecretFile(from.file, secret.Reveal())
		if err == nil {
			delete(k.held, key)
			return secretset.Answer{Outcome: secretset.Taken, Message: "written to " + from.file}
		}
		fix = fmt.Sprintf("cannot write %s (%v): write the new secret there", from.file, err)
	case from.env != "":
		fix = "update " + from.env
	case from.inline:
		fix = "update its secret in the apps file"
	default:
		fix = "update the secret in the configuration that gave it"
	}
	h, had := k.held[key]
	if !had {
		h.was = app.Secret.Reveal()
	}
	h.now = secret.Reveal()
	k.held[key] = h
	msg := "held in memory only: " + fix + " before the next restart"
	k.r.log.Warn("secret set: "+msg, "appid", key)
	return secretset.Answer{Outcome: secretset.Held, Message: msg}
}

// probe asks WeChat about secret for app from this replica; ok is false,
// with the answer to give, when WeChat did not accept it.
func (k *secretKeeper) probe(ctx context.Context, app App, secret Secret) (secretset.Answer, bool) {
	err := k.r.apps.probe(ctx, app, secret)
	if err == nil {
		return secretset.Answer{}, true
	}
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.ErrCode != 0 {
		return secretset.Answer{Outcome: secretset.Refused, ErrCode: ue.ErrCode,
			Message: fmt.Sprintf("WeChat answered errcode %d (%s): %s", ue.ErrCode, ue.Meaning(), ue.ErrMsg)}, false
	}
	return secretset.Answer{Outcome: secretset.Refused,
		Message: "could not check it with WeChat from here (no verdict, so nothing changed): " + k.r.apps.secrets.scrubber().Scrub(err.Error())}, false
}

func unknownApp(key string) secretset.Answer {
	return secretset.Answer{Outcome: secretset.Unknown, Message: "no app " + key + " among this replica's apps"}
}

// verifySecrets returns apps, the apps a reload read, with each secret
// that changed from the running one probed before it is used: one WeChat
// refuses (wrong, or frozen: refusesSecret) is not used, the running one
// is kept and an ERROR says so; one WeChat gave no verdict on (no answer,
// busy, this replica's address not whitelisted) is used, with a WARN. The
// file is what the operator wrote, and what a restart would read anyway:
// refusing it for want of an answer would leave the replica running on
// another secret than its configuration's for no reason. A secret set at
// run time and held in memory is kept while the source still gives the
// one it replaced. passed are the apps whose new secret WeChat accepted:
// once it is in use, that is the app's verdict (probes.passed).
func (k *secretKeeper) verifySecrets(apps []App) (verified []App, passed []string) {
	apps = slices.Clone(apps)
	for i, app := range apps {
		running, ok := k.r.apps.app(app.Key())
		if !ok || running.Secret.Reveal() == app.Secret.Reveal() {
			continue
		}
		key, given := app.Key(), app.Secret.Reveal()
		if h, ok := k.held[key]; ok {
			if given == h.was {
				apps[i].Secret = running.Secret
				k.r.log.Warn("reload: the secret set with `wxtoken secret set` is kept, held in memory only: its source still gives the one before; update it before the next restart", "appid", key)
				continue
			}
			delete(k.held, key) // the source has a newer secret: it is the one to verify
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*k.r.cfg.UpstreamTimeout)
		err := k.r.apps.probe(ctx, app, app.Secret)
		cancel()
		switch {
		case err == nil:
			passed = append(passed, key)
		case refusesSecret(err):
			apps[i].Secret = running.Secret
			var ue *upstream.Error
			errors.As(err, &ue)
			msg := "reload: WeChat refuses the new secret (" + ue.Meaning() + "); the running secret is kept"
			if fix := upstream.SecretFix(err, key); fix != "" {
				msg += ": " + fix
			}
			k.r.log.Error(msg, "appid", key, "errcode", ue.ErrCode, "errmsg", ue.ErrMsg)
		default:
			k.r.log.Warn("reload: the new secret could not be checked with WeChat from here; it is used as written", "appid", key,
				"error", k.r.apps.secrets.scrubber().Scrub(err.Error()))
		}
	}
	return apps, passed
}

// refusesSecret reports whether WeChat's answer says the secret (or the
// appid it goes with) is no good, as opposed to saying nothing about it.
func refusesSecret(err error) bool {
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		return false
	}
	switch ue.ErrCode {
	case 40001, 40013, 40125, 40243, 41004, 61011:
		return true
	}
	return false
}

// writeSecretFile replaces the file at path with secret, atomically (a
// reader sees the old secret or the new, never a part) and readable by
// its owner alone.
func writeSecretFile(path, secret string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.WriteString(secret + "\n")
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
