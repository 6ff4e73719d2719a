package wxcrypt

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// The sample of WeChat's own message-encryption SDK (WXBizMsgCryptTest):
// a key, an appid and a fixed random prefix, and the ciphertexts it gives.
const (
	sampleKey    = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	sampleAppID  = "wxb11529c136998cb6"
	sampleRandom = "aaaabbbbccccdddd"
)

var samples = []struct{ msg, encrypted string }{
	{"我是中文abcd123", "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="},
	{"<xml><ToUserName><![CDATA[oia2Tj我是中文jewbmiOUlr6X-1crbLOvLw]]></ToUserName><FromUserName><![CDATA[gh_7f083739789a]]></FromUserName><CreateTime>1407743423</CreateTime><MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[eYJ1MbwPRJtOvIEabaxHs7TX2D-HV71s79GUxqdUkjm6Gs2Ed1KF3ulAOA9H1xG0]]></MediaId><Title><![CDATA[testCallBackReplyVideo]]></Title><Description><![CDATA[testCallBackReplyVideo]]></Description></Video></xml>",
		"jn1L23DB+6ELqJ+6bruv23M2GmYfkv0xBh2h+XTBOKVKcgDFHle6gqcZ1cZrk3e1qjPQ1F4RsLWzQRG9udbKWesxlkupqcEcW7ZQweImX9+wLMa0GaUzpkycA8+IamDBxn5loLgZpnS7fVAbExOkK5DYHBmv5tptA9tklE/fTIILHR8HLXa5nQvFb3tYPKAlHF3rtTeayNf0QuM+UW/wM9enGIDIJHF7CLHiDNAYxr+r+OrJCmPQyTy8cVWlu9iSvOHPT/77bZqJucQHQ04sq7KZI27OcqpQNSto2OdHCoTccjggX5Z9Mma0nMJBU+jLKJ38YB1fBIz+vBzsYjrTmFQ44YfeEuZ+xRTQwr92vhA9OxchWVINGC50qE/6lmkwWTwGX9wtQpsJKhP+oS7rvTY8+VdzETdfakjkwQ5/Xka042OlUb1/slTwo4RscuQ+RdxSGvDahxAJ6+EAjLt9d8igHngxIbf6YyqqROxuxqIeIch3CssH/LqRs+iAcILvApYZckqmA7FNERspKA5f8GoJ9sv8xmGvZ9Yrf57cExWtnX8aCMMaBropU/1k+hKP5LVdzbWCG0hGwx/dQudYR/eXp3P0XxjlFiy+9DMlaFExWUZQDajPkdPrEeOwofJb"},
}

func TestSealMatchesWeChatsSample(t *testing.T) {
	c, err := New("pamtest", sampleKey, sampleAppID)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range samples {
		if got := c.seal([]byte(s.msg), [16]byte([]byte(sampleRandom))); got != s.encrypted {
			t.Errorf("seal(%.20q) = %.40s..., want WeChat's %.40s...", s.msg, got, s.encrypted)
		}
		sig := c.Signature("1409304348", "xxxxxx", s.encrypted)
		got, err := c.Open(sig, "1409304348", "xxxxxx", s.encrypted)
		if err != nil || string(got) != s.msg {
			t.Errorf("Open of WeChat's ciphertext = %.40q, %v", got, err)
		}
	}
}

// The sample of WeChat's C# SDK: a message as WeChat sent it, with its
// msg_signature.
func TestOpenChecksWeChatsSignedSample(t *testing.T) {
	const encrypted = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
	c, err := New("QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wx5823bf96d3bd56c7")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := c.Open("477715d11cdb4164915debcba66cb864d751f3e6", "1409659813", "1372623149", encrypted)
	if err != nil || !strings.HasPrefix(string(msg), "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>") {
		t.Fatalf("Open = %.80q, %v", msg, err)
	}
	for name, open := range map[string]func() error{
		"a wrong signature": func() error {
			_, err := c.Open("477715d11cdb4164915debcba66cb864d751f3e7", "1409659813", "1372623149", encrypted)
			return err
		},
		"another timestamp": func() error {
			_, err := c.Open("477715d11cdb4164915debcba66cb864d751f3e6", "1409659814", "1372623149", encrypted)
			return err
		},
	} {
		if err := open(); !errors.Is(err, ErrSignature) {
			t.Errorf("%s: %v, want ErrSignature", name, err)
		}
	}
	other, _ := New("QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wx00000000000000ff")
	if _, err := other.Open("477715d11cdb4164915debcba66cb864d751f3e6", "1409659813", "1372623149", encrypted); !errors.Is(err, ErrAppID) {
		t.Errorf("a message for another appid: %v, want ErrAppID", err)
	}
}

func TestOpenRefusesGarbage(t *testing.T) {
	c, _ := New("token", sampleKey, sampleAppID)
	for _, garbage := range []string{"", "not base64!", "AAAA", strings.Repeat("A", 44), c.seal(nil, [16]byte{})[:20]} {
		sig := c.Signature("1", "n", garbage)
		if _, err := c.Open(sig, "1", "n", garbage); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrAppID) {
			t.Errorf("Open(%q) = %v, want a refusal", garbage, err)
		}
	}
	encrypted, sig := c.Seal([]byte("hello"), "1", "n")
	if got, err := c.Open(sig, "1", "n", encrypted); err != nil || string(got) != "hello" {
		t.Errorf("Open(Seal) = %q, %v", got, err)
	}
}

func TestNewRefusesBadKeysAndHidesSecrets(t *testing.T) {
	for _, key := range []string{"", "short", sampleKey + "A", strings.Repeat("!", 43)} {
		if _, err := New("t", key, "wx"); err == nil {
			t.Errorf("New with key %q was taken", key)
		}
	}
	c, _ := New("the-token", sampleKey, sampleAppID)
	if s := fmt.Sprintf("%v %+v %s %v", c, c, c, *c); strings.Contains(s, "the-token") || strings.Contains(s, sampleKey) {
		t.Errorf("a Crypter prints its secrets: %s", s)
	}
}

// FuzzOpen: whatever arrives at a callback URL, Open returns a message or
// an error, and never panics; what Seal made, Open gives back.
func FuzzOpen(f *testing.F) {
	c, _ := New("token", sampleKey, sampleAppID)
	f.Add(samples[0].encrypted, []byte("hello"))
	f.Add("", []byte{})
	f.Fuzz(func(t *testing.T, encrypted string, msg []byte) {
		c.Open(c.Signature("1", "n", encrypted), "1", "n", encrypted)
		sealed, sig := c.Seal(msg, "1", "n")
		if got, err := c.Open(sig, "1", "n", sealed); err != nil || string(got) != string(msg) {
			t.Fatalf("Open(Seal(%q)) = %q, %v", msg, got, err)
		}
	})
}
