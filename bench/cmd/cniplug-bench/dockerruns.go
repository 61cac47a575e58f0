package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// dockerRun is `docker run --rm` of `true`, or with detach a long-running container.
func (e *env) dockerRunArgs(network string, detach bool) []string {
	args := []string{"run", "--label", "cniplug-bench=" + e.runID}
	if detach {
		args = append(args, "-d")
	} else {
		args = append(args, "--rm")
	}
	args = append(args, "--net", network, e.image)
	if detach {
		return append(args, "sleep", "3600")
	}
	return append(args, "true")
}

// benchKind is a network whose docker runs the benchmark times, by the name the report gives it.
type benchKind struct{ name, network string }

// measureAll runs the measurements of a bench run, one step after the other, into res.
func measureAll(ctx context.Context, e *env, o *options, res *results) error {
	res.Host = hostInfo()
	if err := setUpNetworks(e, o, res); err != nil {
		return err
	}
	kinds := []benchKind{
		{"none", "none"}, {"bridge", e.dockerBridge}, {"cniplug", e.cniplugNet}, {kindSync, e.syncNet}, {kindDirect, e.directNet}, {kindDockerDirect, e.dockerDirectNet}, {kindWarm, e.warmNet}, {kindMasq, e.masqNet}, {kindNftMasq, e.nftNet}, {kindFloor, e.floorNet}}

	deletes, err := warmUp(ctx, e, res, kinds)
	if err != nil {
		return err
	}
	lc := &lifecycles{ctx: ctx, e: e, res: res, deletes: deletes}
	if err := measureRunRM(ctx, e, o, res, kinds, lc); err != nil {
		return err
	}
	if err := measurePairs(e, o, res, kinds, lc); err != nil {
		return err
	}
	if err := measureThroughput(ctx, e, o, res, kinds, lc); err != nil {
		return err
	}
	if err := measureChains(ctx, e, o, res); err != nil {
		return err
	}
	if err := measureScale(ctx, e, o, res, lc.cniplug); err != nil {
		return err
	}
	return measureOutsideDocker(ctx, e, o, res)
}

// setUpNetworks picks free subnets, writes the conflist (recorded in res), starts the plugin and creates the
// Docker networks of every kind.
func setUpNetworks(e *env, o *options, res *results) error {
	subnet, err := freeSubnet("10.219.0.0/16", "10.229.0.0/16", "10.239.0.0/16")
	if err != nil {
		return err
	}
	bridgeSubnet, err := freeSubnet("10.218.0.0/16", "10.228.0.0/16", "10.238.0.0/16")
	if err != nil {
		return err
	}
	floorSubnet, err := freeSubnet("10.217.0.0/16", "10.227.0.0/16", "10.237.0.0/16")
	if err != nil {
		return err
	}
	masqSubnet, err := freeSubnet("10.216.0.0/16", "10.226.0.0/16", "10.236.0.0/16")
	if err != nil {
		return err
	}
	nftSubnet, err := freeSubnet("10.215.0.0/16", "10.225.0.0/16", "10.235.0.0/16")
	if err != nil {
		return err
	}
	dockerIPAMSubnet, err := freeSubnet("10.214.0.0/16", "10.224.0.0/16", "10.234.0.0/16")
	if err != nil {
		return err
	}
	if err := e.writeConflist(subnet, dockerIPAMSubnet, o.IPMasq); err != nil {
		return err
	}
	if err := e.writeMasqConflists(masqSubnet, nftSubnet); err != nil {
		return err
	}
	conf, _ := os.ReadFile(e.conflist)
	res.Conflist = strings.TrimSpace(string(conf))
	if err := e.startPlugin(); err != nil {
		return err
	}
	e.roots = findRoots(e.plugin.Process.Pid)
	if l, err := startExitListener(); err != nil {
		e.logf("no CPU split by process group (%v)", err)
	} else {
		e.exits = l
		e.onCleanup("closing the taskstats listener", func() error { l.close(); return nil })
	}
	// The masquerade networks first: their removal comes after the containers'.
	if err := e.createMasqNetworks(); err != nil {
		return err
	}
	if err := e.createNetworks(bridgeSubnet, dockerIPAMSubnet); err != nil {
		return err
	}
	return e.createFloorNetwork(floorSubnet)
}

