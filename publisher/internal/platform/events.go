package platform

import (
	"context"
	"errors"
	"net/http"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/wxcrypt"
	"github.com/wxtoken/wxtoken/kv"
)

// Handler returns the handler of the platforms' authorization-event URL,
// for any replica: the pushes it takes in are stored in the platform
// bucket, where the leader finds them. It answers 503 until the bucket is
// open, to a push and to a GET, a load balancer's health check.
func (p *Platforms) Handler() http.Handler {
	return &Callback{
		Ready: func() error {
			if p.bucket.Load() == nil {
				return errors.New("the platform bucket is not open yet (the refresher is starting, or cannot reach NATS)")
			}
			return nil
		},
		Crypter: func(component string) *wxcrypt.Crypter {
			m := p.crypters.Load()
			if m == nil {
				return nil
			}
			return (*m)[component]
		},
		OnEvent: p.takeEvent,
		Replays: p.replays,
		Logger:  p.cfg.Logger,
		Now:     p.now,
	}
}

// errNoBucket answers a push that came before the bucket opened.
var errNoBucket = errors.New("publisher: the platform bucket is not open yet")

// takeEvent stores a push: a verify ticket if it is the newest, an
// authorization event if it is newer than the record's last. Pushed again,
// to this replica or another, it changes nothing.
func (p *Platforms) takeEvent(ctx context.Context, ev Event) error {
	b := p.bucket.Load()
	if b == nil {
		return errNoBucket
	}
	ctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	switch ev.InfoType {
	case InfoVerifyTicket:
		_, err := kv.StoreNewerTicket(ctx, *b, kv.VerifyTicket{ComponentAppID: ev.ComponentAppID, Ticket: ev.Ticket,
			CreateTime: ev.CreateTime, ReceivedAt: p.now()})
		return err
	case InfoAuthorized, InfoUpdateAuthorized, InfoUnauthorized:
	default:
		p.cfg.Logger.Info("push of a kind wxtoken does not use; answered", "component_appid", ev.ComponentAppID, "info_type", ev.InfoType)
		return nil
	}
	if kv.ValidateID(ev.Authorizer) != nil {
		p.cfg.Logger.Warn("authorization event with an authorizer appid that is not one; answered, not kept", "component_appid", ev.ComponentAppID)
		return nil
	}
	_, _, wrote, err := kv.UpdateAuthorizer(ctx, *b, ev.ComponentAppID, ev.Authorizer, func(held kv.Authorizer, _ bool) (kv.Authorizer, bool) {
		if ev.InfoType == InfoUnauthorized {
			return held.Withdrawn(ev.CreateTime)
		}
		return held.Authorized(ev.CreateTime, ev.Code, ev.CodeExpiresAt)
	})
	if err == nil && wrote {
		p.cfg.Logger.Info("authorization event taken in", "component_appid", ev.ComponentAppID, "authorizer", ev.Authorizer, "info_type", ev.InfoType)
	}
	return err
}
