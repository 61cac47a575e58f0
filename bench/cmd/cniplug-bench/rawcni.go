package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"
)

// chainCPU is the CPU time of one raw libcni ADD+DEL of a conflist (the loop of BenchmarkLibcniAddDel in
// cnibridge/bench_test.go, run in the bench process so that getrusage can tell the plugins from libcni):
// Plugins is what the CNI plugins and the commands they ran took (RUSAGE_CHILDREN: the bench waits for each
// plugin, each plugin for its own children), Libcni the bench process's own (RUSAGE_SELF: libcni, and the
// idle rest of the bench). Seconds per ADD+DEL.
type chainCPU struct {
	Iterations      int
	Plugins, Libcni float64
	Wall            float64
}

func rusageSeconds(who int) (float64, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(who, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds(), nil
}

// measureChainCPU runs n raw libcni ADD+DEL of the conflist at path into a netns of its own (after one untimed
// round), nothing else of the bench running meanwhile.
func measureChainCPU(ctx context.Context, e *env, path string, n int) (*chainCPU, error) {
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		return nil, err
	}
	ns := "cnibenchraw" + e.runID
	if _, err := run("ip", "netns", "add", ns); err != nil {
		return nil, err
	}
	defer func() { _ = exec.Command("ip", "netns", "del", ns).Run() }()
	cache := filepath.Join(e.tmp, "raw-cni-cache")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{filepath.Join(e.repo, "bin", "cni")}, cache, nil)
	addDel := func(i int) error {
		rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("cnibenchraw%s%08d", e.runID, i), NetNS: filepath.Join("/run/netns", ns), IfName: "eth0"}
		if _, err := cni.AddNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("raw libcni ADD (%s): %w", filepath.Base(path), err)
		}
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("raw libcni DEL (%s): %w", filepath.Base(path), err)
		}
		return nil
	}
	if err := addDel(0); err != nil {
		return nil, err
	}
	c0, err := rusageSeconds(unix.RUSAGE_CHILDREN)
	if err != nil {
		return nil, err
	}
	s0, _ := rusageSeconds(unix.RUSAGE_SELF)
	start := time.Now()
	for i := 1; i <= n; i++ {
		if err := addDel(i); err != nil {
			return nil, err
		}
	}
	wall := time.Since(start).Seconds()
	c1, _ := rusageSeconds(unix.RUSAGE_CHILDREN)
	s1, _ := rusageSeconds(unix.RUSAGE_SELF)
	return &chainCPU{Iterations: n, Plugins: (c1 - c0) / float64(n), Libcni: (s1 - s0) / float64(n), Wall: wall / float64(n)}, nil
}

// ceiling is the throughput (lifecycles/s) the chain allows on cores CPUs: cores / (CPU of a lifecycle on
// Docker's bridge + CPU of the chain's plugins per ADD+DEL), nothing of cniplug's.
func ceiling(cores int, bridgeCPU, pluginCPU float64) float64 {
	if cores <= 0 || !(bridgeCPU+pluginCPU > 0) {
		return 0
	}
	return float64(cores) / (bridgeCPU + pluginCPU)
}
