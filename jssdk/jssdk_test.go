package jssdk

import (
	"strings"
	"testing"
	"time"
)

// WeChat's documented test vector (JS-SDK docs, appendix 1).
const (
	docTicket    = "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg"
	docNonce     = "Wm3WZYTPz0wzccnW"
	docTimestamp = 1414587457
	docURL       = "http://mp.weixin.qq.com?params=value"
	docSignature = "0f9de62fce790f9a083d5c99e95740ceb90c27ed"
)

func TestSignatureMatchesWeChatsTestVector(t *testing.T) {
	if got := Signature(docTicket, docNonce, docTimestamp, docURL); got != docSignature {
		t.Fatalf("Signature = %s, want %s", got, docSignature)
	}
	if got := Signature(docTicket, docNonce, docTimestamp, docURL+"#section"); got != docSignature {
		t.Fatalf("with a #fragment: %s, want the fragment dropped (%s)", got, docSignature)
	}
}

// The card signature sorts the values as strings: the expected value was
// computed with `printf '%s\n' ... | LC_ALL=C sort | tr -d '\n' | sha1sum`.
func TestCardSignatureSortsTheValues(t *testing.T) {
	const want = "d922aef9d9e3c0196de74ff70c975c618716b499"
	values := []string{"ticketABC", "1414587457", "pFS7Fjg8kV1IdDz01r4SQwMkuCKc", "Wm3WZYTPz0wzccnW"}
	if got := CardSignature(values...); got != want {
		t.Fatalf("CardSignature = %s, want %s", got, want)
	}
	if values[0] != "ticketABC" {
		t.Error("CardSignature sorted its caller's slice")
	}
}

func TestSignUsesTheTicketTimeAndANonce(t *testing.T) {
	now := time.Unix(docTimestamp, 0)
	c, err := NewConfig("wx1234567890abcdef", docTicket, docURL, now)
	if err != nil {
		t.Fatal(err)
	}
	if c.AppID != "wx1234567890abcdef" || c.Timestamp != docTimestamp || len(c.NonceStr) != 16 {
		t.Fatalf("config %+v", c)
	}
	if c.Signature != Signature(docTicket, c.NonceStr, docTimestamp, docURL) {
		t.Fatal("the config's signature is not the signature of its own fields")
	}
	if other, _ := NewConfig("wx1234567890abcdef", docTicket, docURL, now); other.NonceStr == c.NonceStr {
		t.Fatal("two configs share a nonce")
	}
}

func TestPageURLMustBeAbsolute(t *testing.T) {
	for _, u := range []string{"", "/pay", "mp.weixin.qq.com/x", "ftp://x/y", "http://"} {
		if err := checkPageURL(u); err == nil || !strings.Contains(err.Error(), "http(s) URL") {
			t.Errorf("%q: %v", u, err)
		}
	}
	if err := checkPageURL("https://shop.example.com/pay?order=1#top"); err != nil {
		t.Error(err)
	}
}
