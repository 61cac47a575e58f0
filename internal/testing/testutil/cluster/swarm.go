package cluster

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// Swarm makes node1 a swarm manager and the other nodes workers, unless they already form one, and has every
// node leave when the test ends. Heartbeats are short so that a killed or isolated node is noticed within
// seconds.
func (c *Cluster) Swarm(t testing.TB) {
	t.Helper()
	mgr := c.Nodes[0]
	if state, _ := mgr.DockerE("info", "-f", "{{.Swarm.LocalNodeState}}"); state != "active" {
		mgr.Docker(t, "swarm", "init", "--dispatcher-heartbeat", "2s")
	}
	token := mgr.Docker(t, "swarm", "join-token", "-q", "worker")
	for _, n := range c.Nodes[1:] {
		if state, _ := n.DockerE("info", "-f", "{{.Swarm.LocalNodeState}}"); state != "active" {
			n.Docker(t, "swarm", "join", "--token", token, mgr.IP+":2377")
		}
	}
	Eventually(t, time.Minute, "every node Ready in the swarm", func() bool {
		out, err := mgr.DockerE("node", "ls", "--format", "{{.Status}}")
		return err == nil && strings.Count(out, "Ready") == len(c.Nodes)
	})
	for _, n := range c.Nodes {
		waitIngressSandbox(t, n)
	}
	t.Cleanup(func() {
		for i := len(c.Nodes) - 1; i >= 0; i-- {
			_, _ = c.Nodes[i].DockerE("swarm", "leave", "--force")
		}
	})
}

// waitIngressSandbox waits for the swarm ingress sandbox a node sets up, with its link on docker_gwbridge, a
// moment after it joined: it belongs in the tests' leak snapshots, not among their leaks.
func waitIngressSandbox(t testing.TB, n *Node) {
	t.Helper()
	Eventually(t, time.Minute, n.Name+": swarm's ingress sandbox on docker_gwbridge", func() bool {
		out, err := n.Command("ip", "-o", "link", "show", "master", "docker_gwbridge").Output()
		return err == nil && strings.Contains(string(out), "veth")
	})
}

// RebaseLinks takes a rebooted swarm node's links as its leak baseline: Docker's own links (the ingress
// sandbox's on docker_gwbridge) come back under new names. Everything else of the baseline stays.
func (c *Cluster) RebaseLinks(t testing.TB, before map[string]testutil.Snapshot, n *Node) {
	t.Helper()
	waitIngressSandbox(t, n)
	s := before[n.Name]
	s.Links = testutil.TakeSnapshotOn(t, n.Host()).Links
	before[n.Name] = s
}

// SwarmNetwork creates a swarm-scoped cniplug network on the wiring's CNI network: a config-only network on
// every node (configFlags(i) are node i's extra flags, e.g. its IPAM), then the swarm network from it on the
// manager. Both go when the test ends.
func (c *Cluster) SwarmNetwork(t testing.TB, w *Wiring, name string, configFlags func(i int) []string) {
	t.Helper()
	for i, n := range c.Nodes {
		args := append([]string{"network", "create", "--config-only", "--opt", "cni=" + w.CNIName}, configFlags(i+1)...)
		n.Docker(t, append(args, name+"-config")...)
		n := n
		t.Cleanup(func() {
			// A node removes its copy of the swarm network a moment after its last task has gone.
			Eventually(t, 30*time.Second, n.Name+": config-only network "+name+"-config removable", func() bool {
				_, err := n.DockerE("network", "rm", name+"-config")
				return err == nil
			})
		})
	}
	mgr := c.Nodes[0]
	mgr.Docker(t, "network", "create", "-d", c.Driver, "--scope", "swarm", "--config-from", name+"-config", "--attachable", name)
	t.Cleanup(func() {
		Eventually(t, 30*time.Second, "swarm network "+name+" removable", func() bool {
			_, err := mgr.DockerE("network", "rm", name)
			return err == nil
		})
	})
}

// Task is a running task container of a service.
type Task struct {
	Node      *Node
	Container string // its ID
	Hostname  string // its host name (the first 12 characters of its ID)
	IP        net.IP // its address on the network the tasks were listed for
}

// Tasks lists the service's running task containers that have an address on network, on every node.
func (c *Cluster) Tasks(t testing.TB, service, network string) []Task {
	t.Helper()
	var tasks []Task
	for _, n := range c.Nodes {
		out, err := n.DockerE("ps", "-q", "--no-trunc", "--filter", "label=com.docker.swarm.service.name="+service)
		if err != nil {
			continue // a node that is down has no running tasks
		}
		for _, id := range strings.Fields(out) {
			info, err := n.DockerE("inspect", "-f", fmt.Sprintf(`{{.Config.Hostname}} {{(index .NetworkSettings.Networks %q).IPAddress}}`, network), id)
			if err != nil {
				continue // gone since ps
			}
			f := strings.Fields(info)
			if len(f) != 2 {
				// Starting or stopping (seen in a rolling restart): not a running task with an attachment. One that
				// stays so makes WaitRunning time out.
				continue
			}
			tasks = append(tasks, Task{Node: n, Container: id, Hostname: f[0], IP: net.ParseIP(f[1])})
		}
	}
	sort.Slice(tasks, func(i, j int) bool {
		return tasks[i].Node.Name+tasks[i].Container < tasks[j].Node.Name+tasks[j].Container
	})
	return tasks
}

// WaitRunning waits until the service has exactly want running tasks and returns them.
func (c *Cluster) WaitRunning(t testing.TB, service, network string, want int, timeout time.Duration) []Task {
	t.Helper()
	var tasks []Task
	Eventually(t, timeout, fmt.Sprintf("service %s has %d running tasks", service, want), func() bool {
		out, err := c.Nodes[0].DockerE("service", "ls", "--filter", "name="+service, "--format", "{{.Replicas}}")
		if err != nil || strings.TrimSpace(out) != fmt.Sprintf("%d/%d", want, want) {
			return false
		}
		tasks = c.Tasks(t, service, network)
		return len(tasks) == want
	})
	return tasks
}

// Reservations lists the addresses host-local holds on the node for a CNI network.
func (n *Node) Reservations(cniName string) []string {
	entries, _ := os.ReadDir(filepath.Join(n.Dir, "cni", "networks", cniName))
	var out []string
	for _, e := range entries {
		if net.ParseIP(e.Name()) != nil {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}
