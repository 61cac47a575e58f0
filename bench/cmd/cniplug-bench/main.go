// Command cniplug-bench measures cniplug (with its default options, and without background DEL: --opt async-delete=false)
// against Docker's own bridge network, --net=none and Podman on the same machine in one run, and writes a
// markdown table and a PNG chart (make bench). It drives the real docker CLI and a cniplug it starts itself,
// so a run is reproducible on any host with dockerd; it needs root and removes everything it creates. Run it
// under the test lock: it changes links, netns and iptables.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
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
	ChainN       int `json:",omitempty"`
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
	flag.IntVar(&o.ChainN, "chain-n", 20, "raw libcni ADD+DEL per conflist whose CPU (getrusage) gives the throughput ceiling (0: not measured)")
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
