package fakewechat

import "testing"

func TestRejectEndsTheCurrentTokensOfAnApp(t *testing.T) {
	s := New(Config{})
	s.AddApp("wxdemo0123456789ab", "secret")
	if n, err := s.Reject("wxdemo0123456789ab"); n != 0 || err != nil {
		t.Errorf("Reject before any token: %d, %v; want 0, nil", n, err)
	}
	old := s.Issue("wxdemo0123456789ab")
	current := s.Issue("wxdemo0123456789ab") // old still works, in its overlap
	if n, err := s.Reject("wxdemo0123456789ab"); n != 1 || err != nil {
		t.Fatalf("Reject: %d, %v; want 1 token ended", n, err)
	}
	if ok, code := s.Valid(current); ok || code != 40001 {
		t.Errorf("the rejected token: valid %v, errcode %d; want 40001", ok, code)
	}
	if ok, _ := s.Valid(old); !ok {
		t.Error("the previous token, still in its overlap, was ended too")
	}
	if n, _ := s.Reject("wxdemo0123456789ab"); n != 0 {
		t.Errorf("a second Reject ended %d tokens, want 0", n)
	}
	if _, err := s.Reject("wxunknown000000000"); err == nil {
		t.Error("Reject of an unknown app: no error")
	}
}
