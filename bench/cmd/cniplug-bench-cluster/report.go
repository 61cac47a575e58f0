package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

type results struct {
	Started time.Time
	Seconds float64 // the whole run, cluster up and down included
	Options options
	Host    map[string]string
	Subnet  string                 // the cniplug network's (VXLAN topology)
	Kinds   map[string]*kindResult // cniplug, overlay
}

type kindResult struct {
	Network     string
	Driver      string
	ScaleUp     []float64 // seconds from `service scale S=N` to N/N running, per round
	ScaleDown   []float64 // seconds from `service scale S=0` to no task container or endpoint on any node
	PingRTTMs   []float64 // every reply's round trip
	PingAvgMs   float64   // ping's own average
	PingLoss    string
	Gbps        float64 // iperf3, received
	Retransmits int
}

func (r *results) write(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.md"), []byte(r.markdown()), 0o644)
}

func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "-"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func secs(s []float64) string {
	var parts []string
	for _, v := range s {
		parts = append(parts, fmt.Sprintf("%.2f", v))
	}
	return strings.Join(parts, ", ")
}

func (r *results) markdown() string {
	var b strings.Builder
	cp, ov := r.Kinds["cniplug"], r.Kinds["overlay"]
	o := r.Options
	fmt.Fprintf(&b, "# cniplug vs Docker overlay on a 3-node swarm\n\n")
	fmt.Fprintf(&b, "%s; %d CPUs; kernel %s; engine %s; run took %.0f s (cluster up and down included).\n\n",
		r.Started.Format("2006-01-02 15:04 MST"), runtime.NumCPU(), r.Host["kernel"], r.Host["engine"], r.Seconds)
	fmt.Fprintf(&b, "Three Docker hosts on this one machine (scripts/cluster.sh: each a network + mount namespace with its own "+
		"dockerd), in one swarm. **cniplug**: the managed plugin `cniplug:latest`, swarm network `%s` from per-node "+
		"config-only networks on the VXLAN topology (a bridge per node joined by a kernel vxlan device, MTU 1450; "+
		"subnet %s, each node allocating from its own /24). **overlay**: `docker network create -d overlay --attachable`. "+
		"Services use `--endpoint-mode dnsrr` and the busybox image.\n\n", cp.Network, r.Subnet)

	fmt.Fprintf(&b, "## Scaling a service (%d rounds per network, alternating)\n\n", o.Reps)
	fmt.Fprintf(&b, "Up: `docker service scale S=%d` on a service created with `--replicas 0`, until `docker service ls` "+
		"shows %d/%d. Down: `docker service scale S=0` until no node runs a task container or has an endpoint of one on "+
		"the network. Tasks spread over the 3 nodes.\n\n", o.Replicas, o.Replicas, o.Replicas)
	fmt.Fprintf(&b, "| | cniplug p50 | overlay p50 | cniplug/overlay | cniplug rounds (s) | overlay rounds (s) |\n")
	fmt.Fprintf(&b, "|---|---:|---:|---:|---|---|\n")
	row := func(name string, c, v []float64) {
		pc, pv := samples(c).p50(), samples(v).p50()
		fmt.Fprintf(&b, "| %s | %.2f s | %.2f s | %s | %s | %s |\n", name, pc, pv, ratio(pc, pv), secs(c), secs(v))
	}
	row(fmt.Sprintf("0 → %d running", o.Replicas), cp.ScaleUp, ov.ScaleUp)
	row(fmt.Sprintf("%d → 0 gone", o.Replicas), cp.ScaleDown, ov.ScaleDown)

	fmt.Fprintf(&b, "\n## Data path between two task containers on different nodes (node1 → node2)\n\n")
	fmt.Fprintf(&b, "Ping: busybox `ping -c %d -i 0.2` in the task container. Throughput: the host's iperf3 %s run in the "+
		"task containers' network namespaces (nsenter), one TCP stream for %d s. All nodes share this machine's "+
		"%d CPUs, so throughput is CPU-bound.\n\n", o.Pings, r.Host["iperf3"], o.IperfSec, runtime.NumCPU())
	fmt.Fprintf(&b, "| | cniplug | overlay | cniplug/overlay |\n|---|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| ping avg | %.3f ms | %.3f ms | %s |\n", cp.PingAvgMs, ov.PingAvgMs, ratio(cp.PingAvgMs, ov.PingAvgMs))
	pc, pv := samples(cp.PingRTTMs).p50(), samples(ov.PingRTTMs).p50()
	fmt.Fprintf(&b, "| ping p50 | %.3f ms | %.3f ms | %s |\n", pc, pv, ratio(pc, pv))
	fmt.Fprintf(&b, "| ping loss | %s | %s | |\n", cp.PingLoss, ov.PingLoss)
	fmt.Fprintf(&b, "| TCP throughput | %.2f Gbit/s | %.2f Gbit/s | %s |\n", cp.Gbps, ov.Gbps, ratio(cp.Gbps, ov.Gbps))
	fmt.Fprintf(&b, "| TCP retransmits | %d | %d | |\n", cp.Retransmits, ov.Retransmits)
	fmt.Fprintf(&b, "\nRatios below 1× favour cniplug for times and latency, above 1× for throughput. Reproduce: `make bench-cluster` "+
		"(flags: BENCHFLAGS='-reps 5 -replicas 30').\n")
	return b.String()
}
