// Command cniplug-bench-cluster measures cniplug against Docker's overlay driver on a swarm of three Docker
// hosts on this one machine (the cluster test-bed, scripts/cluster.sh), in one run (make bench-cluster):
//
//   - how long a service takes to scale from 0 to N tasks until all are Running, and back to 0 until no task
//     container and no endpoint on the network is left on any node;
//   - ping latency between two task containers on different nodes;
//   - TCP throughput between them (the host's iperf3, run in the containers' network namespaces).
//
// The cniplug network is the managed plugin cniplug:latest on every node over the VXLAN topology (a bridge per
// node joined by a kernel vxlan device; each node allocates from its own slice of a shared /16), as a swarm
// network made from per-node config-only networks. It brings up its own cluster (CNIPLUG_CLUSTER_NAME
// cniplug-bench) and takes it down again, also on an error or Ctrl-C. It needs root; run it under the test lock.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cniplug/cniplug/internal/cluster"
)

type options struct {
	Out      string
	Image    string
	Name     string
	Replicas int
	Reps     int
	Pings    int
	IperfSec int
	Timeout  time.Duration
}

func parseOptions() (*options, error) {
	o := &options{}
	flag.StringVar(&o.Out, "out", "bench/out-cluster", "where results.md and results.json are written")
	flag.StringVar(&o.Image, "image", "cniplug-test/busybox", "the tasks' image (present on every node)")
	flag.StringVar(&o.Name, "name", "cniplug-bench", "the cluster's name (netns, cgroup and directory prefix)")
	flag.IntVar(&o.Replicas, "replicas", 30, "tasks to scale each service to")
	flag.IntVar(&o.Reps, "reps", 3, "scale up/down rounds per network kind")
	flag.IntVar(&o.Pings, "pings", 20, "pings (every 0.2 s) between two task containers on different nodes")
	flag.IntVar(&o.IperfSec, "iperf-time", 5, "seconds of each iperf3 run")
	flag.DurationVar(&o.Timeout, "timeout", 3*time.Minute, "give up on one scale step after this long")
	flag.Parse()
	if o.Replicas < 1 || o.Reps < 1 || o.Pings < 2 || o.IperfSec < 1 {
		return nil, fmt.Errorf("counts too small")
	}
	return o, nil
}

