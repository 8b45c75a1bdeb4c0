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
// them apart.

//go:noinline
func hot1() { // three units of work
	x := sink
	for i := 0; i < 150000; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	sink += x
}

//go:noinline
func hot2() { // two
	x := sink
	for i := 0; i < 100000; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	sink += x
}

//go:noinline
func hot3() { // one
	x := sink
	for i := 0; i < 50000; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	sink += x
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
				f    func()
			}{{"main.hot1", hot1}, {"main.hot2", hot2}, {"main.hot3", hot3}}
			for {
				select {
				case <-done:
					results <- result{spent}
					return
				default:
				}
				for _, fn := range fns {
					t := time.Now()
					fn.f()
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
