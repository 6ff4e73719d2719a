package source

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// A probe says whether a secret works, and changes nothing at WeChat: the
// token services hold is the one WeChat still calls current.
func TestProbesTellARightSecretFromAWrongOneAndEndNoToken(t *testing.T) {
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp("wxprobe0000000001", "right")
	fake.AddWeComApp("wwprobe", "1000002", "right")
	if err := fake.AddPlatform("wxprobecomponent1", "right", "msgtoken", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	client, err := upstream.New(srv.URL, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	held := fake.Issue("wxprobe0000000001")

	probes := map[string]func(secret string) error{
		"stable_token": func(s string) error {
			return ProbeStable(ctx, client, "wxprobe0000000001", upstream.NewSecret(s))
		},
		"gettoken": func(s string) error {
			return ProbeWeCom(ctx, client, "wwprobe", upstream.NewSecret(s))
		},
		"api_start_push_ticket": func(s string) error {
			return ProbeComponent(ctx, client, "wxprobecomponent1", upstream.NewSecret(s))
		},
	}
	for name, probe := range probes {
		if err := probe("right"); err != nil {
			t.Errorf("%s with the right secret: %v", name, err)
		}
		err := probe("wrong")
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.Class != upstream.ClassConfig {
			t.Errorf("%s with a wrong secret: %v, want a configuration error", name, err)
		}
	}
	if got := fake.Current("wxprobe0000000001"); got != held {
		t.Errorf("after the probes the app's current token changed: the probe ended a token")
	}
	if ok, _ := fake.Valid(held); !ok {
		t.Errorf("after the probes the held token is no longer valid")
	}
	// stable_token issued the app's stable token once; probing again
	// returns it and issues nothing.
	issued := fake.Issued("wxprobe0000000001")
	if err := probes["stable_token"]("right"); err != nil {
		t.Fatal(err)
	}
	if n := fake.Issued("wxprobe0000000001"); n != issued {
		t.Errorf("a second probe issued %d more tokens, want none", n-issued)
	}
}
