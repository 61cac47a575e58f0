package cnibridge

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// SandboxReady reports whether path is a network namespace that exists now. Docker 28+ creates the
// container's netns before Join and sends its path as SandboxKey; Docker 20.10-27 sends the path of a netns it
// creates later.
func SandboxReady(path string) bool { return path != "" && isNetNS(path) }

// SetSandbox names the link the attachment will have inside the container's netns at sandbox: the first
// eth<N> no link there has. It only reads the sandbox, so the caller can record it before JoinSandbox
// applies it (teardown must find the link wherever a crash leaves it).
func (r *Runner) SetSandbox(att *Attachment, sandbox string) error {
	if att.Sandbox == sandbox && att.SandboxIfName != "" {
		return nil // a repeated Join
	}
	name := ""
	err := withNetNS(sandbox, func(sb *netlink.Handle) error {
		for n := 0; ; n++ {
			candidate := "eth" + strconv.Itoa(n)
			if _, err := sb.LinkByName(candidate); err != nil {
				var notFound netlink.LinkNotFoundError
				if !errors.As(err, &notFound) {
					return fmt.Errorf("reading links of the container's netns: %w", err)
				}
				name = candidate
				return nil
			}
		}
	})
	if err != nil {
		return err
	}
	att.Sandbox, att.SandboxIfName = sandbox, name
	return nil
}

