package kv_test

import (
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestReadAllReadsTheNewestValueOfEveryKey: one watch gives the newest
// value of each key, deleted keys left out, or of the keys a filter
// matches; an empty bucket reads as nothing.
func TestReadAllReadsTheNewestValueOfEveryKey(t *testing.T) {
	ctx := testenv.Context(t, 10*time.Second)
	js, _ := jetstream.New(testenv.Connect(t, testenv.NATS(t).ClientURL()))
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "readall", History: 4})
	if err != nil {
		t.Fatal(err)
	}
	if all, err := kv.ReadAll(ctx, b); err != nil || len(all) != 0 {
		t.Fatalf("an empty bucket: %d values, %v", len(all), err)
	}
	for _, kvp := range [][2]string{{"a", "1"}, {"b", "1"}, {"a", "2"}, {"c.x", "1"}, {"c.y", "1"}} {
		if _, err := b.PutString(ctx, kvp[0], kvp[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	read := func(filters ...string) []string {
		t.Helper()
		all, err := kv.ReadAll(ctx, b, filters...)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range all {
			got = append(got, e.Key()+"="+string(e.Value()))
		}
		slices.Sort(got)
		return got
	}
	if got, want := read(), []string{"a=2", "c.x=1", "c.y=1"}; !slices.Equal(got, want) {
		t.Errorf("the whole bucket: %v, want %v", got, want)
	}
	if got, want := read("c.*"), []string{"c.x=1", "c.y=1"}; !slices.Equal(got, want) {
		t.Errorf("c.*: %v, want %v", got, want)
	}
}
