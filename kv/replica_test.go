package kv

import "testing"

func TestReplicaKeyIsAValidKeyOfAnyInstance(t *testing.T) {
	for in, want := range map[string]string{"host-42": "host-42", "web.example.com-7": "web_example_com-7", "": "_", "a b/c": "a_b_c"} {
		if got := ReplicaKey(in); got != want || ValidateBucketName(got) != nil {
			t.Errorf("ReplicaKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReplicaStateRoundTrip(t *testing.T) {
	s := ReplicaState{Instance: "host-2", Standing: true, Probed: 3, Configured: 3, CannotLead: 1,
		Apps: []ReplicaApp{{AppID: "wx1234567890abcdef", ErrCode: 40164, Address: "203.0.113.7", Problem: "p", Fix: "f"}}}
	back, err := DecodeReplicaState(EncodeReplicaState(s))
	if err != nil || back.Instance != s.Instance || !back.Standing || back.CannotLead != 1 || back.Configured != 3 || len(back.Apps) != 1 || back.Apps[0].Address != "203.0.113.7" {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	for _, bad := range []string{`{}`, `{"instance":"x","cannot_lead":-1}`, `{"instance":"x","configured":-1}`, `{"instance":"x","probed":-1}`, `not json`} {
		if _, err := DecodeReplicaState([]byte(bad)); err == nil {
			t.Errorf("%s decoded", bad)
		}
	}
}

// FuzzDecodeReplicaState: whatever a replica's key holds, the decoder
// returns a state with an instance or an error, never panics, and what it
// accepts survives a round trip.
func FuzzDecodeReplicaState(f *testing.F) {
	f.Add([]byte(`{"instance":"host-2","at":"2026-11-21T10:00:00Z","standing":true,"leading":false,"probed":3,"configured":3,"cannot_lead":1,"apps":[{"appid":"wx1234567890abcdef","errcode":40164,"address":"203.0.113.7","problem":"p","fix":"f","checked_at":"2026-11-21T10:00:00Z"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeReplicaState(data)
		if err != nil {
			return
		}
		if s.Instance == "" || s.CannotLead < 0 || s.Probed < 0 || s.Configured < 0 {
			t.Fatalf("accepted %+v", s)
		}
		back, err := DecodeReplicaState(EncodeReplicaState(s))
		if err != nil || back.Instance != s.Instance || back.CannotLead != s.CannotLead || back.Complete() != s.Complete() || len(back.Apps) != len(s.Apps) {
			t.Fatalf("round trip changed %+v into %+v (%v)", s, back, err)
		}
	})
}

func TestReplicaStateIsCompleteOnceEveryAppIsProbed(t *testing.T) {
	for _, tc := range []struct {
		probed, configured int
		complete           bool
	}{
		{0, 30, false}, // the first round just began
		{29, 30, false},
		{30, 30, true},
		{0, 0, true}, // probes off, or a replica from before the field
	} {
		s := ReplicaState{Instance: "host-2", Probed: tc.probed, Configured: tc.configured}
		if s.Complete() != tc.complete {
			t.Errorf("%d probed of %d: complete %v, want %v", tc.probed, tc.configured, s.Complete(), tc.complete)
		}
	}
}
