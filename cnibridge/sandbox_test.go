package cnibridge

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// sandboxState is a state of the container's netns a sandbox test runs in.
type sandboxState struct {
	name     string
	taken    bool   // the container has an eth0 already (another network)
	gone     bool   // the container's netns is destroyed before teardown (container killed)
	wantName string // the attachment's link there
	mac      string // the MAC Docker chose, "" = CNI's
}

var sandboxStates = []sandboxState{
	{"eth0 free", false, false, "eth0", ""},
	{"eth0 taken", true, false, "eth1", "02:42:c0:ff:ee:07"},
	{"netns gone before teardown", false, true, "eth0", ""},
}

// eachSandboxCase runs fn for every main plugin in every state of the container's netns, each as a subtest
// with a leak check and its container's netns made.
func eachSandboxCase(t *testing.T, fn func(t *testing.T, kind netKind, tc sandboxState, sandbox string)) {
	for _, kind := range netKinds {
		for _, tc := range sandboxStates {
			t.Run(kind.name+"/"+tc.name, func(t *testing.T) {
				startLeakCheck(t)
				fn(t, kind, tc, containerNetNS(t, tc.taken))
			})
		}
	}
}

// containerNetNS is a container's netns for the sandbox tests, removed when the test ends; taken gives it an
// eth0 of another network.
func containerNetNS(t *testing.T, taken bool) string {
	t.Helper()
	sandbox := filepath.Join(t.TempDir(), "sandbox")
	testutil.Must(t, createNetNS(sandbox))
	t.Cleanup(func() { _ = removeNetNS(sandbox) })
	if taken {
		inNetNS(t, sandbox, func(h *netlink.Handle) {
			testutil.Must(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}))
		})
	}
	return sandbox
}

// TestJoinSandbox: the link goes from the staging netns straight into the container's netns, named after the
// links already there, with its addresses, connected routes and up state, so that Docker's gateway and
// next-hop routes can be added on top; a repeated Join changes nothing. Under its ADD-time name the link is
// then deleted in place: the staging path pins the container's netns, which outlives the container for the
// DEL. Under another name teardown takes it back (or, when the container's netns is already gone, cleans up
// without it). Nothing is left either way.
func TestJoinSandbox(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CNIBinDir(t)
	eachSandboxCase(t, func(t *testing.T, kind netKind, tc sandboxState, sandbox string) {
		a := attach(t, kind, nil)
		if !SandboxReady(sandbox) || SandboxReady(sandbox+"-not-yet") {
			t.Fatal("SandboxReady does not tell an existing netns from a missing one")
		}

		testutil.Must(t, a.r.SetSandbox(a.att, sandbox))
		if a.att.SandboxIfName != tc.wantName {
			t.Fatalf("planned name %s, want %s", a.att.SandboxIfName, tc.wantName)
		}
		testutil.Must(t, a.r.JoinSandbox(a.att, tc.mac))
		testutil.Must(t, a.r.JoinSandbox(a.att, tc.mac)) // repeated Join
		testutil.Must(t, a.r.PinSandbox(a.att))
		testutil.Must(t, a.r.PinSandbox(a.att)) // repeated Join
		// Only a link under its ADD-time name can be deleted in place: DEL names it by CNI_IFNAME.
		pinned := tc.wantName == a.att.IfName
		if sameNetNS(a.att.NetNS, sandbox) != pinned {
			t.Fatalf("staging path names the container's netns: %v, want %v", !pinned, pinned)
		}
		wantMAC := a.att.Interface.MAC
		if tc.mac != "" {
			wantMAC = tc.mac
		}
		inNetNS(t, sandbox, func(h *netlink.Handle) {
			l, err := h.LinkByName(tc.wantName)
			if err != nil {
				t.Fatalf("no %s in the container's netns: %v", tc.wantName, err)
			}
			if l.Attrs().HardwareAddr.String() != wantMAC || l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("%s: MAC %s up %v, want MAC %s and up", tc.wantName, l.Attrs().HardwareAddr, l.Attrs().Flags&net.FlagUp != 0, wantMAC)
			}
			addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
			testutil.Must(t, err)
			have := map[string]bool{}
			for _, ad := range addrs {
				have[ad.IPNet.String()] = true
			}
			for _, want := range a.att.Interface.Addresses() {
				if !have[want] {
					t.Errorf("%s lacks address %s (has %v)", tc.wantName, want, have)
				}
			}
			// What libnetwork adds on top: the gateway, found by route lookup, and next-hop routes.
			for _, gw := range []string{a.att.Interface.Gateway, a.att.Interface.GatewayIPv6} {
				if gw == "" {
					continue
				}
				if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
					t.Errorf("default route via %s cannot be added: %v", gw, err)
				}
			}
		})
		if _, err := netlink.LinkByName(a.att.HostIfName); err == nil {
			t.Errorf("link %s went through the host netns", a.att.HostIfName)
		}

		if tc.gone {
			testutil.Must(t, removeNetNS(sandbox))
			if pinned {
				// The pin keeps the container's netns, and the link with its addresses, for the DEL.
				inNetNS(t, a.att.NetNS, func(h *netlink.Handle) {
					l, err := h.LinkByName(a.att.IfName)
					if err != nil {
						t.Fatalf("the link went with the container's netns although it is pinned: %v", err)
					}
					addrs, err := h.AddrList(l, netlink.FAMILY_V4)
					testutil.Must(t, err)
					if len(addrs) == 0 {
						t.Errorf("the pinned link lost its addresses")
					}
				})
			}
		}
		testutil.Must(t, a.r.Teardown(context.Background(), a.att))
		a.checkGone(t)
		if !tc.gone {
			inNetNS(t, sandbox, func(h *netlink.Handle) {
				if _, err := h.LinkByName(tc.wantName); err == nil && !tc.taken {
					t.Errorf("%s still in the container's netns after teardown", tc.wantName)
				}
			})
		}
	})
}

