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

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// These tests establish how the reference dhcp IPAM plugin (v1.10.0) and its daemon behave under cniplug's
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
	// releaseOnDEL: the main plugin runs IPAM DEL while the link still exists with its address (macvlan),
	// so the daemon can send DHCPRELEASE from the leased address; the bridge plugin deletes the veth first
	// (bridge.go cmdDel: "call ipam.ExecDel after clean up device in netns"), so the address is gone and the
	// daemon cannot bind <leased IP>:68 to send from.
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
	att, err := e.r.NewAttachment(AddRequest{ContainerID: containerID(t), Network: nw})
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
	checkingRE    = regexp.MustCompile(`Checking lease`)
)

// bindFailRE matches the daemon's log line for a release it could not send because ip is not configured in
// the lease's netns: v1.10.0 sends DHCPRELEASE unicast from the leased address (lease.go release():
// nclient4.WithUnicast(<yiaddr>:68), upstream #1279), and nclient4 binds that UDP address before sending.
func bindFailRE(ip net.IP) *regexp.Regexp {
	return regexp.MustCompile(`failed to release DHCP lease: .*listen udp4 ` + regexp.QuoteMeta(ip.String()) +
		`:68: bind: cannot assign requested address`)
}

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

// releaseOutcome is what a DEL's DHCPRELEASE achieves with dnsmasq.
type releaseOutcome int

const (
	// releaseNotSent: no DHCPRELEASE for the address reaches the server's link, dnsmasq logs none, and it
	// keeps the lease (until it expires).
	releaseNotSent releaseOutcome = iota
	// releaseProcessed: one DHCPRELEASE, sent from the leased address itself (v1.10.0, upstream #1279), with
	// the lease's client-id; dnsmasq logs "DHCPRELEASE(<if>) <ip> <mac>" and drops the lease.
	releaseProcessed
	// releaseUnknown: one DHCPRELEASE from the leased address, but with a client-id other than the lease's
	// (wireClientID); dnsmasq logs "DHCPRELEASE(<if>) <ip> <mac> unknown lease" and keeps the lease.
	releaseUnknown
)

func (o releaseOutcome) String() string {
	return [...]string{"not sent", "processed", "unknown lease"}[o]
}

// assertRelease checks what DEL's release of ip achieved with dnsmasq. wireClientID is the client-id the
// DHCPRELEASE must carry on the wire when one is sent (the lease's for releaseProcessed).
func (e *dhcpEnv) assertRelease(t *testing.T, ip net.IP, want releaseOutcome, wireClientID string) {
	t.Helper()
	time.Sleep(time.Second) // time for a release to reach the server and its log
	lease, hadLease := e.lan.LeaseFor(t, ip)
	wire := e.wireFor("RELEASE", ip)
	logged := e.lan.LogLines(releaseRE(ip))
	t.Logf("release of %s (want %s): wire %v; dnsmasq %q", ip, want, wire, logged)
	if want == releaseNotSent {
		if len(wire) > 0 {
			t.Errorf("DHCPRELEASEs for %s on the wire: %v, want none", ip, wire)
		}
		if len(logged) > 0 {
			t.Errorf("dnsmasq logged a DHCPRELEASE: %q, want none", logged)
		}
		if !hadLease {
			t.Errorf("dnsmasq dropped the lease of %s", ip)
		}
		return
	}
	if len(wire) != 1 {
		t.Errorf("DHCPRELEASEs for %s on the wire: %v, want one", ip, wire)
	} else {
		if !wire[0].Src.Equal(ip) {
			t.Errorf("DHCPRELEASE sent from %s, want from the leased address %s (v1.10.0 unicast release)", wire[0].Src, ip)
		}
		if !wire[0].Dst.Equal(e.lan.ServerIP) {
			t.Errorf("DHCPRELEASE sent to %s, want the server %s", wire[0].Dst, e.lan.ServerIP)
		}
		if wire[0].ClientID != wireClientID {
			t.Errorf("DHCPRELEASE client-id %q, want %q", wire[0].ClientID, wireClientID)
		}
	}
	if len(logged) != 1 {
		t.Fatalf("dnsmasq logged DHCPRELEASEs for %s: %q, want one", ip, logged)
	}
	unknown := strings.HasSuffix(strings.TrimSpace(logged[0]), "unknown lease")
	switch want {
	case releaseProcessed:
		if unknown {
			t.Errorf("dnsmasq: %q, want the release processed", logged[0])
		}
		if hadLease {
			t.Errorf("dnsmasq kept the lease of %s after its release: %s", ip, lease.Raw)
		}
	case releaseUnknown:
		if !unknown {
			t.Errorf("dnsmasq: %q, want \"unknown lease\"", logged[0])
		}
		if !hadLease {
			t.Errorf("dnsmasq dropped the lease of %s", ip)
		}
	}
}

// clientIDOf is the client-id the plugin generates for an attachment's key with ifName (daemon.go
// generateClientID).
func clientIDOf(att *Attachment, ifName string) string {
	return att.ContainerID + "/" + att.Network + "/" + ifName
}

// ---------------------------------------------------------------------------------------------------------

