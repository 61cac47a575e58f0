package cluster_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/cniplug/cniplug/internal/testing/testutil/cluster"
)

// hostnameServer is a task command serving its own host name over HTTP on port 80.
var hostnameServer = []string{"sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"}

// needSwarm returns the test-bed as a swarm, or skips: swarm refuses v1 (host) plugins for its networks.
func needSwarm(t *testing.T) *cluster.Cluster {
	t.Helper()
	c := needCluster(t)
	if !c.Managed {
		t.Skip("skipping: swarm networks need the managed plugin on every node (swarm refuses v1 plugins); run with CNIPLUG_E2E_MODE=managed")
	}
	c.Swarm(t)
	return c
}

// nodeIndex is a node's 1-based position in the cluster.
func nodeIndex(c *cluster.Cluster, n *cluster.Node) int {
	for i, m := range c.Nodes {
		if m == n {
			return i + 1
		}
	}
	return 0
}

// createService starts a replicated service on network and removes it when the test ends.
func createService(t *testing.T, c *cluster.Cluster, network string, replicas int, extra ...string) string {
	t.Helper()
	name := testutil.UniqueName("svc")
	args := append([]string{"service", "create", "--detach", "--name", name, "--network", network,
		"--replicas", fmt.Sprint(replicas)}, extra...)
	c.Nodes[0].Docker(t, append(append(args, image), hostnameServer...)...)
	t.Cleanup(func() {
		_, _ = c.Nodes[0].DockerE("service", "rm", name)
		cluster.Eventually(t, time.Minute, "service "+name+"'s containers gone from every node", func() bool {
			for _, n := range c.Nodes {
				if out, err := n.DockerE("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+name); err != nil || out != "" {
					return false
				}
			}
			return true
		})
	})
	return name
}

// checkTasks checks what every running task got: an address from its node's range, unique in the cluster,
// held by that node's CNI IPAM and nowhere else; and that every task reaches every other one by address.
func checkTasks(t *testing.T, c *cluster.Cluster, w *cluster.Wiring, tasks []cluster.Task) {
	t.Helper()
	seen := map[string]string{}
	perNode := map[string][]string{}
	for _, task := range tasks {
		if task.IP == nil || !w.Contains(c, nodeIndex(c, task.Node), task.IP) {
			t.Errorf("%s: task %s has address %v, outside its node's range", task.Node.Name, task.Hostname, task.IP)
		}
		if other, dup := seen[task.IP.String()]; dup {
			t.Errorf("address %s given to tasks on %s and %s", task.IP, other, task.Node.Name)
		}
		seen[task.IP.String()] = task.Node.Name
		perNode[task.Node.Name] = append(perNode[task.Node.Name], task.IP.String())
	}
	if w.Topology == cluster.MacvlanDHCP {
		// One allocator for the cluster: the DHCP server leases exactly the tasks' addresses.
		want := taskIPs(tasks)
		var got []string
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			got = nil
			for _, l := range w.DHCPLeases() {
				got = append(got, l.IP.String())
			}
			sort.Strings(got)
			if reflect.DeepEqual(got, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("the DHCP server leases %v, want the running tasks' %v", got, want)
				break
			}
		}
	} else {
		// The node's CNI IPAM holds exactly its tasks' addresses: none leaked by a task that went, none released
		// for one that runs. A background DEL may still be finishing: look again for a while.
		for _, n := range c.Nodes {
			want := perNode[n.Name]
			sort.Strings(want)
			var got []string
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				got = n.Reservations(w.CNIName)
				if reflect.DeepEqual(got, want) || (len(got) == 0 && len(want) == 0) {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("%s: host-local holds %v for CNI network %s, want its running tasks' %v", n.Name, got, w.CNIName, want)
					break
				}
			}
		}
	}
	if len(tasks) < 2 {
		return
	}
	from := tasks[0]
	for _, to := range tasks[1:] {
		got := fetch(t, from.Node, from.Container, fmt.Sprintf("http://%s/", to.IP))
		if got != to.Hostname {
			t.Errorf("%s (%s) -> %s (%s, %s): got %q", from.Node.Name, from.Hostname, to.Node.Name, to.Hostname, to.IP, got)
		}
	}
}

