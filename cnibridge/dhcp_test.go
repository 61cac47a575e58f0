package cnibridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/cniplug/cniplug/internal/testutil"
)

// These tests establish how the reference dhcp IPAM plugin (v1.9.1) and its daemon behave under cniplug's
// staging netns (issue 12, containers on the LAN by DHCP): the daemon acquires the lease from inside
// CNI_NETNS and keeps renewing it from there, while cniplug moves the link out of that netns and Docker moves
// it into the container's. They run the real plugins against dnsmasq on a test LAN (internal/testutil
// DHCPLAN) with a renewal time (option 58) of a few seconds, and assert what the DHCP server sees.
// docs/dhcp-findings.md records the results and what they mean for cniplug.

// dhcpT1 is the renewal time dnsmasq hands out (option 58); the lease itself is dnsmasq's minimum, 2m.
const dhcpT1 = 4 * time.Second

// dhcpEnv is one test's LAN, dhcp daemon and runner, in a fresh test netns.
type dhcpEnv struct {
	lan    *testutil.DHCPLAN
	daemon *testutil.DHCPDaemon
	r      *Runner
	bins   []string
	testNS netns.NsHandle
}

func newDHCPEnv(t *testing.T) *dhcpEnv {
	t.Helper()
	startLeakCheck(t)
	bin := testutil.CNIBinDir(t)
	testutil.RequireDnsmasq(t)
	lan := testutil.NewDHCPLAN(t, testutil.DHCPLANOptions{T1: dhcpT1})
	// -resendtimeout bounds how long a lease operation keeps retrying (default 208s).
	daemon := testutil.StartDHCPDaemon(t, bin, "-timeout", "3s", "-resendtimeout", "15s")
	r := newTestRunner(t, 30*time.Second)
	self, err := netns.Get()
	testutil.Must(t, err)
	t.Cleanup(func() { self.Close() })
	t.Cleanup(func() { // CNIPLUG_TEST_DHCP_LOGS=1 shows them always (the evidence in docs/dhcp-findings.md)
		if t.Failed() || os.Getenv("CNIPLUG_TEST_DHCP_LOGS") != "" {
			var wire strings.Builder
			for _, p := range lan.Wire("") {
				fmt.Fprintf(&wire, "%s %s\n", p.Time.Format("15:04:05.000"), p)
			}
			t.Logf("dnsmasq log:\n%s\ndhcp daemon log:\n%s\nDHCP on the server's link:\n%s", lan.Log(), daemon.Log(), wire.String())
		}
	})
	return &dhcpEnv{lan: lan, daemon: daemon, r: r, bins: r.binDirs, testNS: self}
}

// dhcpIPAM is the ipam section for the test's daemon. clientID, when set, is sent as the DHCP client
// identifier (option 61) instead of the plugin's "<containerID>/<network>/<ifname>" ("provide" options are
// applied after the plugin's own, lease.go withAllOptions).
func (e *dhcpEnv) dhcpIPAM(clientID ...string) string {
	provide := ""
	if len(clientID) > 0 && clientID[0] != "" {
		provide = fmt.Sprintf(`,"provide":[{"option":"dhcp-client-identifier","value":%q}]`, clientID[0])
	}
	return fmt.Sprintf(`{"type":"dhcp","daemonSocketPath":%q%s}`, e.daemon.Socket, provide)
}

