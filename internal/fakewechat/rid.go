package fakewechat

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// ridLifetime is how long WeChat keeps a request by its rid: 7 days, then
// rid/get answers 76001.
const ridLifetime = 7 * 24 * time.Hour

// ridKept bounds the request and answer bodies a rid keeps.
const ridKept = 4 << 10

var ridSerial atomic.Uint32

// newRid is a request id in WeChat's form, "61725984-6126f6f9-040f19c4":
// unique within the process, so rid/get finds the one request it names.
func newRid() string {
	return fmt.Sprintf("%08x-%08x-%08x", uint32(time.Now().Unix()), ridSerial.Add(1), rand.Uint32())
}

// ridRecord is what the fake keeps of a request that got an error, by the
// rid in the error's errmsg.
type ridRecord struct {
	appid        string // whose rid it is: only that account may read it
	invoked      time.Time
	costMS       int64
	url, body    string // scrubbed: no secret, token or code
	answer, from string
}

// secretFields are the query and JSON fields a kept request never shows:
// WeChat keeps the request as sent, the fake will not echo a secret.
var secretFields = map[string]bool{
	"secret": true, "appsecret": true, "corpsecret": true, "component_appsecret": true, "component_secret": true,
	"access_token": true, "component_access_token": true, "authorizer_access_token": true,
	"refresh_token": true, "authorizer_refresh_token": true, "js_code": true, "code": true,
	"authorization_code": true, "component_verify_ticket": true, "session_key": true, "ticket": true,
}

const redacted = "REDACTED"

// recording is a request under way: the start, and the first bytes of the
// request and the answer.
type recording struct {
	http.ResponseWriter
	started time.Time
	invoked time.Time
	sent    limitedBuffer
	read    *teeBody
}

func (rec *recording) Write(b []byte) (int, error) {
	rec.sent.write(b)
	return rec.ResponseWriter.Write(b)
}

type limitedBuffer struct{ bytes.Buffer }

func (l *limitedBuffer) write(b []byte) {
	if room := ridKept - l.Len(); room > 0 {
		l.Buffer.Write(b[:min(len(b), room)])
	}
}

// teeBody keeps the first bytes of a request body as the handler reads it.
type teeBody struct {
	io.ReadCloser
	kept limitedBuffer
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	t.kept.write(p[:n])
	return n, err
}

// record starts recording r; finish keeps it by its rid if the answer was
// an error.
func (s *Server) record(w http.ResponseWriter, r *http.Request) *recording {
	tee := &teeBody{ReadCloser: r.Body}
	r.Body = tee
	return &recording{ResponseWriter: w, started: time.Now(), invoked: s.cfg.Now(), read: tee}
}

// finish keeps the request by the rid its error answer names, for its app.
// WeChat's rid/get does not serve /sns/ APIs: their rids are not kept.
func (s *Server) finish(rec *recording, r *http.Request, appid string) {
	if strings.HasPrefix(r.URL.Path, "/sns/") {
		return
	}
	var answer struct {
		ErrMsg string `json:"errmsg"`
	}
	if json.Unmarshal(rec.sent.Bytes(), &answer) != nil {
		return
	}
	_, rid, ok := strings.Cut(answer.ErrMsg, " rid: ")
	if !ok {
		return
	}
	kept := &ridRecord{appid: appid, invoked: rec.invoked, costMS: time.Since(rec.started).Milliseconds(),
		url: scrubURL(r.URL), body: scrubJSON(rec.read.kept.Bytes()), answer: scrubJSON(rec.sent.Bytes()), from: clientAddr(r)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rids == nil {
		s.rids = map[string]*ridRecord{}
	}
	s.rids[rid] = kept
	if len(s.rids)%256 == 0 {
		s.forgetRids(rec.invoked)
	}
}

// ridsKept bounds the rids a long run keeps: a benchmark's errors within
// 7 days would otherwise grow without end.
const ridsKept = 100000

// forgetRids drops the rids older than 7 days and, past ridsKept, any.
// Callers hold s.mu.
func (s *Server) forgetRids(now time.Time) {
	for id, k := range s.rids {
		if !now.Before(k.invoked.Add(ridLifetime)) || len(s.rids) > ridsKept {
			delete(s.rids, id)
		}
	}
}

// scrubURL is u's path and query with every secret field's value replaced.
func scrubURL(u *url.URL) string {
	q := u.Query()
	for k := range q {
		if secretFields[k] {
			q.Set(k, redacted)
		}
	}
	if len(q) == 0 {
		return u.Path
	}
	return u.Path + "?" + q.Encode()
}

// scrubJSON is a JSON object's text with every secret field's value
// replaced; a body that is not a JSON object (a file, XML) is not kept.
func scrubJSON(body []byte) string {
	var fields map[string]any
	if len(body) == 0 || json.Unmarshal(body, &fields) != nil {
		return ""
	}
	for k := range fields {
		if secretFields[k] {
			fields[k] = redacted
		}
	}
	b, _ := json.Marshal(fields)
	return string(b)
}

// ridOwner is the app whose rid a call's error is: the app the call names
// or whose token it carries (component_access_token included); "" for one
// the fake cannot tell.
func (s *Server) ridOwner(r *http.Request) string {
	if appid, _ := s.appOfCall(r); appid != "" {
		return appid
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tokens[r.URL.Query().Get("component_access_token")]; ok {
		return t.appid
	}
	return ""
}

// serveRidGet answers POST /cgi-bin/openapi/rid/get?access_token= {"rid"}:
// the request that rid names, to the account it belongs to, for 7 days.
// WeChat documents only that another account cannot read it; the fake
// answers it 76001 as for a rid it does not know, so that a rid says
// nothing across accounts.
func (s *Server) serveRidGet(w http.ResponseWriter, r *http.Request) {
	s.serveWithToken(w, r, func(appid string, _ bool, body []byte, now time.Time) map[string]any {
		var req struct {
			Rid string `json:"rid"`
		}
		if json.Unmarshal(body, &req) != nil {
			return errReply(47001, "")
		}
		k, ok := s.rids[req.Rid]
		if !ok || k.appid != appid || !now.Before(k.invoked.Add(ridLifetime)) {
			return errReply(76001, "")
		}
		return map[string]any{"errcode": 0, "errmsg": "ok", "request": map[string]any{
			"invoke_time": k.invoked.Unix(), "cost_in_ms": k.costMS, "request_url": k.url,
			"request_body": k.body, "response_body": k.answer, "client_ip": k.from}}
	})
}
