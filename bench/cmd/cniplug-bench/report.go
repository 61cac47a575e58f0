package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// kindSync is the network kind of a cniplug network without the default background DEL
// (--opt async-delete=false). Results from before it was measured lack it.
const kindSync = "cniplug-sync"

// kindDirect is the network kind of a cniplug network with the speed-up option --opt direct-join=true.
const kindDirect = "cniplug-direct"

// kindDockerDirect is the network kind of a cniplug network with Docker's IPAM (--subnet) and direct join,
// whose CNI ADD runs at Join in the container's netns.
const kindDockerDirect = "cniplug-docker-direct"

// kindWarm is the network kind of a cniplug network with a warm pool (--ipam-opt warm-pool) and direct join:
// RequestAddress takes an attachment added in advance, and the refill runs in the background.
const kindWarm = "cniplug-warm"

// warmPoolSize is the bench's --ipam-opt warm-pool: more than the lifecycles the sequential runs have in flight.
const warmPoolSize = 4

// speedUps are the cniplug kinds with speed-up options, each costed from the metrics like the default one.
var speedUps = []struct{ kind, label, opts string }{
	{kindDirect, "direct-join", "`--opt direct-join=true`"},
	{kindDockerDirect, "Docker IPAM + direct-join", "`--subnet … --opt direct-join=true`: Docker's IPAM, the ADD at Join in the container's netns"},
	{kindWarm, "warm pool + direct-join", fmt.Sprintf("`--ipam-opt warm-pool=%d --opt direct-join=true`: cniplug's IPAM takes an attachment added in advance; the refill's ADD counts as cniplug's time", warmPoolSize)},
}

// kindFloor is the network kind of the veth-only remote driver, the floor for any remote driver that hands a
// link to Docker.
const kindFloor = "veth-floor"

// results is everything one run measured. Durations are in seconds.
type results struct {
	Started  time.Time
	Options  options
	Host     map[string]string
	Conflist string

	RunRM map[string]samples // by network kind: none, bridge, cniplug, cniplug-async
	Pair  map[string]samples

	// Per cniplug lifecycle, from its metrics (InPlugin, InCNI, Overhead).
	cost
	// The same for the lifecycles on the networks with speed-up options, by kind. Earlier results lack it.
	KindCosts map[string]*cost `json:",omitempty"`

	Throughput map[string]map[int]float64 // kind -> parallelism -> lifecycles/s
	// CPU seconds per lifecycle over the throughput runs, by kind: the whole machine's, and cniplug's with the
	// CNI plugins and commands it ran. Earlier results lack it.
	CPU     map[string]*cpuUse  `json:",omitempty"`
	Scale   map[int]*scalePoint // live endpoints -> measurements
	RSS     map[int]int64       // live endpoints -> bytes
	GoBench map[string]float64  // benchmark -> seconds/op
	Podman  *podmanResult

	Targets []target
	Leaks   []string
}

type scalePoint struct {
	Wall     samples
	InPlugin samples
	Overhead samples
	PerCall  map[string]float64 // Docker call -> mean seconds
}

type podmanResult struct {
	Version string
	None    samples
	CNI     samples
	Error   string `json:",omitempty"`
}

type target struct {
	Name     string
	Measured string
	Limit    string
	Ratio    float64 // measured / limit: <= 1 passes
	Pass     bool
	Note     string
}

// cost is what lifecycles cost inside cniplug, from its metrics.
type cost struct {
	InPlugin samples
	InCNI    samples
	Overhead samples
}

func (c *cost) add(l lifecycleCost) {
	c.InPlugin = append(c.InPlugin, l.inPlugin)
	c.InCNI = append(c.InCNI, l.inCNI)
	c.Overhead = append(c.Overhead, l.overhead())
}

func (r *results) addCost(c lifecycleCost) { r.cost.add(c) }

// cpuUse is CPU time spent over a number of lifecycles.
type cpuUse struct {
	Lifecycles      int
	Machine, Plugin float64 // seconds
}

func (r *results) addCPU(kind string, machine, plugin float64, lifecycles int) {
	if r.CPU == nil {
		r.CPU = map[string]*cpuUse{}
	}
	if r.CPU[kind] == nil {
		r.CPU[kind] = &cpuUse{}
	}
	c := r.CPU[kind]
	c.Lifecycles += lifecycles
	c.Machine += machine
	c.Plugin += plugin
}

