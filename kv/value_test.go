package kv_test

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/kv"
)

func TestValueMsg(t *testing.T) {
	m := kv.ValueMsg(kv.Subjects{}, "wx1", 42, []byte("record"))
	if m.Subject != "wechat.token.value.wx1" {
		t.Errorf("subject %q", m.Subject)
	}
	rev, record, err := kv.DecodeValueMsg(m)
	if err != nil || rev != 42 || string(record) != "record" {
		t.Errorf("decoded %d %q %v", rev, record, err)
	}
	for _, bad := range []string{"", "0", "x", "-1"} {
		m := nats.NewMsg("wechat.token.value.wx1")
		if bad != "" {
			m.Header.Set(kv.RevisionHeader, bad)
		}
		if _, _, err := kv.DecodeValueMsg(m); err == nil {
			t.Errorf("revision %q accepted", bad)
		}
	}
}
