package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

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
