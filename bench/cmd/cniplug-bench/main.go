// Command cniplug-bench measures cniplug (with its default options, and without background DEL: --opt async-delete=false)
// against Docker's own bridge network, --net=none and Podman on the same machine in one run, and writes a
// markdown table and a PNG chart (make bench). It drives the real docker CLI and a cniplug it starts itself,
// so a run is reproducible on any host with dockerd; it needs root and removes everything it creates. Run it
// under the test lock: it changes links, netns and iptables.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	Out          string
	Image        string
	Seq          int
	Pairs        int
	ThroughputN  int
	Parallelism  []int
	LiveSmall    int
	LiveLarge    int
	LiveSamples  int
	PodmanN      int
	GoBenchN     int
	Profile      time.Duration
	SkipPodman   bool
	SkipGoBench  bool
	StartWorkers int
	IPMasq       bool
}

// render, when set, names a results.json to re-render instead of measuring.
var render string

func parseOptions() (*options, error) {
	o := &options{}
	par := "1,4,16"
	flag.StringVar(&o.Out, "out", "bench/out", "where results.md, results.json, chart.png and profiles are written")
	flag.StringVar(&o.Image, "image", "cniplug-test/busybox:latest", "tiny image to run (built by scripts/busybox-image.sh when missing)")
	flag.IntVar(&o.Seq, "n", 20, "sequential `docker run --rm` lifecycles per network kind")
	flag.IntVar(&o.Pairs, "pairs", 12, "sequential `docker run -d` + `docker rm -f` pairs per network kind")
	flag.IntVar(&o.ThroughputN, "throughput-n", 16, "lifecycles per parallelism level and network kind")
	flag.StringVar(&par, "parallel", par, "parallelism levels for the throughput runs")
	flag.IntVar(&o.LiveSmall, "live-small", 10, "live endpoints for the small scale point")
	flag.IntVar(&o.LiveLarge, "live-large", 200, "live endpoints for the large scale point")
	flag.IntVar(&o.LiveSamples, "live-samples", 12, "lifecycles measured at each scale point")
	flag.IntVar(&o.PodmanN, "podman-n", 12, "podman run --rm per network kind")
	flag.IntVar(&o.GoBenchN, "gobench-n", 30, "iterations of the Go benchmarks (raw libcni ADD+DEL, cnibridge lifecycle)")
	flag.DurationVar(&o.Profile, "profile", 15*time.Second, "CPU-profile the plugin this long during the sequential runs (0: no profile)")
	flag.BoolVar(&o.SkipPodman, "skip-podman", false, "do not measure Podman")
	flag.BoolVar(&o.SkipGoBench, "skip-gobench", false, "do not run the Go benchmarks")
	flag.IntVar(&o.StartWorkers, "start-workers", 4, "parallel `docker run -d` when filling up live endpoints")
	flag.BoolVar(&o.IPMasq, "ipmasq", true, "bridge plugin ipMasq (outbound NAT like Docker's bridge; costs iptables execs per container)")
	flag.StringVar(&render, "render", "", "only re-render results.md and chart.png from this results.json")
	flag.Parse()
	for _, f := range strings.Split(par, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad -parallel %q", par)
		}
		o.Parallelism = append(o.Parallelism, n)
	}
	if o.Seq < 2 || o.Pairs < 2 || o.LiveSamples < 2 || o.PodmanN < 2 || o.LiveLarge <= o.LiveSmall {
		return nil, fmt.Errorf("iteration counts too small")
	}
	return o, nil
}

func main() {
	o, err := parseOptions()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cniplug-bench:", err)
		os.Exit(2)
	}
	if render != "" {
		if err := rerender(render); err != nil {
			fmt.Fprintln(os.Stderr, "cniplug-bench:", err)
			os.Exit(1)
		}
		return
	}
	if err := mainErr(o); err != nil {
		fmt.Fprintln(os.Stderr, "cniplug-bench:", err)
		os.Exit(1)
	}
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("run from inside the cniplug repository")
		}
		dir = parent
	}
}

