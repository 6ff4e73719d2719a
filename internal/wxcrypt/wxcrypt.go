// Package wxcrypt is WeChat's message encryption (消息加解密), in which the
// open platform pushes its component_verify_ticket and authorization events
// to a platform's callback URL. A message is signed with the platform's
// message token (msg_signature: the SHA-1 of the token, timestamp, nonce
// and ciphertext, sorted and joined) and encrypted with AES-256-CBC under
// the key its 43-character EncodingAESKey encodes, the IV the key's first
// 16 bytes; the plaintext is 16 random bytes, the message's length (4 bytes,
// big-endian), the message, and the appid it is meant for, padded PKCS#7
// to 32 bytes.
package wxcrypt

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Errors of Open, for errors.Is.
var (
	ErrSignature = errors.New("wxcrypt: msg_signature does not match")
	ErrMalformed = errors.New("wxcrypt: the ciphertext is not a WeChat message")
	ErrAppID     = errors.New("wxcrypt: the message is for another appid")
)

// blockSize is the PKCS#7 block of WeChat's padding: 32 bytes, not AES's 16.
const blockSize = 32

// Crypter signs, checks, encrypts and decrypts the messages of one appid.
// It holds secrets: its String names the appid only.
type Crypter struct {
	token string
	block cipher.Block
	iv    []byte
	appid string
}

// New returns the Crypter of a platform: its message token, its
// EncodingAESKey (43 characters of base64) and its appid.
func New(token, encodingAESKey, appid string) (*Crypter, error) {
	if token == "" || appid == "" {
		return nil, errors.New("wxcrypt: the token and the appid are required")
	}
	key, err := base64.StdEncoding.DecodeString(encodingAESKey + "=")
	if len(encodingAESKey) != 43 || err != nil || len(key) != 32 {
		return nil, errors.New("wxcrypt: the EncodingAESKey is 43 characters of base64")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("wxcrypt: %w", err)
	}
	return &Crypter{token: token, block: block, iv: key[:aes.BlockSize], appid: appid}, nil
}

func (c Crypter) String() string { return "wxcrypt.Crypter(" + c.appid + ")" }

// Signature is the msg_signature of a ciphertext sent at timestamp with
// nonce.
func (c *Crypter) Signature(timestamp, nonce, encrypted string) string {
	parts := []string{c.token, timestamp, nonce, encrypted}
	slices.Sort(parts)
	sum := sha1.Sum([]byte(strings.Join(parts, "")))
	return hex.EncodeToString(sum[:])
}

// Open checks a message's signature and returns its plaintext, once it has
// checked that the message is for the Crypter's appid.
func (c *Crypter) Open(msgSignature, timestamp, nonce, encrypted string) ([]byte, error) {
	want := c.Signature(timestamp, nonce, encrypted)
	if subtle.ConstantTimeCompare([]byte(want), []byte(strings.ToLower(msgSignature))) != 1 {
		return nil, ErrSignature
	}
	data, err := base64.StdEncoding.DecodeString(encrypted)
	if err != nil || len(data) == 0 || len(data)%aes.BlockSize != 0 {
		return nil, ErrMalformed
	}
	plain := make([]byte, len(data))
	cipher.NewCBCDecrypter(c.block, c.iv).CryptBlocks(plain, data)
	pad := int(plain[len(plain)-1])
	if pad < 1 || pad > blockSize || pad > len(plain) {
		return nil, ErrMalformed
	}
	plain = plain[:len(plain)-pad]
	if len(plain) < 20 {
		return nil, ErrMalformed
	}
	n := binary.BigEndian.Uint32(plain[16:20])
	if uint64(n) > uint64(len(plain)-20) {
		return nil, ErrMalformed
	}
	msg, appid := plain[20:20+n], plain[20+n:]
	if subtle.ConstantTimeCompare(appid, []byte(c.appid)) != 1 {
		return nil, ErrAppID
	}
	return bytes.Clone(msg), nil
}

// Seal encrypts msg for the Crypter's appid with 16 fresh random bytes in
// front, as WeChat does, and returns the ciphertext with its signature.
func (c *Crypter) Seal(msg []byte, timestamp, nonce string) (encrypted, msgSignature string) {
	var random [16]byte
	rand.Read(random[:])
	encrypted = c.seal(msg, random)
	return encrypted, c.Signature(timestamp, nonce, encrypted)
}

func (c *Crypter) seal(msg []byte, random [16]byte) string {
	plain := make([]byte, 0, 20+len(msg)+len(c.appid)+blockSize)
	plain = append(plain, random[:]...)
	plain = binary.BigEndian.AppendUint32(plain, uint32(len(msg)))
	plain = append(plain, msg...)
	plain = append(plain, c.appid...)
	pad := blockSize - len(plain)%blockSize
	plain = append(plain, bytes.Repeat([]byte{byte(pad)}, pad)...)
	cipher.NewCBCEncrypter(c.block, c.iv).CryptBlocks(plain, plain)
	return base64.StdEncoding.EncodeToString(plain)
}
