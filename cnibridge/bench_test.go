package cnibridge_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/containernetworking/cni/libcni"
)

// benchNetwork is the conflist the benchmarks run: the file named by CNIPLUG_BENCH_CONFLIST (the benchmark
// program passes the conflist its Docker network uses, so the numbers compare), else a bridge + host-local
// network of its own whose bridge is removed afterwards.
func benchNetwork(b *testing.B) *cnibridge.Network {
	b.Helper()
	var data []byte
	if path := os.Getenv("CNIPLUG_BENCH_CONFLIST"); path != "" {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			b.Fatal(err)
		}
	} else {
		bridge := testutil.UniqueName("bnchbr")
		data = bridgeConflist(testutil.UniqueName("bnch"), bridge, fmt.Sprintf("10.251.%d.0/24", 100+rand.IntN(100)), b.TempDir())
		b.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge).Run() })
	}
	nw, err := cnibridge.ParseNetwork(data)
	if err != nil {
		b.Fatal(err)
	}
	return nw
}

func requireBenchEnv(b *testing.B) string {
	b.Helper()
	testutil.RequireRoot(b)
	bin := testutil.CNIBinDir(b)
	before := testutil.TakeSnapshot(b)
	b.Cleanup(func() { testutil.AssertNoLeaks(b, before) })
	return bin
}

func benchContainerID(i int) string { return fmt.Sprintf("%016x%016x", rand.Uint64(), i) }

// BenchmarkLibcniAddDel is the cost of the CNI work alone: libcni ADD then DEL of the conflist into one
// existing network namespace, nothing of cniplug around it.
func BenchmarkLibcniAddDel(b *testing.B) {
	bin := requireBenchEnv(b)
	nw := benchNetwork(b)
	ns := testutil.UniqueName("bnchns")
	testutil.Run(b, "ip", "netns", "add", ns)
	b.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	cni := libcni.NewCNIConfigWithCacheDir([]string{bin}, b.TempDir(), nil)
	b.ResetTimer()
	addDelLoop(b, cni, nw, ns)
}

// addDelLoop runs b.N libcni ADD+DEL of the network into the named netns.
func addDelLoop(b *testing.B, cni *libcni.CNIConfig, nw *cnibridge.Network, ns string) {
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		rt := &libcni.RuntimeConf{ContainerID: benchContainerID(i), NetNS: filepath.Join("/run/netns", ns), IfName: "eth0"}
		if _, err := cni.AddNetworkList(ctx, nw.List, rt); err != nil {
			b.Fatalf("ADD: %v", err)
		}
		if err := cni.DelNetworkList(ctx, nw.List, rt); err != nil {
			b.Fatalf("DEL: %v", err)
		}
	}
}

// BenchmarkRunnerLifecycle is the same CNI work the way cniplug does it for one container: a staging netns
// of its own, ADD, reading the link back, handing it to the host (Join) and back, DEL and removing the netns.
// The difference to BenchmarkLibcniAddDel is cnibridge's own cost.
func BenchmarkRunnerLifecycle(b *testing.B) {
	bin := requireBenchEnv(b)
	nw := benchNetwork(b)
	r, err := cnibridge.NewRunner(cnibridge.Config{BinDirs: []string{bin}, CacheDir: b.TempDir(), NetNSDir: b.TempDir(),
		Owner: "cnbench", Timeout: 20 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		att, err := r.NewAttachment(cnibridge.AddRequest{ContainerID: benchContainerID(i), Network: nw})
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Add(ctx, att); err != nil {
			b.Fatalf("Add: %v", err)
		}
		if err := r.MoveToHost(att); err != nil {
			b.Fatalf("MoveToHost: %v", err)
		}
		if err := r.Teardown(ctx, att); err != nil {
			b.Fatalf("Teardown: %v", err)
		}
	}
}

// BenchmarkLibcniAddDelLive is BenchmarkLibcniAddDel with other attachments of the conflist alive around it
// (sub-benchmark live=N; CNIPLUG_BENCH_LIVE lists the sizes, default 10,200): how much of a lifecycle's
// growth with live endpoints is the CNI plugins' own (bridge's ipMasq keeps one iptables chain per container).
func BenchmarkLibcniAddDelLive(b *testing.B) {
	bin := requireBenchEnv(b)
	nw := benchNetwork(b)
	sizes := []int{10, 200}
	if v := os.Getenv("CNIPLUG_BENCH_LIVE"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 0 {
				b.Fatalf("CNIPLUG_BENCH_LIVE=%q: want sizes like 10,200", v)
			}
			sizes = append(sizes, n)
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{bin}, b.TempDir(), nil)
	ctx := context.Background()
	// The live attachments share one netns (eth<i>); the measured one has its own.
	liveNS, ns := testutil.UniqueName("bnchlv"), testutil.UniqueName("bnchns")
	for _, n := range []string{liveNS, ns} {
		testutil.Run(b, "ip", "netns", "add", n)
		b.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n).Run() })
	}
	var live []*libcni.RuntimeConf
	b.Cleanup(func() {
		for _, rt := range live {
			if err := cni.DelNetworkList(ctx, nw.List, rt); err != nil {
				b.Errorf("DEL of a live attachment: %v", err)
			}
		}
	})
	for _, size := range sizes {
		for len(live) < size {
			rt := &libcni.RuntimeConf{ContainerID: benchContainerID(len(live)), NetNS: filepath.Join("/run/netns", liveNS), IfName: fmt.Sprintf("eth%d", len(live))}
			if _, err := cni.AddNetworkList(ctx, nw.List, rt); err != nil {
				b.Fatalf("ADD of live attachment %d: %v", len(live), err)
			}
			live = append(live, rt)
		}
		b.Run(fmt.Sprintf("live=%d", size), func(b *testing.B) { addDelLoop(b, cni, nw, ns) })
	}
}
