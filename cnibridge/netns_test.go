package cnibridge

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// TestCreateNetNSRestoresThreads: createNetNS leaves no thread in a staging netns, in particular not the main
// thread (which the runtime never discards: a goroutine that exits locked on it wedges it for good, and
// /proc/self/ns/net then names a staging netns that outlives its removal, with any link still in it).
func TestCreateNetNSRestoresThreads(t *testing.T) {
	testutil.RequireRoot(t)
	host, err := netns.Get()
	testutil.Must(t, err)
	defer host.Close()
	dir := t.TempDir()
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			p := filepath.Join(dir, fmt.Sprint(i))
			if err := createNetNS(p); err != nil {
				t.Error(err)
				return
			}
			if !isNetNS(p) {
				t.Errorf("%s is not a netns", p)
			}
			if err := removeNetNS(p); err != nil {
				t.Error(err)
			}
			if exists(p) || isNetNS(p) {
				t.Errorf("%s still there after removeNetNS", p)
			}
		})
	}
	wg.Wait()
	main, err := netns.GetFromPath("/proc/self/ns/net")
	testutil.Must(t, err)
	defer main.Close()
	if !main.Equal(host) {
		t.Errorf("the main thread is in netns %s, not the host's %s", main.UniqueId(), host.UniqueId())
	}
	entries, err := os.ReadDir("/proc/self/task")
	testutil.Must(t, err)
	for _, e := range entries {
		ns, err := netns.GetFromPath("/proc/self/task/" + e.Name() + "/ns/net")
		if err != nil {
			continue // the thread exited
		}
		if !ns.Equal(host) {
			t.Errorf("thread %s is in netns %s, not the host's", e.Name(), ns.UniqueId())
		}
		ns.Close()
	}
}
