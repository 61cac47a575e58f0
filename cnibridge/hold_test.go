package cnibridge

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// TestHoldAtLeave: a link handed over to Docker stays in the container's netns at Leave when it is the
// container's only link, hidden from libnetwork (which then finds nothing to move back), and teardown runs
// the DEL there, also after Docker destroyed the container's netns (the pin keeps it). With another network's
// link in the container it is left to Docker. Should another network's link take CNI_IFNAME in the container
// before the DEL, teardown takes the held link out to staging instead and leaves that link alone. Nothing is
// left in any case.
func TestHoldAtLeave(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CNIBinDir(t)
	cases := []struct {
		name      string
		otherLink string // another network's link in the container at Leave
		wantHeld  bool
		gone      bool   // Docker destroys the container's netns before teardown (a container's stop)
		takenLate string // another network's link takes this name in the container after Leave
	}{
		{name: "only link", wantHeld: true},
		{name: "only link, container gone", wantHeld: true, gone: true},
		{name: "another network's link", otherLink: "eth1"},
		{name: "name taken before DEL", wantHeld: true, takenLate: "eth0"},
	}
	for _, kind := range netKinds {
		for _, tc := range cases {
			t.Run(kind.name+"/"+tc.name, func(t *testing.T) {
				startLeakCheck(t)
				a := attach(t, kind, nil)
				a.moveToHost(t)
				ctrNS := filepath.Join(t.TempDir(), "container")
				testutil.Must(t, createNetNS(ctrNS))
				t.Cleanup(func() { _ = removeNetNS(ctrNS) })
				if tc.otherLink != "" {
					addBridge(t, ctrNS, tc.otherLink)
				}
				a.dockerJoin(t, ctrNS, "eth0")
				a.att.ContainerNetNS = ctrNS

				records := 0
				held, err := a.r.HoldAtLeave(a.att, func() error {
					if !a.att.HeldInSandbox {
						t.Error("recorded without HeldInSandbox")
					}
					records++
					return nil
				})
				testutil.Must(t, err)
				if held != tc.wantHeld || a.att.HeldInSandbox != tc.wantHeld || records != map[bool]int{true: 1}[tc.wantHeld] {
					t.Fatalf("held %v (recorded %d times, HeldInSandbox %v), want %v", held, records, a.att.HeldInSandbox, tc.wantHeld)
				}
				if again, err := a.r.HoldAtLeave(a.att, func() error { records++; return nil }); err != nil || again {
					t.Errorf("a second Leave held again: %v, %v", again, err)
				}
				if found := a.dockerLeave(t, ctrNS, "eth0"); found == held {
					t.Fatalf("libnetwork finds the link at Leave: %v, want %v", found, !held)
				}
				if held && sameNetNS(ctrNS, a.att.NetNS) == false {
					t.Fatal("the container's netns is not pinned at the staging path")
				}
				if tc.gone {
					testutil.Must(t, removeNetNS(ctrNS))
				}
				if tc.takenLate != "" {
					addBridge(t, ctrNS, tc.takenLate)
				}
				testutil.Must(t, a.r.Teardown(context.Background(), a.att))
				a.checkGone(t)
				if tc.gone {
					return
				}
				inNetNS(t, ctrNS, func(h *netlink.Handle) {
					links, err := h.LinkList()
					testutil.Must(t, err)
					var names []string
					for _, l := range links {
						if n := l.Attrs().Name; n != "lo" && n != tc.otherLink && n != tc.takenLate {
							names = append(names, n)
						}
					}
					if len(names) > 0 {
						t.Errorf("left in the container's netns: %v", names)
					}
					for _, other := range []string{tc.otherLink, tc.takenLate} {
						if _, err := h.LinkByName(other); other != "" && err != nil {
							t.Errorf("teardown removed the other network's %s: %v", other, err)
						}
					}
				})
			})
		}
	}
}

// addBridge gives the container's netns a link of another network, named name.
func addBridge(t *testing.T, ctrNS, name string) {
	t.Helper()
	inNetNS(t, ctrNS, func(h *netlink.Handle) {
		testutil.Must(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}))
	})
}
