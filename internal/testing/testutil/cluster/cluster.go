// Package cluster drives the cluster test-bed, scripts/cluster.sh, from Go tests and benchmarks: several
// Docker hosts on this one machine, each a network and mount namespace with its own dockerd and cniplug.
package cluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// Options choose what `scripts/cluster.sh up` builds.
type Options struct {
	Nodes   int    // default 3
	Managed bool   // the managed plugin cniplug:latest on every node, else cniplug as a host plugin
	Engine  string // current (default) or 20.10
	// Name tells clusters apart (netns, cgroup and directory names); default "cniplug-ct", so that the tests'
	// cluster never meets one an operator brought up with the script's defaults.
	Name string
}

// Cluster is a running test-bed.
type Cluster struct {
	Options
	Nodes   []*Node
	Driver  string // the network driver name on every node: cniplug, or cniplug:latest when managed
	Dir     string // the nodes' disks and logs, as seen from this host
	script  string
	wirings int
}

// Node is one Docker host of the cluster.
type Node struct {
	Name   string // node1..nodeN
	IP     string // its address on the underlay
	Socket string // its Docker API socket (DOCKER_HOST), as seen from this host
	Dir    string // its directories as seen from this host (run, docker, cni, net.d, cniplug; logs)
	c      *Cluster
}

// Unavailable says why the test-bed cannot run here, or "" when it can.
func Unavailable() string {
	if os.Geteuid() != 0 {
		return "the cluster test-bed needs root"
	}
	for _, tool := range []string{"nsenter", "unshare", "ip", "iptables", "docker"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "the cluster test-bed needs " + tool
		}
	}
	if _, err := os.Stat("/opt/cni/bin/bridge"); err != nil {
		return "the cluster test-bed needs the reference CNI plugins in /opt/cni/bin (scripts/setup.sh)"
	}
	return ""
}

// Up brings a cluster up (building what it needs), replacing a test cluster of the same name left behind by
// a killed test run.
func Up(opts Options) (*Cluster, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Engine == "" {
		opts.Engine = "current"
	}
	if opts.Name == "" {
		opts.Name = "cniplug-ct"
	}
	c := &Cluster{Options: opts, Driver: "cniplug", Dir: "/var/lib/" + opts.Name,
		script: filepath.Join(testutil.RepoRoot(), "scripts", "cluster.sh")}
	if opts.Managed {
		c.Driver = "cniplug:latest"
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "cluster.env")); err == nil {
		if out, err := c.run(2*time.Minute, "down"); err != nil {
			return nil, fmt.Errorf("removing the cluster left behind: %w\n%s", err, out)
		}
	}
	args := []string{"up", fmt.Sprint(opts.Nodes), "--engine", opts.Engine}
	if opts.Managed {
		args = append(args, "--managed")
	}
	if out, err := c.run(30*time.Minute, args...); err != nil {
		_, _ = c.run(2*time.Minute, "down")
		return nil, fmt.Errorf("cluster.sh up: %w\n%s", err, out)
	}
	for i := 1; i <= opts.Nodes; i++ {
		n := &Node{Name: fmt.Sprintf("node%d", i), Dir: filepath.Join(c.Dir, fmt.Sprintf("node%d", i)), c: c}
		out, err := c.run(time.Minute, "ip", n.Name)
		if err != nil {
			return nil, fmt.Errorf("cluster.sh ip %s: %w\n%s", n.Name, err, out)
		}
		n.IP = strings.TrimSpace(out)
		n.Socket = "unix://" + filepath.Join(n.Dir, "run", "docker.sock")
		c.Nodes = append(c.Nodes, n)
	}
	return c, nil
}

// Down removes everything Up made and checks that nothing is left on this host.
func (c *Cluster) Down() error {
	if out, err := c.run(5*time.Minute, "down"); err != nil {
		return fmt.Errorf("cluster.sh down: %w\n%s", err, out)
	}
	return nil
}

