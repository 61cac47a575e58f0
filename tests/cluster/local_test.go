package cluster_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/cniplug/cniplug/internal/testing/testutil/cluster"
)

const image = "cniplug-test/busybox"

// webServer is a container command serving "ok-<name>" over HTTP on port 80.
func webServer(name string) []string {
	return []string{"sh", "-c", fmt.Sprintf("mkdir -p /www && echo ok-%s > /www/index.html && exec httpd -f -p 80 -h /www", name)}
}

// containerIP returns a container's address on a Docker network.
func containerIP(t *testing.T, n *cluster.Node, container, network string) net.IP {
	t.Helper()
	out := n.Docker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, network), container)
	ip := net.ParseIP(out)
	if ip == nil {
		t.Fatalf("%s: container %s has no address on %s (inspect: %q)", n.Name, container, network, out)
	}
	return ip
}

// fetch runs wget in a container until it answers (busybox wget's -T crashes: timeout bounds it instead) (the first packets across a fresh vxlan or route may be
// lost) and returns the body.
func fetch(t *testing.T, n *cluster.Node, container, url string) string {
	t.Helper()
	var out string
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if out, err = n.DockerE("exec", container, "timeout", "3", "wget", "-q", "-O", "-", url); err == nil {
			return out
		}
	}
	t.Fatalf("%s: %s could not fetch %s: %v", n.Name, container, url, err)
	return ""
}