// warmUp runs a few untimed lifecycles of every kind, records the plugin's RSS after them, and returns the
// DeleteEndpoint calls cniplug has served by then.
func warmUp(ctx context.Context, e *env, res *results, kinds []benchKind) (float64, error) {
	e.logf("warming up")
	const warmups = 2
	for _, k := range kinds {
		for i := 0; i < warmups; i++ {
			if _, err := timed(exec.CommandContext(ctx, "docker", e.dockerRunArgs(k.network, false)...)); err != nil {
				return 0, err
			}
		}
	}
	if rss, err := e.rss(); err == nil {
		res.RSS = map[int]int64{0: rss}
	}
	// The warm-up lifecycles on the cniplug networks (the plugin's metrics do not tell them apart), and the
	// background DELs of the default network's done.
	lifecycles, err := e.settle(3 * warmups)
	if err != nil {
		return 0, err
	}
	return lifecycles.methodCount["NetworkDriver.DeleteEndpoint"], nil
}

// measureRunRM times sequential `docker run --rm`, the kinds interleaved so that drift hits them alike, while
// the plugin's CPU is profiled if asked.
func measureRunRM(ctx context.Context, e *env, o *options, res *results, kinds []benchKind, lc *lifecycles) error {
	e.logf("sequential docker run --rm: %d per kind", o.Seq)
	profileDone := make(chan error, 1)
	if o.Profile > 0 {
		go func() { profileDone <- e.cpuProfile(ctx, o.Profile, filepath.Join(o.Out, "cniplug-cpu.pprof")) }()
	} else {
		profileDone <- nil
	}
	res.RunRM = map[string]samples{}
	for i := 0; i < o.Seq; i++ {
		for _, k := range kinds {
			d, err := lc.of(k.name, e.dockerRunArgs(k.network, false))
			if err != nil {
				return err
			}
			res.RunRM[k.name] = append(res.RunRM[k.name], d.Seconds())
		}
	}
	if err := <-profileDone; err != nil {
		e.logf("CPU profile failed: %v", err)
	}
	return nil
}

// measurePairs times sequential `docker run -d` + `docker rm -f`, the kinds interleaved.
func measurePairs(e *env, o *options, res *results, kinds []benchKind, lc *lifecycles) error {
	e.logf("sequential docker run -d + docker rm -f: %d per kind", o.Pairs)
	res.Pair = map[string]samples{}
	for i := 0; i < o.Pairs; i++ {
		for _, k := range kinds {
			name := fmt.Sprintf("bench-%s-pair-%s-%d", e.runID, k.name, i)
			args := append([]string{"run", "--name", name}, e.dockerRunArgs(k.network, true)[1:]...)
			d, err := lc.of(k.name, args, []string{"rm", "-f", name})
			if err != nil {
				return err
			}
			res.Pair[k.name] = append(res.Pair[k.name], d.Seconds())
		}
	}
	return nil
}

// measureThroughput runs `docker run --rm` lifecycles in parallel on every kind but --net=none, and records
// the lifecycles per second and the CPU they took, at each parallelism.
func measureThroughput(ctx context.Context, e *env, o *options, res *results, kinds []benchKind, lc *lifecycles) error {
	e.logf("throughput: %d lifecycles at parallelism %v", o.ThroughputN, o.Parallelism)
	res.Throughput = map[string]map[int]float64{}
	for _, p := range o.Parallelism {
		for _, k := range kinds {
			if k.name == "none" {
				continue
			}
			if res.Throughput[k.name] == nil {
				res.Throughput[k.name] = map[int]float64{}
			}
			if _, failed := res.ThroughputErrors[k.name]; failed {
				continue
			}
			if err := measureThroughputCell(ctx, e, o, res, k, p, lc); err != nil {
				return err
			}
		}
	}
	return nil
}

