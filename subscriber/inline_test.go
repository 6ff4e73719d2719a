package subscriber

import (
	"os/exec"
	"strings"
	"testing"
)

// TestTokenReadsAreInlined: Subscriber.Token and Set.Token are small
// enough for the compiler to inline, which is most of why a read costs a
// few nanoseconds: inlined, the 48-byte Token is copied straight from the
// value held into the caller's variable; called, it comes back in six
// registers that the caller stores and reloads, a store-forwarding stall
// that cost a Set's read about a third of its time (BenchmarkSetToken).
// A change that makes either too big for the inliner's budget fails here.
func TestTokenReadsAreInlined(t *testing.T) {
	out, err := exec.Command("go", "build", "-gcflags=-m", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build -gcflags=-m: %v\n%s", err, out)
	}
	for _, fn := range []string{"(*Subscriber).Token", "(*Set).Token"} {
		if !strings.Contains(string(out), "can inline "+fn+"\n") {
			t.Errorf("the compiler does not inline %s", fn)
		}
	}
}
