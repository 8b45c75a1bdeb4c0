// Package regress is a three-stage pipeline with a switch that makes exactly one stage,
// checksum, do its work twice: a regression of known size and place, for `goflame diff`.
//
//	go test -run '^$' -bench . -benchtime 45000x -cpuprofile base.pprof                  # unchanged
//	REGRESS_SLOW=1 go test -run '^$' -bench . -benchtime 45000x -cpuprofile slow.pprof   # checksum 2x
//	go test -run '^$' -bench . -benchtime 45000x -cpuprofile slow.pprof -args -slow      # the same, as a flag
//	goflame diff base.pprof slow.pprof        # flags example.com/regress.checksum alone, exit 1
//
// A fixed iteration count, not a duration: Go samples CPU time (100 Hz), so the same work
// gives about the same number of samples (~1,100 here) however busy the machine is.
//
// The stages are marked noinline so that each is its own frame in a profile, and each does
// its own loop (no shared callee), so their shares are set by construction.
package regress

import "strconv"

// Rounds is how many passes checksum makes over its input: 1 normally, 2 with the switch.
var Rounds = 1

// tokenize counts the words in buf (runs of bytes that are not spaces or newlines).
//
//go:noinline
func tokenize(buf []byte) int {
	words, in := 0, false
	for _, c := range buf {
		sep := c == ' ' || c == '\n' || c == '\t'
		if !sep && !in {
			words++
		}
		in = !sep
	}
	return words
}

// checksum is an FNV-1a hash of buf, taken Rounds times (the second pass folds in the first).
//
//go:noinline
func checksum(buf []byte) uint32 {
	h := uint32(2166136261)
	for r := 0; r < Rounds; r++ {
		for _, c := range buf {
			h ^= uint32(c)
			h *= 16777619
		}
	}
	return h
}

// render formats n numbers derived from seed as decimal text.
//
//go:noinline
func render(dst []byte, seed uint32, n int) []byte {
	dst = dst[:0]
	x := uint64(seed)
	for i := 0; i < n; i++ {
		x = x*6364136223846793005 + 1442695040888963407
		dst = strconv.AppendUint(dst, x>>40, 10)
		dst = append(dst, ' ')
	}
	return dst
}

// Process runs the three stages over buf and returns something that depends on all of them.
func Process(buf, scratch []byte) ([]byte, int) {
	words := tokenize(buf[:len(buf)/3])
	sum := checksum(buf)
	scratch = render(scratch, sum, len(buf)/16)
	return scratch, words + len(scratch)
}

// Input is deterministic text of n bytes: words of 1 to 8 letters separated by spaces.
func Input(n int) []byte {
	buf := make([]byte, 0, n)
	x := uint32(1)
	for len(buf) < n {
		x = x*1103515245 + 12345
		l := int(x>>28)%8 + 1
		for i := 0; i < l && len(buf) < n; i++ {
			buf = append(buf, byte('a'+(x>>(i*3))%26))
		}
		if len(buf) < n {
			buf = append(buf, ' ')
		}
	}
	return buf
}
