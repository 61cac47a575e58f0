// Package cluster drives the cluster test-bed, scripts/cluster.sh, from Go programs (the cluster benchmark;
// the tests through internal/testing/testutil/cluster): several Docker hosts on this one machine, each a
// network and mount namespace with its own dockerd and cniplug. It does not link the testing package.
package cluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
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
		script: filepath.Join(repoRoot(), "scripts", "cluster.sh")}
	if opts.Managed {
		c.Driver = "cniplug:latest"
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "cluster.env")); err == nil {
		if out, err := c.RunScript(2*time.Minute, "down"); err != nil {
			return nil, fmt.Errorf("removing the cluster left behind: %w\n%s", err, out)
		}
	}
	args := []string{"up", fmt.Sprint(opts.Nodes), "--engine", opts.Engine}
	if opts.Managed {
		args = append(args, "--managed")
	}
	if out, err := c.RunScript(30*time.Minute, args...); err != nil {
		_, _ = c.RunScript(2*time.Minute, "down")
		return nil, fmt.Errorf("cluster.sh up: %w\n%s", err, out)
	}
	for i := 1; i <= opts.Nodes; i++ {
		n := &Node{Name: fmt.Sprintf("node%d", i), Dir: filepath.Join(c.Dir, fmt.Sprintf("node%d", i)), c: c}
		out, err := c.RunScript(time.Minute, "ip", n.Name)
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
	if out, err := c.RunScript(5*time.Minute, "down"); err != nil {
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

// RunScript runs scripts/cluster.sh with args for this cluster.
func (c *Cluster) RunScript(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{c.script}, args...)...)
	cmd.Env = append(os.Environ(), "CNIPLUG_CLUSTER_NAME="+c.Name, "CNIPLUG_CLUSTER_DIR="+c.Dir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Command returns a command that runs on the node (in its namespaces).
func (n *Node) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command("bash", append([]string{n.c.script, "exec", n.Name, name}, args...)...)
	cmd.Env = append(os.Environ(), "CNIPLUG_CLUSTER_NAME="+n.c.Name, "CNIPLUG_CLUSTER_DIR="+n.c.Dir)
	return cmd
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

// repoRoot is the repository this package was built from, where scripts/cluster.sh is.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}
