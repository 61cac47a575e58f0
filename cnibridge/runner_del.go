package cnibridge

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// StagingLost reports whether the attachment's staging netns no longer exists.
func (r *Runner) StagingLost(att *Attachment) bool { return !isNetNS(att.NetNS) }

// Teardown is the one way an attachment is removed. It puts the link back into the staging netns under its
// ADD-time name with its addresses (recreating the netns, or a stand-in link, when they are gone, e.g. after
// a killed container or a reboot), runs CNI DEL with the recorded conflist and args, and removes the staging
// netns. It is safe to call again after a failure or a success.
func (r *Runner) Teardown(ctx context.Context, att *Attachment) error {
	nw, err := ParseNetwork(att.Conflist)
	if err != nil {
		return fmt.Errorf("recorded conflist of CNI network %q is unusable: %w", att.Network, err)
	}
	if !isNetNS(att.NetNS) {
		// Its netns went (a reboot, or a managed plugin's mount namespace that died with it): DEL runs in a
		// fresh one at the same path, which releases the addresses and rules the link no longer holds.
		if err := removeNetNS(att.NetNS); err != nil {
			return fmt.Errorf("clearing the lost staging netns before DEL: %w", err)
		}
		if err := createNetNS(att.NetNS); err != nil {
			return fmt.Errorf("recreating staging netns for DEL: %w", err)
		}
	}
	if err := r.releaseLease(ctx, nw, att); err != nil {
		// DEL still runs; the lease expires on the server.
		r.log.Warn("could not release the DHCP lease from the container's netns", "attachment", att.ContainerID, "cni_network", att.Network, "error", err)
	}
	// Unlike a link that cannot be recovered, this one must not be skipped: the DEL would otherwise run in a
	// container's netns where CNI_IFNAME may name another network's link.
	if err := r.reclaimHeld(att); err != nil {
		return fmt.Errorf("taking back the link held in the container's netns before CNI DEL: %w", err)
	}
	if err := r.returnLink(att, nw); err != nil {
		// DEL still runs: it releases addresses and rules even when the link cannot be recovered.
		r.log.Warn("could not return link to staging netns before CNI DEL", "attachment", att.ContainerID, "cni_network", att.Network, "error", err)
	}
	if err := r.releaseStagingLease(ctx, nw, att); err != nil {
		r.log.Warn("could not release the DHCP lease from the staging netns", "attachment", att.ContainerID, "cni_network", att.Network, "error", err)
	}
	delCtx, cancel := context.WithTimeout(ctx, r.timeout)
	err = r.cni.DelNetworkList(delCtx, r.delList(nw, att), att.runtimeConf())
	timedOut := errors.Is(delCtx.Err(), context.DeadlineExceeded)
	cancel()
	if err != nil {
		if timedOut {
			return fmt.Errorf("CNI DEL on network %q did not finish within %s: %w", att.Network, r.timeout, err)
		}
		return fmt.Errorf("CNI DEL on network %q failed: %w", att.Network, err)
	}
	if err := removeNetNS(att.NetNS); err != nil {
		return err
	}
	// A link left in the host (its move back failed) would otherwise outlive the attachment.
	if host, err := netlink.NewHandleAt(r.hostNS); err == nil {
		if l, err := host.LinkByName(att.HostIfName); err == nil {
			_ = host.LinkDel(l)
		}
		host.Close()
	}
	return nil
}

