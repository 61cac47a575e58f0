package cnibridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// The tests below run the real reference plugins against the real kernel and iptables. Each one takes a
// snapshot of the host first and registers the leak check as its FIRST t.Cleanup, so that it runs LAST: after
// the fixtures (bridges, veth masters, runners, temp dirs) the test created have been removed again.

// ---------------------------------------------------------------------------------------------------------
// helpers

// startLeakCheck moves the test into a fresh network namespace, so that neither the host's links, routes and
// iptables rules nor the test's own can meet, then snapshots it and registers the leak check that ends the
// test. Runners must be built after it: their host netns is the one they are built in.
func startLeakCheck(t *testing.T) {
	t.Helper()
	testutil.NewNS(t)
	before := testutil.TakeSnapshot(t)
	t.Cleanup(func() { testutil.AssertNoLeaks(t, before) })
}

type tLogWriter struct{ t testing.TB }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// newTestRunner builds a Runner on the reference plugins (plus extra bin dirs searched first), the default
// libcni cache dir (so the leak check sees cache files) and a per-test netns dir.
func newTestRunner(t *testing.T, timeout time.Duration, extraBinDirs ...string) *Runner {
	t.Helper()
	bins := append(append([]string{}, extraBinDirs...), testutil.CNIBinDir(t))
	r, err := NewRunner(Config{
		BinDirs:  bins,
		CacheDir: testutil.CNIDataDir,
		NetNSDir: t.TempDir(),
		Timeout:  timeout,
		Logger:   slog.New(slog.NewTextHandler(tLogWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// containerID returns a random 64-hex-digit id, like Docker's endpoint ids.
func containerID(t testing.TB) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// pickSubnet returns a random 10.200-250.x.0/24 that no host route or address overlaps.
func pickSubnet(t testing.TB) *net.IPNet {
	t.Helper()
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		_, sn, _ := net.ParseCIDR(fmt.Sprintf("10.%d.%d.0/24", 200+mrand.IntN(51), mrand.IntN(256)))
		clash := false
		for _, r := range routes {
			if r.Dst != nil && maskBits(r.Dst) > 0 && (r.Dst.Contains(sn.IP) || sn.Contains(r.Dst.IP)) {
				clash = true
			}
		}
		for _, a := range addrs {
			if sn.Contains(a.IP) || a.IPNet.Contains(sn.IP) {
				clash = true
			}
		}
		if !clash {
			return sn
		}
	}
	t.Fatal("no free 10.200-250.x.0/24 subnet")
	return nil
}

// cleanHostLocalDir removes host-local's per-network bookkeeping (lock, last_reserved_ip) once the test is
// over. It never removes a reservation: a leaked one stays visible to the leak check and the operator.
func cleanHostLocalDir(t *testing.T, netName string) {
	t.Cleanup(func() { testutil.RemoveHostLocalBookkeeping(netName) })
}

// delHostLinkLater deletes a host link the test (or a plugin on its behalf, like the bridge) created.
func delHostLinkLater(t *testing.T, name string) {
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(name); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("deleting test link %s: %v", name, err)
			}
		}
	})
}

func hostLocal(subnet *net.IPNet) string {
	return fmt.Sprintf(`{"type":"host-local","ranges":[[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"}]}`, subnet)
}

func hostLocalDual(subnet, subnet6 *net.IPNet) string {
	return fmt.Sprintf(`{"type":"host-local","ranges":[[{"subnet":%q}],[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}`, subnet, subnet6)
}

// pickSubnet6 returns a random unique-local /64.
func pickSubnet6() *net.IPNet {
	_, sn, _ := net.ParseCIDR(fmt.Sprintf("fd%02x:%04x:%04x:%04x::/64", mrand.IntN(256), mrand.IntN(1<<16), mrand.IntN(1<<16), mrand.IntN(1<<16)))
	return sn
}

func conflist(name string, plugins ...string) string {
	return conflistAt("1.0.0", name, plugins...)
}

// specVersions are the CNI spec versions the runner treats differently (prevResult on DEL from 0.4.0, STATUS
// and GC from 1.1.0).
var specVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

