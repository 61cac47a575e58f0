package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

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

// printf writes to the report being built.
type printf func(format string, args ...any)

// markdown is results.md: each section in turn.
func (r *results) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	r.mdSetup(w)
	r.mdTargets(w)
	r.mdLifecycles(w)
	r.mdInsideCniplug(w)
	r.mdThroughput(w)
	r.mdScale(w)
	r.mdPodman(w)
	if len(r.Leaks) > 0 {
		w("\n**Left behind on the host:** %s\n", strings.Join(r.Leaks, ", "))
	}
	return b.String()
}

// mdSetup is the heading, the host, the networks measured and their conflist.
func (r *results) mdSetup(w printf) {
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
		w("; cniplug Docker IPAM + direct-join: a fourth with Docker's IPAM (`--subnet`) and `--opt direct-join=true` on the same chain with a bridge and subnet of its own (host-local continues after the last address anyone reserved in its range, so Docker's IPAM and host-local must not share one)")
	}
	if len(r.RunRM[kindWarm]) > 0 {
		w("; cniplug warm pool + direct-join: a fifth with cniplug's IPAM, `--ipam-opt warm-pool=%d` and `--opt direct-join=true`", warmPoolSize)
	}
	if len(r.RunRM[kindMasq]) > 0 {
		w("; cniplug masquerade=true, no ipMasq: the same conflist without `ipMasq` on a bridge and subnet of its own, cniplug's IPAM, `--opt direct-join=true` and `--opt masquerade=true` (cniplug masquerades the network's prefixes once, in the nat table)")
	}
	if len(r.RunRM[kindNftMasq]) > 0 {
		w("; cniplug nftables ipMasq: the same conflist with `\"ipMasq\": true, \"ipMasqBackend\": \"nftables\"` on a bridge and subnet of its own, cniplug's IPAM and `--opt direct-join=true` (these two compare with direct-join)")
	}
	if len(r.RunRM[kindFloor]) > 0 {
		w("; veth-only remote driver: a remote driver served by the bench that only creates a veth pair and hands one end to Docker (Docker's IPAM), the floor for a remote driver that hands a link over")
	}
	w(":\n\n```json\n%s\n```\n\n", r.Conflist)
}

// mdTargets is the table of targets, each with PASS or MISS.
func (r *results) mdTargets(w printf) {
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
}

// lifecycleColumns are the kinds of the lifecycle table, with their headings, and the kinds compared with
// Docker's bridge, with theirs: the kinds measured in these results.
func (r *results) lifecycleColumns() (kinds, heads, ratios, ratioHeads []string) {
	// The sync-DEL kind only where it was measured (older results.json lack it).
	kinds, heads = []string{"none", "bridge", "cniplug"}, []string{"`--net=none`", "Docker bridge", "cniplug"}
	ratios, ratioHeads = []string{"cniplug"}, []string{"cniplug / bridge (p50)"}
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
	return kinds, heads, ratios, ratioHeads
}

// mdLifecycles is the table of lifecycle wall times by kind, and their ratios to Docker's bridge.
func (r *results) mdLifecycles(w printf) {
	o := r.Options
	kinds, heads, ratios, ratioHeads := r.lifecycleColumns()
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
}

// mdInsideCniplug is the time spent in cniplug per lifecycle, by options, from its metrics, and the same
// conflist's cost without Docker.
func (r *results) mdInsideCniplug(w printf) {
	o := r.Options
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
}

// contenders are the kinds measured in the throughput runs, in the report's order, with their labels.
func (r *results) contenders() (kinds, labels []string) {
	add := func(k, label string) {
		if _, ok := r.Throughput[k]; ok {
			kinds, labels = append(kinds, k), append(labels, label)
		}
	}
	add("bridge", "Docker bridge")
	add("cniplug", "cniplug")
	add(kindSync, "cniplug, sync DEL")
	for _, su := range speedUps {
		add(su.kind, "cniplug, "+su.label)
	}
	add(kindFloor, "veth-only remote driver")
	return kinds, labels
}

// cpuGroups are the columns of the CPU split, in order; the firewall execs are one column of their own.
var cpuGroups = []struct{ group, head string }{
	{groupDockerd, "dockerd (+ children)"}, {groupContainerd, "containerd + shims + runc"}, {groupCniplug, "cniplug"},
	{groupCNI, "CNI plugins"}, {groupFirewall, "iptables/nft execs"}, {groupCLI, "docker CLI"}, {groupBench, "bench process"},
	{groupKernel, "kernel threads"}, {groupOther, "other processes"}, {groupUnacct, "not in processes"},
}

// mdScale is the table of cniplug's costs by live endpoints.
func (r *results) mdScale(w printf) {
	o := r.Options
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
		r.mdScaleGrowth(w, points)
	}
}

// mdScaleGrowth is how the time per Docker call, and the CNI plugins' own time, grew from the small to the
// large number of live endpoints (the two points).
func (r *results) mdScaleGrowth(w printf, points []int) {
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

// mdPodman compares Podman's network cost with Docker's and cniplug's, on the same conflist.
func (r *results) mdPodman(w printf) {
	o := r.Options
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
}