// resolve returns the sorted addresses a name resolves to inside a container (Docker's embedded DNS).
func resolve(t *testing.T, n *cluster.Node, container, name string) []string {
	t.Helper()
	out, _ := n.DockerE("exec", container, "nslookup", name)
	var ips []string
	for _, l := range lines(out) {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Address:" && net.ParseIP(f[1]) != nil && !strings.HasSuffix(l, ":53") {
			ips = append(ips, f[1])
		}
	}
	sort.Strings(ips)
	return ips
}

func taskIPs(tasks []cluster.Task) []string {
	var ips []string
	for _, task := range tasks {
		ips = append(ips, task.IP.String())
	}
	sort.Strings(ips)
	return ips
}

// TestSwarmServices: a swarm-scoped cniplug network (config-only network on every node + --config-from) with
// each addressing way that works for node-local swarm networks; `docker service create --replicas 6` spreads
// over the three nodes, every task gets a working CNI attachment with a unique address from its node's range,
// tasks reach each other across nodes, and the service's name and tasks.<service> resolve on every node (DNS
// round robin: endpoint mode vip gets no VIP on a node-local network and answers like dnsrr). A container
// started with `docker run` on the attachable network reaches the service by name. A swarm network made
// without --config-from fails its tasks with the commands to use.
func TestSwarmServices(t *testing.T) {
	c := needSwarm(t)
	for _, tc := range []struct {
		name     string
		topo     cluster.Topology
		config   func(w *cluster.Wiring, i int) []string
		endpoint string
	}{
		{name: "cni-ipam", topo: cluster.VXLAN, endpoint: "dnsrr", config: func(w *cluster.Wiring, i int) []string {
			return []string{"--ipam-driver", c.Driver, "--ipam-opt", "cni=" + w.CNIName}
		}},
		{name: "null-ipam", topo: cluster.VXLAN, endpoint: "vip", config: func(w *cluster.Wiring, i int) []string {
			return []string{"--ipam-driver", "null"}
		}},
		// Flat: one range for the whole swarm, one DHCP server allocating it (Docker 28+).
		{name: "dhcp", topo: cluster.MacvlanDHCP, endpoint: "dnsrr", config: func(w *cluster.Wiring, i int) []string {
			return []string{"--ipam-driver", c.Driver, "--ipam-opt", "cni=" + w.CNIName}
		}},
		// Docker IPAM is per node on a node-local network: safe when each node's config names its own range.
		{name: "docker-ipam", topo: cluster.Routed, endpoint: "dnsrr", config: func(w *cluster.Wiring, i int) []string {
			sn := w.NodeSubnet(i)
			return []string{"--subnet", sn, "--gateway", strings.TrimSuffix(sn, "0/24") + "1"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.topo == cluster.MacvlanDHCP && c.Engine == "20.10" {
				t.Skip("skipping: cniplug's DHCP needs Docker 28+ (the container's netns at Join)")
			}
			before := c.Snapshots(t)
			t.Cleanup(func() { c.AssertNoLeaks(t, before) })
			w := c.Wire(t, tc.topo, testutil.UniqueName("sw"))
			network := testutil.UniqueName("swn")
			c.SwarmNetwork(t, w, network, func(i int) []string { return tc.config(w, i) })
			svc := createService(t, c, network, 6, "--endpoint-mode", tc.endpoint)
			tasks := c.WaitRunning(t, svc, network, 6, 2*time.Minute)
			for _, n := range c.Nodes {
				count := 0
				for _, task := range tasks {
					if task.Node == n {
						count++
					}
				}
				if count == 0 {
					t.Errorf("no task of 6 on %s", n.Name)
				}
			}
			checkTasks(t, c, w, tasks)
			want := taskIPs(tasks)
			for _, task := range []cluster.Task{tasks[0], tasks[len(tasks)-1]} {
				for _, name := range []string{svc, "tasks." + svc} {
					var got []string
					for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
						if got = resolve(t, task.Node, task.Container, name); reflect.DeepEqual(got, want) {
							break
						}
					}
					if !reflect.DeepEqual(got, want) {
						t.Errorf("%s: %s resolves to %v, want the tasks' %v", task.Node.Name, name, got, want)
					}
				}
			}
			// A plain container on the attachable network, on a worker, reaches the service by name.
			out, err := c.Nodes[1].DockerE("run", "--rm", "--network", network, image, "timeout", "5", "wget", "-q", "-O", "-", "http://"+svc+"/")
			if err != nil || !strings.Contains(strings.Join(hostnames(tasks), " "), out) || out == "" {
				t.Errorf("docker run on %s: wget http://%s/: %q, %v", c.Nodes[1].Name, svc, out, err)
			}
		})
	}

	// A stack: `docker stack deploy` of a compose file whose network is the swarm cniplug network, made
	// beforehand (a stack file cannot say --config-from, so the network is external).
	t.Run("stack", func(t *testing.T) {
		before := c.Snapshots(t)
		t.Cleanup(func() { c.AssertNoLeaks(t, before) })
		w := c.Wire(t, cluster.VXLAN, testutil.UniqueName("sw"))
		network := testutil.UniqueName("swn")
		c.SwarmNetwork(t, w, network, func(int) []string { return []string{"--ipam-driver", c.Driver, "--ipam-opt", "cni=" + w.CNIName} })
		stack := testutil.UniqueName("stk")
		file := testutil.WriteFile(t, t.TempDir(), "stack.yaml", fmt.Sprintf(`version: "3.8"
services:
  web:
    image: %s
    command: [%q, %q, %q]
    deploy:
      replicas: 3
      endpoint_mode: dnsrr
    networks: [cninet]
networks:
  cninet:
    external: true
    name: %s
`, image, hostnameServer[0], hostnameServer[1], hostnameServer[2], network))
		mgr := c.Nodes[0]
		mgr.Docker(t, "stack", "deploy", "--detach=true", "-c", file, stack)
		t.Cleanup(func() {
			_, _ = mgr.DockerE("stack", "rm", stack)
			cluster.Eventually(t, time.Minute, "stack "+stack+"'s containers gone from every node", func() bool {
				for _, n := range c.Nodes {
					if out, err := n.DockerE("ps", "-aq", "--filter", "label=com.docker.stack.namespace="+stack); err != nil || out != "" {
						return false
					}
				}
				return true
			})
		})
		tasks := c.WaitRunning(t, stack+"_web", network, 3, 2*time.Minute)
		checkTasks(t, c, w, tasks)
	})

	t.Run("without-config-from", func(t *testing.T) {
		before := c.Snapshots(t)
		t.Cleanup(func() { c.AssertNoLeaks(t, before) })
		w := c.Wire(t, cluster.VXLAN, testutil.UniqueName("sw"))
		network := testutil.UniqueName("swn")
		mgr := c.Nodes[0]
		mgr.Docker(t, "network", "create", "-d", c.Driver, "--scope", "swarm", "--opt", "cni="+w.CNIName, network)
		t.Cleanup(func() { _, _ = mgr.DockerE("network", "rm", network) })
		svc := createService(t, c, network, 1)
		var errText string
		cluster.Eventually(t, time.Minute, "the task fails with the reason", func() bool {
			errText, _ = mgr.DockerE("service", "ps", "--no-trunc", "--format", "{{.Error}}", svc)
			return strings.Contains(errText, "--config-from")
		})
		for _, want := range []string{"this swarm network carries no --opt cni", "--config-only --opt cni=<CNI network>", "--scope swarm --config-from"} {
			if !strings.Contains(errText, want) {
				t.Errorf("task error %q does not contain %q", errText, want)
			}
		}
	})
}