func conflistAt(version, name string, plugins ...string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[%s]}`, version, name, strings.Join(plugins, ","))
}

// writeScriptPlugin writes an executable shell-script CNI plugin into dir.
func writeScriptPlugin(t *testing.T, dir, name, body string) {
	t.Helper()
	script := "#!/bin/sh\n" + body
	if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

const versionJSON = `{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}`

// inNetNS runs fn with a netlink handle in the netns pinned at path.
func inNetNS(t *testing.T, path string, fn func(h *netlink.Handle)) {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("opening netns %s: %v", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	fn(h)
}

func hostLinkExists(t *testing.T, name string) bool {
	t.Helper()
	_, err := netlink.LinkByName(name)
	if err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		t.Fatalf("looking up host link %s: %v", name, err)
	}
	return err == nil
}

func iptablesSave(t *testing.T, table string) string {
	t.Helper()
	out, err := exec.Command("iptables-save", "-t", table).Output()
	if err != nil {
		t.Fatalf("iptables-save -t %s: %v", table, err)
	}
	return string(out)
}

// masqChain returns the CNI-xxx chain that bridge/ptp ipMasq jumps to for this attachment, or "".
func masqChain(t *testing.T, netName, cid string) string {
	t.Helper()
	return masqChainIn(t, iptablesSave(t, "nat"), netName, cid)
}

// masqChain6 is masqChain in ip6tables (which the leak check does not look at).
func masqChain6(t *testing.T, netName, cid string) string {
	t.Helper()
	out, err := exec.Command("ip6tables-save", "-t", "nat").Output()
	if err != nil {
		t.Fatalf("ip6tables-save: %v", err)
	}
	return masqChainIn(t, string(out), netName, cid)
}

func masqChainIn(t *testing.T, nat, netName, cid string) string {
	t.Helper()
	for _, line := range strings.Split(nat, "\n") {
		if !strings.HasPrefix(line, "-A POSTROUTING ") || !strings.Contains(line, cid) || !strings.Contains(line, netName) {
			continue
		}
		if i := strings.Index(line, " -j CNI-"); i >= 0 {
			chain := strings.Fields(line[i+len(" -j "):])[0]
			if !strings.Contains(nat, "\n:"+chain+" ") {
				t.Fatalf("POSTROUTING jumps to %s, which is not declared:\n%s", chain, nat)
			}
			return chain
		}
	}
	return ""
}

func cacheFile(netName, cid string) string {
	return filepath.Join(testutil.CNIDataDir, "results", netName+"-"+cid+"-"+StagingIfName)
}

func reservationFile(netName string, ip net.IP) string {
	return filepath.Join(testutil.CNIDataDir, "networks", netName, ip.String())
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// ---------------------------------------------------------------------------------------------------------
// network kinds

// netKind is one main plugin under test: it returns the plugin's JSON and creates (with cleanups) whatever
// host objects it needs.
type netKind struct {
	name string
	masq bool // bridge/ptp ipMasq: a CNI-xxx nat chain exists while attached
	v6   bool // dual stack: the IPAM also has an IPv6 range
	// setup returns the plugin's JSON around the given IPAM JSON.
	setup func(t *testing.T, ipam string) string
	// wantRoutes are the non-default routes Interface must report (compared as a set).
	wantRoutes func(subnet *net.IPNet, gw net.IP) []Route
}

func noRoutes(*net.IPNet, net.IP) []Route { return nil }

func bridgePlugin(t *testing.T, ipam string) string {
	br := testutil.UniqueName("cnb") // the bridge plugin creates it and never deletes it
	delHostLinkLater(t, br)
	return fmt.Sprintf(`{"type":"bridge","bridge":%q,"isGateway":true,"ipMasq":true,"ipam":%s}`, br, ipam)
}

var netKinds = []netKind{
	{
		name:       "bridge",
		masq:       true,
		setup:      bridgePlugin,
		wantRoutes: noRoutes,
	},
	{
		name:       "bridge-dualstack",
		masq:       true,
		v6:         true,
		setup:      bridgePlugin,
		wantRoutes: noRoutes,
	},
	{
		name: "ptp",
		masq: true,
		setup: func(t *testing.T, ipam string) string {
			return fmt.Sprintf(`{"type":"ptp","ipMasq":true,"ipam":%s}`, ipam)
		},
		// ptp replaces the kernel's on-link subnet route with one via the gateway, plus a /32 to the gateway.
		wantRoutes: func(subnet *net.IPNet, gw net.IP) []Route {
			lo, hi := halves(subnet)
			return []Route{{Destination: gw.String() + "/32"}, {Destination: lo, NextHop: gw.String()}, {Destination: hi, NextHop: gw.String()}}
		},
	},
	{
		name: "macvlan",
		setup: func(t *testing.T, ipam string) string {
			// No dummy links on this kernel: one end of a veth pair is the master.
			master, peer := testutil.UniqueName("cmv"), testutil.UniqueName("cmw")
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: master}, PeerName: peer}
			if err := netlink.LinkAdd(veth); err != nil {
				t.Fatalf("creating veth master: %v", err)
			}
			delHostLinkLater(t, master) // deletes the peer too
			for _, n := range []string{master, peer} {
				l, err := netlink.LinkByName(n)
				testutil.Must(t, err)
				testutil.Must(t, netlink.LinkSetUp(l))
			}
			return fmt.Sprintf(`{"type":"macvlan","master":%q,"mode":"bridge","ipam":%s}`, master, ipam)
		},
		wantRoutes: noRoutes,
	},
}

func halves(n *net.IPNet) (string, string) {
	ones, bits := n.Mask.Size()
	lo := &net.IPNet{IP: n.IP.Mask(n.Mask), Mask: net.CIDRMask(ones+1, bits)}
	hi := &net.IPNet{IP: append(net.IP(nil), lo.IP...), Mask: lo.Mask}
	hi.IP[ones/8] |= 0x80 >> (ones % 8)
	return lo.String(), hi.String()
}

// attached is one attachment made by attach: everything a test needs to check it.
type attached struct {
	r      *Runner
	nw     *Network
	att    *Attachment
	subnet *net.IPNet
	gw     net.IP
	ip     net.IP
	// dual stack only
	subnet6  *net.IPNet
	gw6, ip6 net.IP
}

// attach resolves a network of the given kind from a conf dir, plans and adds an attachment, and registers a
// best-effort Teardown that only runs when the test failed (so it cannot hide a leak of a passing test).
func attach(t *testing.T, kind netKind, request func(nw *Network, subnet *net.IPNet) ([][2]string, map[string]any)) *attached {
	t.Helper()
	return attachAt(t, kind, "1.0.0", request)
}

// attachAt is attach with a conflist of the given CNI spec version.
func attachAt(t *testing.T, kind netKind, version string, request func(nw *Network, subnet *net.IPNet) ([][2]string, map[string]any)) *attached {
	t.Helper()
	return attachWith(t, kind, version, request, func(r *Runner, att *Attachment) error { return r.Add(context.Background(), att) })
}

// attachWith is attachAt with the runner's method that applies the planned attachment (Add, AddInSandbox).
func attachWith(t *testing.T, kind netKind, version string, request func(nw *Network, subnet *net.IPNet) ([][2]string, map[string]any),
	add func(*Runner, *Attachment) error) *attached {
	t.Helper()
	subnet := pickSubnet(t)
	ipam := hostLocal(subnet)
	var subnet6 *net.IPNet
	if kind.v6 {
		subnet6 = pickSubnet6()
		ipam = hostLocalDual(subnet, subnet6)
	}
	netName := testutil.UniqueName("cnitest-" + kind.name + "-")
	cleanHostLocalDir(t, netName)
	plugin := kind.setup(t, ipam)
	r := newTestRunner(t, 0)

	confDir := t.TempDir()
	testutil.WriteFile(t, confDir, "10-test.conflist", conflistAt(version, netName, plugin))
	nw, err := ResolveNetwork(confDir, netName)
	testutil.Must(t, err)
	testutil.Must(t, r.Validate(context.Background(), nw))
	if request == nil {
		request = func(nw *Network, _ *net.IPNet) ([][2]string, map[string]any) { return RequestArgs(nw, nil, "") }
	}
	args, caps := request(nw, subnet)

	att, err := r.NewAttachment(AddRequest{ContainerID: containerID(t), Network: nw, Args: args, CapabilityArgs: caps})
	testutil.Must(t, err)
	if len(att.HostIfName) > 15 {
		t.Fatalf("HostIfName %q is longer than IFNAMSIZ-1", att.HostIfName)
	}
	if exists(att.NetNS) {
		t.Fatalf("Plan created %s; it must only name things", att.NetNS)
	}
	t.Cleanup(func() {
		if t.Failed() {
			_ = r.Teardown(context.Background(), att)
		}
	})
	if err := add(r, att); err != nil {
		t.Fatalf("Add: %v", err)
	}
	t.Logf("attached %s: %+v", att.HostIfName, att.Interface)
	ip, _, err := net.ParseCIDR(att.Interface.IPv4)
	if err != nil {
		t.Fatalf("Add left no usable IPv4 in %+v: %v", att.Interface, err)
	}
	a := &attached{r: r, nw: nw, att: att, subnet: subnet, gw: nextIP(subnet.IP), ip: ip}
	if kind.v6 {
		a.subnet6, a.gw6 = subnet6, nextIP(subnet6.IP)
		if a.ip6, _, err = net.ParseCIDR(att.Interface.IPv6); err != nil {
			t.Fatalf("Add left no usable IPv6 in %+v: %v", att.Interface, err)
		}
	}
	return a
}

// checkInterface compares att.Interface with what really is in the staging netns.
func (a *attached) checkInterface(t *testing.T, kind netKind) {
	t.Helper()
	iface := a.att.Interface
	if !a.subnet.Contains(a.ip) || !strings.HasSuffix(iface.IPv4, "/24") {
		t.Errorf("IPv4 %s is not in %s", iface.IPv4, a.subnet)
	}
	if iface.MAC == "" || iface.MTU == 0 {
		t.Errorf("MAC %q / MTU %d not read: %+v", iface.MAC, iface.MTU, iface)
	}
	if iface.Gateway != a.gw.String() {
		t.Errorf("Gateway = %q, want %s", iface.Gateway, a.gw)
	}
	if kind.v6 {
		if !a.subnet6.Contains(a.ip6) || !strings.HasSuffix(iface.IPv6, "/64") || iface.GatewayIPv6 != a.gw6.String() {
			t.Errorf("IPv6 %s gateway %s, want in %s via %s", iface.IPv6, iface.GatewayIPv6, a.subnet6, a.gw6)
		}
	} else if iface.IPv6 != "" || iface.GatewayIPv6 != "" {
		t.Errorf("unexpected IPv6: %+v", iface)
	}
	if len(iface.Extra) > 0 {
		t.Errorf("unexpected extra addresses: %+v", iface)
	}
	got := append([]Route(nil), iface.Routes...)
	want := kind.wantRoutes(a.subnet, a.gw)
	sortRoutes(got)
	sortRoutes(want)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Routes = %+v, want %+v", got, want)
	}

	inNetNS(t, a.att.NetNS, func(h *netlink.Handle) {
		l, err := h.LinkByName(a.att.IfName)
		if err != nil {
			t.Fatalf("%s not in staging netns: %v", a.att.IfName, err)
		}
		if l.Attrs().HardwareAddr.String() != iface.MAC || l.Attrs().MTU != iface.MTU {
			t.Errorf("link has MAC %s MTU %d, Interface says %s %d", l.Attrs().HardwareAddr, l.Attrs().MTU, iface.MAC, iface.MTU)
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		testutil.Must(t, err)
		for _, want := range iface.Addresses() {
			found := false
			for _, ad := range addrs {
				found = found || ad.IPNet.String() == want
			}
			if !found {
				t.Errorf("%s has addresses %v, not %s", a.att.IfName, addrs, want)
			}
		}
		routes, err := h.RouteList(l, netlink.FAMILY_ALL)
		testutil.Must(t, err)
		var dflt, dflt6 net.IP
		for _, rt := range routes {
			if rt.Dst == nil || maskBits(rt.Dst) == 0 {
				if rt.Family == netlink.FAMILY_V6 {
					dflt6 = rt.Gw
				} else {
					dflt = rt.Gw
				}
			}
		}
		if !dflt.Equal(net.ParseIP(iface.Gateway)) {
			t.Errorf("default route in netns via %v, Interface.Gateway %q (routes %v)", dflt, iface.Gateway, routes)
		}
		if (dflt6 != nil || iface.GatewayIPv6 != "") && !dflt6.Equal(net.ParseIP(iface.GatewayIPv6)) {
			t.Errorf("IPv6 default route in netns via %v, Interface.GatewayIPv6 %q (routes %v)", dflt6, iface.GatewayIPv6, routes)
		}
		// Every reported route must be covered by a real route with the same next hop.
		for _, want := range iface.Routes {
			_, dst, _ := net.ParseCIDR(want.Destination)
			covered := false
			for _, rt := range routes {
				if rt.Dst == nil || !rt.Dst.Contains(dst.IP) || maskBits(rt.Dst) > maskBits(dst) {
					continue
				}
				if (want.NextHop == "" && rt.Gw == nil) || (rt.Gw != nil && rt.Gw.String() == want.NextHop) {
					covered = true
				}
			}
			if !covered {
				t.Errorf("reported route %+v has no counterpart in the netns: %v", want, routes)
			}
		}
	})
}

func sortRoutes(rs []Route) {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Destination+rs[i].NextHop < rs[j].Destination+rs[j].NextHop })
}

// moveToHost runs MoveToHost and checks the link left the staging netns for the host.
func (a *attached) moveToHost(t *testing.T) {
	t.Helper()
	testutil.Must(t, a.r.MoveToHost(a.att))
	if !hostLinkExists(t, a.att.HostIfName) {
		t.Fatalf("after MoveToHost, %s is not in the host netns", a.att.HostIfName)
	}
	inNetNS(t, a.att.NetNS, func(h *netlink.Handle) {
		links, err := h.LinkList()
		testutil.Must(t, err)
		for _, l := range links {
			if l.Attrs().Name != "lo" {
				t.Errorf("after MoveToHost the staging netns still holds %s", l.Attrs().Name)
			}
		}
	})
	// Again: a no-op.
	testutil.Must(t, a.r.MoveToHost(a.att))
}

// dockerJoinLeave does what libnetwork does with the link between Join and Leave (dockerJoin, dockerLeave),
// in a container's netns of its own, and checks that the link came back to the host.
func (a *attached) dockerJoinLeave(t *testing.T) {
	t.Helper()
	ctrNS := filepath.Join(t.TempDir(), "container")
	testutil.Must(t, createNetNS(ctrNS))
	defer func() { testutil.Must(t, removeNetNS(ctrNS)) }()
	a.dockerJoin(t, ctrNS, "eth1")
	if !a.dockerLeave(t, ctrNS, "eth1") {
		t.Fatal("libnetwork would not find the link at Leave")
	}
	if !hostLinkExists(t, a.att.HostIfName) {
		t.Fatalf("%s did not come back to the host", a.att.HostIfName)
	}
}

// dockerJoin does what libnetwork does with the link at Join: moves it into the container's netns, renames it
// to dstName, applies MAC, address, routes and gateway from the Interface (all of which must be accepted).
func (a *attached) dockerJoin(t *testing.T, ctrNS, dstName string) {
	t.Helper()
	ctr, err := netns.GetFromPath(ctrNS)
	testutil.Must(t, err)
	defer ctr.Close()
	l, err := netlink.LinkByName(a.att.HostIfName)
	testutil.Must(t, err)
	testutil.Must(t, netlink.LinkSetNsFd(l, int(ctr)))
	inNetNS(t, ctrNS, func(h *netlink.Handle) {
		l, err := h.LinkByName(a.att.HostIfName)
		testutil.Must(t, err)
		testutil.Must(t, h.LinkSetName(l, dstName))
		mac, err := net.ParseMAC(a.att.Interface.MAC)
		testutil.Must(t, err)
		testutil.Must(t, h.LinkSetHardwareAddr(l, mac))
		for _, s := range a.att.Interface.Addresses() {
			addr, err := netlink.ParseAddr(s)
			testutil.Must(t, err)
			if addr.IP.To4() == nil {
				addr.Flags = unix.IFA_F_NODAD // as libnetwork does
			}
			testutil.Must(t, h.AddrAdd(l, addr))
		}
		testutil.Must(t, h.LinkSetUp(l))
		for _, rt := range a.att.Interface.Routes {
			_, dst, err := net.ParseCIDR(rt.Destination)
			testutil.Must(t, err)
			route := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst}
			if rt.NextHop == "" {
				route.Scope = netlink.SCOPE_LINK
			} else {
				route.Gw = net.ParseIP(rt.NextHop)
			}
			if err := h.RouteAdd(route); err != nil {
				t.Errorf("Docker could not add route %+v: %v", rt, err)
			}
		}
		for _, g := range []string{a.att.Interface.Gateway, a.att.Interface.GatewayIPv6} {
			if gw := net.ParseIP(g); gw != nil {
				if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw}); err != nil {
					t.Errorf("Docker could not add default route via %s: %v", gw, err)
				}
			}
		}
	})
}

// dockerLeave does what libnetwork does after the driver's Leave (osl's RemoveInterface): it looks the link up
// by the name it gave it, and when it finds it sets it down, renames it back to SrcName and returns it to the
// host. It reports whether it found the link (libnetwork only logs when it does not).
func (a *attached) dockerLeave(t *testing.T, ctrNS, dstName string) (found bool) {
	t.Helper()
	host, err := netns.Get()
	testutil.Must(t, err)
	defer host.Close()
	inNetNS(t, ctrNS, func(h *netlink.Handle) {
		l, err := h.LinkByName(dstName)
		if err != nil {
			return
		}
		found = true
		testutil.Must(t, h.LinkSetDown(l))
		testutil.Must(t, h.LinkSetName(l, a.att.HostIfName))
		testutil.Must(t, h.LinkSetNsFd(l, int(host)))
	})
	return found
}

// checkAttachedState checks the per-attachment host state that must exist while attached.
func (a *attached) checkAttachedState(t *testing.T, kind netKind) {
	t.Helper()
	if !exists(cacheFile(a.nw.Name, a.att.ContainerID)) {
		t.Errorf("no libcni cache file %s", cacheFile(a.nw.Name, a.att.ContainerID))
	}
	if !exists(reservationFile(a.nw.Name, a.ip)) {
		t.Errorf("no host-local reservation %s", reservationFile(a.nw.Name, a.ip))
	}
	if chain := masqChain(t, a.nw.Name, a.att.ContainerID); (chain != "") != kind.masq {
		t.Errorf("ipMasq chain = %q, want one: %v", chain, kind.masq)
	}
	if kind.v6 {
		if !exists(reservationFile(a.nw.Name, a.ip6)) {
			t.Errorf("no host-local reservation %s", reservationFile(a.nw.Name, a.ip6))
		}
		if chain := masqChain6(t, a.nw.Name, a.att.ContainerID); (chain != "") != kind.masq {
			t.Errorf("IPv6 ipMasq chain = %q, want one: %v", chain, kind.masq)
		}
	}
}

// checkGone checks the attachment left nothing behind (on top of the leak check at the end of the test).
func (a *attached) checkGone(t *testing.T) {
	t.Helper()
	if exists(a.att.NetNS) {
		t.Errorf("staging netns %s still exists", a.att.NetNS)
	}
	if hostLinkExists(t, a.att.HostIfName) {
		t.Errorf("host link %s still exists", a.att.HostIfName)
	}
	if exists(cacheFile(a.nw.Name, a.att.ContainerID)) {
		t.Errorf("libcni cache file left")
	}
	if exists(reservationFile(a.nw.Name, a.ip)) {
		t.Errorf("host-local reservation for %s left", a.ip)
	}
	if chain := masqChain(t, a.nw.Name, a.att.ContainerID); chain != "" {
		t.Errorf("ipMasq chain %s left", chain)
	}
	if a.ip6 != nil {
		if exists(reservationFile(a.nw.Name, a.ip6)) {
			t.Errorf("host-local reservation for %s left", a.ip6)
		}
		if chain := masqChain6(t, a.nw.Name, a.att.ContainerID); chain != "" {
			t.Errorf("IPv6 ipMasq chain %s left", chain)
		}
	}
}

// ---------------------------------------------------------------------------------------------------------
// tests

// TestLifecycle: Plan -> Add -> Interface matches the netns -> MoveToHost -> Docker Join/Leave -> Teardown,
// for every main plugin and every CNI spec version the runner branches on.
func TestLifecycle(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CNIBinDir(t)
	for _, version := range specVersions {
		for _, kind := range netKinds {
			t.Run(version+"/"+kind.name, func(t *testing.T) {
				startLeakCheck(t)
				a := attachAt(t, kind, version, nil)
				a.checkInterface(t, kind)
				a.checkAttachedState(t, kind)
				a.moveToHost(t)
				a.dockerJoinLeave(t)
				testutil.Must(t, a.r.Teardown(context.Background(), a.att))
				a.checkGone(t)
			})
		}
	}
}

// TestLifecycleRequestedAddressAndMAC: the IP=/MAC= CNI_ARGS RequestArgs builds reach host-local and bridge.
func TestLifecycleRequestedAddressAndMAC(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CNIBinDir(t)
	startLeakCheck(t)
	const mac = "02:42:c0:ff:ee:01"
	var wantIP net.IP
	a := attach(t, netKinds[0], func(nw *Network, subnet *net.IPNet) ([][2]string, map[string]any) {
		wantIP = nextIP(nextIP(nextIP(subnet.IP))) // .3
		args, caps := RequestArgs(nw, []string{wantIP.String() + "/24"}, mac)
		if caps != nil {
			t.Errorf("bridge declares no ips/mac capability, yet RequestArgs returned %v", caps)
		}
		return args, caps
	})
	if !a.ip.Equal(wantIP) || a.att.Interface.MAC != mac {
		t.Errorf("got %s %s, requested %s %s", a.att.Interface.IPv4, a.att.Interface.MAC, wantIP, mac)
	}
	a.checkInterface(t, netKinds[0])
	a.moveToHost(t)
	a.dockerJoinLeave(t)
	testutil.Must(t, a.r.Teardown(context.Background(), a.att))
	a.checkGone(t)
}

// scriptNetwork returns a runner whose first bin dir holds the script plugin, and a bridge+host-local network
// followed by that plugin. The bridge is removed at the end of the test.
func scriptNetwork(t *testing.T, timeout time.Duration, pluginType, body string) (*Runner, *Network, string) {
	t.Helper()
	bin := t.TempDir()
	writeScriptPlugin(t, bin, pluginType, body)
	r := newTestRunner(t, timeout, bin)
	subnet := pickSubnet(t)
	netName := testutil.UniqueName("cnitest-" + pluginType + "-")
	cleanHostLocalDir(t, netName)
	br := testutil.UniqueName("cnb")
	delHostLinkLater(t, br)
	nw, err := ParseNetwork([]byte(conflist(netName,
		fmt.Sprintf(`{"type":"bridge","bridge":%q,"isGateway":true,"ipMasq":true,"ipam":%s}`, br, hostLocal(subnet)),
		// firewall before the scripted plugin: its rules exist when the chain fails, and libcni has cached no
		// result to give its DEL (it removes its rules by the addresses of prevResult).
		`{"type":"firewall","backend":"iptables"}`,
		fmt.Sprintf(`{"type":%q}`, pluginType))))
	testutil.Must(t, err)
	testutil.Must(t, r.Validate(context.Background(), nw))
	return r, nw, br
}

// failedAddLeftNothing checks the rollback after a failed Add, then that Teardown of it is still fine.
func failedAddLeftNothing(t *testing.T, r *Runner, nw *Network, att *Attachment, br string) {
	t.Helper()
	// The bridge plugin's ADD ran (it created the bridge, which DEL keeps): there was something to roll back.
	if !hostLinkExists(t, br) {
		t.Errorf("bridge %s does not exist: the bridge plugin's ADD did not run, so the rollback was not tested", br)
	}
	if exists(att.NetNS) {
		t.Errorf("staging netns %s left after failed Add", att.NetNS)
	}
	if exists(cacheFile(nw.Name, att.ContainerID)) {
		t.Errorf("libcni cache file left after failed Add")
	}
	if chain := masqChain(t, nw.Name, att.ContainerID); chain != "" {
		t.Errorf("ipMasq chain %s left after failed Add", chain)
	}
	entries, _ := os.ReadDir(filepath.Join(testutil.CNIDataDir, "networks", nw.Name))
	for _, e := range entries {
		if net.ParseIP(e.Name()) != nil {
			t.Errorf("host-local reservation %s left after failed Add", e.Name())
		}
	}
	if err := r.Teardown(context.Background(), att); err != nil {
		t.Errorf("Teardown after a rolled-back Add: %v", err)
	}
}

// TestMetaPluginChain: portmap (with the portMappings capability), firewall, tuning and bandwidth after bridge:
// their per-attachment iptables rules, ifb device and tuning backup exist while attached and are gone after
// Teardown, which works from the recorded conflist and capability args alone.
func TestMetaPluginChain(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CNIBinDir(t)
	startLeakCheck(t)
	tuningDir := t.TempDir()
	hostPort := 20000 + mrand.IntN(40000)
	kind := netKinds[0]
	kind.wantRoutes = noRoutes
	kind.setup = func(t *testing.T, ipam string) string {
		return strings.Join([]string{
			bridgePlugin(t, ipam),
			`{"type":"portmap","capabilities":{"portMappings":true}}`,
			`{"type":"firewall","backend":"iptables"}`,
			fmt.Sprintf(`{"type":"tuning","mtu":1400,"sysctl":{"net.core.somaxconn":"512"},"dataDir":%q}`, tuningDir),
			`{"type":"bandwidth","ingressRate":1000000,"ingressBurst":100000,"egressRate":1000000,"egressBurst":100000}`,
		}, ",")
	}
	a := attach(t, kind, func(nw *Network, _ *net.IPNet) ([][2]string, map[string]any) {
		args, _ := RequestArgs(nw, nil, "")
		return args, map[string]any{"portMappings": []map[string]any{{"hostPort": hostPort, "containerPort": 80, "protocol": "tcp"}}}
	})
	a.checkInterface(t, kind)
	a.checkAttachedState(t, kind)
	if a.att.Interface.MTU != 1400 {
		t.Errorf("MTU = %d, tuning set 1400", a.att.Interface.MTU)
	}
	backup := filepath.Join(tuningDir, a.att.ContainerID+"_"+StagingIfName+".json")
	if !exists(backup) {
		t.Errorf("tuning backup %s missing", backup)
	}

	nat := iptablesSave(t, "nat")
	var dnChain string
	for _, line := range strings.Split(nat, "\n") {
		if strings.HasPrefix(line, "-A CNI-HOSTPORT-DNAT ") && strings.Contains(line, a.att.ContainerID) && strings.Contains(line, fmt.Sprint(hostPort)) {
			if i := strings.Index(line, " -j CNI-DN-"); i >= 0 {
				dnChain = strings.Fields(line[i+len(" -j "):])[0]
			}
		}
	}
	if dnChain == "" {
		t.Errorf("no CNI-HOSTPORT-DNAT rule for host port %d:\n%s", hostPort, nat)
	} else if !strings.Contains(nat, "-A "+dnChain+" ") || !strings.Contains(nat, a.ip.String()+":80") {
		t.Errorf("chain %s does not DNAT to %s:80:\n%s", dnChain, a.ip, nat)
	}
	if filter := iptablesSave(t, "filter"); !strings.Contains(filter, "-A CNI-FORWARD -d "+a.ip.String()+"/32") {
		t.Errorf("no firewall CNI-FORWARD rule for %s:\n%s", a.ip, filter)
	}
	links, err := netlink.LinkList()
	testutil.Must(t, err)
	ifb := ""
	for _, l := range links {
		if l.Type() == "ifb" && strings.HasPrefix(l.Attrs().Name, "bwp") {
			ifb = l.Attrs().Name
		}
	}
	if ifb == "" {
		t.Errorf("bandwidth created no bwp* ifb device")
	}

	a.moveToHost(t)
	a.dockerJoinLeave(t)
	testutil.Must(t, a.r.Teardown(context.Background(), a.att))
	a.checkGone(t)
	if exists(backup) {
		t.Errorf("tuning backup %s left: DEL did not find the link to restore", backup)
	}
	if ifb != "" && hostLinkExists(t, ifb) {
		t.Errorf("ifb %s left", ifb)
	}
	nat = iptablesSave(t, "nat")
	if dnChain != "" && strings.Contains(nat, dnChain) {
		t.Errorf("portmap chain %s left:\n%s", dnChain, nat)
	}
}

// TestValidate: missing plugins, main or IPAM, are named together with where they were looked for.
func TestValidate(t *testing.T) {
	cniBin := testutil.CNIBinDir(t)
	extra := t.TempDir()
	r, err := NewRunner(Config{BinDirs: []string{extra, cniBin}, CacheDir: t.TempDir(), NetNSDir: t.TempDir()})
	testutil.Must(t, err)
	defer r.Close()
	for _, tc := range []struct {
		name, plugin string
		wantErr      string // "" = valid
	}{
		{"valid", `{"type":"bridge","bridge":"cnbx","ipam":{"type":"host-local","subnet":"10.201.0.0/24"}}`, ""},
		{"missing plugin", `{"type":"nosuchplugin"}`, `CNI plugin "nosuchplugin" not found in ` + extra + ":" + cniBin},
		{"missing ipam", `{"type":"bridge","ipam":{"type":"nosuchipam"}}`, `CNI plugin "nosuchipam" not found in ` + extra + ":" + cniBin},
		{"missing later in chain", `{"type":"bridge","ipam":{"type":"host-local","subnet":"10.201.0.0/24"}},{"type":"nosuchmeta"}`, `"nosuchmeta" not found`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw, err := ParseNetwork([]byte(conflist("validate-test", tc.plugin)))
			testutil.Must(t, err)
			err = r.Validate(context.Background(), nw)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Validate error %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// TestNewRunnerHostNetNS: the runner's host handle is the netns of the process's threads, even after
// createNetNS has run (it leaves a thread, possibly the main thread, in a new namespace).
func TestNewRunnerHostNetNS(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	// Many concurrent createNetNS calls: one of them reliably lands on (and wedges) the main thread, which is
	// what /proc/self/ns/net names.
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			p := filepath.Join(dir, fmt.Sprint(i))
			if err := createNetNS(p); err != nil {
				t.Error(err)
				return
			}
			if err := removeNetNS(p); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	r, err := NewRunner(Config{NetNSDir: dir})
	testutil.Must(t, err)
	defer r.Close()
	// Threads that run goroutines are never in a staging netns (those are locked and discarded).
	self, err := netns.Get()
	testutil.Must(t, err)
	defer self.Close()
	if !r.hostNS.Equal(self) {
		t.Errorf("Runner host netns is %s, this thread's is %s", r.hostNS.UniqueId(), self.UniqueId())
	}
}
