package cluster

import (
	"net"
	"testing"

	"github.com/cniplug/cniplug/internal/cluster"
)

// Wiring is a CNI network wired across every node of the cluster.
type Wiring struct{ *cluster.Wiring }

// Topologies, as in internal/cluster.
type Topology = cluster.Topology

const (
	Routed      = cluster.Routed
	VXLAN       = cluster.VXLAN
	Macvlan     = cluster.Macvlan
	MacvlanDHCP = cluster.MacvlanDHCP
)

// DHCPLease is one lease of the underlay's DHCP server.
type DHCPLease = cluster.DHCPLease

// Wire is cluster.WireE for tests: the test's cleanup removes the wiring, and an error fails the test.
func (c *Cluster) Wire(t testing.TB, topo Topology, cniName string) *Wiring {
	t.Helper()
	w, cleanup, err := c.WireE(topo, cniName)
	t.Cleanup(cleanup)
	if err != nil {
		t.Fatal(err)
	}
	return &Wiring{w}
}

// Rewire adds the wiring's links and routes on node n again, after n rebooted (`cluster.sh kill` and `start`
// lose them with its network namespace), as the CNI network's own agent (flannel, calico-node) would.
func (w *Wiring) Rewire(t testing.TB, c *Cluster, n *Node) {
	t.Helper()
	for i, m := range c.Nodes {
		if m == n {
			for _, cmd := range w.NodeSetup(c.Cluster, i+1) {
				n.Exec(t, "sh", "-c", cmd)
			}
		}
	}
}

// NodeRange is the first and last address node i allocates.
func (w *Wiring) NodeRange(c *Cluster, i int) (net.IP, net.IP) {
	return w.Wiring.NodeRange(c.Cluster, i)
}

// Contains reports whether ip is in node i's part of the network.
func (w *Wiring) Contains(c *Cluster, i int, ip net.IP) bool {
	return w.Wiring.Contains(c.Cluster, i, ip)
}
