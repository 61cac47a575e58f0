package cnibridge

import (
	"context"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// TestTeardownLinkGone: `docker rm -f` destroyed the container netns with the link in it, so the link no
// longer exists anywhere. DEL must still release the address and (bridge/ptp) the masquerade chain, which
// the reference plugins find only through the addresses of CNI_IFNAME: this exercises the stand-in link.
func TestTeardownLinkGone(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CNIBinDir(t)
	for _, kind := range netKinds {
		t.Run(kind.name, func(t *testing.T) {
			startLeakCheck(t)
			a := attach(t, kind, nil)
			a.checkAttachedState(t, kind)
			a.moveToHost(t)
			testutil.Run(t, "ip", "link", "del", a.att.HostIfName)
			testutil.Must(t, a.r.Teardown(context.Background(), a.att))
			a.checkGone(t)
		})
	}
}

// TestTeardownNetNSGone: the staging netns was unpinned (reboot, or an operator cleaning /run), with the link
// still inside it (so it died with it) or already moved to the host. Teardown recreates what DEL needs and
// cleans up fully; a second Teardown succeeds and leaves nothing either.
func TestTeardownNetNSGone(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CNIBinDir(t)
	for _, kind := range netKinds {
		for _, moved := range []bool{false, true} {
			name := kind.name + "/link-in-netns"
			if moved {
				name = kind.name + "/link-in-host"
			}
			t.Run(name, func(t *testing.T) {
				startLeakCheck(t)
				a := attach(t, kind, nil)
				a.checkAttachedState(t, kind)
				if moved {
					a.moveToHost(t)
				}
				testutil.Must(t, removeNetNS(a.att.NetNS))
				if exists(a.att.NetNS) {
					t.Fatal("netns file still there")
				}
				testutil.Must(t, a.r.Teardown(context.Background(), a.att))
				a.checkGone(t)
				if err := a.r.Teardown(context.Background(), a.att); err != nil {
					t.Fatalf("second Teardown: %v", err)
				}
				a.checkGone(t)
			})
		}
	}
}

// TestTeardownTwice: Teardown after a successful Teardown is a harmless no-op.
func TestTeardownTwice(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CNIBinDir(t)
	for _, kind := range netKinds {
		t.Run(kind.name, func(t *testing.T) {
			startLeakCheck(t)
			a := attach(t, kind, nil)
			a.moveToHost(t)
			testutil.Must(t, a.r.Teardown(context.Background(), a.att))
			a.checkGone(t)
			testutil.Must(t, a.r.Teardown(context.Background(), a.att))
			a.checkGone(t)
		})
	}
}