// JoinSandbox moves the attachment's link from its staging netns straight into the container's netns planned
// by SetSandbox, instead of handing it to Docker through the host netns: one link move instead of the
// two (staging to host by cniplug, host to container by Docker) that each wait for the kernel's RCU grace
// period. A move drops addresses, routes and the up state, so it puts back the addresses and the connected
// routes CNI gave the link and sets it up; Docker adds the gateway and the routes via a next hop (libnetwork
// installs those for a Join without SrcName, and looks the gateway's interface up by route). Calling it again
// once the link is in the container is a no-op. mac, when set, is the MAC Docker chose for the endpoint:
// the link gets it if CNI gave it another (libnetwork does the same for the links it moves).
func (r *Runner) JoinSandbox(att *Attachment, mac string) error {
	if att.Sandbox == "" || att.SandboxIfName == "" {
		return errors.New("no sandbox planned for the attachment")
	}
	if sameNetNS(att.NetNS, att.Sandbox) {
		return nil // the link is there under its ADD-time name already: AddInSandbox, or PinSandbox (a repeated Join)
	}
	sbNS, err := netns.GetFromPath(att.Sandbox)
	if err != nil {
		return fmt.Errorf("opening the container's netns %s: %w", att.Sandbox, err)
	}
	defer sbNS.Close()
	sb, err := netlink.NewHandleAt(sbNS)
	if err != nil {
		return fmt.Errorf("netlink handle in the container's netns: %w", err)
	}
	defer sb.Close()
	if r.ownLink(sb, att) == nil {
		err = r.inStaging(att, func(stage *netlink.Handle) error {
			l, err := stage.LinkByName(att.IfName)
			if err != nil {
				return fmt.Errorf("link %s not found in staging netns %s: %w", att.IfName, att.NetNS, err)
			}
			if err := stage.LinkSetAlias(l, r.linkAlias(att)); err != nil {
				return fmt.Errorf("marking %s as cniplug's: %w", att.IfName, err)
			}
			if att.SandboxIfName != att.IfName {
				// The kernel refuses to rename a running interface.
				if err := stage.LinkSetDown(l); err != nil {
					return fmt.Errorf("setting %s down: %w", att.IfName, err)
				}
				if err := stage.LinkSetName(l, att.SandboxIfName); err != nil {
					return fmt.Errorf("renaming %s to %s: %w", att.IfName, att.SandboxIfName, err)
				}
			}
			if err := stage.LinkSetNsFd(l, int(sbNS)); err != nil {
				_ = stage.LinkSetName(l, att.IfName) // where teardown looks first
				return fmt.Errorf("moving %s into the container's netns: %w", att.SandboxIfName, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	l := r.ownLink(sb, att)
	if l == nil {
		return fmt.Errorf("link %s vanished from the container's netns %s", att.SandboxIfName, att.Sandbox)
	}
	if err := setMAC(sb, l, mac); err != nil {
		return err
	}
	return configureLink(sb, l, att.Interface)
}

// SetMAC gives the attachment's link (CNI_IFNAME in its netns) the MAC Docker was told, when the chain gave it
// another (ptp ignores MAC=), as libnetwork does for the links it moves. "" changes nothing.
func (r *Runner) SetMAC(att *Attachment, mac string) error {
	if mac == "" || strings.EqualFold(mac, att.Interface.MAC) {
		return nil
	}
	err := r.inStaging(att, func(h *netlink.Handle) error {
		l, err := h.LinkByName(att.IfName)
		if err != nil {
			return fmt.Errorf("link %s not found in netns %s: %w", att.IfName, att.NetNS, err)
		}
		return setMAC(h, l, mac)
	})
	if err != nil {
		return err
	}
	att.Interface.MAC = strings.ToLower(mac)
	return nil
}

// setMAC sets mac on l unless it has it already, or mac is "".
func setMAC(h *netlink.Handle, l netlink.Link, mac string) error {
	if mac == "" || strings.EqualFold(mac, l.Attrs().HardwareAddr.String()) {
		return nil
	}
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return fmt.Errorf("MAC %q: %w", mac, err)
	}
	if err := h.LinkSetHardwareAddr(l, hw); err != nil {
		return fmt.Errorf("setting MAC %s on %s: %w", mac, l.Attrs().Name, err)
	}
	return nil
}

// PinSandbox makes the attachment's staging netns path name the container's netns, once the link is there
// under its ADD-time name (JoinSandbox, first interface): teardown then finds CNI_IFNAME in CNI_NETNS, the same
// path and name as at ADD, and runs CNI DEL where the link is, instead of first moving it back to staging
// (another wait for the kernel's RCU grace period). The pin also keeps the container's netns, and the link
// with its addresses (by which bridge and ptp remove their masquerade chain), alive after Docker has removed
// the container, until the DEL. The staging netns stays pinned underneath until teardown, so the path names a
// namespace at every moment: a crash before the pin leaves the usual path, where teardown takes the link back.
// A link with another name (the container had an eth0 already) keeps that path, as does a repeated call.
func (r *Runner) PinSandbox(att *Attachment) error {
	if att.Sandbox == "" || att.SandboxIfName != att.IfName || sameNetNS(att.NetNS, att.Sandbox) {
		return nil
	}
	if err := pinNetNSOver(att.Sandbox, att.NetNS); err != nil {
		return fmt.Errorf("pinning the container's netns for teardown: %w", err)
	}
	return nil
}

// ownLink returns the attachment's link in the container's netns: named as planned and marked as this
// instance's for this attachment (another link may carry the name after a failed move).
func (r *Runner) ownLink(sb *netlink.Handle, att *Attachment) netlink.Link {
	l, err := sb.LinkByName(att.SandboxIfName)
	if err != nil || !r.isOwnLink(l, att) {
		return nil
	}
	return l
}

// configureLink gives a link that was just moved what the move dropped: its addresses, its up state and its
// connected routes. IPv6 addresses skip duplicate address detection: CNI already ran it for them.
func configureLink(h *netlink.Handle, l netlink.Link, iface Interface) error {
	for _, a := range iface.Addresses() {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("address %q: %w", a, err)
		}
		if addr.IP.To4() == nil {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrReplace(l, addr); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", a, l.Attrs().Name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", l.Attrs().Name, err)
	}
	for _, rt := range iface.Routes {
		if rt.NextHop != "" {
			continue
		}
		_, dst, err := net.ParseCIDR(rt.Destination)
		if err != nil {
			return fmt.Errorf("route %q: %w", rt.Destination, err)
		}
		route := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}
		if err := h.RouteReplace(route); err != nil {
			return fmt.Errorf("adding route %s dev %s: %w", rt.Destination, l.Attrs().Name, err)
		}
	}
	return nil
}

// takeBackFromSandbox moves the attachment's link out of the container's netns into its staging netns (under
// the name it had in the container), when it is still there: the first step of teardown for an attachment
// joined with JoinSandbox.
func (r *Runner) takeBackFromSandbox(att *Attachment) error {
	if att.Sandbox == "" || !isNetNS(att.Sandbox) {
		return nil // the container's netns is gone, and the link with it (or pinned at NetNS: PinSandbox)
	}
	if sameNetNS(att.Sandbox, att.NetNS) {
		return nil // PinSandbox: DEL runs where the link is
	}
	stage, err := netns.GetFromPath(att.NetNS)
	if err != nil {
		return fmt.Errorf("opening staging netns %s: %w", att.NetNS, err)
	}
	defer stage.Close()
	return withNetNS(att.Sandbox, func(sb *netlink.Handle) error {
		l := r.ownLink(sb, att)
		if l == nil {
			return nil
		}
		_ = sb.LinkSetDown(l)
		if err := sb.LinkSetNsFd(l, int(stage)); err != nil {
			return fmt.Errorf("moving %s out of the container's netns: %w", att.SandboxIfName, err)
		}
		return nil
	})
}

// withNetNS runs fn with a netlink handle in the network namespace at path.
func withNetNS(path string, fn func(*netlink.Handle) error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	defer h.Close()
	return fn(h)
}