// dhcpPlugins are the main plugins the tests attach to the LAN with: macvlan on the LAN bridge, and the
// bridge plugin with the LAN bridge as its bridge (no gateway, no masquerading: the LAN routes).
var dhcpPlugins = []struct {
	name   string
	plugin func(e *dhcpEnv, clientID ...string) string
	// releaseOnDEL: the main plugin runs IPAM DEL while the link still exists (macvlan), so the daemon can
	// send DHCPRELEASE; the bridge plugin deletes the veth first (bridge.go cmdDel: "call ipam.ExecDel after
	// clean up device in netns"), so the daemon finds no link to send from.
	releaseOnDEL bool
}{
	{"macvlan", func(e *dhcpEnv, clientID ...string) string {
		return fmt.Sprintf(`{"type":"macvlan","master":%q,"mode":"bridge","ipam":%s}`, e.lan.Bridge, e.dhcpIPAM(clientID...))
	}, true},
	{"bridge", func(e *dhcpEnv, clientID ...string) string {
		return fmt.Sprintf(`{"type":"bridge","bridge":%q,"isGateway":false,"ipMasq":false,"ipam":%s}`, e.lan.Bridge, e.dhcpIPAM(clientID...))
	}, false},
}

// add runs cniplug's ADD of a one-plugin network and checks that the address came from dnsmasq: the lease
// file has it, for the link's MAC and the plugin's client-id.
func (e *dhcpEnv) add(t *testing.T, plugin string) (*Attachment, net.IP) {
	t.Helper()
	name := testutil.UniqueName("dhcp")
	nw, err := ParseNetwork([]byte(conflist(name, plugin)))
	testutil.Must(t, err)
	att, err := e.r.Plan(AddRequest{ContainerID: containerID(t), Network: nw})
	testutil.Must(t, err)
	if err := e.r.Add(context.Background(), att); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() { // a failed test still releases what it made (Teardown is idempotent)
		if err := e.r.Teardown(context.Background(), att); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	ip, _, err := net.ParseCIDR(att.Interface.IPv4)
	if err != nil {
		t.Fatalf("ADD gave no IPv4 address: %+v", att.Interface)
	}
	if !e.lan.Subnet.Contains(ip) {
		t.Fatalf("ADD gave %s, outside the LAN %s", ip, e.lan.Subnet)
	}
	lease, ok := e.lan.LeaseFor(t, ip)
	if !ok {
		t.Fatalf("dnsmasq has no lease for %s: %+v", ip, e.lan.Leases(t))
	}
	if want := att.ContainerID + "/" + att.Network + "/" + att.IfName; lease.ClientID != want && !strings.Contains(plugin, "dhcp-client-identifier") {
		t.Errorf("lease client-id = %q, want %q (plugin's generateClientID)", lease.ClientID, want)
	}
	if lease.MAC != att.Interface.MAC {
		t.Errorf("lease MAC = %s, link's MAC = %s", lease.MAC, att.Interface.MAC)
	}
	t.Logf("ADD: %s (MAC %s) leased by dnsmasq: %s", ip, att.Interface.MAC, lease.Raw)
	return att, ip
}

// ackRE, releaseRE, ... match dnsmasq's log lines for one address.
func ackRE(ip net.IP) *regexp.Regexp {
	return regexp.MustCompile(`DHCPACK\(\S+\) ` + regexp.QuoteMeta(ip.String()) + ` `)
}
func releaseRE(ip net.IP) *regexp.Regexp {
	return regexp.MustCompile(`DHCPRELEASE\(\S+\) ` + regexp.QuoteMeta(ip.String()) + ` `)
}

var (
	discoverRE    = regexp.MustCompile(`DHCPDISCOVER\(`)
	terminatedRE  = regexp.MustCompile(`no longer exists or link check failed, terminating lease maintenance`)
	renewedRE     = regexp.MustCompile(`lease renewed, expiration is`)
	releaseFailRE = regexp.MustCompile(`failed to release DHCP lease`)
)

// intoContainer does what Docker does with the link cniplug left in the host netns at Join: moves it into
// the container's netns, names it ifName (eth0 when not given) there, and configures the address from the
// Join response. It returns the container netns' path.
func (e *dhcpEnv) intoContainer(t *testing.T, att *Attachment, ifName ...string) string {
	t.Helper()
	testutil.Must(t, e.r.MoveToHost(att))
	path := filepath.Join(t.TempDir(), "ctr")
	testutil.Must(t, createNetNS(path))
	t.Cleanup(func() { _ = removeNetNS(path) })
	ns, err := netns.GetFromPath(path)
	testutil.Must(t, err)
	defer ns.Close()
	l, err := netlink.LinkByName(att.HostIfName)
	testutil.Must(t, err)
	testutil.Must(t, netlink.LinkSetDown(l))
	testutil.Must(t, netlink.LinkSetNsFd(l, int(ns)))
	inNetNS(t, path, func(h *netlink.Handle) {
		l, err := h.LinkByName(att.HostIfName)
		testutil.Must(t, err)
		testutil.Must(t, h.LinkSetName(l, ctrIfName(ifName)))
		addr, err := netlink.ParseAddr(att.Interface.IPv4)
		testutil.Must(t, err)
		testutil.Must(t, h.AddrAdd(l, addr))
		testutil.Must(t, h.LinkSetUp(l))
	})
	return path
}

// outOfContainer does what Docker does at Leave: moves the link back to the host netns under its SrcName.
func (e *dhcpEnv) outOfContainer(t *testing.T, att *Attachment, path string, ifName ...string) {
	t.Helper()
	inNetNS(t, path, func(h *netlink.Handle) {
		l, err := h.LinkByName(ctrIfName(ifName))
		testutil.Must(t, err)
		testutil.Must(t, h.LinkSetDown(l))
		testutil.Must(t, h.LinkSetName(l, att.HostIfName))
		testutil.Must(t, h.LinkSetNsFd(l, int(e.testNS)))
	})
}

func ctrIfName(n []string) string {
	if len(n) > 0 {
		return n[0]
	}
	return "eth0"
}

// waitPastT1 sleeps until the daemon has had time for at least one renewal (T1 plus the time one round trip
// and its link check take).
func waitPastT1(t *testing.T) {
	t.Logf("waiting %s (T1 %s) for renewals", 2*dhcpT1+2*time.Second, dhcpT1)
	time.Sleep(2*dhcpT1 + 2*time.Second)
}

// waitDaemonLog waits until the daemon logged a line matching re.
func (e *dhcpEnv) waitDaemonLog(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
		if lines := e.daemon.LogLines(re); len(lines) > 0 {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("dhcp daemon logged nothing matching %q within %s:\n%s", re, timeout, e.daemon.Log())
		}
	}
}

