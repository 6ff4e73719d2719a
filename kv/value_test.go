package kv_test

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// TestValueRepublishedByARegionsCopy: a region's copy republishes what it
// stores with the stream's headers, not the refresher's: the revision is
// its Nats-Sequence, and a delete marker says it is one.
func TestValueRepublishedByARegionsCopy(t *testing.T) {
	m := nats.NewMsg("wechat.token.value.wx1")
	m.Header.Set("Nats-Stream", "KV_wechat_tokens")
	m.Header.Set("Nats-Subject", "$KV.wechat_tokens.wx1")
	m.Header.Set("Nats-Sequence", "1796140046117")
	m.Data = []byte("record")
	rev, record, err := kv.DecodeValueMsg(m)
	if err != nil || rev != 1796140046117 || string(record) != "record" {
		t.Errorf("decoded %d %q %v", rev, record, err)
	}
	if op := kv.ValueOperation(m.Header); op != jetstream.KeyValuePut {
		t.Errorf("a value is a %v", op)
	}
	for marker, want := range map[string]jetstream.KeyValueOp{"DEL": jetstream.KeyValueDelete, "PURGE": jetstream.KeyValuePurge} {
		m.Header.Set("KV-Operation", marker)
		if op := kv.ValueOperation(m.Header); op != want {
			t.Errorf("KV-Operation %s is a %v", marker, op)
		}
	}
	// The refresher's header wins: it is the revision it stored at.
	m.Header.Set(kv.RevisionHeader, "42")
	if rev, _, _ := kv.DecodeValueMsg(m); rev != 42 {
		t.Errorf("revision %d, want the refresher's 42", rev)
	}
}
