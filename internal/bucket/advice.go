package bucket

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NeedsHuman returns the error to stop on when err, from opening or
// repairing a bucket on nc, is one retrying cannot fix, saying what to do
// about it; otherwise nil. since is the connection's last error before
// the attempt that failed with err.
func NeedsHuman(nc *nats.Conn, since, err error) error {
	// JetStream's error codes (nats-server's errors.json) for a bucket
	// that cannot be made what the refresher asks for.
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case 10052, 10061: // invalid stream configuration; replicas cannot be updated
			return fmt.Errorf("%w: an existing bucket's configuration cannot be changed to this refresher's "+
				"(--replicas, --history): start it with the bucket's settings, or delete the bucket "+
				"(nats kv del) and let wxtoken create it again", err)
		case 10074: // replicas > 1 not supported in non-clustered mode
			return fmt.Errorf("%w: --replicas above 1 needs a NATS cluster; this server is not clustered", err)
		case 10065: // subjects overlap with an existing stream
			return fmt.Errorf("%w: another stream captures the bucket's subjects: remove it or use another --bucket", err)
		case jetstream.JSErrCodeJetStreamNotEnabledForAccount:
			return fmt.Errorf("%w: enable JetStream for this NATS account", err)
		}
	}
	// A request the server refuses for lack of permission gets no answer;
	// the refusal comes back apart, as the connection's last error. Any
	// refusal during the attempt counts: a JetStream request denied, or
	// the reply subject (a wrong --inbox-prefix) refused.
	if last := nc.LastError(); !errors.Is(last, since) && errors.Is(last, nats.ErrPermissionViolation) {
		return fmt.Errorf("publisher: the NATS user may not do what the refresher needs (%v): give it the refresher's "+
			"permissions of nats.conf, with its inbox prefix", last)
	}
	return nil
}