// measureThroughputCell is one kind at one parallelism p.
func measureThroughputCell(ctx context.Context, e *env, o *options, res *results, k benchKind, p int, lc *lifecycles) error {
	before, err := e.cpuTimes()
	if err != nil {
		return err
	}
	win, err := startGroups(e.exits)
	if err != nil {
		return err
	}
	wall, err := parallel(o.ThroughputN, p, func(int) error {
		_, err := timed(exec.CommandContext(ctx, "docker", e.dockerRunArgs(k.network, false)...))
		return err
	})
	if err != nil {
		// A kind that fails under parallel lifecycles is reported as such, and the others still measured.
		e.logf("throughput of %s at %d failed: %v", k.name, p, err)
		if res.ThroughputErrors == nil {
			res.ThroughputErrors = map[string]string{}
		}
		res.ThroughputErrors[k.name] = fmt.Sprintf("at %d parallel: %v", p, err)
		if isCniplugKind(k.name) {
			return lc.settleAfter(0)
		}
		return nil
	}
	res.Throughput[k.name][p] = float64(o.ThroughputN) / wall.Seconds()
	// The CPU of the cell includes its background removals and the warm pool's refill: on cniplug, every
	// DeleteEndpoint of the cell served and finished.
	extra := 0.0
	if isCniplugKind(k.name) {
		extra = float64(o.ThroughputN)
	}
	if err := lc.settleAfter(extra); err != nil {
		return err
	}
	after, err := e.cpuTimes()
	if err != nil {
		return err
	}
	groups, err := win.end(e.roots)
	if err != nil {
		e.logf("CPU split of %s at %d: %v", k.name, p, err)
		groups = nil
	}
	res.addCPU(k.name, after.machine-before.machine, after.plugin-before.plugin, o.ThroughputN, groups)
	return nil
}

// measureChains measures the CPU of raw libcni ADD+DEL of each conflist: the chain's own cost, for the
// throughput ceiling.
func measureChains(ctx context.Context, e *env, o *options, res *results) error {
	if o.ChainN <= 0 {
		return nil
	}
	e.logf("raw libcni ADD+DEL CPU: %d per conflist", o.ChainN)
	res.Chains = map[string]*chainCPU{}
	for name, path := range map[string]string{chainMain: e.conflist, chainNoMasq: e.masqConflist, chainNft: e.nftConflist} {
		c, err := measureChainCPU(ctx, e, path, o.ChainN)
		if err != nil {
			return err
		}
		res.Chains[name] = c
	}
	return nil
}

// measureOutsideDocker runs what is measured without Docker, unless skipped: the Go benchmarks and Podman.
func measureOutsideDocker(ctx context.Context, e *env, o *options, res *results) error {
	if !o.SkipGoBench {
		e.logf("Go benchmarks: raw libcni ADD+DEL and the cnibridge lifecycle, %d iterations", o.GoBenchN)
		gb, err := goBench(ctx, e, o.GoBenchN, o.LiveSmall, o.LiveLarge)
		if err != nil {
			return err
		}
		res.GoBench = gb
	}

	if !o.SkipPodman {
		e.logf("podman: %d runs per kind", o.PodmanN)
		res.Podman = measurePodman(ctx, e, o)
	}
	return nil
}

func measureScale(ctx context.Context, e *env, o *options, res *results,
	cniplugLifecycle func([]string, ...[]string) (time.Duration, lifecycleCost, error)) error {
	res.Scale = map[int]*scalePoint{}
	live := 0
	for _, target := range []int{o.LiveSmall, o.LiveLarge} {
		e.logf("starting %d long-running containers on cniplug (%d live)", target-live, target)
		if _, err := parallel(target-live, o.StartWorkers, func(i int) error {
			_, err := docker(e.dockerRunArgs(e.cniplugNet, true)...)
			return err
		}); err != nil {
			return err
		}
		live = target
		before, err := e.scrape()
		if err != nil {
			return err
		}
		pt := &scalePoint{PerCall: map[string]float64{}}
		for i := 0; i < o.LiveSamples; i++ {
			d, cost, err := cniplugLifecycle(e.dockerRunArgs(e.cniplugNet, false))
			if err != nil {
				return err
			}
			pt.Wall = append(pt.Wall, d.Seconds())
			pt.InPlugin = append(pt.InPlugin, cost.inPlugin)
			pt.Overhead = append(pt.Overhead, cost.overhead())
		}
		after, err := e.scrape()
		if err != nil {
			return err
		}
		for m, s := range after.methodSeconds {
			if n := after.methodCount[m] - before.methodCount[m]; n > 0 {
				pt.PerCall[m] = (s - before.methodSeconds[m]) / n
			}
		}
		if rss, err := e.rss(); err == nil {
			res.RSS[target] = rss
		}
		res.Scale[target] = pt
	}
	e.logf("removing the %d long-running containers", live)
	ids, err := docker("ps", "-q", "--filter", "label=cniplug-bench="+e.runID)
	if err != nil {
		return err
	}
	list := strings.Fields(ids)
	_, err = parallel(len(list), 8, func(i int) error {
		_, err := docker("rm", "-f", list[i])
		return err
	})
	return err
}
