package testutil

import (
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NewNS runs the rest of the calling test in a fresh network namespace, as CNI plugins' testutils.NewNS and
// moby's SetupTestOSContext do: the test's goroutine is locked to its thread and the thread moved into a new
// namespace with only lo (up), until the test ends. Links, routes and iptables rules the test makes, and those
// of the commands and CNI plugins it execs from that goroutine, stay out of the host's, and vanish with the
// namespace. Subtests run on goroutines of their own: each must call NewNS itself.
func NewNS(t testing.TB) netns.NsHandle {
	t.Helper()
	RequireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("reading the thread's netns: %v", err)
	}
	ns, err := netns.New() // unshares and switches this thread
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("creating a netns: %v", err)
	}
	t.Cleanup(func() {
		// Back to the original namespace before unlocking; should that fail, the thread stays locked and the
		// runtime discards it with the goroutine instead of running other goroutines in the wrong namespace.
		if err := netns.Set(orig); err != nil {
			t.Errorf("returning to the original netns: %v", err)
		} else {
			runtime.UnlockOSThread()
		}
		orig.Close()
		ns.Close()
	})
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("bringing lo up in the new netns: %v", err)
	}
	return ns
}

// InNetNS runs fn on a thread of its own in ns (the calling goroutine stays where it is).
func InNetNS(t testing.TB, ns netns.NsHandle, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Error(err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			t.Error(err)
			return
		}
		fn()
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	<-done
}
