package cluster_test

import (
	"fmt"
	"net"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/cniplug/cniplug/internal/testing/testutil/cluster"
)

// TestNetworksStayApartAcrossNodes: two cniplug networks, each wired across the nodes, stay apart on every node
// as Docker's networks do: a container reaches its own network's containers on the other nodes and no
// container of the other network, wherever it runs.
func TestNetworksStayApartAcrossNodes(t *testing.T) {
	c := needCluster(t)
	for _, topo := range []cluster.Topology{cluster.Routed, cluster.VXLAN} {
		t.Run(string(topo), func(t *testing.T) {
			before := c.Snapshots(t)
			t.Cleanup(func() { c.AssertNoLeaks(t, before) })
			type member struct {
				node *cluster.Node
				name string
				ip   net.IP
			}
			members := map[string][]member{} // by Docker network
			var networks []string
			for range 2 {
				w := c.Wire(t, topo, testutil.UniqueName("mh"))
				network := testutil.UniqueName("dn")
				networks = append(networks, network)
				for _, n := range c.Nodes[:2] {
					n.Docker(t, "network", "create", "-d", c.Driver, "--opt", "cni="+w.CNIName,
						"--ipam-driver", c.Driver, "--ipam-opt", "cni="+w.CNIName, network)
					n := n
					t.Cleanup(func() {
						if _, err := n.DockerE("network", "rm", network); err != nil {
							t.Errorf("%v", err)
						}
					})
					name := testutil.UniqueName("web")
					n.Docker(t, append([]string{"run", "-d", "--name", name, "--network", network, image}, webServer(n.Name)...)...)
					t.Cleanup(func() { _, _ = n.DockerE("rm", "-f", name) })
					members[network] = append(members[network], member{n, name, containerIP(t, n, name, network)})
				}
			}
			for _, network := range networks {
				own := members[network]
				// Within the network, across the nodes: node1's container fetches from node2's.
				if got := fetch(t, own[0].node, own[0].name, fmt.Sprintf("http://%s/", own[1].ip)); got != "ok-"+own[1].node.Name {
					t.Errorf("%s: %s -> %s: got %q", network, own[0].node.Name, own[1].node.Name, got)
				}
				for _, other := range networks {
					if other == network {
						continue
					}
					for _, to := range members[other] {
						from := own[0]
						url := fmt.Sprintf("http://%s/", to.ip)
						if out, err := from.node.DockerE("exec", from.name, "timeout", "3", "wget", "-q", "-O", "-", url); err == nil {
							t.Errorf("%s on %s reached %s of network %s on %s: %q", from.name, from.node.Name, to.ip, other, to.node.Name, out)
						}
					}
				}
			}
		})
	}
}
