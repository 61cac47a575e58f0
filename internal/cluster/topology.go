package cluster

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Topology is one way to wire a CNI network across the nodes from the reference plugins and the kernel, the way
// multi-host CNI networks do it underneath.
type Topology string

const (
	// Routed: a bridge per node with its own /24 of Subnet (host-local), and routes between the nodes over the
	// underlay (flannel's host-gw). Containers route the whole Subnet through their node.
	Routed Topology = "routed"
	// VXLAN: a bridge per node joined by a kernel vxlan device with static flooding entries for every peer, one
	// subnet shared by all nodes; each node allocates from its own slice of it (host-local rangeStart/End).
	VXLAN Topology = "vxlan"
	// Macvlan: macvlan links over each node's underlay link, the underlay's subnet shared by all nodes; each
	// node allocates from its own slice (containers are on the nodes' LAN).
	Macvlan Topology = "macvlan"
	// MacvlanDHCP: macvlan over the underlay with the dhcp IPAM: one range shared by all nodes, unique because
	// one DHCP server on the underlay allocates for the whole cluster (Docker 28+, as cniplug's DHCP).
	MacvlanDHCP Topology = "macvlan-dhcp"
)

// Wiring is a CNI network wired across every node of the cluster.
type Wiring struct {
	Topology Topology
	CNIName  string // the CNI network's name on every node
	Subnet   string // the whole network
	index    int
	// leaseFile is the DHCP server's lease file (MacvlanDHCP).
	leaseFile string
}

// WireE writes the CNI network on every node and adds what it needs there (routes, bridges, vxlan devices).
// Cleanup removes what was set up, also when err is not nil (it then undoes the part that was done).
// Wirings of one cluster must have distinct names.
func (c *Cluster) WireE(topo Topology, cniName string) (w *Wiring, cleanup func(), err error) {
	var undo []func() // run in reverse order, as t.Cleanup does
	cleanup = func() {
		for k := len(undo) - 1; k >= 0; k-- {
			undo[k]()
		}
		undo = nil
	}
	c.wirings++ // each wiring gets its own octet, bridge and vxlan names
	w = &Wiring{Topology: topo, CNIName: cniName, index: c.wirings % 50}
	switch topo {
	case Routed:
		w.Subnet = fmt.Sprintf("10.%d.0.0/16", 100+w.index)
	case VXLAN:
		w.Subnet = fmt.Sprintf("10.%d.0.0/16", 150+w.index)
	case Macvlan, MacvlanDHCP:
		_, sn, err := net.ParseCIDR(c.Nodes[0].IP + "/24")
		if err != nil {
			return nil, cleanup, err
		}
		w.Subnet = sn.String()
	default:
		return nil, cleanup, fmt.Errorf("unknown topology %q", topo)
	}
	if topo == MacvlanDHCP {
		stop, err := c.startDHCPServer(w)
		undo = append(undo, stop)
		if err != nil {
			return nil, cleanup, err
		}
	}
	for i, n := range c.Nodes {
		i, n := i+1, n
		path := filepath.Join(n.ConfDir(), cniName+".conflist")
		if err := os.WriteFile(path, []byte(w.conflist(c, i)), 0o644); err != nil {
			return nil, cleanup, err
		}
		undo = append(undo, func() { _ = os.Remove(path) })
		undo = append(undo, func() {
			for _, cmd := range w.teardown(c, i) {
				_ = n.Command("sh", "-c", cmd).Run()
			}
			// host-local keeps its bookkeeping (lock, last reserved address) after the last release.
			dir := filepath.Join(n.Dir, "cni", "networks", cniName)
			_ = os.Remove(filepath.Join(dir, "lock"))
			if m, _ := filepath.Glob(filepath.Join(dir, "last_reserved_ip*")); len(m) > 0 {
				for _, f := range m {
					_ = os.Remove(f)
				}
			}
			_ = os.Remove(dir)
		})
		for _, cmd := range w.NodeSetup(c, i) {
			if out, err := n.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
				return nil, cleanup, fmt.Errorf("%s: sh -c %s: %v\n%s", n.Name, cmd, err, strings.TrimSpace(string(out)))
			}
		}
	}
	return w, cleanup, nil
}

func (w *Wiring) bridge() string { return fmt.Sprintf("cl%s%d", string(w.Topology[0]), w.index) }
func (w *Wiring) vxlan() string  { return fmt.Sprintf("vx%d", w.index) }

// NodeSubnet is the /24 node i (1-based) allocates from on a routed or vxlan network; the whole subnet otherwise.
func (w *Wiring) NodeSubnet(i int) string {
	switch w.Topology {
	case Routed:
		return fmt.Sprintf("10.%d.%d.0/24", 100+w.index, i)
	case VXLAN:
		return fmt.Sprintf("10.%d.%d.0/24", 150+w.index, i)
	}
	return w.Subnet
}

