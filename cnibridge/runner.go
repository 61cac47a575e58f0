package cnibridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/cniplug/cniplug/naming"
)

// StagingIfName is CNI_IFNAME for every attachment: each attachment has a staging netns of its own, and Docker
// renames the link to eth<N> when it moves it into the container.
const StagingIfName = "eth0"

// Config configures a Runner.
type Config struct {
	BinDirs  []string
	CacheDir string // libcni cache dir (results/<net>-<cid>-<ifname>)
	NetNSDir string // where staging namespaces are pinned
	// Owner names this cniplug instance (its driver name; default "cniplug"). Staging namespaces are named
	// <Owner>-<id> and parked links carry it in their alias, so instances sharing a host never touch each
	// other's.
	Owner   string
	Timeout time.Duration
	Logger  *slog.Logger
	// ExecObserver, when set, is told the duration of every CNI plugin exec (metrics; cnibridge stays free of
	// any metrics library).
	ExecObserver ExecObserver
	// PluginPATH is the PATH CNI plugins run with (plugins such as portmap exec iptables); "" passes on
	// cniplug's own.
	PluginPATH string
}

// ExecObserver is told about each CNI plugin exec: the plugin's type (its binary's name), the CNI command
// (ADD, DEL, CHECK, VERSION, ...), how long it ran and whether it failed.
type ExecObserver interface {
	ObserveExec(plugin, command string, d time.Duration, err error)
}

// Runner performs CNI operations for attachments. It holds no per-attachment state: callers persist the
// Attachment it returns and serialize operations on one attachment.
type Runner struct {
	cni      *libcni.CNIConfig
	exec     *boundedExec // the one way CNI plugins are exec'd, also outside libcni (execDHCP)
	binDirs  []string
	netnsDir string
	cacheDir string
	owner    string
	timeout  time.Duration
	hostNS   netns.NsHandle
	log      *slog.Logger
}

// NewRunner opens a handle on the caller's (host) network namespace; Close releases it.
func NewRunner(cfg Config) (*Runner, error) {
	host, err := netns.Get() // this thread's netns: /proc/self is the main thread, which createNetNS may have left in a staging netns
	if err != nil {
		return nil, fmt.Errorf("opening host netns: %w", err)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = libcni.CacheDir
	}
	if cfg.Owner == "" {
		cfg.Owner = "cniplug"
	}
	if !validName.MatchString(cfg.Owner) {
		return nil, fmt.Errorf("invalid owner name %q", cfg.Owner)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	exec := &boundedExec{observer: cfg.ExecObserver, path: cfg.PluginPATH}
	return &Runner{
		cni:      libcni.NewCNIConfigWithCacheDir(cfg.BinDirs, cfg.CacheDir, exec),
		exec:     exec,
		binDirs:  cfg.BinDirs,
		netnsDir: cfg.NetNSDir,
		cacheDir: cfg.CacheDir,
		owner:    cfg.Owner,
		timeout:  cfg.Timeout,
		hostNS:   host,
		log:      cfg.Logger,
	}, nil
}

// Close releases the host netns handle.
func (r *Runner) Close() error { return r.hostNS.Close() }

// Timeout is the deadline applied to each CNI operation.
func (r *Runner) Timeout() time.Duration { return r.timeout }

// Attachment is one CNI attachment and everything needed to find and delete it later. It is stored as JSON.
type Attachment struct {
	ContainerID string `json:"containerID"` // CNI_CONTAINERID
	IfName      string `json:"ifName"`      // CNI_IFNAME in the staging netns
	NetNS       string `json:"netns"`       // staging netns path
	HostIfName  string `json:"hostIfName"`  // link name while it waits in the host netns
	// Sandbox and SandboxIfName: the container's netns and the link's name there, when cniplug moved the link
	// into the container itself (JoinSandbox) instead of handing it to Docker.
	Sandbox       string `json:"sandbox,omitempty"`
	SandboxIfName string `json:"sandboxIfName,omitempty"`
	// LeaseInSandbox: the DHCP leases were handed over to the container's netns (HandOverLease); teardown
	// releases them with that key.
	LeaseInSandbox bool           `json:"leaseInSandbox,omitempty"`
	Network        string         `json:"network"`  // CNI network name
	Conflist       []byte         `json:"conflist"` // exact bytes used for ADD, reused for DEL
	Args           [][2]string    `json:"args,omitempty"`
	CapabilityArgs map[string]any `json:"capabilityArgs,omitempty"`
	Interface      Interface      `json:"interface"`
}

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

// AddRequest asks for one attachment of a container to a CNI network.
type AddRequest struct {
	ContainerID    string
	Network        *Network
	Args           [][2]string
	CapabilityArgs map[string]any
}

// hostIfName is the name of the attachment's link while it waits in the host netns for Docker (15 characters,
// the interface name limit). Plan names new links with it and the cache reader finds leftovers by it.
func hostIfName(containerID string) string { return "cnp" + naming.ShortID(containerID) }

// Plan names everything an attachment will create (staging netns, host link name) without creating it, so
// the caller can record the attachment before applying it.
func (r *Runner) Plan(req AddRequest) (*Attachment, error) {
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
// (its address is Docker's): no staging netns and no link move. PlanSandboxJoin has named the link there;
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
		err = fmt.Errorf("%w; rollback also failed: %v", err, terr)
	}
	return err
}

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
		if err := stage.LinkSetAlias(l, r.linkAliasPrefix()+att.ContainerID); err != nil {
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
		_ = removeNetNS(att.NetNS)
		if err := createNetNS(att.NetNS); err != nil {
			return fmt.Errorf("recreating staging netns for DEL: %w", err)
		}
	}
	if err := r.releaseLease(ctx, nw, att); err != nil {
		// DEL still runs; the lease expires on the server.
		r.log.Warn("could not release the DHCP lease from the container's netns", "attachment", att.ContainerID, "cni_network", att.Network, "error", err)
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
// link is: in the container (JoinSandbox), in the host (MoveToHost, or handed back by Docker), in staging
// under another name, or gone.
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
			if err := stage.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: att.IfName}}); err != nil {
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

func (r *Runner) inStaging(att *Attachment, fn func(*netlink.Handle) error) error {
	return withNetNS(att.NetNS, fn)
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

func (a *Attachment) runtimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID:    a.ContainerID,
		NetNS:          a.NetNS,
		IfName:         a.IfName,
		Args:           a.Args,
		CapabilityArgs: a.CapabilityArgs,
	}
}

// Validate checks that every plugin of the network (including IPAM plugins) exists in the bin dirs and
// supports the network's CNI version.
func (r *Runner) Validate(ctx context.Context, nw *Network) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	for _, t := range nw.PluginTypes() {
		if _, err := invoke.FindInPath(t, r.binDirs); err != nil {
			return fmt.Errorf("CNI plugin %q not found in %s", t, strings.Join(r.binDirs, ":"))
		}
	}
	if _, err := r.cni.ValidateNetworkList(ctx, nw.List); err != nil {
		return fmt.Errorf("CNI network %q is not usable: %w", nw.Name, err)
	}
	return r.status(ctx, nw)
}

// status runs CNI STATUS (spec 1.1+; a no-op for older networks): a plugin that says it cannot serve ADD
// yet (e.g. its daemon is down) fails the Docker call with its own message instead of a half-made ADD.
func (r *Runner) status(ctx context.Context, nw *Network) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := r.cni.GetStatusNetworkList(ctx, nw.List); err != nil {
		return fmt.Errorf("CNI network %q is not ready (CNI STATUS): %w", nw.Name, err)
	}
	return nil
}
