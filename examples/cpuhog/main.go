// cpuhog burns CPU in three functions with a known split, and measures its own time in
// each with a monotonic clock, so a profiler's shares can be checked against the truth.
//
//	go run ./examples/cpuhog -d 10s          # prints "share main.hot1 50.1%" ... at exit
//	go run ./examples/cpuhog -cpu 3s         # ends once the process has used 3 s of CPU
//
// Once every worker has run each hot function, it prints "ready <pid> <workers>" on stdout
// (tests wait for that line). -cpu sizes a run by the CPU time it burns rather than by the
// wall clock: a profiler that samples CPU time then gets the same number of samples however
// busy the machine is.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"
)

var sink uint64

// Each hot function does its own work (no shared callee), so even a profiler that only
// sees the leaf (perf with frame pointers loses the caller of a frameless leaf) can tell
// them apart. Each call does its units of `step` iterations, times scale/1024 (see jitter).

const step = 50000

//go:noinline
func hot1(scale uint64) { // three units of work
	x := sink
	n := 3 * step * scale >> 10
	for i := uint64(0); i < n; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	sink += x
}

//go:noinline
func hot2(scale uint64) { // two
	x := sink
	n := 2 * step * scale >> 10
	for i := uint64(0); i < n; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	sink += x
}

//go:noinline
func hot3(scale uint64) { // one
	x := sink
	n := step * scale >> 10
	for i := uint64(0); i < n; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	sink += x
}

// jitter returns the next scale (in 1/1024ths, uniform in [512, 1536): half to one and a
// half times the nominal work, 1 on average) from a worker's xorshift state. With the same
// work every round the loop is periodic, and a profiler sampling at a fixed period stays
// at nearly one phase of it for seconds: its samples are then correlated, and a share was
// off by five binomial sigmas (perf's own shares moved by 8 points from one second to the
// next). Random work per call makes each sample's phase independent; each function's share
// of the work stays 3:2:1 on average, and the workload's own clock measures it exactly.
func jitter(state *uint64) uint64 {
	x := *state
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	*state = x
	return 512 + x%1024
}

func main() {
	dur := flag.Duration("d", 0, "run for this long (0: until SIGINT/SIGTERM)")
	workers := flag.Int("workers", 1, "goroutines running the loop")
	cpu := flag.Duration("cpu", 0, "run until the process has used this much CPU time (0: no limit)")
	sigurg := flag.Bool("sigurg", false, "send SIGURG (the runtime's preemption signal) to itself without pause, "+
		"so Go's signal handler runs all the time: the flood keeps pace with the workers however busy the machine is")
	flag.Parse()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	deadline := make(<-chan time.Time)
	if *dur > 0 {
		deadline = time.After(*dur)
	}
	if *cpu > 0 {
		deadline = cpuSpent(*cpu)
	}
	type result struct{ spent map[string]time.Duration }
	done := make(chan struct{})
	results := make(chan result, *workers)
	var warm sync.WaitGroup
	warm.Add(*workers)
	for w := 0; w < *workers; w++ {
		go func() {
			first := true
			spent := map[string]time.Duration{}
			fns := []struct {
				name string
				f    func(uint64)
			}{{"main.hot1", hot1}, {"main.hot2", hot2}, {"main.hot3", hot3}}
			state := uint64(time.Now().UnixNano()) | 1
			for {
				select {
				case <-done:
					results <- result{spent}
					return
				default:
				}
				for _, fn := range fns {
					t := time.Now()
					fn.f(jitter(&state))
					spent[fn.name] += time.Since(t)
				}
				if first {
					first = false
					warm.Done()
				}
			}
		}()
	}
	warm.Wait()
	if *sigurg {
		go func() {
			for {
				syscall.Kill(os.Getpid(), syscall.SIGURG)
			}
		}()
	}
	fmt.Printf("ready %d %d\n", os.Getpid(), *workers)
	fmt.Fprintf(os.Stderr, "cpuhog: pid %d, %d workers\n", os.Getpid(), *workers)
	select {
	case <-stop:
	case <-deadline:
	}
	close(done)
	total := map[string]time.Duration{}
	var all time.Duration
	for w := 0; w < *workers; w++ {
		r := <-results
		for k, v := range r.spent {
			total[k] += v
			all += v
		}
	}
	names := make([]string, 0, len(total))
	for k := range total {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Printf("share %s %.2f%%\n", k, 100*float64(total[k])/float64(all))
	}
}

// cpuSpent fires once the process (all its threads) has used `limit` of CPU time.
func cpuSpent(limit time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		for {
			var ru syscall.Rusage
			if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
				used := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
				if used >= limit {
					ch <- time.Now()
					return
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return ch
}
