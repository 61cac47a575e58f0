package attach

import (
	"net"

	"github.com/vishvananda/netlink"
)

// forgetNeighbours deletes the host's neighbour (ARP/NDP) entries for a removed attachment's addresses. CNI
// plugins give each attachment a random MAC, and Docker's IPAM hands a released address straight to the next
// container: a stale entry would send that container's traffic (published ports, replies to pings) to the old
// MAC for the several seconds the kernel needs to notice. Administrator-made (permanent) entries are kept.
func forgetNeighbours(addrs []string) {
	for _, a := range addrs {
		ip, _, err := net.ParseCIDR(a)
		if err != nil {
			continue
		}
		family := netlink.FAMILY_V4
		if ip.To4() == nil {
			family = netlink.FAMILY_V6
		}
		neighs, err := netlink.NeighList(0, family)
		if err != nil {
			continue
		}
		for i := range neighs {
			if neighs[i].IP.Equal(ip) && neighs[i].State&netlink.NUD_PERMANENT == 0 {
				_ = netlink.NeighDel(&neighs[i])
			}
		}
	}
}