func mainErr(o *options) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (drives dockerd, creates namespaces and iptables rules)")
	}
	repo, err := repoRoot()
	if err != nil {
		return err
	}
	for _, p := range []string{"bin/cniplug", "bin/cni/bridge", "bin/cni/host-local"} {
		if _, err := os.Stat(filepath.Join(repo, p)); err != nil {
			return fmt.Errorf("%s is missing: run `make build cni-plugins` (make bench does)", p)
		}
	}
	if _, err := docker("info", "--format", "{{.ServerVersion}}"); err != nil {
		return fmt.Errorf("needs a running dockerd: %w", err)
	}
	if !filepath.IsAbs(o.Out) {
		o.Out = filepath.Join(repo, o.Out)
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}
	if _, err := run(filepath.Join(repo, "scripts", "busybox-image.sh"), o.Image); err != nil {
		return err
	}
	before, err := snapshot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "cniplug-bench-")
	if err != nil {
		return err
	}
	id := randomHex(3)
	e := &env{repo: repo, tmp: tmp, runID: id, image: o.Image, driver: "cniplug-bench",
		cniName: "cnibench" + id, bridge: "cnbbr" + id}
	e.onCleanup("removing "+tmp, func() error { return os.RemoveAll(tmp) })

	// Whatever happens (an error, Ctrl-C), everything created is removed again.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res := &results{Started: time.Now().UTC(), Options: *o}
	runErr := measureAll(ctx, e, o, res)
	e.logf("cleaning up")
	cleanErr := e.cleanup()
	if l, err := leaks(before); err != nil {
		cleanErr = fmt.Errorf("%v; leak check: %w", cleanErr, err)
	} else {
		res.Leaks = l
	}
	if runErr == nil {
		res.evaluate()
		if err := res.write(o.Out); err != nil {
			return err
		}
		md, _ := os.ReadFile(filepath.Join(o.Out, "results.md"))
		fmt.Print(string(md))
	}
	if len(res.Leaks) > 0 {
		return fmt.Errorf("the benchmark left behind:\n  %s", strings.Join(res.Leaks, "\n  "))
	}
	if runErr != nil {
		if cleanErr != nil {
			return fmt.Errorf("%w; cleanup: %v", runErr, cleanErr)
		}
		return runErr
	}
	return cleanErr
}

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

