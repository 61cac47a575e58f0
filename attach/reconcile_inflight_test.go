package attach_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/dockerapi"
	"github.com/cniplug/cniplug/internal/testing/teststack"
	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/state"
)

// slowAdder is a CNI plugin whose ADD takes 2 s and answers an empty result (the bridge after it makes the
// link): an ADD that outlasts a short reconciliation minimum age.
const slowAdder = `#!/bin/sh
case "$CNI_COMMAND" in
ADD) cat >/dev/null; sleep 2; echo '{"cniVersion":"1.1.0"}';;
VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}';;
esac
exit 0
`

// TestReconcileSparesWorkInFlight: a periodic reconciliation never removes an attachment an operation is
// working on or has just written, whatever the minimum age: an ADD that outlasts it holds the attachment's
// lock, and an endpoint answered after Docker was asked is missing from Docker's answer only because Docker
// had not recorded it yet. Once it is really stale, the same reconciliation removes it.
func TestReconcileSparesWorkInFlight(t *testing.T) {
	const minAge, askedAt = 300 * time.Millisecond, 800 * time.Millisecond // Docker is asked mid-ADD
	for _, tc := range []struct {
		name string
		live dockerapi.Live // Docker's answer, taken while the ADD runs
		// addEndsFirst: the ADD finishes between Docker's answer and reconciliation; otherwise reconciliation
		// runs while it is in flight.
		addEndsFirst bool
	}{
		// The endpoint is live: only the ADD's own record (adding, older than minAge) could look stale.
		{"an ADD longer than the minimum age", dockerapi.Live{"net1": {"ep1": true}}, false},
		// Docker was asked while the ADD ran, so its answer cannot hold the endpoint yet.
		{"an endpoint answered after Docker was asked", dockerapi.Live{"net1": {}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, nw := scriptedChainStack(t, "slow-adder", slowAdder, teststack.Options{})
			ctx := context.Background()
			id := naming.RandomID()
			added := make(chan error, 1)
			start := time.Now()
			go func() {
				_, err := s.Manager.Add(ctx, cnibridge.AddRequest{ContainerID: id, Network: nw},
					state.Attachment{Phase: state.PhaseEndpoint, NetworkID: "net1", EndpointID: "ep1"})
				added <- err
			}()
			time.Sleep(time.Until(start.Add(askedAt)))
			asked := time.Now()
			if rec, err := s.Store.Attachment(id); err != nil || rec.Phase != state.PhaseAdding {
				t.Fatalf("the ADD should be in flight when Docker is asked: record %+v, %v", rec, err)
			}
			if tc.addEndsFirst {
				waitAdded(t, added)
			}
			rep, err := s.Manager.Reconcile(ctx, attach.ReconcileOptions{Live: tc.live, MinAge: minAge, Now: asked})
			testutil.Must(t, err)
			if len(rep.Attachments) != 0 {
				t.Errorf("reconciliation removed %+v", rep.Attachments)
			}
			if !tc.addEndsFirst {
				waitAdded(t, added)
			}
			rec, err := s.Store.Attachment(id)
			if err != nil || rec.Phase != state.PhaseEndpoint {
				t.Fatalf("after the ADD and reconciliation: record %+v, %v; want it kept as an endpoint", rec, err)
			}
			if _, err := os.Stat(rec.NetNS); err != nil {
				t.Errorf("its staging netns: %v", err)
			}

			// Really stale once the minimum age has passed since its last change, with no live endpoint.
			time.Sleep(minAge)
			rep, err = s.Manager.Reconcile(ctx, attach.ReconcileOptions{Live: dockerapi.Live{"net1": {}}, MinAge: minAge})
			testutil.Must(t, err)
			if len(rep.Attachments) != 1 || rep.Attachments[0].Attachment != id {
				t.Errorf("a stale attachment: reconciliation removed %+v, want %s", rep.Attachments, id)
			}
			if _, err := s.Store.Attachment(id); !errors.Is(err, state.ErrNotFound) {
				t.Errorf("the stale attachment's record: %v, want it gone", err)
			}
		})
	}
}

// waitAdded fails the test if the ADD fails or does not end within its time.
func waitAdded(t *testing.T, added <-chan error) {
	t.Helper()
	select {
	case err := <-added:
		testutil.Must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the ADD did not end")
	}
}
