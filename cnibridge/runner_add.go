package cnibridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cniplug/cniplug/naming"
)

// NewAttachment names everything an attachment will create (staging netns, host link name) without creating it, so
// the caller can record the attachment before applying it.
func (r *Runner) NewAttachment(req AddRequest) (*Attachment, error) {
	if len(req.ContainerID) < naming.ShortIDLen || !validName.MatchString(req.ContainerID) {
		return nil, fmt.Errorf("invalid attachment id %q", req.ContainerID)
	}
	return &Attachment{
		ContainerID:    req.ContainerID,
		IfName:         StagingIfName,
		NetNS:          filepath.Join(r.netnsDir, r.owner+"-"+naming.ShortID(req.ContainerID)),
		HostIfName:     hostIfName(req.ContainerID),
		Network:        req.Network.Name,
		Conflist:       req.Network.Bytes,
		Args:           req.Args,
		CapabilityArgs: req.CapabilityArgs,
	}, nil
}

// Add creates the planned staging netns, runs CNI ADD into it and reads back the link into att.Interface. On
// any failure everything it created is torn down again and the error carries the plugin's message.
func (r *Runner) Add(ctx context.Context, att *Attachment) error {
	return r.add(ctx, att, func() error {
		if err := createNetNS(att.NetNS); err != nil {
			return fmt.Errorf("creating staging netns: %w", err)
		}
		return nil
	})
}

// AddInSandbox is Add straight into the container's netns, for an attachment whose ADD can wait for Join
// (its address is Docker's): no staging netns and no link move. SetSandbox has named the link there;
// CNI_IFNAME is that name. The container's netns must hold no other link yet (SandboxEmpty): CNI plugins
// expect a netns of their own, and their default route would collide with another network's. The
// container's netns is pinned at the planned staging path, which teardown then finds as after PinSandbox:
// the DEL runs in the container's netns, also after Docker removed it. Join then calls ClearNextHopRoutes.
func (r *Runner) AddInSandbox(ctx context.Context, att *Attachment) error {
	if att.Sandbox == "" || att.SandboxIfName == "" {
		return errors.New("no sandbox planned for the attachment")
	}
	att.IfName = att.SandboxIfName
	return r.add(ctx, att, func() error {
		if err := pinNetNS(att.Sandbox, att.NetNS); err != nil {
			return fmt.Errorf("pinning the container's netns: %w", err)
		}
		return nil
	})
}

// ClearNextHopRoutes takes the routes via a next hop (the default route among them) off the link of an
// attachment added in the container's netns, as a move between namespaces would: libnetwork adds them from
// Join's answer, and fails on one that exists ("failed to set gateway: file exists"). Att.Interface keeps
// them.
func (r *Runner) ClearNextHopRoutes(att *Attachment) error {
	return r.inStaging(att, func(h *netlink.Handle) error {
		l, err := h.LinkByName(att.IfName)
		if err != nil {
			return err
		}
		routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, rt := range routes {
			if rt.Gw == nil || rt.Protocol == unix.RTPROT_KERNEL {
				continue
			}
			if err := h.RouteDel(&rt); err != nil {
				return fmt.Errorf("removing route %s via %s for Docker to add: %w", rt.Dst, rt.Gw, err)
			}
		}
		return nil
	})
}

// SandboxEmpty reports whether the netns at path has no link but loopback: a container's netns before its
// first network joins.
func SandboxEmpty(path string) bool {
	empty := false
	_ = withNetNS(path, func(h *netlink.Handle) error {
		links, err := h.LinkList()
		if err != nil {
			return err
		}
		empty = true
		for _, l := range links {
			if l.Attrs().Flags&net.FlagLoopback == 0 {
				empty = false
			}
		}
		return nil
	})
	return empty
}

// add runs CNI ADD into the netns that makeNetNS pins at att.NetNS.
func (r *Runner) add(ctx context.Context, att *Attachment, makeNetNS func() error) error {
	nw, err := ParseNetwork(att.Conflist)
	if err != nil {
		return fmt.Errorf("conflist of CNI network %q: %w", att.Network, err)
	}
	if err := r.status(ctx, nw); err != nil {
		return err
	}
	if err := makeNetNS(); err != nil {
		return err
	}
	addCtx, cancel := context.WithTimeout(ctx, r.timeout)
	_, err = r.cni.AddNetworkList(addCtx, nw.List, att.runtimeConf())
	timedOut := errors.Is(addCtx.Err(), context.DeadlineExceeded)
	cancel()
	if err == nil {
		var iface *Interface
		if iface, err = r.readInterface(att); err == nil {
			att.Interface = *iface
			return nil
		}
		err = fmt.Errorf("reading the interface CNI created: %w", err)
	} else if timedOut {
		err = fmt.Errorf("CNI ADD did not finish within %s (plugin killed): %w", r.timeout, err)
	} else {
		err = fmt.Errorf("CNI ADD failed: %w", err)
	}
	// libcni does not DEL after a failed ADD; the runtime must (CNI spec: DEL after a failed ADD).
	if terr := r.Teardown(context.WithoutCancel(ctx), att); terr != nil {
		err = fmt.Errorf("%w; %w: %w", err, ErrRollback, terr)
	}
	return err
}

// ErrRollback marks a failed ADD whose DEL failed too: the attachment may still hold its staging netns, link,
// address or cache entry, and its teardown must be tried again.
var ErrRollback = errors.New("the rollback DEL failed too")

// MoveToHost renames the attachment's link to its HostIfName and moves it into the host netns, where
// libnetwork picks it up (Join SrcName). Calling it again once the link is in the host is a no-op.
func (r *Runner) MoveToHost(att *Attachment) error {
	host, err := netlink.NewHandleAt(r.hostNS)
	if err != nil {
		return err
	}
	defer host.Close()
	if _, err := host.LinkByName(att.HostIfName); err == nil {
		return nil
	}
	return r.inStaging(att, func(stage *netlink.Handle) error {
		l, err := stage.LinkByName(att.IfName)
		if err != nil {
			return fmt.Errorf("link %s not found in staging netns %s: %w", att.IfName, att.NetNS, err)
		}
		// The kernel refuses to rename a running interface.
		if err := stage.LinkSetDown(l); err != nil {
			return fmt.Errorf("setting %s down: %w", att.IfName, err)
		}
		if err := stage.LinkSetName(l, att.HostIfName); err != nil {
			return fmt.Errorf("renaming %s to %s: %w", att.IfName, att.HostIfName, err)
		}
		if err := stage.LinkSetAlias(l, r.linkAlias(att)); err != nil {
			return fmt.Errorf("marking %s as cniplug's: %w", att.HostIfName, err)
		}
		if err := stage.LinkSetNsFd(l, int(r.hostNS)); err != nil {
			// Put the name back so a later teardown finds the link where it expects it.
			_ = stage.LinkSetName(l, att.IfName)
			return fmt.Errorf("moving %s to the host netns: %w", att.HostIfName, err)
		}
		return nil
	})
}