func measureAll(ctx context.Context, e *env, o *options, res *results) error {
	res.Host = hostInfo()
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
	if err := e.writeConflist(subnet, o.IPMasq); err != nil {
		return err
	}
	conf, _ := os.ReadFile(e.conflist)
	res.Conflist = strings.TrimSpace(string(conf))
	if err := e.startPlugin(); err != nil {
		return err
	}
	if err := e.createNetworks(bridgeSubnet, subnet); err != nil {
		return err
	}
	if err := e.createFloorNetwork(floorSubnet); err != nil {
		return err
	}
	kinds := []struct{ name, network string }{
		{"none", "none"}, {"bridge", e.dockerBridge}, {"cniplug", e.cniplugNet}, {kindSync, e.syncNet}, {kindDirect, e.directNet}, {kindDockerDirect, e.dockerDirectNet}, {kindWarm, e.warmNet}, {kindFloor, e.floorNet}}

	e.logf("warming up")
	const warmups = 2
	for _, k := range kinds {
		for i := 0; i < warmups; i++ {
			if _, err := timed(exec.CommandContext(ctx, "docker", e.dockerRunArgs(k.network, false)...)); err != nil {
				return err
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
		return err
	}
	deletes := lifecycles.methodCount["NetworkDriver.DeleteEndpoint"]

	// One lifecycle (the commands one after the other) by plain wall time, like none and bridge.
	plain := func(args []string, more ...[]string) (time.Duration, error) {
		var total time.Duration
		for _, a := range append([][]string{args}, more...) {
			d, err := timed(exec.CommandContext(ctx, "docker", a...))
			total += d
			if err != nil {
				return total, err
			}
		}
		return total, nil
	}

	// One lifecycle on the sync-DEL or direct-join network, by plain wall time. Then, outside the measurement, its
	// DeleteEndpoint is counted in deletes and waited for: it may not fall into the metrics window of a
	// cniplug lifecycle (settle counts DeleteEndpoint calls of both cniplug
	// networks; the DEL's exec time would count as that lifecycle's) nor run while the other kinds are timed.
	uncostedLifecycle := func(args []string, more ...[]string) (time.Duration, error) {
		d, err := plain(args, more...)
		if err != nil {
			return d, err
		}
		deletes++
		_, err = e.settle(deletes)
		return d, err
	}

	// One lifecycle on cniplug, with what it cost inside cniplug.
	cniplugLifecycle := func(args []string, more ...[]string) (time.Duration, lifecycleCost, error) {
		b, err := e.settle(deletes)
		if err != nil {
			return 0, lifecycleCost{}, err
		}
		d, err := timed(exec.CommandContext(ctx, "docker", args...))
		for _, m := range more {
			if err != nil {
				break
			}
			var d2 time.Duration
			d2, err = timed(exec.CommandContext(ctx, "docker", m...))
			d += d2
		}
		if err != nil {
			return d, lifecycleCost{}, err
		}
		deletes++
		a, err := e.settle(deletes)
		if err != nil {
			return d, lifecycleCost{}, err
		}
		return d, diff(b, a), nil
	}

	// Sequential `docker run --rm`, the kinds interleaved so that drift hits them alike.
	e.logf("sequential docker run --rm: %d per kind", o.Seq)
	profileDone := make(chan error, 1)
	if o.Profile > 0 {
		go func() { profileDone <- e.cpuProfile(ctx, o.Profile, filepath.Join(o.Out, "cniplug-cpu.pprof")) }()
	} else {
		profileDone <- nil
	}
	// One lifecycle of a kind: the cniplug networks costed from the metrics (default and direct-join), the
	// sync-DEL one settled but not costed, the others plain.
	lifecycleOf := func(kind string, args []string, more ...[]string) (time.Duration, error) {
		switch kind {
		case "cniplug", kindDirect, kindDockerDirect, kindWarm:
			d, cost, err := cniplugLifecycle(args, more...)
			if err == nil && kind == "cniplug" {
				res.addCost(cost)
			} else if err == nil {
				res.addKindCost(kind, cost)
			}
			return d, err
		case kindSync:
			return uncostedLifecycle(args, more...)
		default:
			return plain(args, more...)
		}
	}
	res.RunRM = map[string]samples{}
	for i := 0; i < o.Seq; i++ {
		for _, k := range kinds {
			d, err := lifecycleOf(k.name, e.dockerRunArgs(k.network, false))
			if err != nil {
				return err
			}
			res.RunRM[k.name] = append(res.RunRM[k.name], d.Seconds())
		}
	}
	if err := <-profileDone; err != nil {
		e.logf("CPU profile failed: %v", err)
	}

	e.logf("sequential docker run -d + docker rm -f: %d per kind", o.Pairs)
	res.Pair = map[string]samples{}
	for i := 0; i < o.Pairs; i++ {
		for _, k := range kinds {
			name := fmt.Sprintf("bench-%s-pair-%s-%d", e.runID, k.name, i)
			args := append([]string{"run", "--name", name}, e.dockerRunArgs(k.network, true)[1:]...)
			d, err := lifecycleOf(k.name, args, []string{"rm", "-f", name})
			if err != nil {
				return err
			}
			res.Pair[k.name] = append(res.Pair[k.name], d.Seconds())
		}
	}

	e.logf("throughput: %d lifecycles at parallelism %v", o.ThroughputN, o.Parallelism)
	res.Throughput = map[string]map[int]float64{"bridge": {}, "cniplug": {}}
	for _, p := range o.Parallelism {
		for _, k := range kinds {
			if _, ok := res.Throughput[k.name]; !ok {
				continue // Docker bridge and cniplug only
			}
			before, err := e.cpuTimes()
			if err != nil {
				return err
			}
			wall, err := parallel(o.ThroughputN, p, func(int) error {
				_, err := timed(exec.CommandContext(ctx, "docker", e.dockerRunArgs(k.network, false)...))
				return err
			})
			if err != nil {
				return err
			}
			res.Throughput[k.name][p] = float64(o.ThroughputN) / wall.Seconds()
			// The CPU of the cell includes its background removals.
			e.quiesce()
			after, err := e.cpuTimes()
			if err != nil {
				return err
			}
			res.addCPU(k.name, after.machine-before.machine, after.plugin-before.plugin, o.ThroughputN)
		}
	}
	if lifecycles, err = e.settle(deletes + float64(o.ThroughputN*len(o.Parallelism))); err != nil {
		return err
	}
	deletes = lifecycles.methodCount["NetworkDriver.DeleteEndpoint"]

	if err := measureScale(ctx, e, o, res, cniplugLifecycle); err != nil {
		return err
	}

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

// goBench runs cnibridge's Go benchmarks on the benchmark's conflist.
// goBench runs cnibridge's Go benchmarks on the bench's conflist: raw libcni ADD+DEL (also with the given
// numbers of other attachments alive) and cnibridge's lifecycle.
func goBench(ctx context.Context, e *env, n int, live ...int) (map[string]float64, error) {
	bin := filepath.Join(e.tmp, "cnibridge.test")
	build := exec.CommandContext(ctx, "go", "test", "-c", "-o", bin, "./cnibridge/")
	build.Dir = e.repo
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building cnibridge benchmarks: %w: %s", err, out)
	}
	cmd := exec.CommandContext(ctx, bin, "-test.run", "^$", "-test.bench", "^Benchmark(LibcniAddDel|RunnerLifecycle|LibcniAddDelLive)$",
		"-test.benchtime", fmt.Sprintf("%dx", n))
	cmd.Dir = filepath.Join(e.repo, "cnibridge")
	sizes := make([]string, len(live))
	for i, l := range live {
		sizes[i] = strconv.Itoa(l)
	}
	cmd.Env = append(os.Environ(), "CNIPLUG_BENCH_CONFLIST="+e.conflist, "CNIPLUG_TEST_CNI_BIN="+filepath.Join(e.repo, "bin", "cni"),
		"CNIPLUG_BENCH_LIVE="+strings.Join(sizes, ","))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("cnibridge benchmarks: %w: %s", err, out)
	}
	re := regexp.MustCompile(`^(Benchmark[\w/=]+?)(-\d+)?\s+\d+\s+([\d.]+) ns/op`)
	res := map[string]float64{}
	s := bufio.NewScanner(strings.NewReader(string(out)))
	for s.Scan() {
		if m := re.FindStringSubmatch(s.Text()); m != nil {
			ns, _ := strconv.ParseFloat(m[3], 64)
			res[m[1]] = ns / 1e9
		}
	}
	if res["BenchmarkLibcniAddDel"] == 0 || res["BenchmarkRunnerLifecycle"] == 0 || len(res) != 2+len(live) {
		return nil, fmt.Errorf("cannot read the benchmark results:\n%s", out)
	}
	return res, nil
}

func measurePodman(ctx context.Context, e *env, o *options) *podmanResult {
	pr := &podmanResult{}
	p, err := e.setupPodman()
	if err != nil {
		pr.Error = err.Error()
		return pr
	}
	pr.Version, _ = run("podman", "--version")
	for i := 0; i < 2; i++ { // warm-up
		for _, nw := range []string{"none", e.cniName} {
			if _, err := timed(p.cmd(p.runArgs(nw)...)); err != nil {
				pr.Error = err.Error()
				return pr
			}
		}
	}
	for i := 0; i < o.PodmanN; i++ {
		for _, nw := range []string{"none", e.cniName} {
			d, err := timed(p.cmd(p.runArgs(nw)...))
			if err != nil {
				pr.Error = err.Error()
				return pr
			}
			if nw == "none" {
				pr.None = append(pr.None, d.Seconds())
			} else {
				pr.CNI = append(pr.CNI, d.Seconds())
			}
		}
		if ctx.Err() != nil {
			pr.Error = ctx.Err().Error()
			return pr
		}
	}
	return pr
}

func hostInfo() map[string]string {
	h := map[string]string{"cpus": strconv.Itoa(runtime.NumCPU())}
	h["dockerd"], _ = docker("version", "--format", "{{.Server.Version}}")
	h["kernel"], _ = run("uname", "-r")
	if out, err := run("iptables", "--version"); err == nil {
		h["iptables"] = out
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				h["cpu"] = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	return h
}

// rerender rewrites results.md and chart.png next to a results.json (after changing the report's layout).
func rerender(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	res := &results{}
	if err := json.Unmarshal(data, res); err != nil {
		return err
	}
	res.Targets = nil
	res.evaluate()
	return res.write(filepath.Dir(path))
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