// NodeRange is the first and last address node i allocates.
func (w *Wiring) NodeRange(c *Cluster, i int) (net.IP, net.IP) {
	switch w.Topology {
	case Routed, VXLAN:
		_, sn, _ := net.ParseCIDR(w.NodeSubnet(i))
		first := append(net.IP(nil), sn.IP.To4()...)
		last := append(net.IP(nil), sn.IP.To4()...)
		first[3], last[3] = 2, 254
		return first, last
	case Macvlan: // node i: .(100+20(i-1)) to .(119+20(i-1)) of the underlay's /24
		base := net.ParseIP(c.Nodes[0].IP).To4()
		first := append(net.IP(nil), base...)
		last := append(net.IP(nil), base...)
		first[3], last[3] = byte(100+20*(i-1)), byte(119+20*(i-1))
		return first, last
	case MacvlanDHCP: // every node: the DHCP server's pool
		base := net.ParseIP(c.Nodes[0].IP).To4()
		first := append(net.IP(nil), base...)
		last := append(net.IP(nil), base...)
		first[3], last[3] = dhcpFirst, dhcpLast
		return first, last
	}
	_, sn, _ := net.ParseCIDR(w.Subnet)
	return sn.IP, sn.IP
}

func (w *Wiring) conflist(c *Cluster, i int) string {
	switch w.Topology {
	case Routed:
		sn := w.NodeSubnet(i)
		gw := strings.TrimSuffix(sn, "0/24") + "1"
		return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "gateway": %q}]],
            "routes": [{"dst": %q}, {"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}`, w.CNIName, w.bridge(), sn, gw, w.Subnet)
	case VXLAN:
		first, last := w.NodeRange(c, i)
		gw := append(net.IP(nil), first...)
		gw[3] = 1
		return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": true, "mtu": 1450,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "gateway": %q, "rangeStart": %q, "rangeEnd": %q}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}`, w.CNIName, w.bridge(), w.Subnet, gw, first, last)
	case Macvlan:
		first, last := w.NodeRange(c, i)
		return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "macvlan", "master": "eth0", "mode": "bridge",
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "rangeStart": %q, "rangeEnd": %q}]]}}]}`,
			w.CNIName, w.Subnet, first, last)
	case MacvlanDHCP:
		return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {"type": "dhcp"}}]}`, w.CNIName)
	}
	return ""
}

// NodeSetup is the commands that wire node i (1-based): its routes, bridges and vxlan devices.
func (w *Wiring) NodeSetup(c *Cluster, i int) []string {
	switch w.Topology {
	case Routed:
		var cmds []string
		for j, peer := range c.Nodes {
			if j+1 != i {
				cmds = append(cmds, fmt.Sprintf("ip route replace %s via %s", w.NodeSubnet(j+1), peer.IP))
			}
		}
		return cmds
	case VXLAN:
		cmds := []string{
			fmt.Sprintf("ip link add %s type bridge && ip link set %s up", w.bridge(), w.bridge()),
			fmt.Sprintf("ip link add %s type vxlan id %d dstport 8472 local %s dev eth0", w.vxlan(), 4200+w.index, c.Nodes[i-1].IP),
			fmt.Sprintf("ip link set %s mtu 1450 master %s up", w.vxlan(), w.bridge()),
		}
		for j, peer := range c.Nodes {
			if j+1 != i {
				cmds = append(cmds, fmt.Sprintf("bridge fdb append 00:00:00:00:00:00 dev %s dst %s", w.vxlan(), peer.IP))
			}
		}
		return cmds
	}
	return nil
}

func (w *Wiring) teardown(c *Cluster, i int) []string {
	switch w.Topology {
	case Routed:
		var cmds []string
		for j := range c.Nodes {
			if j+1 != i {
				cmds = append(cmds, fmt.Sprintf("ip route del %s", w.NodeSubnet(j+1)))
			}
		}
		return append(cmds, fmt.Sprintf("ip link del %s", w.bridge()))
	case VXLAN:
		return []string{fmt.Sprintf("ip link del %s", w.vxlan()), fmt.Sprintf("ip link del %s", w.bridge())}
	}
	return nil
}

// Contains reports whether ip is in node i's part of the network.
func (w *Wiring) Contains(c *Cluster, i int, ip net.IP) bool {
	first, last := w.NodeRange(c, i)
	ip4 := ip.To4()
	if ip4 == nil {
		return false
	}
	return bytesCompare(ip4, first.To4()) >= 0 && bytesCompare(ip4, last.To4()) <= 0
}

func bytesCompare(a, b net.IP) int {
	for k := range a {
		if a[k] != b[k] {
			if a[k] < b[k] {
				return -1
			}
			return 1
		}
	}
	return 0
}