// TestPerHostNetworks: one CNI network wired across the nodes (routed, vxlan, macvlan), a local-scope Docker
// network on it on every node, with each addressing way that is safe across hosts. Containers on different
// nodes reach each other by address (new TCP connections, past Docker's FORWARD DROP policy), addresses are
// unique cluster-wide and from the node's own range, and a published port answers through its node from
// another node. Docker IPAM, unsafe on a subnet the nodes share, is refused with a clear error.
func TestPerHostNetworks(t *testing.T) {
	c := needCluster(t)
	for _, tc := range []struct {
		topo      cluster.Topology
		mode      string // cni-ipam, null-ipam or docker-ipam
		refused   string // docker network create fails with this
		published bool   // a published port is reachable through its node
	}{
		{topo: cluster.Routed, mode: "cni-ipam", published: true},
		{topo: cluster.Routed, mode: "null-ipam", published: true},
		{topo: cluster.Routed, mode: "docker-ipam", published: true}, // each node's own /24: safe
		{topo: cluster.VXLAN, mode: "cni-ipam", published: true},
		{topo: cluster.VXLAN, mode: "null-ipam", published: true},
		{topo: cluster.VXLAN, mode: "docker-ipam", refused: "a slice of a subnet that other hosts may share"},
		// A macvlan container is reached at its own LAN address; its node cannot hairpin to it.
		{topo: cluster.Macvlan, mode: "cni-ipam"},
		{topo: cluster.Macvlan, mode: "docker-ipam", refused: "a slice of a subnet that other hosts may share"},
	} {
		t.Run(string(tc.topo)+"/"+tc.mode, func(t *testing.T) {
			before := c.Snapshots(t)
			t.Cleanup(func() { c.AssertNoLeaks(t, before) })
			w := c.Wire(t, tc.topo, testutil.UniqueName("mh"))
			network := testutil.UniqueName("dn")
			for i, n := range c.Nodes {
				args := []string{"network", "create", "-d", c.Driver, "--opt", "cni=" + w.CNIName}
				switch tc.mode {
				case "cni-ipam":
					args = append(args, "--ipam-driver", c.Driver, "--ipam-opt", "cni="+w.CNIName)
				case "null-ipam":
					args = append(args, "--ipam-driver", "null")
				case "docker-ipam":
					sn, gw := w.Subnet, ""
					if tc.topo == cluster.Routed {
						sn = w.NodeSubnet(i + 1)
						gw = strings.TrimSuffix(sn, "0/24") + "1"
					} else if tc.topo == cluster.VXLAN {
						first, _ := w.NodeRange(c, i+1)
						g := append(net.IP(nil), first.To4()...)
						g[3] = 1
						gw = g.String()
					}
					args = append(args, "--subnet", sn)
					if gw != "" {
						args = append(args, "--gateway", gw)
					}
				}
				out, err := n.DockerE(append(args, network)...)
				if tc.refused != "" {
					if err == nil {
						n.Docker(t, "network", "rm", network)
						t.Fatalf("%s: docker network create with Docker IPAM on %s succeeded; want it refused", n.Name, tc.topo)
					}
					if !strings.Contains(out, tc.refused) || !strings.Contains(out, w.CNIName) {
						t.Fatalf("%s: refusal does not say why or name the CNI network: %s", n.Name, out)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				n := n
				t.Cleanup(func() {
					if _, err := n.DockerE("network", "rm", network); err != nil {
						t.Errorf("%v", err)
					}
				})
			}
			if tc.refused != "" {
				return
			}

			ips := map[string]net.IP{}
			names := map[string]string{}
			seen := map[string]string{}
			for i, n := range c.Nodes {
				name := testutil.UniqueName("web")
				args := []string{"run", "-d", "--name", name, "--network", network}
				if tc.published {
					args = append(args, "-p", "18080:80")
				}
				n.Docker(t, append(append(args, image), webServer(n.Name)...)...)
				n := n
				t.Cleanup(func() { _, _ = n.DockerE("rm", "-f", name) })
				ip := containerIP(t, n, name, network)
				if !w.Contains(c, i+1, ip) {
					first, last := w.NodeRange(c, i+1)
					t.Errorf("%s: container address %s is outside the node's range %s-%s", n.Name, ip, first, last)
				}
				if other, dup := seen[ip.String()]; dup {
					t.Errorf("address %s given on %s and on %s", ip, other, n.Name)
				}
				seen[ip.String()] = n.Name
				ips[n.Name], names[n.Name] = ip, name
			}
			// Every node's container fetches from the next node's (a new connection into another host).
			for i, n := range c.Nodes {
				peer := c.Nodes[(i+1)%len(c.Nodes)]
				got := fetch(t, n, names[n.Name], fmt.Sprintf("http://%s/", ips[peer.Name]))
				if got != "ok-"+peer.Name {
					t.Errorf("%s -> %s (%s): got %q", n.Name, peer.Name, ips[peer.Name], got)
				}
			}
			if tc.published {
				// The last node's published port, from the first node itself (not from a container).
				last := c.Nodes[len(c.Nodes)-1]
				url := fmt.Sprintf("http://%s:18080/", last.IP)
				var out string
				var err error
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
					var b []byte
					b, err = c.Nodes[0].Command("timeout", "3", "busybox", "wget", "-q", "-O", "-", url).CombinedOutput()
					if out = strings.TrimSpace(string(b)); err == nil {
						break
					}
				}
				if err != nil || out != "ok-"+last.Name {
					t.Errorf("node1 -> %s: got %q, %v", url, out, err)
				}
			}
		})
	}
}

// TestFlatLANByDHCP: the flat topology with one range shared by every node: macvlan over the nodes' LAN with
// the dhcp IPAM, one DHCP server allocating for the whole cluster (the cluster-wide allocator per-host
// networks otherwise lack). Containers on every node get unique addresses from the shared pool, reach each
// other and are reached from the other nodes themselves, and their leases are released when they go.
func TestFlatLANByDHCP(t *testing.T) {
	c := needCluster(t)
	if c.Engine == "20.10" {
		t.Skip("skipping: cniplug's DHCP needs Docker 28+ (the container's netns at Join)")
	}
	before := c.Snapshots(t)
	t.Cleanup(func() { c.AssertNoLeaks(t, before) })
	w := c.Wire(t, cluster.MacvlanDHCP, testutil.UniqueName("mh"))
	network := testutil.UniqueName("dn")
	for _, n := range c.Nodes {
		n.Docker(t, "network", "create", "-d", c.Driver, "--opt", "cni="+w.CNIName,
			"--ipam-driver", c.Driver, "--ipam-opt", "cni="+w.CNIName, network)
		n := n
		t.Cleanup(func() {
			if _, err := n.DockerE("network", "rm", network); err != nil {
				t.Errorf("%v", err)
			}
		})
	}
	type web struct {
		node *cluster.Node
		name string
		ip   net.IP
	}
	var webs []web
	seen := map[string]string{}
	for i, n := range c.Nodes {
		for k := 0; k < 2; k++ {
			name := testutil.UniqueName("web")
			n.Docker(t, append([]string{"run", "-d", "--name", name, "--network", network, image}, webServer(n.Name)...)...)
			n := n
			t.Cleanup(func() { _, _ = n.DockerE("rm", "-f", name) })
			ip := containerIP(t, n, name, network)
			if !w.Contains(c, i+1, ip) {
				first, last := w.NodeRange(c, i+1)
				t.Errorf("%s: %s got %s, outside the DHCP pool %s-%s", n.Name, name, ip, first, last)
			}
			if other, dup := seen[ip.String()]; dup {
				t.Errorf("address %s given on %s and on %s", ip, other, n.Name)
			}
			seen[ip.String()] = n.Name
			webs = append(webs, web{n, name, ip})
		}
	}
	leased := map[string]bool{}
	for _, l := range w.DHCPLeases() {
		leased[l.IP.String()] = true
	}
	for ip := range seen {
		if !leased[ip] {
			t.Errorf("the DHCP server has no lease for %s (leases: %v)", ip, w.DHCPLeases())
		}
	}
	for i, from := range webs {
		to := webs[(i+2)%len(webs)] // a container on the next node
		if got := fetch(t, from.node, from.name, fmt.Sprintf("http://%s/", to.ip)); got != "ok-"+to.node.Name {
			t.Errorf("%s -> %s (%s): got %q", from.node.Name, to.node.Name, to.ip, got)
		}
	}
	// From the first node itself to a container on the last (a node cannot reach its own macvlan children).
	last := webs[len(webs)-1]
	out, err := c.Nodes[0].Command("timeout", "3", "busybox", "wget", "-q", "-O", "-", fmt.Sprintf("http://%s/", last.ip)).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok-"+last.node.Name {
		t.Errorf("node1 -> %s on %s: %q, %v", last.ip, last.node.Name, out, err)
	}
	for _, wb := range webs {
		wb.node.Docker(t, "rm", "-f", wb.name)
	}
	cluster.Eventually(t, 30*time.Second, "every lease released at the DHCP server", func() bool {
		return len(w.DHCPLeases()) == 0
	})
}
