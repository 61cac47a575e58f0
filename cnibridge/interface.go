package cnibridge

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Interface is what the CNI plugins configured on the attachment's link, read from the staging netns.
type Interface struct {
	IPv4        string   `json:"ipv4,omitempty"` // CIDR
	IPv6        string   `json:"ipv6,omitempty"` // CIDR
	Extra       []string `json:"extra,omitempty"`
	MAC         string   `json:"mac,omitempty"`
	MTU         int      `json:"mtu,omitempty"`
	Gateway     string   `json:"gateway,omitempty"`
	GatewayIPv6 string   `json:"gatewayIPv6,omitempty"`
	Routes      []Route  `json:"routes,omitempty"`
}

// Addresses lists every address the link carried after ADD.
func (i Interface) Addresses() []string {
	var out []string
	for _, a := range append([]string{i.IPv4, i.IPv6}, i.Extra...) {
		if a != "" {
			out = append(out, a)
		}
	}
	return out
}

// Route is a non-default route of the link. Connected routes have no next hop (Docker RouteType 1).
type Route struct {
	Destination string `json:"destination"`
	NextHop     string `json:"nextHop,omitempty"`
}

// readInterface reads the link's MAC, MTU, addresses and routes from the staging netns. The netns, not the
// CNI result, is the truth: Calico's result, for one, lists no container routes.
func (r *Runner) readInterface(att *Attachment) (*Interface, error) {
	iface := &Interface{}
	err := r.inStaging(att, func(stage *netlink.Handle) error {
		l, err := stage.LinkByName(att.IfName)
		if err != nil {
			return fmt.Errorf("CNI reported success but %s does not exist in the staging netns: %w", att.IfName, err)
		}
		iface.MAC = l.Attrs().HardwareAddr.String()
		iface.MTU = l.Attrs().MTU
		addrs, err := stage.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		var nets []*net.IPNet
		for _, a := range addrs {
			if !a.IP.IsGlobalUnicast() {
				continue
			}
			nets = append(nets, a.IPNet)
			switch {
			case a.IP.To4() != nil && iface.IPv4 == "":
				iface.IPv4 = a.IPNet.String()
			case a.IP.To4() == nil && iface.IPv6 == "":
				iface.IPv6 = a.IPNet.String()
			default:
				iface.Extra = append(iface.Extra, a.IPNet.String())
			}
		}
		routes, err := stage.RouteListFiltered(netlink.FAMILY_ALL,
			&netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		connected := map[string]bool{}
		for _, rt := range routes {
			if rt.Protocol == unix.RTPROT_KERNEL || len(rt.MultiPath) > 0 {
				continue // the kernel re-creates subnet routes when Docker adds the address
			}
			isDefault := rt.Dst == nil || (rt.Dst.IP.IsUnspecified() && maskBits(rt.Dst) == 0)
			if isDefault && rt.Gw != nil {
				if rt.Gw.To4() != nil && iface.Gateway == "" {
					iface.Gateway = rt.Gw.String()
					continue
				}
				if rt.Gw.To4() == nil && iface.GatewayIPv6 == "" {
					iface.GatewayIPv6 = rt.Gw.String()
					continue
				}
			}
			if rt.Dst == nil || rt.Dst.IP.IsLinkLocalUnicast() || rt.Dst.IP.IsMulticast() {
				continue
			}
			if rt.Gw == nil {
				connected[rt.Dst.String()] = true
			}
			iface.Routes = append(iface.Routes, subnetSafeRoutes(rt.Dst, rt.Gw, nets)...)
		}
		// An off-subnet gateway (Calico's 169.254.1.1) is only reachable through a connected /32 route.
		for _, gw := range []string{iface.Gateway, iface.GatewayIPv6} {
			ip := net.ParseIP(gw)
			if ip == nil || onLink(ip, nets) {
				continue
			}
			host := hostNet(ip)
			if !connected[host.String()] {
				iface.Routes = append([]Route{{Destination: host.String()}}, iface.Routes...)
			}
		}
		return nil
	})
	return iface, err
}

// subnetSafeRoutes converts a CNI route into routes Docker can add. When Docker puts an address on the link
// the kernel adds an on-link route for the address's subnet, so a CNI route to that same subnet cannot be
// added (EEXIST): ptp, for one, routes its subnet via the gateway instead. The on-link duplicate is dropped,
// and a via-gateway route is split into its two halves, which are more specific than the kernel's route and
// so send the traffic exactly where CNI did.
func subnetSafeRoutes(dst *net.IPNet, gw net.IP, addrs []*net.IPNet) []Route {
	for _, a := range addrs {
		subnet := &net.IPNet{IP: a.IP.Mask(a.Mask), Mask: a.Mask}
		if subnet.String() != dst.String() {
			continue
		}
		if gw == nil {
			return nil
		}
		ones, bits := dst.Mask.Size()
		if ones == bits {
			break
		}
		lower := &net.IPNet{IP: dst.IP.Mask(dst.Mask), Mask: net.CIDRMask(ones+1, bits)}
		upper := &net.IPNet{IP: append(net.IP(nil), lower.IP...), Mask: lower.Mask}
		upper.IP[(ones)/8] |= 0x80 >> (ones % 8)
		return []Route{{Destination: lower.String(), NextHop: gw.String()}, {Destination: upper.String(), NextHop: gw.String()}}
	}
	r := Route{Destination: dst.String()}
	if gw != nil {
		r.NextHop = gw.String()
	}
	return []Route{r}
}

func maskBits(n *net.IPNet) int { ones, _ := n.Mask.Size(); return ones }

func onLink(ip net.IP, nets []*net.IPNet) bool {
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

func hostNet(ip net.IP) *net.IPNet {
	if ip4 := ip.To4(); ip4 != nil {
		return &net.IPNet{IP: ip4, Mask: net.CIDRMask(32, 32)}
	}
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(128, 128)}
}