// TestAddInSandbox: an attachment whose address Docker chose is added at Join straight into the container's
// netns, under the name planned there (eth1 when the container has an eth0), with no staging netns and no
// move; the MAC CreateEndpoint answered is set when the chain gave another. Its DEL runs there too, also
// after the container's netns is gone from Docker (the pin keeps it), and nothing is left.
func TestAddInSandbox(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CNIBinDir(t)
	eachSandboxCase(t, func(t *testing.T, kind netKind, tc sandboxState, sandbox string) {
		if SandboxEmpty(sandbox) == tc.taken {
			t.Fatalf("SandboxEmpty: %v for a netns with an eth0: %v", !tc.taken, tc.taken)
		}
		wantName := tc.wantName
		a := attachWith(t, kind, "1.0.0", nil, func(r *Runner, att *Attachment) error {
			if err := r.SetSandbox(att, sandbox); err != nil {
				return err
			}
			return r.AddInSandbox(context.Background(), att)
		})
		if a.att.IfName != wantName || !sameNetNS(a.att.NetNS, sandbox) {
			t.Fatalf("added as %s in %s, want %s in the container's netns", a.att.IfName, a.att.NetNS, wantName)
		}
		a.checkInterface(t, kind)
		testutil.Must(t, a.r.ClearNextHopRoutes(a.att))
		const mac = "02:42:c0:ff:ee:09"
		testutil.Must(t, a.r.SetMAC(a.att, mac))
		testutil.Must(t, a.r.JoinSandbox(a.att, mac)) // Join: nothing left to move
		inNetNS(t, sandbox, func(h *netlink.Handle) {
			l, err := h.LinkByName(wantName)
			if err != nil {
				t.Fatalf("no %s in the container's netns: %v", wantName, err)
			}
			if l.Attrs().HardwareAddr.String() != mac || a.att.Interface.MAC != mac {
				t.Errorf("MAC %s (recorded %s), want %s", l.Attrs().HardwareAddr, a.att.Interface.MAC, mac)
			}
			// What libnetwork adds from Join's answer must not be there yet (it fails on EEXIST).
			for _, gw := range []string{a.att.Interface.Gateway, a.att.Interface.GatewayIPv6} {
				if gw == "" {
					continue
				}
				if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
					t.Errorf("default route via %s cannot be added: %v", gw, err)
				}
			}
		})
		if SandboxEmpty(sandbox) {
			t.Errorf("SandboxEmpty: true for a netns with %s", wantName)
		}
		if tc.gone {
			testutil.Must(t, removeNetNS(sandbox))
		}
		testutil.Must(t, a.r.Teardown(context.Background(), a.att))
		a.checkGone(t)
		if !tc.gone {
			inNetNS(t, sandbox, func(h *netlink.Handle) {
				if _, err := h.LinkByName(wantName); err == nil {
					t.Errorf("%s still in the container's netns after teardown", wantName)
				}
				if tc.taken {
					if _, err := h.LinkByName("eth0"); err != nil {
						t.Errorf("teardown removed the other network's eth0: %v", err)
					}
				}
			})
		}
	})
}
