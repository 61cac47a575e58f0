package main

import (
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestQuantile(t *testing.T) {
	s := samples{5, 1, 4, 2, 3}
	for q, want := range map[float64]float64{0: 1, 0.5: 3, 1: 5, 0.25: 2, 0.99: 4.96} {
		if got := s.quantile(q); math.Abs(got-want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", q, got, want)
		}
	}
	if !math.IsNaN(samples{}.p50()) {
		t.Error("p50 of nothing is not NaN")
	}
}

func fakeResults() *results {
	return &results{
		Options:    options{Image: "img", Seq: 3, Pairs: 3, ThroughputN: 4, Parallelism: []int{1, 4}, LiveSmall: 10, LiveLarge: 200, LiveSamples: 3, PodmanN: 3, GoBenchN: 5},
		Host:       map[string]string{"cpus": "2"},
		RunRM:      map[string]samples{"none": {0.5, 0.5, 0.5}, "bridge": {0.8, 0.8, 0.8}, "cniplug": {0.85, 0.86, 0.87}, kindSync: {0.95, 0.96, 0.97}, kindDirect: {0.78, 0.79, 0.8}},
		Pair:       map[string]samples{"none": {0.6, 0.6, 0.6}, "bridge": {0.9, 0.9, 0.9}, "cniplug": {1.1, 1.1, 1.1}, kindSync: {1.2, 1.2, 1.2}, kindDirect: {0.88, 0.88, 0.88}},
		cost:       cost{InPlugin: samples{0.2, 0.21}, InCNI: samples{0.19, 0.2}, Overhead: samples{0.008, 0.03}},
		KindCosts:  map[string]*cost{kindDirect: {InPlugin: samples{0.18, 0.19}, InCNI: samples{0.17, 0.18}, Overhead: samples{0.009, 0.02}}},
		Throughput: map[string]map[int]float64{"bridge": {1: 1.2, 4: 1.5}, "cniplug": {1: 1.1, 4: 1.4}, kindFloor: {1: 1.3, 4: 1.6}},
		CPU: map[string]*cpuUse{"bridge": {Lifecycles: 8, Machine: 2.4, Plugin: 0.01, GroupLifecycles: 8,
			Groups: map[string]float64{groupDockerd: 0.8, groupContainerd: 0.4, firewallGroup(groupDockerd): 0.08}},
			"cniplug": {Lifecycles: 8, Machine: 3.2, Plugin: 1.2, GroupLifecycles: 8,
				Groups: map[string]float64{groupDockerd: 0.8, groupContainerd: 0.4, groupCniplug: 0.16, groupCNI: 0.64, firewallGroup(groupCNI): 0.24, firewallGroup(groupCniplug): 0.08}}},
		Chains: map[string]*chainCPU{chainMain: {Iterations: 5, Plugins: 0.1, Libcni: 0.002, Wall: 0.15}},
		Scale: map[int]*scalePoint{
			10:  {Wall: samples{1, 1}, InPlugin: samples{0.2, 0.2}, Overhead: samples{0.01, 0.01}, PerCall: map[string]float64{"NetworkDriver.Join": 0.01}},
			200: {Wall: samples{1.1, 1.1}, InPlugin: samples{0.22, 0.22}, Overhead: samples{0.01, 0.01}, PerCall: map[string]float64{"NetworkDriver.Join": 0.012}},
		},
		RSS:     map[int]int64{0: 15 << 20, 10: 16 << 20, 200: 30 << 20},
		GoBench: map[string]float64{"BenchmarkLibcniAddDel": 0.19, "BenchmarkRunnerLifecycle": 0.22, liveBench(10): 0.15, liveBench(200): 0.2},
		Podman:  &podmanResult{None: samples{0.4, 0.4}, CNI: samples{0.6, 0.6}},
	}
}

// The targets are ratios from the same run, each with PASS or MISS; the report and chart are written.
func TestReport(t *testing.T) {
	r := fakeResults()
	r.evaluate()
	want := map[string]bool{
		"`docker run --rm` on cniplug, default options, vs Docker's bridge (p50)":                 true,  // 0.86/0.8 = 1.075
		"`docker run --rm` on cniplug with the speed-up options vs Docker's bridge (p50)":         true,  // 0.79/0.8
		"`docker run -d` + `rm -f` on cniplug, default options, vs Docker's bridge (p50)":         false, // 1.22
		"`docker run -d` + `rm -f` on cniplug with the speed-up options vs Docker's bridge (p50)": true,  // 0.88/0.9
		"cniplug overhead per lifecycle, p50":                                                     false, // 19 ms
		"cniplug overhead per lifecycle, p99":                                                     false, // 29.8 ms
		"cniplug overhead per lifecycle with the speed-up options, p50":                           false, // 14.5 ms
		"cniplug overhead per lifecycle with the speed-up options, p99":                           true,  // 19.9 ms
		"network cost per container: Docker+cniplug vs Podman, same conflist":                     false, // 360 vs 200 ms
		"time in cniplug per lifecycle at 200 vs 10 live endpoints (p50)":                         true,
		"`docker run --rm` wall time at 200 vs 10 live endpoints (p50)":                           true,
		"cniplug overhead per lifecycle at 200 vs 10 live endpoints (p50)":                        true,
		"plugin RSS at 200 endpoints":                                                             true,
		"cniplug throughput at 4 parallel as a fraction of the chain's ceiling":                   false, // 1.4 of 5 /s
	}
	if len(r.Targets) != len(want) {
		t.Fatalf("%d targets: %+v", len(r.Targets), r.Targets)
	}
	for _, tg := range r.Targets {
		pass, ok := want[tg.Name]
		if !ok || pass != tg.Pass {
			t.Errorf("target %q: pass=%v (ratio %.2f), want %v (known %v)", tg.Name, tg.Pass, tg.Ratio, pass, ok)
		}
	}
	dir := t.TempDir()
	if err := r.write(dir); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"**PASS**", "**MISS**", "| cniplug | 1.10 /s | 1.40 /s | 0.92x | 0.93x | 5.00 /s | 0.22 | 0.28 |", "| veth-only remote driver | 1.30 /s | 1.60 /s | 1.08x | 1.07x | | | |",
		"| cniplug | 400 ms | 100 ms | 50.0 ms | 20.0 ms | 80.0 ms | 40.0 ms | 0.0 ms |", "cniplug: cniplug 10.0 ms, CNI plugins 30.0 ms.", "Docker bridge: dockerd 10.0 ms;",
		"| main (as above) | 5 | 100 ms | 2.0 ms | 150 ms | 5.00 /s |", "raw libcni ADD+DEL **190 ms**", "| 200 | 1100 ms | 220 ms |",
		"| 860 ms / 870 ms | 960 ms / 970 ms | 790 ms / 800 ms | 1.07x | 1.20x | 0.99x |", "| 1100 ms / 1100 ms | 1200 ms / 1200 ms | 880 ms / 880 ms | 1.22x | 1.33x | 0.98x |", "1.22x (1100 ms vs 900 ms)",
		"150 ms at 10, 200 ms at 200, **1.33x**", "Docker bridge **300 ms**, cniplug **400 ms**; of cniplug's, **150 ms** in cniplug", "| default p50 | default p99 | direct-join p50 | direct-join p99 |"} {
		if !strings.Contains(string(md), s) {
			t.Errorf("results.md lacks %q:\n%s", s, md)
		}
	}
	f, err := os.Open(filepath.Join(dir, "chart.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil || img.Bounds().Dx() < 600 {
		t.Fatalf("chart.png: %v %v", err, img)
	}
	// results.json re-renders to the same report.
	if err := rerender(filepath.Join(dir, "results.json")); err != nil {
		t.Fatal(err)
	}
	md2, _ := os.ReadFile(filepath.Join(dir, "results.md"))
	if string(md2) != string(md) {
		t.Errorf("re-rendered report differs:\n%s", md2)
	}
}

// Results from before the sync-DEL and direct-join kinds were measured (re-rendered with -render) have no such column or bar,
// and still render.
func TestReportWithoutNewKinds(t *testing.T) {
	old := fakeResults()
	for _, k := range []string{kindSync, kindDirect} {
		delete(old.RunRM, k)
		delete(old.Pair, k)
	}
	old.KindCosts = nil
	old.evaluate()
	for _, tg := range old.Targets {
		if math.IsNaN(tg.Ratio) {
			t.Errorf("target %q has a NaN ratio", tg.Name)
		}
	}
	dir := t.TempDir()
	if err := old.write(dir); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(md), "sync DEL") || strings.Contains(string(md), "direct-join") || strings.Contains(string(md), "NaN") {
		t.Errorf("results.md without the sync-DEL and direct-join kinds mentions them or NaN:\n%s", md)
	}
	if !strings.Contains(string(md), "| `docker run --rm … true` (n=3 each) | 500 ms / 500 ms | 800 ms / 800 ms | 860 ms / 870 ms | 1.07x |") {
		t.Errorf("results.md lacks the three-kind lifecycle row:\n%s", md)
	}
	if err := rerender(filepath.Join(dir, "results.json")); err != nil {
		t.Fatal(err)
	}
}