// delList is the list DEL runs with. libcni gives every plugin the cached ADD result as prevResult, but an ADD
// cut short (cniplug killed mid-chain, a plugin failing after others succeeded) left no cache entry, and
// plugins that remove what they added by address (firewall's CNI-FORWARD rules) would then remove nothing.
// For those, a result with the addresses the link carries (recorded, or read from the staging netns) is put
// into every plugin's config as prevResult, which libcni passes on when it has none of its own.
func (r *Runner) delList(nw *Network, att *Attachment) *libcni.NetworkConfigList {
	if ok, _ := version.GreaterThanOrEqualTo(nw.List.CNIVersion, "0.4.0"); !ok {
		return nw.List // no prevResult on DEL before spec 0.4.0
	}
	if res, err := r.cni.GetNetworkListCachedResult(nw.List, att.runtimeConf()); err != nil || res != nil {
		return nw.List
	}
	addrs := att.Interface.Addresses()
	if len(addrs) == 0 {
		if iface, err := r.readInterface(att); err == nil {
			addrs = iface.Addresses()
		}
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{{Name: att.IfName, Sandbox: att.NetNS}}}
	for _, a := range addrs {
		ip, n, err := net.ParseCIDR(a)
		if err != nil {
			continue
		}
		res.IPs = append(res.IPs, &current.IPConfig{Address: net.IPNet{IP: ip, Mask: n.Mask}, Interface: current.Int(0)})
	}
	if len(res.IPs) == 0 {
		return nw.List
	}
	prev, err := res.GetAsVersion(nw.List.CNIVersion)
	if err != nil {
		return nw.List
	}
	list := *nw.List
	list.Plugins = make([]*libcni.PluginConfig, len(nw.List.Plugins))
	for i, p := range nw.List.Plugins {
		withPrev, err := libcni.InjectConf(p, map[string]any{"prevResult": prev})
		if err != nil {
			return nw.List
		}
		list.Plugins[i] = withPrev
	}
	return &list
}

// returnLink makes sure CNI_IFNAME exists in the staging netns with the attachment's addresses, wherever the
// link is: in the container (JoinSandbox, or held there at Leave), in the host (MoveToHost, or handed back by
// Docker), in staging under another name, or gone.
func (r *Runner) returnLink(att *Attachment, nw *Network) error {
	host, err := netlink.NewHandleAt(r.hostNS)
	if err != nil {
		return err
	}
	defer host.Close()
	if err := r.takeBackFromSandbox(att); err != nil {
		return err
	}
	return r.inStaging(att, func(stage *netlink.Handle) error {
		l, err := stage.LinkByName(att.IfName)
		if err != nil {
			if l, err = r.parkedLink(stage, host, att); err == nil {
				name := l.Attrs().Name
				_ = stage.LinkSetDown(l)
				if err := stage.LinkSetName(l, att.IfName); err != nil {
					return fmt.Errorf("renaming %s back to %s: %w", name, att.IfName, err)
				}
			}
		}
		if l == nil || err != nil {
			if !nw.masqueradesByLinkAddress() || len(att.Interface.Addresses()) == 0 {
				return nil // nothing to recover and DEL does not need it
			}
			// A stand-in carrying the addresses lets bridge/ptp DEL find and remove the CNI-xxx masquerade chain.
			// Marked as the attachment's, like the link it stands in for (reclaimHeld tells them apart by it).
			standIn := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: att.IfName, Alias: r.linkAlias(att)}}
			if err := stage.LinkAdd(standIn); err != nil {
				return fmt.Errorf("creating stand-in link for DEL: %w", err)
			}
			if l, err = stage.LinkByName(att.IfName); err != nil {
				return err
			}
		}
		for _, a := range att.Interface.Addresses() {
			addr, err := netlink.ParseAddr(a)
			if err != nil {
				continue
			}
			if err := stage.AddrAdd(l, addr); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("restoring address %s on %s: %w", a, att.IfName, err)
			}
		}
		return nil
	})
}

// parkedLink finds the attachment's link under a name other than its ADD-time one: in the staging netns
// (taken back from the container, or left there by a failed move) or in the host (handed back by Docker),
// from where it is moved into the staging netns.
func (r *Runner) parkedLink(stage, host *netlink.Handle, att *Attachment) (netlink.Link, error) {
	for _, name := range []string{att.SandboxIfName, att.HostIfName} {
		if name == "" {
			continue
		}
		if l, err := stage.LinkByName(name); err == nil {
			return l, nil
		}
	}
	hl, err := host.LinkByName(att.HostIfName)
	if err != nil {
		return nil, err
	}
	_ = host.LinkSetDown(hl)
	fd, err := netns.GetFromPath(att.NetNS)
	if err != nil {
		return nil, err
	}
	defer fd.Close()
	if err := host.LinkSetNsFd(hl, int(fd)); err != nil {
		return nil, fmt.Errorf("moving %s back to staging netns: %w", att.HostIfName, err)
	}
	return stage.LinkByName(att.HostIfName)
}