// SaveLogs copies every node's dockerd, cniplug and boot logs to a new directory under /tmp (they go with
// Down) and returns it.
func (c *Cluster) SaveLogs() (string, error) {
	dir, err := os.MkdirTemp("", c.Name+"-logs-")
	if err != nil {
		return "", err
	}
	for _, n := range c.Nodes {
		for _, name := range []string{"dockerd.log", "cniplug.log", "init.log"} {
			if b, err := os.ReadFile(filepath.Join(n.Dir, name)); err == nil {
				_ = os.WriteFile(filepath.Join(dir, n.Name+"-"+name), b, 0o644)
			}
		}
	}
	return dir, nil
}

func (c *Cluster) run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{c.script}, args...)...)
	cmd.Env = append(os.Environ(), "CNIPLUG_CLUSTER_NAME="+c.Name, "CNIPLUG_CLUSTER_DIR="+c.Dir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Script runs scripts/cluster.sh with args (stop, kill, start, isolate, rejoin NODE), failing the test on error.
func (c *Cluster) Script(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.run(5*time.Minute, args...)
	if err != nil {
		t.Fatalf("cluster.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// Stop shuts a node down cleanly, Kill powers it off, Start boots it again with its disks kept.
func (c *Cluster) Stop(t testing.TB, n *Node)  { t.Helper(); c.Script(t, "stop", n.Name) }
func (c *Cluster) Kill(t testing.TB, n *Node)  { t.Helper(); c.Script(t, "kill", n.Name) }
func (c *Cluster) Start(t testing.TB, n *Node) { t.Helper(); c.Script(t, "start", n.Name) }

// Isolate cuts a node off the underlay; Rejoin reconnects it.
func (c *Cluster) Isolate(t testing.TB, n *Node) { t.Helper(); c.Script(t, "isolate", n.Name) }
func (c *Cluster) Rejoin(t testing.TB, n *Node)  { t.Helper(); c.Script(t, "rejoin", n.Name) }

// Command returns a command that runs on the node (in its namespaces).
func (n *Node) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command("bash", append([]string{n.c.script, "exec", n.Name, name}, args...)...)
	cmd.Env = append(os.Environ(), "CNIPLUG_CLUSTER_NAME="+n.c.Name, "CNIPLUG_CLUSTER_DIR="+n.c.Dir)
	return cmd
}

// Exec runs a command on the node and returns its output, failing the test on error.
func (n *Node) Exec(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %s %s: %v\n%s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// DockerE runs the docker CLI against the node's dockerd.
func (n *Node) DockerE(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+n.Socket)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return strings.TrimSpace(string(out)), fmt.Errorf("%s: docker %s: %w: %s", n.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// Docker runs the docker CLI against the node's dockerd, failing the test on error.
func (n *Node) Docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.DockerE(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Host is the node as a place for testutil's leak snapshots.
func (n *Node) Host() testutil.Host {
	return testutil.Host{Name: n.Name, Command: n.Command,
		CNIDataDir: filepath.Join(n.Dir, "cni"), NetNSDir: filepath.Join(n.Dir, "run", "netns")}
}

// ConfDir is the node's /etc/cni/net.d as seen from this host.
func (n *Node) ConfDir() string { return filepath.Join(n.Dir, "net.d") }

// LogHas reports whether the node's cniplug log has a line containing s (host mode; the managed plugin logs
// to dockerd's log).
func (n *Node) LogHas(s string) bool {
	for _, name := range []string{"cniplug.log", "dockerd.log"} {
		f, err := os.Open(filepath.Join(n.Dir, name))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if strings.Contains(sc.Text(), s) {
				f.Close()
				return true
			}
		}
		f.Close()
	}
	return false
}

// Snapshots records every node's state for AssertNoLeaks.
func (c *Cluster) Snapshots(t testing.TB) map[string]testutil.Snapshot {
	t.Helper()
	snaps := map[string]testutil.Snapshot{}
	for _, n := range c.Nodes {
		snaps[n.Name] = testutil.TakeSnapshotOn(t, n.Host())
	}
	return snaps
}

// AssertNoLeaks fails the test if any node has links, netns, reservations, cache files or CNI rules it did
// not have at the snapshot, or attachments cniplug still records.
func (c *Cluster) AssertNoLeaks(t testing.TB, before map[string]testutil.Snapshot) {
	t.Helper()
	for _, n := range c.Nodes {
		testutil.AssertNoLeaks(t, before[n.Name])
	}
}

// Eventually polls cond every 200 ms until it holds or timeout passes, then fails the test with what.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
	}
}
