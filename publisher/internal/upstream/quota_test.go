package upstream

import (
	"errors"
	"testing"
)

func TestDecodeQuota(t *testing.T) {
	q, err := decodeQuota(200, []byte(`{"errcode":0,"errmsg":"ok","quota":{"daily_limit":2000,"used":7,"remain":1993},"rate_limit":{"call_count":100,"refresh_second":60}}`))
	if err != nil || q.DailyLimit != 2000 || q.Used != 7 || q.Remain != 1993 || q.RateLimit == nil || *q.RateLimit != (RateLimit{100, 60}) {
		t.Fatalf("decodeQuota = %+v, %v", q, err)
	}
	if q, err := decodeQuota(200, []byte(`{"errcode":0,"quota":{"daily_limit":-1,"used":3,"remain":0}}`)); err != nil || q.RateLimit != nil || q.Used != 3 {
		t.Errorf("an answer without rate_limit: %+v, %v", q, err)
	}
	for _, c := range []struct {
		body      string
		class     Class
		unaskable bool
	}{
		{`{"errcode":76021,"errmsg":"cgi_path not found rid: 1"}`, ClassConfig, true},
		{`{"errcode":76022,"errmsg":"could not use this cgi_path"}`, ClassConfig, true},
		{`{"errcode":76003,"errmsg":"invalid cgi_path"}`, ClassConfig, true},
		{`{"errcode":40001,"errmsg":"invalid credential"}`, ClassToken, false},
		{`{"errcode":42001,"errmsg":"access_token expired"}`, ClassToken, false},
		{`{"errcode":-1,"errmsg":"system error"}`, ClassRetry, false},
		{`{"errcode":0,"errmsg":"ok"}`, ClassRetry, false},
		{`{"errcode":0,"quota":{"used":-4}}`, ClassRetry, false},
		{`not json`, ClassRetry, false},
	} {
		_, err := decodeQuota(200, []byte(c.body))
		var e *Error
		if !errors.As(err, &e) || e.Class != c.class || Unaskable(err) != c.unaskable {
			t.Errorf("%s: %v; want class %s, unaskable %v", c.body, err, c.class, c.unaskable)
		}
	}
	if Unaskable(errors.New("no answer")) {
		t.Error("an error that is no answer of WeChat's is unaskable")
	}
}