// ipamOnly is a network of the dhcp plugin alone under the same network name, so the daemon derives the same
// lease key (and client-id) as for the attachment: what cniplug would run to hand a lease over to the
// container's netns. It has a libcni cache dir of its own, as its results must not replace the attachment's.
func (e *dhcpEnv) ipamOnly(t *testing.T, att *Attachment, clientID ...string) (*libcni.CNIConfig, *libcni.NetworkConfigList) {
	t.Helper()
	list, err := libcni.NetworkConfFromBytes([]byte(conflist(att.Network,
		fmt.Sprintf(`{"type":"dhcp","ipam":%s}`, e.dhcpIPAM(clientID...)))))
	testutil.Must(t, err)
	return libcni.NewCNIConfigWithCacheDir(e.bins, t.TempDir(), nil), list
}

// wireFor returns the DHCP messages of type typ from a client that holds ip (ciaddr: renewals and
// releases; an acquisition's REQUEST has none) seen on the server's link.
func (e *dhcpEnv) wireFor(typ string, ip net.IP) []testutil.DHCPPacket {
	var out []testutil.DHCPPacket
	for _, p := range e.lan.Wire(typ) {
		if p.CIAddr.Equal(ip) {
			out = append(out, p)
		}
	}
	return out
}

// assertReleaseIgnored checks what DEL achieves with dnsmasq: a DHCPRELEASE reaches the server's link when
// sent is true (none when false), dnsmasq logs none, and the lease stays in its lease file. The daemon sends
// its release through a raw socket from 0.0.0.0 to the server's unicast address (lease.go release(): a
// client without nclient4.WithUnicast), and the server's kernel drops such a datagram as a martian source
// before it reaches dnsmasq's UDP socket (upstream containernetworking/plugins#1278, fixed after v1.9.1).
func (e *dhcpEnv) assertReleaseIgnored(t *testing.T, ip net.IP, sent bool) {
	t.Helper()
	time.Sleep(time.Second) // time for a release to reach the server and its log
	wire := e.wireFor("RELEASE", ip)
	if sent {
		if len(wire) != 1 {
			t.Errorf("DHCPRELEASEs for %s on the wire: %v, want one", ip, wire)
		} else {
			t.Logf("DHCPRELEASE on the wire: %s", wire[0])
			if !wire[0].Src.IsUnspecified() {
				t.Errorf("DHCPRELEASE sent from %s: the plugin now sends from its address (upstream fix?): revisit docs/dhcp-findings.md", wire[0].Src)
			}
		}
	} else if len(wire) > 0 {
		t.Errorf("DHCPRELEASEs for %s on the wire: %v, want none", ip, wire)
	}
	if l := e.lan.LogLines(releaseRE(ip)); len(l) > 0 {
		t.Errorf("dnsmasq processed a DHCPRELEASE: %q", l)
	}
	if _, ok := e.lan.LeaseFor(t, ip); !ok {
		t.Errorf("dnsmasq dropped the lease of %s", ip)
	}
}

