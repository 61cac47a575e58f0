package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cniplug/cniplug/internal/cluster"
)

// taskCmd is the tasks' command: busybox sleep as PID 1 ignores SIGTERM, and every scale-down would then wait
// out the 10 s stop grace period.
var taskCmd = []string{"sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"}

// scaleRound creates a service with no task on k's network, times scaling it to o.Replicas until all are
// Running, then to 0 until no task container and no endpoint of one is left on any node, and removes it.
func scaleRound(ctx context.Context, c *cluster.Cluster, o *options, k kind, round int) (up, down time.Duration, err error) {
	mgr := c.Nodes[0]
	svc := fmt.Sprintf("scale-%s-%d", k.Name, round)
	args := []string{"service", "create", "--detach", "--no-resolve-image", "--name", svc, "--network", k.Network,
		"--replicas", "0", "--endpoint-mode", "dnsrr", o.Image}
	if _, err := mgr.DockerE(append(args, taskCmd...)...); err != nil {
		return 0, 0, err
	}
	defer func() {
		if rmErr := removeService(ctx, c, svc); rmErr != nil && err == nil {
			err = rmErr
		}
	}()

	want := fmt.Sprintf("%d/%d", o.Replicas, o.Replicas)
	t0 := time.Now()
	if _, err := mgr.DockerE("service", "scale", "--detach", fmt.Sprintf("%s=%d", svc, o.Replicas)); err != nil {
		return 0, 0, err
	}
	err = poll(ctx, o.Timeout, svc+" "+want+" running", func() (bool, error) {
		out, err := mgr.DockerE("service", "ls", "--filter", "name="+svc, "--format", "{{.Name}} {{.Replicas}}")
		if err != nil {
			return false, err
		}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == svc {
				return f[1] == want, nil
			}
		}
		return false, nil
	})
	up = time.Since(t0)
	if err != nil {
		ps, _ := mgr.DockerE("service", "ps", "--no-trunc", "--format", "{{.Node}} {{.CurrentState}} {{.Error}}", svc)
		return 0, 0, fmt.Errorf("%w\n%s", err, ps)
	}

	t0 = time.Now()
	if _, err := mgr.DockerE("service", "scale", "--detach", svc+"=0"); err != nil {
		return 0, 0, err
	}
	err = poll(ctx, o.Timeout, svc+" without tasks on any node", func() (bool, error) {
		return noTaskLeft(c, svc, k.Network)
	})
	down = time.Since(t0)
	return up, down, err
}

