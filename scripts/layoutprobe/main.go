// layoutprobe is the Go program goflame's layout tables are generated from, and the
// test fixture that checks them. Any Go program carries the runtime's types in its DWARF;
// this one also uses channels, select, locks, timers, pipes, defer/recover, an interface
// value and pprof labels so that every runtime structure goflame reads is live in the binary.
//
// With "park" as its argument it parks goroutines in known wait states, prints the
// runtime's own dump of every goroutine (runtime.Stack(all)), prints "READY" and
// sleeps until killed: a test then reads the same goroutines out of its memory.
package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"
)

type shape interface{ area() float64 }

type square struct{ side float64 }

func (s square) area() float64 { return s.side * s.side }

func recovered() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("recovered: %v", r)
		}
	}()
	var m map[string]int
	m["x"] = 1 // panics: assignment to entry in nil map
	return nil
}

func park() {
	var mu sync.Mutex
	var rw sync.RWMutex
	var wg sync.WaitGroup
	cond := sync.NewCond(&sync.Mutex{})
	recvch, sendch, selch := make(chan int), make(chan int), make(chan int)
	var nilch chan int
	r, w, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	defer w.Close()
	mu.Lock()
	rw.Lock()
	wg.Add(1)
	started := make(chan struct{}, 16)
	spawn := func(f func()) {
		go func() {
			started <- struct{}{}
			f()
		}()
	}
	spawn(func() { <-recvch })
	spawn(func() { sendch <- 1 })
	spawn(func() {
		select {
		case <-selch:
		case <-nilch:
		}
	})
	spawn(func() { select {} })
	spawn(func() { <-nilch })
	spawn(func() { nilch <- 1 })
	spawn(func() { mu.Lock() })
	spawn(func() { rw.RLock() })
	spawn(func() { wg.Wait() })
	spawn(func() { time.Sleep(time.Hour) })
	spawn(func() {
		cond.L.Lock()
		cond.Wait()
	})
	spawn(func() {
		buf := make([]byte, 1)
		_, _ = r.Read(buf)
	})
	for i := 0; i < 12; i++ {
		<-started
	}
	// Let every goroutine reach its blocking call; a goroutine still runnable
	// shows up as such in the dump and is simply not compared.
	time.Sleep(300 * time.Millisecond)
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	os.Stdout.Write(buf[:n])
	fmt.Println("READY")
	time.Sleep(time.Hour)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "park" {
		park()
		return
	}
	pprof.Do(context.Background(), pprof.Labels("probe", "layout"), func(ctx context.Context) {
		v, _ := pprof.Label(ctx, "probe")
		fmt.Println("label", v)
	})
	var s shape = square{side: 2}
	done := make(chan float64, 1)
	go func() { done <- s.area() }()
	select {
	case a := <-done:
		fmt.Println("area", a, recovered())
	case <-time.After(time.Second):
		fmt.Println("timeout")
	}
}