// ---------------------------------------------------------------------------------------------------------

// TestDHCPLeaseInStagingNetNS (fact a): ADD through the Runner leases an address from the LAN's server, and
// the daemon renews it at T1 while the link stays in the staging netns. Teardown (CNI DEL) stops the lease;
// its DHCPRELEASE (macvlan only) never reaches dnsmasq, so the server keeps the lease until it expires.
func TestDHCPLeaseInStagingNetNS(t *testing.T) {
	for _, p := range dhcpPlugins {
		t.Run(p.name, func(t *testing.T) {
			e := newDHCPEnv(t)
			att, ip := e.add(t, p.plugin(e))
			waitPastT1(t)
			if n := len(e.lan.LogLines(ackRE(ip))); n < 2 {
				t.Errorf("dnsmasq ACKed %s %d times in %s: want a renewal after T1 %s", ip, n, 2*dhcpT1, dhcpT1)
			}
			if n := len(e.wireFor("REQUEST", ip)); n < 1 {
				t.Errorf("no renewing DHCPREQUEST from %s on the wire", ip)
			}
			e.waitDaemonLog(t, renewedRE, time.Second)
			testutil.Must(t, e.r.Teardown(context.Background(), att))
			e.waitDaemonLog(t, regexp.MustCompile(`releasing lease`), 5*time.Second)
			if !p.releaseOnDEL {
				t.Logf("daemon: %q", e.waitDaemonLog(t, releaseFailRE, 5*time.Second))
			}
			e.assertReleaseIgnored(t, ip, p.releaseOnDEL)
		})
	}
}

// TestDHCPLinkMovedOutOfStaging (fact b): once cniplug and Docker have moved the link out of the staging
// netns, the daemon's lease goroutine, which stays in the staging netns, finds no eth0 there at T1 and stops
// maintaining the lease, saying so in its log only: no renewal reaches the server, and a later DEL (after
// Docker gave the link back) sends no release at all.
func TestDHCPLinkMovedOutOfStaging(t *testing.T) {
	for _, p := range dhcpPlugins {
		t.Run(p.name, func(t *testing.T) {
			e := newDHCPEnv(t)
			att, ip := e.add(t, p.plugin(e))
			ctr := e.intoContainer(t, att)
			waitPastT1(t)
			t.Logf("daemon: %q", e.waitDaemonLog(t, terminatedRE, time.Second))
			if n := len(e.wireFor("REQUEST", ip)); n != 0 {
				t.Errorf("%d renewing DHCPREQUESTs from %s on the wire, want none", n, ip)
			}
			if n := len(e.lan.LogLines(ackRE(ip))); n != 1 {
				t.Errorf("dnsmasq ACKed %s %d times: want only the ADD's ACK", ip, n)
			}
			if l := e.daemon.LogLines(renewedRE); len(l) > 0 {
				t.Errorf("daemon renewed: %q", l)
			}
			e.outOfContainer(t, att, ctr)
			testutil.Must(t, e.r.Teardown(context.Background(), att))
			e.assertReleaseIgnored(t, ip, false)
			if l := e.daemon.LogLines(regexp.MustCompile(`releasing lease`)); len(l) > 0 {
				t.Errorf("daemon tried to release a lease it no longer maintains: %q", l)
			}
		})
	}
}