// noTaskLeft reports whether no node runs a container of svc, nor has an endpoint of one on network (its
// network teardown done).
func noTaskLeft(c *cluster.Cluster, svc, network string) (bool, error) {
	for _, n := range c.Nodes {
		out, err := n.DockerE("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc)
		if err != nil {
			return false, err
		}
		if out != "" {
			return false, nil
		}
	}
	for _, n := range c.Nodes {
		// Keys are container IDs, and lb-<network> for the network's load-balancer endpoint on the node.
		out, err := n.DockerE("network", "inspect", network, "--format", "{{range $k, $v := .Containers}}{{$k}} {{end}}")
		if err != nil {
			if strings.Contains(out, "not found") {
				continue // the node has no task on the network, so no longer the network
			}
			return false, err
		}
		for _, id := range strings.Fields(out) {
			if !strings.HasPrefix(id, "lb-") {
				return false, nil
			}
		}
	}
	return true, nil
}

// removeService removes svc and waits until its stopped task containers are gone from every node.
func removeService(ctx context.Context, c *cluster.Cluster, svc string) error {
	if _, err := c.Nodes[0].DockerE("service", "rm", svc); err != nil {
		return err
	}
	return poll(ctx, 2*time.Minute, svc+"'s containers removed", func() (bool, error) {
		for _, n := range c.Nodes {
			out, err := n.DockerE("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+svc)
			if err != nil || out != "" {
				return false, err
			}
		}
		return true, nil
	})
}

// task is a running task container of a service, on one node.
type task struct {
	node *cluster.Node
	id   string
	ip   string
	pid  string
}

// dataPath runs a global service on k's network (one task per node) and measures ping and TCP between the
// tasks on node1 and node2.
func dataPath(ctx context.Context, c *cluster.Cluster, o *options, k kind, kr *kindResult) (err error) {
	mgr := c.Nodes[0]
	svc := "path-" + k.Name
	args := []string{"service", "create", "--detach", "--no-resolve-image", "--name", svc, "--network", k.Network,
		"--mode", "global", "--endpoint-mode", "dnsrr", o.Image}
	if _, err := mgr.DockerE(append(args, taskCmd...)...); err != nil {
		return err
	}
	defer func() {
		if rmErr := removeService(ctx, c, svc); rmErr != nil && err == nil {
			err = rmErr
		}
	}()
	var tasks [2]task
	for i := range tasks {
		if tasks[i], err = runningTask(ctx, c.Nodes[i], svc, k.Network, o.Timeout); err != nil {
			return err
		}
	}
	a, b := tasks[0], tasks[1]
	if err := measurePing(k, o, a, b, kr); err != nil {
		return err
	}
	if err := measureIperf(ctx, k, o, a, b, kr); err != nil {
		return err
	}
	logf("%s: ping avg %.3f ms, p50 %.3f ms; %.2f Gbit/s", k.Name, kr.PingAvgMs, samples(kr.PingRTTMs).p50(), kr.Gbps)
	return nil
}

// runningTask waits, up to timeout, for svc's task container on n, and reads its address on network and its pid.
func runningTask(ctx context.Context, n *cluster.Node, svc, network string, timeout time.Duration) (task, error) {
	t := task{node: n}
	err := poll(ctx, timeout, svc+"'s task running on "+n.Name, func() (bool, error) {
		id, err := n.DockerE("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc)
		if err != nil || id == "" {
			return false, err
		}
		t.id = strings.Fields(id)[0]
		return true, nil
	})
	if err != nil {
		return t, err
	}
	out, err := n.DockerE("inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}} {{.State.Pid}}`, network), t.id)
	if err != nil {
		return t, err
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		return t, fmt.Errorf("%s: %s: no address on %s: %q", n.Name, t.id, network, out)
	}
	t.ip, t.pid = f[0], f[1]
	return t, nil
}

// measurePing pings b from a and records the round trips, their average and the loss in kr.
func measurePing(k kind, o *options, a, b task, kr *kindResult) error {
	logf("%s: ping %s (%s) -> %s (%s)", k.Name, a.ip, a.node.Name, b.ip, b.node.Name)

	// A first packet resolves neighbours (and, on the overlay, the peer's VTEP); not part of the sample.
	_, _ = a.node.DockerE("exec", a.id, "ping", "-c", "2", "-W", "2", b.ip)
	out, err := a.node.DockerE("exec", a.id, "ping", "-c", strconv.Itoa(o.Pings), "-i", "0.2", b.ip)
	if err != nil {
		return err
	}
	if kr.PingRTTMs, kr.PingAvgMs, kr.PingLoss, err = parsePing(out); err != nil {
		return err
	}
	return nil
}

// measureIperf runs iperf3 from a to a one-off server in b's netns and records the throughput and the
// retransmits in kr.
func measureIperf(ctx context.Context, k kind, o *options, a, b task, kr *kindResult) error {
	logf("%s: iperf3 %s -> %s for %ds", k.Name, a.ip, b.ip, o.IperfSec)
	if out, err := b.node.Command("nsenter", "-t", b.pid, "-n", "iperf3", "-s", "-1", "-D").CombinedOutput(); err != nil {
		return fmt.Errorf("%s: iperf3 -s: %v: %s", b.node.Name, err, out)
	}
	var report []byte
	err := poll(ctx, 10*time.Second, "iperf3 connecting", func() (bool, error) {
		out, err := a.node.Command("nsenter", "-t", a.pid, "-n", "iperf3", "-c", b.ip, "-t", strconv.Itoa(o.IperfSec), "-J").Output()
		if err != nil && strings.Contains(string(out), "Connection refused") {
			return false, nil // the server is not listening yet
		}
		if err != nil {
			return false, fmt.Errorf("%s: iperf3 -c %s: %v: %s", a.node.Name, b.ip, err, out)
		}
		report = out
		return true, nil
	})
	if err != nil {
		return err
	}
	var ir struct {
		End struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(report, &ir); err != nil {
		return fmt.Errorf("iperf3 -J: %w: %.200s", err, report)
	}
	kr.Gbps = ir.End.SumReceived.BitsPerSecond / 1e9
	kr.Retransmits = ir.End.SumSent.Retransmits
	return nil
}

var (
	pingTime = regexp.MustCompile(`time=([0-9.]+) ms`)
	pingSum  = regexp.MustCompile(`round-trip min/avg/max = [0-9.]+/([0-9.]+)/[0-9.]+ ms`)
	pingLoss = regexp.MustCompile(`([0-9.]+)% packet loss`)
)

// parsePing reads busybox ping's output: every reply's round trip, the average and the loss.
func parsePing(out string) (rtts []float64, avg float64, loss string, err error) {
	for _, m := range pingTime.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		rtts = append(rtts, v)
	}
	m := pingSum.FindStringSubmatch(out)
	if m == nil || len(rtts) == 0 {
		return nil, 0, "", fmt.Errorf("no round trips in ping's output: %s", out)
	}
	avg, _ = strconv.ParseFloat(m[1], 64)
	if l := pingLoss.FindStringSubmatch(out); l != nil {
		loss = l[1] + "%"
	}
	return rtts, avg, loss, nil
}

// samples is a set of measurements.
type samples []float64

// quantile interpolates linearly between the closest ranks (q in [0,1]).
func (s samples) quantile(q float64) float64 {
	c := append([]float64(nil), s...)
	sort.Float64s(c)
	if len(c) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(c)-1)
	lo, hi := int(math.Floor(pos)), int(math.Ceil(pos))
	return c[lo] + (c[hi]-c[lo])*(pos-float64(lo))
}

func (s samples) p50() float64 { return s.quantile(0.5) }