func hostnames(tasks []cluster.Task) []string {
	var out []string
	for _, task := range tasks {
		out = append(out, task.Hostname)
	}
	return out
}

// vxlanService is the churn tests' start: 6 dnsrr tasks on a swarm network over a vxlan wiring with cniplug
// IPAM (one range slice per node), and a leak check on every node at the end of the test.
type vxlanService struct {
	before  map[string]testutil.Snapshot // every node's, before the wiring
	w       *cluster.Wiring
	network string
	svc     string
	tasks   []cluster.Task // running
}

func startVXLANService(t *testing.T, c *cluster.Cluster) vxlanService {
	t.Helper()
	v := vxlanService{before: c.Snapshots(t)}
	t.Cleanup(func() { c.AssertNoLeaks(t, v.before) })
	v.w = c.Wire(t, cluster.VXLAN, testutil.UniqueName("sw"))
	v.network = testutil.UniqueName("swn")
	c.SwarmNetwork(t, v.w, v.network, func(int) []string {
		return []string{"--ipam-driver", c.Driver, "--ipam-opt", "cni=" + v.w.CNIName}
	})
	v.svc = createService(t, c, v.network, 6, "--endpoint-mode", "dnsrr")
	v.tasks = c.WaitRunning(t, v.svc, v.network, 6, 2*time.Minute)
	return v
}