// addKindCost records a lifecycle on a network with speed-up options.
func (r *results) addKindCost(kind string, c lifecycleCost) {
	if r.KindCosts == nil {
		r.KindCosts = map[string]*cost{}
	}
	if r.KindCosts[kind] == nil {
		r.KindCosts[kind] = &cost{}
	}
	r.KindCosts[kind].add(c)
}

func ms(s float64) string {
	if math.IsNaN(s) {
		return "n/a"
	}
	if math.Abs(s) < 0.1 {
		return fmt.Sprintf("%.1f ms", s*1000)
	}
	return fmt.Sprintf("%.0f ms", s*1000)
}

// ratio is a/b as "1.23x", or n/a when either is missing.
func ratio(a, b float64) string {
	if x := a / b; !math.IsNaN(x) && !math.IsInf(x, 0) {
		return fmt.Sprintf("%.2fx", x)
	}
	return "n/a"
}

// liveBench names the result of BenchmarkLibcniAddDelLive at n live attachments.
func liveBench(n int) string { return fmt.Sprintf("BenchmarkLibcniAddDelLive/live=%d", n) }

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// evaluate computes the targets as ratios from this run.
func (r *results) evaluate() {
	add := func(name, measured, limit string, ratio float64, note string) {
		r.Targets = append(r.Targets, target{Name: name, Measured: measured, Limit: limit, Ratio: ratio, Pass: ratio <= 1.0 && !math.IsNaN(ratio), Note: note})
	}
	// The 1.2x target is for the default options, the 1.0x one for the documented speed-up options
	// (direct-join; async-delete is on by default).
	for _, life := range []struct {
		name string
		m    map[string]samples
	}{{"`docker run --rm`", r.RunRM}, {"`docker run -d` + `rm -f`", r.Pair}} {
		br := life.m["bridge"].p50()
		if !(br > 0) {
			continue
		}
		cn := life.m["cniplug"].p50()
		add(life.name+" on cniplug, default options, vs Docker's bridge (p50)", fmt.Sprintf("%.2fx (%s vs %s)", cn/br, ms(cn), ms(br)), "≤ 1.2x", cn/br/1.2, "")
		for _, su := range speedUps {
			if dj := life.m[su.kind]; len(dj) > 0 {
				x := dj.p50() / br
				add(life.name+" on cniplug with the speed-up options vs Docker's bridge (p50)", fmt.Sprintf("%.2fx (%s vs %s)", x, ms(dj.p50()), ms(br)), "≤ 1.0x", x, su.opts)
			}
		}
	}
	add("cniplug overhead per lifecycle, p50", ms(r.Overhead.p50()), "≤ 10 ms", r.Overhead.p50()/0.010, "time in cniplug's handlers minus time in CNI plugin execs")
	add("cniplug overhead per lifecycle, p99", ms(r.Overhead.p99()), "≤ 25 ms", r.Overhead.p99()/0.025, "")
	for _, su := range speedUps {
		if d := r.KindCosts[su.kind]; d != nil && len(d.Overhead) > 0 {
			add("cniplug overhead per lifecycle with the speed-up options, p50", ms(d.Overhead.p50()), "≤ 10 ms", d.Overhead.p50()/0.010, su.opts)
			add("cniplug overhead per lifecycle with the speed-up options, p99", ms(d.Overhead.p99()), "≤ 25 ms", d.Overhead.p99()/0.025, su.opts)
		}
	}
	if p := r.Podman; p != nil && p.Error == "" {
		ours := r.RunRM["cniplug"].p50() - r.RunRM["none"].p50()
		theirs := p.CNI.p50() - p.None.p50()
		add("network cost per container: Docker+cniplug vs Podman, same conflist", fmt.Sprintf("%s vs %s", ms(ours), ms(theirs)), "≤ 1.0x", ours/theirs,
			"cost = p50(run on the CNI network) − p50(run with no network)")
	}
	if small, large := r.Scale[r.Options.LiveSmall], r.Scale[r.Options.LiveLarge]; small != nil && large != nil {
		x := large.InPlugin.p50() / small.InPlugin.p50()
		add(fmt.Sprintf("time in cniplug per lifecycle at %d vs %d live endpoints (p50)", r.Options.LiveLarge, r.Options.LiveSmall),
			fmt.Sprintf("%.2fx (%s vs %s)", x, ms(large.InPlugin.p50()), ms(small.InPlugin.p50())), "≤ 1.20x", x/1.2, "")
		z := large.Overhead.p50() / small.Overhead.p50()
		add(fmt.Sprintf("cniplug overhead per lifecycle at %d vs %d live endpoints (p50)", r.Options.LiveLarge, r.Options.LiveSmall),
			fmt.Sprintf("%.2fx (%s vs %s)", z, ms(large.Overhead.p50()), ms(small.Overhead.p50())), "≤ 1.20x", z/1.2, "cniplug's own cost, CNI execs excluded")
		y := large.Wall.p50() / small.Wall.p50()
		add(fmt.Sprintf("`docker run --rm` wall time at %d vs %d live endpoints (p50)", r.Options.LiveLarge, r.Options.LiveSmall),
			fmt.Sprintf("%.2fx (%s vs %s)", y, ms(large.Wall.p50()), ms(small.Wall.p50())), "≤ 1.20x", y/1.2, "includes dockerd's own cost of more containers")
	}
	if rss, ok := r.RSS[r.Options.LiveLarge]; ok {
		add(fmt.Sprintf("plugin RSS at %d endpoints", r.Options.LiveLarge), mib(rss), "≤ 40 MiB", float64(rss)/(40<<20), "")
	}
}

