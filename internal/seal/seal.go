// Package seal seals a secret to one process's public key, so that it can
// cross NATS without anyone on the way (a subscriber to ">", a server's
// trace, a capture) reading it: `wxtoken secret set` seals the new
// AppSecret to each replica's key, and only that replica, holding the
// private key in memory, opens it.
//
// The construction is ECIES over X25519: a fresh sender key pair per
// sealed message, its ECDH with the recipient's key, HKDF-SHA256 over the
// shared secret (salted with both public keys) to one AES-256-GCM key, and
// the context (which app, which replica, what for) as GCM's additional
// data. A sealed box opened with another context fails, so a box taken off
// the wire cannot be offered to another app, another replica, or for
// another purpose. The sender's key is dropped after sealing: nobody, the
// sender included, can open the box afterwards but the recipient.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// info binds the derived key to this use and version of the construction.
const info = "wxtoken seal v1: X25519, HKDF-SHA256, AES-256-GCM"

// ErrOpen is any box that does not open: sealed to another key or with
// another context, or changed on the way. Which of these it was is not
// told (it must not be: a forger would learn from it).
var ErrOpen = errors.New("seal: the sealed secret does not open with this replica's key and this context (sealed for another replica, app or purpose, or changed on the way)")

// Key is a recipient's key pair. Its private half never leaves the
// process: there is no way to export it.
type Key struct {
	private *ecdh.PrivateKey
}

// NewKey makes a key pair from the system's random source.
func NewKey() (*Key, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return &Key{private: k}, nil
}

// Public is the public key, 32 bytes, to give senders.
func (k *Key) Public() []byte { return k.private.PublicKey().Bytes() }

// Box is a sealed secret: the sender's one-time public key, GCM's nonce
// and the ciphertext with its tag. Nothing in it is secret.
type Box struct {
	Sender []byte `json:"sender"` // 32 bytes
	Nonce  []byte `json:"nonce"`  // 12 bytes
	Sealed []byte `json:"sealed"` // ciphertext and 16-byte tag
}

// To seals secret to the recipient's public key (Key.Public), bound to
// context.
func To(recipient []byte, secret []byte, context string) (Box, error) {
	pub, err := ecdh.X25519().NewPublicKey(recipient)
	if err != nil {
		return Box{}, fmt.Errorf("seal: recipient key: %w", err)
	}
	sender, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return Box{}, fmt.Errorf("seal: %w", err)
	}
	shared, err := sender.ECDH(pub)
	if err != nil {
		return Box{}, fmt.Errorf("seal: %w", err)
	}
	aead, err := aeadOf(shared, sender.PublicKey().Bytes(), recipient)
	if err != nil {
		return Box{}, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return Box{}, fmt.Errorf("seal: %w", err)
	}
	return Box{Sender: sender.PublicKey().Bytes(), Nonce: nonce, Sealed: aead.Seal(nil, nonce, secret, []byte(context))}, nil
}

// Open opens a box sealed to k with context; ErrOpen otherwise.
func (k *Key) Open(b Box, context string) ([]byte, error) {
	sender, err := ecdh.X25519().NewPublicKey(b.Sender)
	if err != nil {
		return nil, ErrOpen
	}
	shared, err := k.private.ECDH(sender)
	if err != nil {
		return nil, ErrOpen
	}
	aead, err := aeadOf(shared, b.Sender, k.Public())
	if err != nil {
		return nil, err
	}
	if len(b.Nonce) != aead.NonceSize() {
		return nil, ErrOpen
	}
	secret, err := aead.Open(nil, b.Nonce, b.Sealed, []byte(context))
	if err != nil {
		return nil, ErrOpen
	}
	return secret, nil
}

// aeadOf derives the box's AES-256-GCM from the shared secret, salted with
// both public keys so that the key belongs to this pair alone.
func aeadOf(shared, sender, recipient []byte) (cipher.AEAD, error) {
	salt := append(append([]byte{}, sender...), recipient...)
	key, err := hkdf.Key(sha256.New, shared, salt, info, 32)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return cipher.NewGCM(block)
}

// Context is what a box is bound to: what it is for (a check or a take),
// the app's key and the replica it is sealed to. The parts are joined with
// a byte none of them may hold, so no two different triples give the same
// context.
func Context(purpose, app, replica string) string {
	return purpose + "\x00" + app + "\x00" + replica
}