// TestSwarmChurn: a service on a swarm cniplug network (CNI IPAM over vxlan) through scale up and down, a
// rolling restart, a drained node, a node killed and booted again, and a node cut off the underlay and
// reconnected. After each, the running tasks have working attachments and every node's CNI IPAM holds exactly
// its running tasks' addresses: nothing leaked by a task that went (also the killed node's, released when it
// returns), nothing released for a task that runs (a returning node's garbage collection never touches
// another node's addresses).
func TestSwarmChurn(t *testing.T) {
	c := needSwarm(t)
	v := startVXLANService(t, c)
	w, network, svc, before := v.w, v.network, v.svc, v.before
	mgr := c.Nodes[0]
	checkTasks(t, c, w, v.tasks)

	t.Log("scale 6 -> 12 -> 3")
	mgr.Docker(t, "service", "scale", "--detach", svc+"=12")
	checkTasks(t, c, w, c.WaitRunning(t, svc, network, 12, 2*time.Minute))
	mgr.Docker(t, "service", "scale", "--detach", svc+"=3")
	checkTasks(t, c, w, c.WaitRunning(t, svc, network, 3, 2*time.Minute))

	t.Log("rolling restart")
	tasks := rollingRestart(t, c, svc, network, 3)
	checkTasks(t, c, w, tasks)

	drained := c.Nodes[2]
	t.Logf("drain %s", drained.Name)
	mgr.Docker(t, "node", "update", "--availability", "drain", drained.Name)
	cluster.Eventually(t, 2*time.Minute, "no task left on the drained node", func() bool {
		tasks = c.WaitRunning(t, svc, network, 3, 2*time.Minute)
		for _, task := range tasks {
			if task.Node == drained {
				return false
			}
		}
		return true
	})
	checkTasks(t, c, w, tasks)
	mgr.Docker(t, "node", "update", "--availability", "active", drained.Name)

	killed := c.Nodes[1]
	mgr.Docker(t, "service", "scale", "--detach", svc+"=6")
	tasks = c.WaitRunning(t, svc, network, 6, 2*time.Minute)
	onKilled := 0
	for _, task := range tasks {
		if task.Node == killed {
			onKilled++
		}
	}
	t.Logf("kill %s (%d tasks there) and boot it again", killed.Name, onKilled)
	if onKilled == 0 {
		t.Fatalf("no task on %s to lose: %v", killed.Name, tasks)
	}
	c.Kill(t, killed)
	// Swarm notices the node is down and starts its tasks elsewhere.
	cluster.Eventually(t, 2*time.Minute, "the killed node's tasks started on the others", func() bool {
		out, _ := mgr.DockerE("node", "inspect", "-f", "{{.Status.State}}", killed.Name)
		return out == "down" && len(c.Tasks(t, svc, network)) == 6
	})
	reservedBefore := killed.Reservations(w.CNIName)
	if len(reservedBefore) != onKilled {
		t.Errorf("%s holds %v while down, want its %d tasks' addresses", killed.Name, reservedBefore, onKilled)
	}
	c.Start(t, killed)
	w.Rewire(t, c, killed)
	cluster.Eventually(t, 2*time.Minute, "the rebooted node back in the swarm", func() bool {
		out, _ := mgr.DockerE("node", "inspect", "-f", "{{.Status.State}}", killed.Name)
		return out == "ready"
	})
	c.RebaseLinks(t, before, killed)
	checkTasks(t, c, w, c.WaitRunning(t, svc, network, 6, 2*time.Minute))

	isolated := c.Nodes[2]
	t.Logf("cut %s off and reconnect it", isolated.Name)
	mgr.Docker(t, "service", "scale", "--detach", svc+"=9")
	c.WaitRunning(t, svc, network, 9, 2*time.Minute)
	c.Isolate(t, isolated)
	cluster.Eventually(t, 2*time.Minute, "the isolated node down for the manager", func() bool {
		out, _ := mgr.DockerE("node", "inspect", "-f", "{{.Status.State}}", isolated.Name)
		return out == "down"
	})
	c.Rejoin(t, isolated)
	cluster.Eventually(t, 2*time.Minute, "the reconnected node ready", func() bool {
		out, _ := mgr.DockerE("node", "inspect", "-f", "{{.Status.State}}", isolated.Name)
		return out == "ready"
	})
	checkTasks(t, c, w, c.WaitRunning(t, svc, network, 9, 3*time.Minute))
}

