package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// Authorizers imported for a platform that no refresher serves would be
// kept by nobody: their tokens never fetched, their refresh tokens left to
// die. The refresher records each platform it serves in the platform
// bucket (kv.PlatformKey); an import checks the file's platforms against
// those records.

// checkServed refuses the entries' platforms that the platform bucket
// records no refresher serving, naming the ones it does.
func checkServed(ctx context.Context, b jetstream.KeyValue, entries []importEntry) error {
	components := map[string]bool{}
	for _, e := range entries {
		components[e.component] = true
	}
	var unserved []string
	for _, c := range slices.Sorted(maps.Keys(components)) {
		_, err := b.Get(ctx, kv.PlatformKey(c))
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			unserved = append(unserved, c)
		case err != nil:
			return describeNATSError(err)
		}
	}
	if len(unserved) == 0 {
		return nil
	}
	served, err := servedPlatforms(ctx, b)
	if err != nil {
		return describeNATSError(err)
	}
	which := "platform " + unserved[0] + " is"
	if len(unserved) > 1 {
		which = "platforms " + strings.Join(unserved, ", ") + " are"
	}
	known := "it serves none yet"
	if len(served) > 0 {
		known = "it serves " + strings.Join(served, ", ")
	}
	return fmt.Errorf("%s not served by the refresher (%s): add it to the apps file under platforms: and restart "+
		"`wxtoken serve`, or give --force to import anyway; nothing was written", which, known)
}

// servedPlatforms returns the component appids the platform bucket records
// a refresher serving, sorted.
func servedPlatforms(ctx context.Context, b jetstream.KeyValue) ([]string, error) {
	lister, err := b.ListKeysFiltered(ctx, kv.PlatformsKeys)
	if err != nil {
		return nil, err
	}
	defer lister.Stop()
	var served []string
	for key := range lister.Keys() {
		if c, ok := kv.SplitPlatformKey(key); ok {
			served = append(served, c)
		}
	}
	slices.Sort(served)
	return served, ctx.Err()
}
