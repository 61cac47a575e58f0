package cnibridge

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// HoldAtLeave keeps a link that was handed over to Docker inside the container's netns (ContainerNetNS, the
// SandboxKey of Join) at Leave, so that teardown runs the CNI DEL there. Left alone, libnetwork moves the link
// back to the host after Leave and teardown moves it on into staging: two link moves, each waiting for an RCU
// grace period with the kernel's rtnl lock held, which every other container's network setup then waits for.
// libnetwork finds the link by the name it gave it (RemoveInterface looks DstName up) and only logs a
// failure, so renaming it to its host-side name keeps it where it is. The container's netns is then pinned
// over the staging netns path (as PinSandbox does), which keeps it, the link and its addresses alive until
// the DEL, after Docker has removed the container.
//
// It holds the link only when it is the container's one link besides lo: at a container's stop libnetwork
// leaves the endpoints one by one, and a link of another network could otherwise take CNI_IFNAME where the
// DEL runs. record is called before anything changes, with HeldInSandbox set, so that teardown knows the
// staging path may name the container's netns. It reports whether it held the link; when it did not, Docker
// moves the link back as usual and teardown takes it from the host.
func (r *Runner) HoldAtLeave(att *Attachment, record func() error) (bool, error) {
	if att.Sandbox != "" || att.HeldInSandbox || !SandboxReady(att.ContainerNetNS) || !isNetNS(att.NetNS) {
		return false, nil // moved in by cniplug (JoinSandbox), held already, or no netns to hold it in
	}
	held := false
	err := withNetNS(att.ContainerNetNS, func(sb *netlink.Handle) error {
		links, err := sb.LinkList()
		if err != nil {
			return fmt.Errorf("reading links of the container's netns: %w", err)
		}
		var own netlink.Link
		for _, l := range links {
			switch {
			case r.isOwnLink(l, att):
				own = l
			case l.Attrs().Flags&net.FlagLoopback != 0:
			default:
				return nil // another network's link is there
			}
		}
		if own == nil {
			return nil
		}
		att.HeldInSandbox = true
		if err := record(); err != nil {
			att.HeldInSandbox = false
			return err
		}
		dockerName := own.Attrs().Name
		if err := sb.LinkSetDown(own); err != nil {
			return fmt.Errorf("setting %s down in the container's netns: %w", dockerName, err)
		}
		if err := sb.LinkSetName(own, att.HostIfName); err != nil {
			return fmt.Errorf("renaming %s to %s in the container's netns: %w", dockerName, att.HostIfName, err)
		}
		if err := pinNetNSOver(att.ContainerNetNS, att.NetNS); err != nil {
			// Unpinned, the link would go with the container's netns: give it back to Docker to move out.
			if rerr := sb.LinkSetName(own, dockerName); rerr != nil {
				err = fmt.Errorf("%w; renaming it back to %s also failed: %v", err, dockerName, rerr)
			}
			return fmt.Errorf("pinning the container's netns for teardown: %w", err)
		}
		held = true
		return nil
	})
	return held, err
}

// reclaimHeld readies a link held at Leave (HoldAtLeave) for the DEL: it is renamed to CNI_IFNAME in the
// container's netns pinned at the staging path. Should a link of another network have taken that name there
// since (the container was connected again before the DEL ran), the pin is undone, which leaves the staging
// netns at the path, and the link is moved there: the DEL must never find another network's link.
func (r *Runner) reclaimHeld(att *Attachment) error {
	if !att.HeldInSandbox {
		return nil
	}
	return withNetNS(att.NetNS, func(h *netlink.Handle) error {
		if l, err := h.LinkByName(att.IfName); err == nil {
			if r.isOwnLink(l, att) {
				return nil // renamed by an earlier teardown
			}
			return r.unpinHeld(att, h)
		}
		l, err := h.LinkByName(att.HostIfName)
		if err != nil || !r.isOwnLink(l, att) {
			return nil // not at the path (the pin did not happen, or the link went): returnLink looks elsewhere
		}
		_ = h.LinkSetDown(l)
		if err := h.LinkSetName(l, att.IfName); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return r.unpinHeld(att, h)
			}
			return fmt.Errorf("renaming %s back to %s: %w", att.HostIfName, att.IfName, err)
		}
		return nil
	})
}

// unpinHeld undoes HoldAtLeave's pin (h, a handle in the container's netns, keeps it open) and moves the link
// into the staging netns that the path names again, under its host-side name, where returnLink finds it.
func (r *Runner) unpinHeld(att *Attachment, h *netlink.Handle) error {
	if err := unix.Unmount(att.NetNS, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unpinning the container's netns from %s: %w", att.NetNS, err)
	}
	att.HeldInSandbox = false
	stage, err := netns.GetFromPath(att.NetNS)
	if err != nil {
		return fmt.Errorf("opening staging netns %s: %w", att.NetNS, err)
	}
	defer stage.Close()
	l, err := h.LinkByName(att.HostIfName)
	if err != nil || !r.isOwnLink(l, att) {
		return nil
	}
	if err := h.LinkSetNsFd(l, int(stage)); err != nil {
		return fmt.Errorf("moving %s out of the container's netns: %w", att.HostIfName, err)
	}
	return nil
}