// TestDHCPCheckFromContainerNetNS (fact c): CHECK, or a second ADD, with CNI_NETNS = the container's netns
// and CNI_IFNAME = eth0 does not move the lease there. The daemon's Allocate finds its lease by client-id and
// only pokes the existing lease goroutine (DHCPLease.Check), which lives in the staging netns: before T1 that
// goroutine wakes, misses eth0 and stops at once; once it has stopped, the poke (an unbuffered channel send)
// blocks for good and the plugin hangs until the runtime kills it.
func TestDHCPCheckFromContainerNetNS(t *testing.T) {
	plugin := dhcpPlugins[0].plugin // macvlan: the plugin the issue asks for
	for _, tc := range []struct {
		name      string
		afterStop bool // run it once the lease goroutine stopped (past T1)
		check     bool // CHECK of the attachment's conflist; else ADD of the dhcp plugin alone
	}{
		{"check before T1", false, true},
		{"check after maintenance stopped", true, true},
		{"add again before T1", false, false},
		{"add again after maintenance stopped", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newDHCPEnv(t)
			att, ip := e.add(t, plugin(e))
			ctr := e.intoContainer(t, att)
			if tc.afterStop {
				e.waitDaemonLog(t, terminatedRE, dhcpT1+5*time.Second)
			}
			rt := &libcni.RuntimeConf{ContainerID: att.ContainerID, NetNS: ctr, IfName: "eth0"}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var err error
			if tc.check {
				nw, perr := ParseNetwork(att.Conflist)
				testutil.Must(t, perr)
				err = e.r.cni.CheckNetworkList(ctx, nw.List, rt)
			} else {
				cni, list := e.ipamOnly(t, att)
				var res any
				res, err = cni.AddNetworkList(ctx, list, rt)
				t.Logf("second ADD's result: %v", res)
			}
			hung := errors.Is(ctx.Err(), context.DeadlineExceeded)
			cancel()
			t.Logf("err=%v, hung=%v", err, hung)
			if hung != tc.afterStop {
				t.Errorf("plugin hung = %v, want %v (err %v)", hung, tc.afterStop, err)
			}
			if !tc.afterStop {
				t.Logf("daemon: %q", e.waitDaemonLog(t, regexp.MustCompile(`Checking lease|terminating lease maintenance`), 5*time.Second))
				e.waitDaemonLog(t, terminatedRE, 5*time.Second)
				if !tc.check && err != nil {
					t.Errorf("second ADD failed: %v", err)
				}
			}
			time.Sleep(2 * time.Second)
			if n := len(e.lan.Wire("DISCOVER")); n != 1 {
				t.Errorf("%d DHCPDISCOVERs on the wire: want only the first ADD's (no acquisition from the container netns)", n)
			}
			if n := len(e.lan.Wire("REQUEST")); n != 1 {
				t.Errorf("%d DHCPREQUESTs on the wire: want only the first ADD's", n)
			}
			if n := len(e.wireFor("REQUEST", ip)); n != 0 {
				t.Errorf("%d renewing DHCPREQUESTs from %s on the wire, want none", n, ip)
			}
			e.outOfContainer(t, att, ctr)
		})
	}
}