func main() {
	o, err := parseOptions()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cniplug-bench-cluster:", err)
		os.Exit(2)
	}
	if err := mainErr(o); err != nil {
		fmt.Fprintln(os.Stderr, "cniplug-bench-cluster:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// kind is one network the services run on.
type kind struct {
	Name    string // cniplug or overlay
	Network string // its swarm network
	Driver  string
}

func mainErr(o *options) error {
	if why := cluster.Unavailable(); why != "" {
		return errors.New(why)
	}
	if _, err := os.Stat("/usr/bin/iperf3"); err != nil {
		return fmt.Errorf("needs iperf3 (apt-get install iperf3, or scripts/setup.sh)")
	}
	if !filepath.IsAbs(o.Out) {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		o.Out = filepath.Join(wd, o.Out)
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}

	// Whatever happens (an error, Ctrl-C), the cluster goes down again; children of this process that get the
	// terminal's SIGINT fail, and so does the measurement.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res := &results{Started: time.Now().UTC(), Options: *o}
	start := time.Now()

	logf("bringing up a 3-node cluster %s with the managed plugin", o.Name)
	c, err := cluster.Up(cluster.Options{Nodes: 3, Managed: true, Name: o.Name})
	if err != nil {
		return err
	}
	down := false
	defer func() { // a panic
		if !down {
			_ = c.Down()
		}
	}()
	runErr := measure(ctx, c, o, res)
	logf("taking the cluster down")
	down = true
	downErr := c.Down()
	if runErr != nil {
		if downErr != nil {
			return fmt.Errorf("%w; %v", runErr, downErr)
		}
		return runErr
	}
	if downErr != nil {
		return downErr
	}
	res.Seconds = time.Since(start).Seconds()
	if err := res.write(o.Out); err != nil {
		return err
	}
	md, err := os.ReadFile(filepath.Join(o.Out, "results.md"))
	if err != nil {
		return err
	}
	fmt.Print(string(md))
	return nil
}

// measure forms the swarm, makes both networks and measures; what it makes inside the nodes goes with them
// at Down, except the wiring, which it removes itself.
func measure(ctx context.Context, c *cluster.Cluster, o *options, res *results) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("interrupted")
	}
	mgr := c.Nodes[0]
	res.Host = hostInfo(mgr)
	logf("forming the swarm")
	if err := formSwarm(ctx, c); err != nil {
		return err
	}

	const cniName = "benchvx"
	w, unwire, err := c.WireE(cluster.VXLAN, cniName)
	defer unwire()
	if err != nil {
		return err
	}
	res.Subnet = w.Subnet
	kinds := []kind{{Name: "cniplug", Network: "benchcni", Driver: c.Driver}, {Name: "overlay", Network: "benchov", Driver: "overlay"}}
	for _, n := range c.Nodes {
		if _, err := n.DockerE("network", "create", "--config-only", "--opt", "cni="+cniName, "--ipam-driver", c.Driver,
			"--ipam-opt", "cni="+cniName, kinds[0].Network+"-conf"); err != nil {
			return err
		}
	}
	if _, err := mgr.DockerE("network", "create", "-d", c.Driver, "--scope", "swarm", "--config-from",
		kinds[0].Network+"-conf", "--attachable", kinds[0].Network); err != nil {
		return err
	}
	if _, err := mgr.DockerE("network", "create", "-d", "overlay", "--attachable", kinds[1].Network); err != nil {
		return err
	}
	res.Kinds = map[string]*kindResult{}
	for _, k := range kinds {
		res.Kinds[k.Name] = &kindResult{Network: k.Network, Driver: k.Driver}
	}

	// Scale rounds alternate between the kinds, so that drift (caches, the machine's load) hits both alike.
	for r := 1; r <= o.Reps; r++ {
		for _, k := range kinds {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("interrupted")
			}
			up, down, err := scaleRound(ctx, c, o, k, r)
			if err != nil {
				return err
			}
			kr := res.Kinds[k.Name]
			kr.ScaleUp = append(kr.ScaleUp, up.Seconds())
			kr.ScaleDown = append(kr.ScaleDown, down.Seconds())
			logf("round %d %s: 0->%d running in %.2fs, %d->0 gone in %.2fs", r, k.Name, o.Replicas, up.Seconds(), o.Replicas, down.Seconds())
		}
	}
	for _, k := range kinds {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("interrupted")
		}
		if err := dataPath(ctx, c, o, k, res.Kinds[k.Name]); err != nil {
			return err
		}
	}
	return nil
}

func formSwarm(ctx context.Context, c *cluster.Cluster) error {
	mgr := c.Nodes[0]
	if _, err := mgr.DockerE("swarm", "init"); err != nil {
		return err
	}
	token, err := mgr.DockerE("swarm", "join-token", "-q", "worker")
	if err != nil {
		return err
	}
	for _, n := range c.Nodes[1:] {
		if _, err := n.DockerE("swarm", "join", "--token", token, mgr.IP+":2377"); err != nil {
			return err
		}
	}
	return poll(ctx, time.Minute, "every node Ready in the swarm", func() (bool, error) {
		out, err := mgr.DockerE("node", "ls", "--format", "{{.Status}}")
		if err != nil {
			return false, err
		}
		return strings.Count(out, "Ready") == len(c.Nodes), nil
	})
}

// poll calls cond every 100 ms until it holds, fails, timeout passes or ctx is done.
func poll(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: not yet %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted while waiting for %s", what)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func hostInfo(n *cluster.Node) map[string]string {
	info := map[string]string{}
	if v, err := n.DockerE("version", "--format", "{{.Server.Version}}"); err == nil {
		info["engine"] = v
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		info["kernel"] = strings.TrimSpace(string(b))
	}
	if out, err := n.Command("iperf3", "--version").Output(); err == nil {
		info["iperf3"] = strings.Fields(string(out) + " ? ?")[1]
	}
	return info
}