func (r *results) write(dir string) error {
	if err := writeJSON(filepath.Join(dir, "results.json"), r); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(r.markdown()), 0o644); err != nil {
		return err
	}
	return r.chart(filepath.Join(dir, "chart.png"))
}

func (r *results) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	o := r.Options
	w("## Benchmark results (%s)\n\n", r.Started.Format("2006-01-02 15:04 UTC"))
	w("Host: %s CPUs (%s), kernel %s, dockerd %s, %s", r.Host["cpus"], r.Host["cpu"], r.Host["kernel"], r.Host["dockerd"], r.Host["iptables"])
	if r.Podman != nil && r.Podman.Version != "" {
		w(", %s", r.Podman.Version)
	}
	w(". Image: `%s`. cniplug network: CNI IPAM (`--ipam-driver cniplug`) on this bridge + host-local conflist, which Podman uses too", o.Image)
	if len(r.RunRM[kindSync]) > 0 {
		w("; cniplug sync DEL: a second such network with `--opt async-delete=false` (CNI DEL inside DeleteEndpoint, the default before background DEL)")
	}
	if len(r.RunRM[kindDirect]) > 0 {
		w("; cniplug direct-join: a third with the speed-up option `--opt direct-join=true`")
	}
	if len(r.RunRM[kindDockerDirect]) > 0 {
		w("; cniplug Docker IPAM + direct-join: a fourth with Docker's IPAM (`--subnet` of the conflist, `--ip-range` its upper half, clear of host-local's allocations for the others) and `--opt direct-join=true`")
	}
	if len(r.RunRM[kindWarm]) > 0 {
		w("; cniplug warm pool + direct-join: a fifth with cniplug's IPAM, `--ipam-opt warm-pool=%d` and `--opt direct-join=true`", warmPoolSize)
	}
	if len(r.RunRM[kindFloor]) > 0 {
		w("; veth-only remote driver: a remote driver served by the bench that only creates a veth pair and hands one end to Docker (Docker's IPAM), the floor for a remote driver that hands a link over")
	}
	w(":\n\n```json\n%s\n```\n\n", r.Conflist)

	w("### Targets\n\n| target | measured | limit | result |\n|---|---|---|---|\n")
	for _, t := range r.Targets {
		res := "**PASS**"
		if !t.Pass {
			res = "**MISS**"
		}
		note := ""
		if t.Note != "" {
			note = " (" + t.Note + ")"
		}
		w("| %s%s | %s | %s | %s |\n", t.Name, note, t.Measured, t.Limit, res)
	}

	// The sync-DEL kind only where it was measured (older results.json lack it).
	kinds, heads := []string{"none", "bridge", "cniplug"}, []string{"`--net=none`", "Docker bridge", "cniplug"}
	ratios, ratioHeads := []string{"cniplug"}, []string{"cniplug / bridge (p50)"}
	if len(r.RunRM[kindSync]) > 0 || len(r.Pair[kindSync]) > 0 {
		kinds, heads = append(kinds, kindSync), append(heads, "cniplug, sync DEL")
		ratios, ratioHeads = append(ratios, kindSync), append(ratioHeads, "sync DEL / bridge (p50)")
	}
	for _, su := range speedUps {
		if len(r.RunRM[su.kind]) > 0 || len(r.Pair[su.kind]) > 0 {
			kinds, heads = append(kinds, su.kind), append(heads, "cniplug, "+su.label)
			ratios, ratioHeads = append(ratios, su.kind), append(ratioHeads, su.label+" / bridge (p50)")
		}
	}
	if len(r.RunRM[kindFloor]) > 0 || len(r.Pair[kindFloor]) > 0 {
		kinds, heads = append(kinds, kindFloor), append(heads, "veth-only remote driver")
		ratios, ratioHeads = append(ratios, kindFloor), append(ratioHeads, "veth-only / bridge (p50)")
	}
	heads = append(heads, ratioHeads...)
	w("\n### Container lifecycle, wall time (p50 / p99)\n\n| | %s |\n|---%s|\n", strings.Join(heads, " | "), strings.Repeat("|---", len(heads)))
	row := func(name string, m map[string]samples, n int) {
		w("| %s (n=%d each) |", name, n)
		for _, k := range kinds {
			w(" %s / %s |", ms(m[k].p50()), ms(m[k].p99()))
		}
		for _, k := range ratios {
			w(" %s |", ratio(m[k].p50(), m["bridge"].p50()))
		}
		w("\n")
	}
	row("`docker run --rm … true`", r.RunRM, o.Seq)
	row("`docker run -d … sleep` + `docker rm -f`", r.Pair, o.Pairs)

	costs, labels := []*cost{&r.cost}, []string{"default"}
	for _, su := range speedUps {
		if d := r.KindCosts[su.kind]; d != nil && len(d.Overhead) > 0 {
			costs, labels = append(costs, d), append(labels, su.label)
		}
	}
	w("\n### Inside cniplug, per lifecycle (from its /metrics; n=%d each)\n\n|", len(r.Overhead))
	for _, l := range labels {
		w(" | %s p50 | %s p99", l, l)
	}
	w(" |\n|---%s|\n", strings.Repeat("|---|---", len(labels)))
	costRow := func(name string, of func(*cost) samples) {
		w("| %s |", name)
		for _, c := range costs {
			w(" %s | %s |", ms(of(c).p50()), ms(of(c).p99()))
		}
		w("\n")
	}
	costRow("time in cniplug's handlers", func(c *cost) samples { return c.InPlugin })
	costRow("of which inside CNI plugin execs", func(c *cost) samples { return c.InCNI })
	costRow("**cniplug's own overhead** (handlers minus execs)", func(c *cost) samples { return c.Overhead })
	if r.GoBench != nil {
		lib, rl := r.GoBench["BenchmarkLibcniAddDel"], r.GoBench["BenchmarkRunnerLifecycle"]
		w("\nThe same conflist without Docker (Go benchmarks in `cnibridge/bench_test.go`, %d iterations): raw libcni ADD+DEL **%s**; "+
			"cnibridge's lifecycle (staging netns, ADD, read back, move to host and back, DEL) **%s**, i.e. %s of its own.\n",
			o.GoBenchN, ms(lib), ms(rl), ms(rl-lib))
	}

	w("\n### Throughput, `docker run --rm` (%d lifecycles per cell)\n\n| parallel | Docker bridge | cniplug | cniplug / bridge |\n|---|---|---|---|\n", o.ThroughputN)
	for _, p := range o.Parallelism {
		br, cn := r.Throughput["bridge"][p], r.Throughput["cniplug"][p]
		w("| %d | %.2f /s | %.2f /s | %.2fx |\n", p, br, cn, cn/br)
	}
	if br, cn := r.CPU["bridge"], r.CPU["cniplug"]; br != nil && cn != nil && br.Lifecycles > 0 && cn.Lifecycles > 0 {
		w("\nCPU per lifecycle over these runs (the whole machine, from /proc/stat, background removals included): "+
			"Docker bridge **%s**, cniplug **%s**; of cniplug's, **%s** in cniplug and the CNI plugins and commands it ran "+
			"(its own CPU time and its children's).\n",
			ms(br.Machine/float64(br.Lifecycles)), ms(cn.Machine/float64(cn.Lifecycles)), ms(cn.Plugin/float64(cn.Lifecycles)))
	}

	w("\n### Scale: cniplug with many live endpoints (n=%d per point)\n\n", o.LiveSamples)
	w("| live endpoints | `docker run --rm` p50 | time in cniplug p50 | overhead p50 | plugin RSS |\n|---|---|---|---|---|\n")
	w("| 0 | | | | %s |\n", mib(r.RSS[0]))
	var points []int
	for n := range r.Scale {
		points = append(points, n)
	}
	sort.Ints(points)
	for _, n := range points {
		p := r.Scale[n]
		w("| %d | %s | %s | %s | %s |\n", n, ms(p.Wall.p50()), ms(p.InPlugin.p50()), ms(p.Overhead.p50()), mib(r.RSS[n]))
	}
	if len(points) == 2 {
		a, z := r.Scale[points[0]], r.Scale[points[1]]
		var calls []string
		for c := range z.PerCall {
			calls = append(calls, c)
		}
		sort.Strings(calls)
		w("\nMean time per Docker call at %d → %d endpoints: ", points[0], points[1])
		var parts []string
		for _, c := range calls {
			if a.PerCall[c] >= 0.0005 || z.PerCall[c] >= 0.0005 {
				parts = append(parts, fmt.Sprintf("%s %s → %s", strings.SplitN(c, ".", 2)[1], ms(a.PerCall[c]), ms(z.PerCall[c])))
			}
		}
		w("%s.\n", strings.Join(parts, ", "))
		small, large := r.GoBench[liveBench(points[0])], r.GoBench[liveBench(points[1])]
		if small > 0 && large > 0 {
			w("\nThe CNI plugins alone (Go benchmark, raw libcni ADD+DEL of the same conflist with that many other attachments alive, no Docker, no cniplug): "+
				"%s at %d, %s at %d, **%.2fx**.\n", ms(small), points[0], ms(large), points[1], large/small)
		}
	}

	w("\n### Podman, same conflist (n=%d each)\n\n", o.PodmanN)
	if p := r.Podman; p == nil {
		w("Not measured (-skip-podman).\n")
	} else if p.Error != "" {
		w("Not measured: %s\n", p.Error)
	} else {
		w("| | no network p50 | CNI network p50 | network cost |\n|---|---|---|---|\n")
		w("| Podman (`podman run --rm`, CNI backend) | %s | %s | %s |\n", ms(p.None.p50()), ms(p.CNI.p50()), ms(p.CNI.p50()-p.None.p50()))
		w("| Docker + cniplug (`docker run --rm`) | %s | %s | %s |\n", ms(r.RunRM["none"].p50()), ms(r.RunRM["cniplug"].p50()), ms(r.RunRM["cniplug"].p50()-r.RunRM["none"].p50()))
		w("| Docker's own bridge, for reference | %s | %s | %s |\n", ms(r.RunRM["none"].p50()), ms(r.RunRM["bridge"].p50()), ms(r.RunRM["bridge"].p50()-r.RunRM["none"].p50()))
	}
	if len(r.Leaks) > 0 {
		w("\n**Left behind on the host:** %s\n", strings.Join(r.Leaks, ", "))
	}
	return b.String()
}

