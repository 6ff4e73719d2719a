package kv

import "testing"

func TestReplicaKeyIsAValidKeyOfAnyInstance(t *testing.T) {
	for in, want := range map[string]string{"host-42": "host-42", "web.example.com-7": "web_example_com-7", "": "_", "a b/c": "a_b_c"} {
		if got := ReplicaKey(in); got != want || ValidateBucketName(got) != nil {
			t.Errorf("ReplicaKey(%q) = %q, want %q", in, got, want)
		}
	}
}
