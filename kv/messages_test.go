package kv_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

func TestDecodeRefreshRequest(t *testing.T) {
	rev := func(n uint64) *uint64 { return &n }
	valid := []struct {
		body string
		want kv.RefreshRequest
	}{
		{``, kv.RefreshRequest{}},
		{`  `, kv.RefreshRequest{}},
		{`{}`, kv.RefreshRequest{}},
		{`{"stale_revision":null}`, kv.RefreshRequest{}},
		{`{"stale_revision":0}`, kv.RefreshRequest{StaleRevision: rev(0)}},
		{`{"stale_revision":42,"reason":"40001"}`, kv.RefreshRequest{StaleRevision: rev(42), Reason: "40001"}},
		{`{"stale_revision":18446744073709551615}`, kv.RefreshRequest{StaleRevision: rev(1<<64 - 1)}},
		{`{"stale_revision":7,"future_field":[1]}`, kv.RefreshRequest{StaleRevision: rev(7)}},
	}
	for _, tc := range valid {
		got, err := kv.DecodeRefreshRequest([]byte(tc.body))
		if err != nil {
			t.Errorf("%q: %v", tc.body, err)
			continue
		}
		if (got.StaleRevision == nil) != (tc.want.StaleRevision == nil) ||
			(got.StaleRevision != nil && *got.StaleRevision != *tc.want.StaleRevision) || got.Reason != tc.want.Reason {
			t.Errorf("%q: got %+v, want %+v", tc.body, got, tc.want)
		}
	}
	for _, bad := range []string{
		`{`, `[]`, `"x"`, `42`, `{"stale_revision":-1}`, `{"stale_revision":1.5}`, `{"stale_revision":1e3}`,
		`{"stale_revision":"42"}`, `{"stale_revision":true}`, `{"stale_revision":18446744073709551616}`,
		`{"reason":5}`, `{"stale_revision":1}x`, strings.Repeat(" ", kv.MaxRefreshRequestSize+1),
	} {
		if _, err := kv.DecodeRefreshRequest([]byte(bad)); !errors.Is(err, kv.ErrBadRequest) {
			t.Errorf("%.40q: %v, want ErrBadRequest", bad, err)
		}
	}
}

func TestRefreshReplyWireFormat(t *testing.T) {
	at := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		reply kv.RefreshReply
		want  string
	}{
		{kv.RefreshReply{AppID: "wx1", Revision: 43, ExpiresAt: at, Refreshed: true},
			`{"appid":"wx1","revision":43,"expires_at":"2026-11-21T12:00:00Z","refreshed":true}`},
		{kv.RefreshReply{AppID: "wx1", Revision: 43, ExpiresAt: at},
			`{"appid":"wx1","revision":43,"expires_at":"2026-11-21T12:00:00Z","refreshed":false}`},
		{kv.RefreshReply{Error: &kv.ReplyError{Code: kv.CodeUnknownApp, Message: "no"}},
			`{"error":{"code":"unknown_app","message":"no"}}`},
		{kv.RefreshReply{AppID: "wx1", Revision: 43, ExpiresAt: at, Error: &kv.ReplyError{Code: kv.CodeRateLimited, Message: "wait"}},
			`{"appid":"wx1","revision":43,"expires_at":"2026-11-21T12:00:00Z","error":{"code":"rate_limited","message":"wait"}}`},
		{kv.RefreshReply{AppID: "wx1", Revision: 43, ExpiresAt: at, Error: &kv.ReplyError{Code: kv.CodeRateLimited, Message: "wait", RetryAfter: 27}},
			`{"appid":"wx1","revision":43,"expires_at":"2026-11-21T12:00:00Z","error":{"code":"rate_limited","message":"wait","retry_after":27}}`},
	} {
		data, err := json.Marshal(tc.reply)
		if err != nil {
			t.Fatal(err)
		}
		if string(data) != tc.want {
			t.Errorf("got  %s\nwant %s", data, tc.want)
		}
		var back kv.RefreshReply
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatal(err)
		}
		if back.Revision != tc.reply.Revision || back.Refreshed != tc.reply.Refreshed || !back.ExpiresAt.Equal(tc.reply.ExpiresAt) ||
			(back.Error == nil) != (tc.reply.Error == nil) || (back.Error != nil && *back.Error != *tc.reply.Error) {
			t.Errorf("round trip of %s gave %+v", data, back)
		}
	}
}

func TestSubjects(t *testing.T) {
	var def kv.Subjects
	if got := def.Refresh("wx1"); got != "wechat.token.refresh.wx1" {
		t.Errorf("Refresh = %q", got)
	}
	custom := kv.Subjects{Prefix: "acme.wx"}
	if got := custom.Rotated("*"); got != "acme.wx.rotated.*" {
		t.Errorf("Rotated = %q", got)
	}
	if got := custom.Failed("wx1"); got != "acme.wx.failed.wx1" {
		t.Errorf("Failed = %q", got)
	}
	for _, bad := range []string{"", "a..b", "a.*", "a.>", "a b", ".a", "a."} {
		if kv.ValidateSubjectPrefix(bad) == nil {
			t.Errorf("prefix %q accepted", bad)
		}
	}
}

func TestValueSubject(t *testing.T) {
	if got := (kv.Subjects{}).Value("wx1"); got != "wechat.token.value.wx1" {
		t.Errorf("Value = %q", got)
	}
}

func TestRetryAfterSecondsRoundsUp(t *testing.T) {
	for wait, want := range map[time.Duration]int{
		27 * time.Second: 27, 26*time.Second + time.Millisecond: 27, time.Millisecond: 1, 0: 1, -time.Second: 1,
	} {
		if got := kv.RetryAfterSeconds(wait); got != want {
			t.Errorf("RetryAfterSeconds(%s) = %d, want %d", wait, got, want)
		}
	}
}