// TestDHCPHandOverToContainerNetNS: what does keep a lease alive. After the link left the staging netns, a
// DEL of the dhcp plugin alone makes the daemon forget its staging-side lease; its release fails (no eth0 in
// the staging netns) and the server keeps the lease. An ADD of the dhcp plugin alone with CNI_NETNS = the
// container's netns and CNI_IFNAME = the link's name there then acquires from the container's netns, and the
// daemon renews it from there. The server gives the same address only for the same client-id: the plugin
// derives it from the ifname unless the network provides option 61 itself.
func TestDHCPHandOverToContainerNetNS(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ctrIf    string // the link's name in the container
		clientID string // provided client-id, "" for the plugin's own
		sameIP   bool
	}{
		{"same ifname", "eth0", "", true},
		{"other ifname", "eth1", "", false},
		{"other ifname, client-id provided", "eth1", "cniplug-test-client", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newDHCPEnv(t)
			clientID := ""
			if tc.clientID != "" {
				clientID = testutil.UniqueName(tc.clientID)
			}
			att, ip := e.add(t, dhcpPlugins[0].plugin(e, clientID))
			ctr := e.intoContainer(t, att, tc.ctrIf)
			cni, list := e.ipamOnly(t, att, clientID)
			ctx := context.Background()

			// Forget the staging-side lease. Its release fails: eth0 is gone from the staging netns.
			testutil.Must(t, cni.DelNetworkList(ctx, list, &libcni.RuntimeConf{ContainerID: att.ContainerID, NetNS: att.NetNS, IfName: att.IfName}))
			t.Logf("daemon: %q", e.waitDaemonLog(t, releaseFailRE, 5*time.Second))
			e.assertReleaseIgnored(t, ip, false)

			// Acquire again from the container's netns.
			rt := &libcni.RuntimeConf{ContainerID: att.ContainerID, NetNS: ctr, IfName: tc.ctrIf}
			res, err := cni.AddNetworkList(ctx, list, rt)
			if err != nil {
				t.Fatalf("ADD from the container netns: %v", err)
			}
			cur, err := current.NewResultFromResult(res)
			testutil.Must(t, err)
			if len(cur.IPs) != 1 {
				t.Fatalf("ADD from the container netns: %v", cur)
			}
			newIP := cur.IPs[0].Address.IP
			t.Logf("ADD from the container netns: %s; staging ADD: %s", newIP, ip)
			if newIP.Equal(ip) != tc.sameIP {
				t.Errorf("same address = %v, want %v", newIP.Equal(ip), tc.sameIP)
			}
			if n := len(e.lan.Wire("DISCOVER")); n != 2 {
				t.Errorf("%d DHCPDISCOVERs on the wire: want the staging ADD's and the container's", n)
			}
			for _, l := range e.lan.Leases(t) {
				t.Logf("lease: %s %s client-id %q", l.IP, l.MAC, l.ClientID)
			}
			waitPastT1(t)
			if n := len(e.wireFor("REQUEST", newIP)); n < 1 {
				t.Errorf("no renewing DHCPREQUEST from %s: want renewals from the container netns", newIP)
			}
			e.waitDaemonLog(t, renewedRE, time.Second)
			if l := e.daemon.LogLines(terminatedRE); len(l) > 0 {
				t.Errorf("daemon stopped maintaining: %q", l)
			}

			// DEL while the link is still in the container: the daemon sends its release from there.
			testutil.Must(t, cni.DelNetworkList(ctx, list, rt))
			e.waitDaemonLog(t, regexp.MustCompile(`releasing lease`), 5*time.Second)
			if l := e.daemon.LogLines(regexp.MustCompile(`failed to release`)); len(l) != 1 {
				t.Errorf("daemon: %q, want only the staging-side release to fail", l)
			}
			e.assertReleaseIgnored(t, newIP, true)
			e.outOfContainer(t, att, ctr, tc.ctrIf)
		})
	}
}