// TestDHCPLeaseInStagingNetNS (fact a): ADD through the Runner leases an address from the LAN's server, and
// the daemon renews it at T1 while the link stays in the staging netns. Teardown (CNI DEL) stops the lease.
// macvlan: IPAM DEL runs while the link still has the address, so the DHCPRELEASE goes out unicast from it
// and dnsmasq drops the lease. bridge: the veth (and its address) is gone before IPAM DEL, the daemon cannot
// bind <ip>:68, sends nothing, and the server keeps the lease until it expires.
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
			// Teardown releases the staging lease itself before the chain's DEL (releaseStagingLease), while
			// the link still carries the address: the bridge plugin alone deletes the link first and sends
			// nothing (p.releaseOnDEL false), which left the lease on the server.
			if l := e.daemon.LogLines(releaseFailRE); len(l) > 0 {
				t.Errorf("daemon: %q, want the release sent", l)
			}
			e.assertRelease(t, ip, releaseProcessed, clientIDOf(att, att.IfName))
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
			e.assertRelease(t, ip, releaseNotSent, "")
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
			if tc.afterStop {
				// The poke was never received: the goroutine that reads l.check has returned.
				if l := e.daemon.LogLines(checkingRE); len(l) > 0 {
					t.Errorf("daemon: %q, want no Checking lease (nobody reads the check channel)", l)
				}
				if err == nil || !strings.Contains(err.Error(), "signal: killed") {
					t.Errorf("err = %v, want libcni's kill at the deadline", err)
				}
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

// TestDHCPHandOverToContainerNetNS: what does keep a lease alive, and what its DEL then achieves. After the
// link left the staging netns, a DEL of the dhcp plugin alone makes the daemon forget its staging-side lease;
// its release cannot be sent (the leased address is no longer configured in the staging netns: bind fails)
// and the server keeps the lease. An ADD of the dhcp plugin alone with CNI_NETNS = the container's netns and
// CNI_IFNAME = the link's name there then acquires from the container's netns, and the daemon renews it from
// there. The server gives the same address only for the same client-id: the plugin derives it from the
// ifname unless the network provides option 61 itself. The final DEL with the container key releases the
// lease only when the link still carries that very address in the container's netns, and only when the
// release's client-id (always the plugin's own: lease.go release() sends withClientID, not the provided
// options) is the lease's.
func TestDHCPHandOverToContainerNetNS(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ctrIf    string // the link's name in the container
		clientID string // provided client-id, "" for the plugin's own
		sameIP   bool
		// delAfterLeave: the link has left the container's netns (moved back to the host netns, which
		// drops its addresses, as libnetwork does at Leave with the links it manages) before the DEL with
		// the container key: what cniplug's Teardown meets when the link or the container's netns is gone
		// before it runs releaseLease.
		delAfterLeave bool
		// netnsGone: the container's netns is unmounted (Docker removed the sandbox) before the DEL, with
		// the link still in it; the daemon's lease goroutine keeps that netns alive.
		netnsGone bool
		release   releaseOutcome // of the container-side lease at that DEL
	}{
		{"same ifname", "eth0", "", true, false, false, releaseProcessed},
		{"same ifname, DEL after the link left", "eth0", "", true, true, false, releaseNotSent},
		{"same ifname, DEL after the netns was removed", "eth0", "", true, false, true, releaseProcessed},
		{"other ifname", "eth1", "", false, false, false, releaseNotSent},
		{"other ifname, client-id provided", "eth1", "cniplug-test-client", true, false, false, releaseUnknown},
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

			// Forget the staging-side lease. Its release cannot be sent: the address left the staging netns
			// with the link.
			testutil.Must(t, cni.DelNetworkList(ctx, list, &libcni.RuntimeConf{ContainerID: att.ContainerID, NetNS: att.NetNS, IfName: att.IfName}))
			t.Logf("daemon: %q", e.waitDaemonLog(t, bindFailRE(ip), 5*time.Second))
			e.assertRelease(t, ip, releaseNotSent, "")

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
			if want := 1 + btoi(!tc.sameIP); len(e.lan.Leases(t)) != want {
				t.Errorf("dnsmasq holds %d leases, want %d", len(e.lan.Leases(t)), want)
			}
			waitPastT1(t)
			if n := len(e.wireFor("REQUEST", newIP)); n < 1 {
				t.Errorf("no renewing DHCPREQUEST from %s: want renewals from the container netns", newIP)
			}
			e.waitDaemonLog(t, renewedRE, time.Second)
			if l := e.daemon.LogLines(terminatedRE); len(l) > 0 {
				t.Errorf("daemon stopped maintaining: %q", l)
			}

			// DEL with the container key: while the link is still in the container, or after Leave.
			if tc.delAfterLeave {
				e.outOfContainer(t, att, ctr, tc.ctrIf)
			}
			if tc.netnsGone {
				testutil.Must(t, removeNetNS(ctr))
			}
			testutil.Must(t, cni.DelNetworkList(ctx, list, rt))
			e.waitDaemonLog(t, regexp.MustCompile(regexp.QuoteMeta(clientIDOf(att, tc.ctrIf))+`: releasing lease`), 5*time.Second)
			fails := e.daemon.LogLines(releaseFailRE)
			if tc.release == releaseNotSent {
				t.Logf("daemon: %q", e.waitDaemonLog(t, bindFailRE(newIP), 5*time.Second))
				if len(fails) != 2 {
					t.Errorf("daemon: %q, want the staging-side and the container-side release to fail", fails)
				}
			} else if len(fails) != 1 {
				t.Errorf("daemon: %q, want only the staging-side release to fail", fails)
			}
			e.assertRelease(t, newIP, tc.release, clientIDOf(att, tc.ctrIf))
			if tc.release == releaseUnknown {
				if l, ok := e.lan.LeaseFor(t, newIP); ok && l.ClientID != clientID {
					t.Errorf("lease client-id %q, want the provided %q", l.ClientID, clientID)
				}
			}
			if !tc.sameIP { // the staging lease was never released either
				if _, ok := e.lan.LeaseFor(t, ip); !ok {
					t.Errorf("dnsmasq dropped the staging lease of %s", ip)
				}
			}
			// With netnsGone the link goes away with the netns once the daemon's goroutine has left it.
			if !tc.netnsGone && !tc.delAfterLeave {
				e.outOfContainer(t, att, ctr, tc.ctrIf)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