// TestSwarmPluginUpgrade: `docker plugin upgrade` of cniplug:latest node by node (from a registry each node
// runs on its own 127.0.0.1: upgrade only pulls) while a service runs on a swarm cniplug network. The
// running tasks keep reaching each other throughout; the new version serves new tasks and tears down the old
// version's attachments completely.
func TestSwarmPluginUpgrade(t *testing.T) {
	c := needSwarm(t)
	if _, err := exec.LookPath("docker-registry"); err != nil {
		t.Skip("skipping: docker-registry is not installed (scripts/setup.sh installs it)")
	}
	v := startVXLANService(t, c)
	w, network, svc, tasks := v.w, v.network, v.svc, v.tasks
	checkTasks(t, c, w, tasks)

	// A second version: the same bundle with another release mark (dockerd refuses content it already has).
	release := filepath.Join(c.Dir, "plugin", "rootfs", "etc", "cniplug-release")
	testutil.Must(t, os.WriteFile(release, []byte("cniplug upgrade test "+testutil.UniqueName("v")+"\n"), 0o644))
	for _, n := range c.Nodes {
		ref := startNodeRegistry(t, n) + "/cniplug:v2"
		n.Docker(t, "plugin", "create", ref, filepath.Join(c.Dir, "plugin"))
		n.Docker(t, "plugin", "push", ref)
		n.Docker(t, "plugin", "rm", ref)
		n.Docker(t, "plugin", "disable", "-f", c.Driver)
		// With the plugin disabled the data path still works: the links, routes and rules are the kernel's.
		checkReach(t, tasks)
		n.Docker(t, "plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", c.Driver, ref)
		n.Docker(t, "plugin", "enable", c.Driver)
		if got := n.Docker(t, "plugin", "inspect", "-f", "{{.PluginReference}}", c.Driver); got != ref {
			t.Errorf("%s: after the upgrade the plugin comes from %q, want %q", n.Name, got, ref)
		}
		checkReach(t, tasks)
	}
	// The new version: new tasks on every node, and the old ones gone without a trace.
	checkTasks(t, c, w, rollingRestart(t, c, svc, network, 6))
}

// rollingRestart runs `docker service update --force` and waits until every task has been replaced.
func rollingRestart(t *testing.T, c *cluster.Cluster, svc, network string, replicas int) []cluster.Task {
	t.Helper()
	old := map[string]bool{}
	for _, task := range c.Tasks(t, svc, network) {
		old[task.Container] = true
	}
	c.Nodes[0].Docker(t, "service", "update", "--detach", "--force", svc)
	var tasks []cluster.Task
	cluster.Eventually(t, 2*time.Minute, "every task of "+svc+" replaced by update --force", func() bool {
		tasks = c.WaitRunning(t, svc, network, replicas, 2*time.Minute)
		for _, task := range tasks {
			if old[task.Container] {
				return false
			}
		}
		return true
	})
	return tasks
}

// checkReach fails the test unless the first task reaches every other one.
func checkReach(t *testing.T, tasks []cluster.Task) {
	t.Helper()
	for _, to := range tasks[1:] {
		if got := fetch(t, tasks[0].Node, tasks[0].Container, fmt.Sprintf("http://%s/", to.IP)); got != to.Hostname {
			t.Errorf("%s -> %s (%s): got %q", tasks[0].Node.Name, to.Node.Name, to.IP, got)
		}
	}
}

// startNodeRegistry runs Debian's docker-registry inside a node, on the node's 127.0.0.1:5000 (a registry
// on localhost needs no TLS), until the test ends, and returns its address.
func startNodeRegistry(t *testing.T, n *cluster.Node) string {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:5000\n", filepath.Join(dir, "data"))
	cfgPath := testutil.WriteFile(t, dir, "config.yml", cfg)
	cmd := n.Command("docker-registry", "serve", cfgPath)
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	testutil.Must(t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	testutil.Must(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		// nsenter's child may outlive it: kill whatever still serves this config.
		testutil.KillMatching(t, cfgPath)
		logf.Close()
	})
	cluster.Eventually(t, 15*time.Second, n.Name+": docker-registry answers", func() bool {
		return n.Command("busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:5000/v2/").Run() == nil
	})
	return "127.0.0.1:5000"
}
