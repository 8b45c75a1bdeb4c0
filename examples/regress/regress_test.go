package regress

import (
	"flag"
	"os"
	"testing"
)

// The switch: REGRESS_SLOW=1 in the environment, or `-args -slow` on the go test command line.
var slowFlag = flag.Bool("slow", false, "make checksum do its work twice (a 2x regression of one function)")

func setRounds() {
	Rounds = 1
	if *slowFlag || os.Getenv("REGRESS_SLOW") == "1" {
		Rounds = 2
	}
}

// BenchmarkProcess runs the pipeline on every P at once (b.RunParallel), so a CPU profile
// of a short run still holds enough samples to judge a change by.
func BenchmarkProcess(b *testing.B) {
	setRounds()
	buf := Input(64 << 10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		scratch := make([]byte, 0, 64<<10)
		n := 0
		for pb.Next() {
			var k int
			scratch, k = Process(buf, scratch)
			n += k
		}
		if n < 0 {
			b.Error("impossible")
		}
	})
}

func TestProcessDependsOnEveryStage(t *testing.T) {
	setRounds()
	buf := Input(4096)
	out, n := Process(buf, nil)
	if n <= len(out) || len(out) == 0 {
		t.Fatalf("Process(%d bytes) = %d bytes, %d", len(buf), len(out), n)
	}
}
