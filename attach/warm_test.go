package attach_test

import (
	"context"
	"testing"
	"time"

	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/dockerapi"
	"github.com/cniplug/cniplug/internal/testing/teststack"
	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/state"
)

// Reconciliation releases a warm pool no live Docker network can use (Docker removed its network while
// cniplug was down, so ReleasePool never came) and keeps one whose CNI network a live cniplug-IPAM network is
// on; a young pool (its network not created yet) is left alone.
func TestReconcileUnusedWarmPool(t *testing.T) {
	s, nw := teststack.NewBridge(t)
	ctx := context.Background()
	old := time.Now().UTC().Add(-time.Hour)
	pool := &state.Pool{ID: "cniplug-" + naming.RandomID()[:24], CNIName: nw.Name, Conflist: nw.Bytes, CIDR: "0.0.0.0/0", Warm: 2, Created: old}
	testutil.Must(t, s.Store.PutPool(pool))
	s.Manager.StartWarmPool(pool)
	s.WaitWarm(t, pool.ID, 2)
	live := &state.Network{ID: naming.RandomID(), CNIName: nw.Name, Mode: state.ModeCNIIPAM, Created: old}
	testutil.Must(t, s.Store.PutNetwork(live))

	for _, tc := range []struct {
		name    string
		live    dockerapi.Live
		minAge  time.Duration
		release bool
	}{
		{"a live cniplug-IPAM network on its CNI network", dockerapi.Live{live.ID: {}}, time.Minute, false},
		{"young: its network may not be created yet", dockerapi.Live{}, 2 * time.Hour, false},
		{"no live network", dockerapi.Live{}, time.Minute, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := s.Manager.Reconcile(ctx, attach.ReconcileOptions{Live: tc.live, MinAge: tc.minAge})
			testutil.Must(t, err)
			if released := len(rep.UnusedWarmPools) == 1; released != tc.release {
				t.Fatalf("released warm pools %v, want released=%v", rep.UnusedWarmPools, tc.release)
			}
			want := 2
			if tc.release {
				want = 0
			}
			if n, err := s.Store.WarmCount(pool.ID); err != nil || n != want {
				t.Errorf("%d warm attachments left (%v), want %d", n, err, want)
			}
		})
	}
	p, err := s.Store.Pool(pool.ID)
	testutil.Must(t, err)
	if p.Warm != 0 {
		t.Errorf("the released pool still asks for %d warm attachments", p.Warm)
	}
	testutil.Must(t, s.Store.DeletePool(pool.ID))
}
