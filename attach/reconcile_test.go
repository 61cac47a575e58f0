package attach

import (
	"testing"
	"time"

	"github.com/cniplug/cniplug/dockerapi"
	"github.com/cniplug/cniplug/state"
)

func TestStaleReason(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	old, young := now.Add(-time.Hour), now.Add(-time.Second)
	live := dockerapi.Live{"net1": {"ep-live": true}}
	att := func(phase state.Phase, created time.Time, netID, epID string) *state.Attachment {
		return &state.Attachment{Phase: phase, Created: created, NetworkID: netID, EndpointID: epID}
	}
	addAtJoin := func(a *state.Attachment) *state.Attachment { a.AddAtJoin = true; return a }
	changed := func(a *state.Attachment, at time.Time) *state.Attachment { a.Updated = at; return a }
	cases := []struct {
		name    string
		a       *state.Attachment
		live    dockerapi.Live
		startup bool
		stale   bool
		lost    bool // its staging netns is gone
		// released: its pool is no longer recorded
		released bool
	}{
		{"young adding during operation is in flight", att(state.PhaseAdding, young, "", ""), nil, false, false, false, false},
		{"adding at startup is a crash leftover", att(state.PhaseAdding, young, "", ""), nil, true, true, false, false},
		{"old adding", att(state.PhaseAdding, old, "", ""), nil, false, true, false, false},
		{"old unclaimed address", att(state.PhasePending, old, "", ""), nil, false, true, false, false},
		{"young unclaimed address", att(state.PhasePending, young, "", ""), nil, true, false, false, false},
		{"joined, Docker unknown: keep", att(state.PhaseJoined, old, "net1", "ep-gone"), nil, false, false, false, false},
		{"joined and live", att(state.PhaseJoined, old, "net1", "ep-live"), live, false, false, false, false},
		{"joined, endpoint gone", att(state.PhaseJoined, old, "net1", "ep-gone"), live, false, true, false, false},
		{"endpoint, network gone", att(state.PhaseEndpoint, old, "net2", "ep"), live, false, true, false, false},
		{"old endpoint changed recently: not yet visible in Docker", changed(att(state.PhaseEndpoint, old, "net1", "ep-new"), young), live, false, false, false, false},
		{"old endpoint changed after Docker was asked", changed(att(state.PhaseEndpoint, old, "net1", "ep-new"), now.Add(time.Second)), live, false, false, false, false},
		{"old adding changed long ago", changed(att(state.PhaseAdding, old, "", ""), old.Add(time.Minute)), nil, false, true, false, false},
		{"young endpoint not yet visible in Docker", att(state.PhaseEndpoint, young, "net1", "ep-new"), live, false, false, false, false},
		{"young deleting: Docker deleted the endpoint", att(state.PhaseDeleting, young, "net1", "ep-live"), live, false, true, false, false},
		{"deleting, Docker unknown", att(state.PhaseDeleting, old, "net1", "ep-live"), nil, false, true, false, false},
		{"startup after a reboot: young joined, Docker unknown", att(state.PhaseJoined, young, "net1", "ep-live"), nil, true, true, true, false},
		{"startup after a reboot: unclaimed address", att(state.PhasePending, young, "", ""), nil, true, true, true, false},
		{"staging lost during operation: left to Docker's word", att(state.PhaseJoined, old, "net1", "ep-live"), live, false, false, true, false},
		{"startup, staging there, Docker unknown", att(state.PhaseJoined, young, "net1", "ep-live"), nil, true, false, false, false},
		{"startup, ADD waiting for Join: no netns yet", addAtJoin(att(state.PhaseEndpoint, young, "net1", "ep-live")), nil, true, false, true, false},
		{"old warm attachment of a recorded pool: kept", att(state.PhaseWarm, old, "", ""), live, false, false, false, false},
		{"warm attachment of a released pool", att(state.PhaseWarm, young, "", ""), live, false, true, false, true},
		{"startup after a reboot: warm attachment", att(state.PhaseWarm, young, "", ""), nil, true, true, true, false},
		{"startup, warm attachment there: kept", att(state.PhaseWarm, old, "", ""), nil, true, false, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := staleReason(tc.a, ReconcileOptions{Live: tc.live, Startup: tc.startup, MinAge: time.Minute, Now: now}, tc.lost, tc.released)
			if (got != "") != tc.stale {
				t.Errorf("staleReason = %q, want stale=%v", got, tc.stale)
			}
		})
	}
}
