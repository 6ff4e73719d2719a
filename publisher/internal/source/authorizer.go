package source

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/url"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/platform"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// Authorizer is the authorizer_access_token of an account that authorized
// a platform, fetched with the platform's component token: POST
// api_query_auth with the authorization code of an authorized event, once;
// then POST api_authorizer_token with the refresh token. Both return a
// refresh token, which is stored (Save) before the access token is; the
// record, with its refresh token, is the platform's (platform.Authorizer).
// An account that withdraws has its token removed.
type Authorizer struct {
	component, appid string
	platforms        *platform.Platforms
	client           *upstream.Client
	log              *slog.Logger
	rescue           *Rescuer // the platform's, of a spent quota; nil: none
}

// NewAuthorizer returns the source of the token of authorizer appid of
// platform component, whose record platforms holds, fetched from client's
// API.
func NewAuthorizer(component, appid string, platforms *platform.Platforms, client *upstream.Client, log *slog.Logger) *Authorizer {
	return &Authorizer{component: component, appid: appid, platforms: platforms, client: client, log: log}
}

// record is the authorizer's record, nil once it withdrew.
func (s *Authorizer) record() *platform.Authorizer { return s.platforms.Authorizer(s.appid) }

// grant is what a fetch of an authorizer's token is made with.
type grant struct {
	record  *platform.Authorizer
	refresh upstream.Secret
	code    string // an authorization code not exchanged yet
}

func (*Authorizer) API() string { return "authorizer_token" }

// BeforeFetch reads the record first: the refresh token another leader
// stored may not have reached this one's follower yet, and asking with an
// older one would end the newest.
func (s *Authorizer) BeforeFetch(ctx context.Context, a *loop.Attempt) error {
	record := s.record()
	if record == nil {
		return &loop.Declined{Reason: s.appid + " withdrew its authorization from platform " + s.component}
	}
	record.Read(ctx)
	refresh, code := record.Grant(a.Now())
	a.Grant = grant{record: record, refresh: refresh, code: code}
	return nil
}

func (s *Authorizer) Fetch(ctx context.Context, a *loop.Attempt) (upstream.Issued, error) {
	g, _ := a.Grant.(grant)
	issuedAt := a.Now()
	q := url.Values{"component_access_token": {a.Token}}
	if g.code != "" {
		issued, refresh, err := s.exchange(ctx, a.Token, g.code, q)
		var ue *upstream.Error
		switch {
		case err == nil:
			g.record.Hold(refresh, issuedAt, g.code)
			return issued, nil
		case !errors.As(err, &ue) || ue.ErrCode != upstream.CodeSpent:
			return issued, err
		case g.refresh.IsZero():
			g.record.SpendCode(ctx, g.code)
			return issued, err
		}
		// updateauthorized with a code spent or expired: the refresh
		// token still works.
	}
	body, _ := json.Marshal(map[string]string{
		"component_appid": s.component, "authorizer_appid": s.appid, "authorizer_refresh_token": g.refresh.Reveal(),
	})
	status, answer, err := s.client.PostJSON(ctx, "cgi-bin/component/api_authorizer_token", q, body, a.Token)
	if err != nil {
		return upstream.Issued{}, upstream.ScrubErrMsg(err, g.refresh.Reveal())
	}
	var ans authorizerAnswer
	if err := upstream.DecodeJSON(status, answer, upstream.AuthorizerCodes, &ans); err != nil {
		return upstream.Issued{}, upstream.ScrubErrMsg(upstream.ScrubErrMsg(err, g.refresh.Reveal()), a.Token)
	}
	issued, refresh, err := ans.issued()
	if err == nil {
		g.record.Hold(refresh, issuedAt, g.code)
	}
	return issued, err
}

