package secretset

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/seal"
)

// Handler is what a replica does with a secret that opened: check it
// (probe, change nothing) or take it. It never sees a box, nor the
// secret's way across NATS.
type Handler interface {
	Check(ctx context.Context, key string, secret []byte) Answer
	Take(ctx context.Context, key string, secret []byte) Answer
}

// Server answers the protocol's requests for one replica, with a key pair
// made for its life: the private key never leaves its memory.
type Server struct {
	subjects Subjects
	id       string
	key      *seal.Key
	instance string
	leading  func() bool
	handler  Handler
	timeout  time.Duration

	subs   []*nats.Subscription
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex // guards closed against running.Add
	closed bool
	// running is the checks and takes under way; Close waits for them.
	running sync.WaitGroup
}

// Serve answers the protocol's requests on nc under prefix until Close:
// discovery with instance and leading(), and each check and take with h,
// within timeout.
func Serve(nc *nats.Conn, prefix, instance string, leading func() bool, h Handler, timeout time.Duration) (*Server, error) {
	id, err := newID()
	if err != nil {
		return nil, err
	}
	key, err := seal.NewKey()
	if err != nil {
		return nil, err
	}
	s := &Server{subjects: Subjects{prefix}, id: id, key: key, instance: instance, leading: leading, handler: h, timeout: timeout}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for subject, handle := range map[string]nats.MsgHandler{
		s.subjects.Replicas():  s.discovered,
		s.subjects.Check(s.id): func(m *nats.Msg) { s.answer(m, purposeCheck) },
		s.subjects.Take(s.id):  func(m *nats.Msg) { s.answer(m, purposeTake) },
	} {
		sub, err := nc.Subscribe(subject, handle)
		if err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("secretset: subscribe %s: %w", subject, err)
		}
		s.subs = append(s.subs, sub)
	}
	return s, nil
}

// ID is the replica's id in the protocol.
func (s *Server) ID() string { return s.id }

// Close stops answering and waits for the checks and takes under way,
// which it cancels. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	s.cancel()
	s.running.Wait()
	return nil
}

// discovered answers discovery.
func (s *Server) discovered(m *nats.Msg) {
	data, _ := json.Marshal(Replica{ID: s.id, Instance: s.instance, PublicKey: s.key.Public(), Leading: s.leading()})
	_ = m.Respond(data)
}

// answer opens a check's or a take's box and hands the secret to the
// handler.
func (s *Server) answer(m *nats.Msg, purpose string) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.running.Add(1)
	s.mu.Unlock()
	defer s.running.Done()

	a := s.handle(m.Data, purpose)
	data, _ := json.Marshal(a)
	_ = m.Respond(data)
}

func (s *Server) handle(data []byte, purpose string) Answer {
	var req Request
	if err := json.Unmarshal(data, &req); err != nil || req.Key == "" {
		return Answer{Outcome: Invalid, Message: "the request is not a secret set request ({\"key\":...,\"box\":...})"}
	}
	secret, err := s.key.Open(req.Box, seal.Context(purpose, req.Key, s.id))
	if err != nil {
		return Answer{Outcome: Invalid, Message: err.Error()}
	}
	if len(secret) == 0 {
		return Answer{Outcome: Invalid, Message: "the secret is empty"}
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	if purpose == purposeCheck {
		return s.handler.Check(ctx, req.Key, secret)
	}
	return s.handler.Take(ctx, req.Key, secret)
}