var (
	colNone    = color.RGBA{R: 150, G: 150, B: 150, A: 255}
	colBridge  = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	colCniplug = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	colPodman  = color.RGBA{R: 44, G: 160, B: 44, A: 255}
	colAsync   = color.RGBA{R: 148, G: 103, B: 189, A: 255}
	colDirect  = color.RGBA{R: 214, G: 39, B: 40, A: 255}
	colDocker  = color.RGBA{R: 140, G: 86, B: 75, A: 255}
	colWarm    = color.RGBA{R: 227, G: 119, B: 194, A: 255}
)

// chart draws the lifecycle wall times and the throughput side by side.
func (r *results) chart(path string) error {
	type bar struct {
		label string
		value float64
		col   color.Color
	}
	bars := []bar{
		{"run --rm: none", r.RunRM["none"].p50(), colNone},
		{"run --rm: Docker bridge", r.RunRM["bridge"].p50(), colBridge},
		{"run --rm: cniplug", r.RunRM["cniplug"].p50(), colCniplug},
		{"run --rm: cniplug sync DEL", r.RunRM[kindSync].p50(), colAsync},
		{"run --rm: cniplug direct-join", r.RunRM[kindDirect].p50(), colDirect},
		{"run --rm: cniplug Docker IPAM + direct-join", r.RunRM[kindDockerDirect].p50(), colDocker},
		{"run --rm: cniplug warm pool + direct-join", r.RunRM[kindWarm].p50(), colWarm},
		{"run -d + rm -f: none", r.Pair["none"].p50(), colNone},
		{"run -d + rm -f: Docker bridge", r.Pair["bridge"].p50(), colBridge},
		{"run -d + rm -f: cniplug", r.Pair["cniplug"].p50(), colCniplug},
		{"run -d + rm -f: cniplug sync DEL", r.Pair[kindSync].p50(), colAsync},
		{"run -d + rm -f: cniplug direct-join", r.Pair[kindDirect].p50(), colDirect},
		{"run -d + rm -f: cniplug Docker IPAM + direct-join", r.Pair[kindDockerDirect].p50(), colDocker},
		{"run -d + rm -f: cniplug warm pool + direct-join", r.Pair[kindWarm].p50(), colWarm},
	}
	if p := r.Podman; p != nil && p.Error == "" {
		bars = append(bars, bar{"podman run --rm: none", p.None.p50(), colNone}, bar{"podman run --rm: CNI", p.CNI.p50(), colPodman})
	}
	// Kinds not measured (the async-delete one in older results.json) get no bar.
	kept := bars[:0]
	for _, b := range bars {
		if !math.IsNaN(b.value) {
			kept = append(kept, b)
		}
	}
	bars = kept
	// Top to bottom in reading order.
	for i, j := 0, len(bars)-1; i < j; i, j = i+1, j-1 {
		bars[i], bars[j] = bars[j], bars[i]
	}
	left := plot.New()
	left.Title.Text = "Container lifecycle, p50 wall time"
	left.X.Label.Text = "seconds"
	left.X.Min = 0
	var labels []string
	maxV := 0.0
	for _, b := range bars {
		maxV = math.Max(maxV, b.value)
	}
	left.X.Max = maxV * 1.08
	for i, b := range bars {
		vals := make(plotter.Values, len(bars))
		vals[i] = b.value
		bc, err := plotter.NewBarChart(vals, vg.Points(14))
		if err != nil {
			return err
		}
		bc.Horizontal = true
		bc.Color = b.col
		bc.LineStyle.Width = 0
		left.Add(bc)
		labels = append(labels, fmt.Sprintf("%s  %.0f ms", b.label, b.value*1000))
	}
	left.NominalY(labels...)
	left.Add(plotter.NewGrid())

	right := plot.New()
	right.Title.Text = "Throughput, docker run --rm"
	right.Y.Label.Text = "lifecycles / s"
	right.X.Label.Text = "parallel lifecycles"
	right.Y.Min = 0
	var names []string
	brVals, cnVals := plotter.Values{}, plotter.Values{}
	for _, p := range r.Options.Parallelism {
		names = append(names, fmt.Sprint(p))
		brVals = append(brVals, r.Throughput["bridge"][p])
		cnVals = append(cnVals, r.Throughput["cniplug"][p])
	}
	w := vg.Points(18)
	brBars, err := plotter.NewBarChart(brVals, w)
	if err != nil {
		return err
	}
	brBars.Color, brBars.LineStyle.Width, brBars.Offset = colBridge, 0, -w/2
	cnBars, err := plotter.NewBarChart(cnVals, w)
	if err != nil {
		return err
	}
	cnBars.Color, cnBars.LineStyle.Width, cnBars.Offset = colCniplug, 0, w/2
	right.Add(brBars, cnBars)
	right.Legend.Add("Docker bridge", brBars)
	right.Legend.Add("cniplug", cnBars)
	right.Legend.Top, right.Legend.Left = true, true
	right.NominalX(names...)
	right.X.Min, right.X.Max = -0.7, float64(len(names))-0.3
	maxT := 0.0
	for _, v := range append(append(plotter.Values{}, brVals...), cnVals...) {
		maxT = math.Max(maxT, v)
	}
	right.Y.Max = maxT * 1.3 // room for the legend

	img := vgimg.New(vg.Points(960), vg.Points(360))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Points(16), PadTop: vg.Points(8), PadBottom: vg.Points(8), PadLeft: vg.Points(8), PadRight: vg.Points(8)}
	canvases := plot.Align([][]*plot.Plot{{left, right}}, tiles, dc)
	left.Draw(canvases[0][0])
	right.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = vgimg.PngCanvas{Canvas: img}.WriteTo(f)
	return err
}