// exchange trades an authorization code for the authorizer's tokens.
func (s *Authorizer) exchange(ctx context.Context, token, code string, q url.Values) (upstream.Issued, upstream.Secret, error) {
	body, _ := json.Marshal(map[string]string{"component_appid": s.component, "authorization_code": code})
	status, answer, err := s.client.PostJSON(ctx, pathQueryAuth[1:], q, body, token)
	if err != nil {
		return upstream.Issued{}, upstream.Secret{}, upstream.ScrubErrMsg(err, code)
	}
	var ans struct {
		Info *authorizerAnswer `json:"authorization_info"`
	}
	if err := upstream.DecodeJSON(status, answer, upstream.AuthorizerCodes, &ans); err != nil {
		return upstream.Issued{}, upstream.Secret{}, upstream.ScrubErrMsg(upstream.ScrubErrMsg(err, code), token)
	}
	switch {
	case ans.Info == nil:
		return upstream.Issued{}, upstream.Secret{}, &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "answer has neither authorization_info nor errcode"}
	case ans.Info.AppID != s.appid:
		return upstream.Issued{}, upstream.Secret{}, &upstream.Error{Class: upstream.ClassConfig, ErrMsg: "the authorization code is another authorizer's",
			Means: "the authorization event named another authorizer than the code"}
	}
	return ans.Info.issued()
}

// authorizerAnswer is what api_query_auth and api_authorizer_token answer.
type authorizerAnswer struct {
	AppID     string          `json:"authorizer_appid"`
	Token     *string         `json:"authorizer_access_token"`
	ExpiresIn json.RawMessage `json:"expires_in"`
	Refresh   string          `json:"authorizer_refresh_token"`
}

// issued is the answer's token, and the refresh token that came with it
// (none when the answer has none).
func (a authorizerAnswer) issued() (upstream.Issued, upstream.Secret, error) {
	issued, err := upstream.IssuedFrom("authorizer_access_token", a.Token, a.ExpiresIn)
	if err != nil {
		return upstream.Issued{}, upstream.Secret{}, err
	}
	if a.Refresh == "" {
		return issued, upstream.Secret{}, nil
	}
	if kv.ValidateToken(a.Refresh) != nil {
		return upstream.Issued{}, upstream.Secret{}, &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "unusable authorizer_refresh_token"}
	}
	return issued, upstream.NewSecret(a.Refresh), nil
}

func (*Authorizer) Window(refreshBefore time.Duration) time.Duration { return refreshBefore }

func (*Authorizer) Repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return tokenRepeated(held, window, now)
}

// Check asks WeChat whether the token works.
func (s *Authorizer) Check(ctx context.Context, token string) (bool, error) {
	return s.client.CheckToken(ctx, token)
}

// Urgent: a refresh token WeChat returned is to be stored, or an
// authorization code to be exchanged before it expires; either makes a
// fetch due at once.
func (s *Authorizer) Urgent(now time.Time) bool {
	record := s.record()
	if record == nil {
		return false
	}
	_, code := record.Grant(now)
	return code != "" || record.Unsaved()
}

// Save stores the refresh token WeChat returned, if the bucket does not
// hold it yet. One of an account that withdrew is not stored.
func (s *Authorizer) Save(ctx context.Context) error {
	if record := s.record(); record != nil {
		return record.Save(ctx)
	}
	return nil
}

// Removal removes the token of an account that withdrew its authorization
// while its token was fetched: it is never announced.
func (s *Authorizer) Removal() (loop.Removal, bool) {
	if s.record() != nil {
		return loop.Removal{}, false
	}
	return Withdrawal(s.appid, s.log), true
}

// Withdrawal is the removal of the token of an authorizer that withdrew
// its authorization.
func Withdrawal(appid string, log *slog.Logger) loop.Removal {
	return loop.Removal{Reason: kv.RemovedUnauthorized, Say: func(rev uint64) {
		log.Info("authorizer withdrew its authorization: its token is removed", "authorizer", appid, "revision", rev)
	}}
}

var (
	_ loop.Source   = (*Authorizer)(nil)
	_ loop.Preparer = (*Authorizer)(nil)
	_ loop.Urgent   = (*Authorizer)(nil)
	_ loop.Checker  = (*Authorizer)(nil)
	_ loop.Saver    = (*Authorizer)(nil)
	_ loop.Remover  = (*Authorizer)(nil)
)
