package seal_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/wxtoken/wxtoken/internal/seal"
)

const secret = "0123456789abcdef0123456789abcdef"

func newKey(t *testing.T) *seal.Key {
	t.Helper()
	k, err := seal.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealedSecretOpensWithItsKeyAndContext(t *testing.T) {
	k := newKey(t)
	ctx := seal.Context("take", "wx1234567890abcdef", "r1")
	box, err := seal.To(k.Public(), []byte(secret), ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := k.Open(box, ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != secret {
		t.Fatalf("opened %q, want the secret sealed", got)
	}
}

func TestSealedSecretDoesNotOpenElsewhere(t *testing.T) {
	k, other := newKey(t), newKey(t)
	ctx := seal.Context("take", "wx1234567890abcdef", "r1")
	box, err := seal.To(k.Public(), []byte(secret), ctx)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(b []byte, i int) []byte {
		c := bytes.Clone(b)
		c[i] ^= 1
		return c
	}
	for _, tc := range []struct {
		name string
		key  *seal.Key
		box  seal.Box
		ctx  string
	}{
		{"another replica's key", other, box, ctx},
		{"another replica named", k, box, seal.Context("take", "wx1234567890abcdef", "r2")},
		{"another app", k, box, seal.Context("take", "wx0000000000000000", "r1")},
		{"another purpose", k, box, seal.Context("check", "wx1234567890abcdef", "r1")},
		{"ciphertext changed", k, seal.Box{Sender: box.Sender, Nonce: box.Nonce, Sealed: flip(box.Sealed, 0)}, ctx},
		{"tag changed", k, seal.Box{Sender: box.Sender, Nonce: box.Nonce, Sealed: flip(box.Sealed, len(box.Sealed)-1)}, ctx},
		{"nonce changed", k, seal.Box{Sender: box.Sender, Nonce: flip(box.Nonce, 3), Sealed: box.Sealed}, ctx},
		{"sender key changed", k, seal.Box{Sender: flip(box.Sender, 5), Nonce: box.Nonce, Sealed: box.Sealed}, ctx},
		{"nonce cut", k, seal.Box{Sender: box.Sender, Nonce: box.Nonce[:4], Sealed: box.Sealed}, ctx},
		{"empty", k, seal.Box{}, ctx},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.key.Open(tc.box, tc.ctx)
			if !errors.Is(err, seal.ErrOpen) {
				t.Fatalf("opened %q (err %v), want ErrOpen", got, err)
			}
		})
	}
}

// What travels on NATS is the box as JSON: it must hold neither the
// secret nor anything that stays the same from one sealing to the next.
func TestWhatTravelsHoldsNothingSecret(t *testing.T) {
	k := newKey(t)
	ctx := seal.Context("take", "wx1234567890abcdef", "r1")
	var wires [][]byte
	for range 2 {
		box, err := seal.To(k.Public(), []byte(secret), ctx)
		if err != nil {
			t.Fatal(err)
		}
		wire, err := json.Marshal(box)
		if err != nil {
			t.Fatal(err)
		}
		for _, part := range [][]byte{[]byte(secret), []byte(secret[:8]), []byte(secret[len(secret)-8:])} {
			if bytes.Contains(wire, part) || bytes.Contains(box.Sealed, part) {
				t.Fatalf("the sealed box holds %q of the secret: %s", part, wire)
			}
		}
		wires = append(wires, wire)
	}
	var a, b seal.Box
	_ = json.Unmarshal(wires[0], &a)
	_ = json.Unmarshal(wires[1], &b)
	if bytes.Equal(a.Sender, b.Sender) || bytes.Equal(a.Nonce, b.Nonce) || bytes.Equal(a.Sealed, b.Sealed) {
		t.Fatal("two sealings of one secret share a sender key, nonce or ciphertext: the sender key must be new each time")
	}
}

func TestSealRefusesABadRecipientKey(t *testing.T) {
	if _, err := seal.To([]byte("short"), []byte(secret), "c"); err == nil {
		t.Fatal("sealed to a 5-byte key")
	}
}
