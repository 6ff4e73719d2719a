package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// readReplicas returns the state every live refresher replica publishes
// in the replicas bucket (the leader is one of them), by instance; nil when
// the bucket cannot be read (no permission, no replica ever ran, or a hub
// out of reach). The bucket is in the JetStream domain hub, or in the one
// nc is connected to when hub is empty.
func readReplicas(ctx context.Context, nc *nats.Conn, bucket, hub string) []kv.ReplicaState {
	js, err := jetstream.New(nc)
	if hub != "" {
		js, err = jetstream.NewWithDomain(nc, hub)
	}
	if err != nil {
		return nil
	}
	b, err := js.KeyValue(ctx, kv.ReplicasBucket(bucket))
	if err != nil {
		return nil
	}
	entries, err := kv.ReadAll(ctx, b)
	if err != nil {
		return nil
	}
	replicas := []kv.ReplicaState{}
	for _, e := range entries {
		if s, err := kv.DecodeReplicaState(e.Value()); err == nil {
			replicas = append(replicas, s)
		}
	}
	slices.SortFunc(replicas, func(a, b kv.ReplicaState) int { return strings.Compare(a.Instance, b.Instance) })
	return replicas
}

// printReplicas prints each replica's state, and the apps it cannot lead
// with the fix.
func printReplicas(w io.Writer, replicas []kv.ReplicaState, now time.Time) error {
	if replicas == nil {
		_, err := fmt.Fprintln(w, "\nreplicas: unknown (this NATS user may not read the replicas bucket)")
		return err
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tROLE\tPROBED\tCANNOT LEAD\tSEEN")
	for _, r := range replicas {
		role := "starting"
		switch {
		case r.Leading:
			role = "leader"
		case r.Standing:
			role = "standby"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s ago\n", r.Instance, role, probedOf(r), r.CannotLead, now.Sub(r.At).Round(time.Second))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range replicas {
		for _, app := range r.Apps {
			fmt.Fprintf(w, "%s cannot lead %s: errcode %d (%s): %s\n", r.Instance, app.AppID, app.ErrCode, app.Problem, app.Fix)
		}
		if more := r.CannotLead - len(r.Apps); more > 0 {
			fmt.Fprintf(w, "%s cannot lead %d more apps (its log names them)\n", r.Instance, more)
		}
	}
	return nil
}

// probedOf is how many apps a replica's probes judged, of how many: "12/30"
// while its first round is under way (its CANNOT LEAD is a part, and no
// replica defers to it yet), "-" when its probes are off.
func probedOf(r kv.ReplicaState) string {
	switch {
	case r.Configured > 0:
		return fmt.Sprintf("%d/%d", r.Probed, r.Configured)
	case r.Probed > 0: // a replica from before "configured"
		return fmt.Sprint(r.Probed)
	}
	return "-"
}
