package attach

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/dockerapi"
	"github.com/cniplug/cniplug/state"
)

// ReconcileOptions says what reconciliation may assume.
type ReconcileOptions struct {
	// Live is Docker's list of this driver's networks and live endpoints; nil when Docker could not be asked,
	// in which case only crash leftovers are cleaned.
	Live dockerapi.Live
	// MinAge protects in-flight work: younger attachments and networks are left alone.
	MinAge time.Duration
	// Startup: no request has been served yet, so "adding" records are crash leftovers whatever their age.
	Startup bool
	// DryRun reports what would be done without doing it.
	DryRun bool
	Now    time.Time
}

// Action is one attachment reconciliation removed (or would remove).
type Action struct {
	Attachment string `json:"attachment"`
	Network    string `json:"cniNetwork"`
	NetworkID  string `json:"networkID,omitempty"` // Docker network ID
	Endpoint   string `json:"endpoint,omitempty"`
	Address    string `json:"address,omitempty"`
	Reason     string `json:"reason"`
	Error      string `json:"error,omitempty"`
}

// Report is what a reconciliation found and did.
type Report struct {
	Leftovers         cnibridge.Leftovers `json:"leftovers"`
	Attachments       []Action            `json:"attachments"`
	ForgottenNetworks []string            `json:"forgottenNetworks"`
	DryRun            bool                `json:"dryRun"`
}

// staleReason says why an attachment should be torn down, or "" to keep it.
func staleReason(a *state.Attachment, o ReconcileOptions) string {
	if o.Now.Sub(a.Created) < o.MinAge && !(o.Startup && a.Phase == state.PhaseAdding) {
		return ""
	}
	switch a.Phase {
	case state.PhaseAdding:
		return "CNI ADD never completed (cniplug stopped during it)"
	case state.PhasePending:
		return "address allocated but never claimed by an endpoint"
	}
	if o.Live == nil {
		return ""
	}
	eps, ok := o.Live[a.NetworkID]
	if !ok {
		return "its Docker network no longer exists"
	}
	if !eps[a.EndpointID] {
		return "Docker has no live endpoint for it"
	}
	return ""
}

// NetworkIDs lists the Docker network IDs cniplug holds records for (networks and attachments): the
// networks to ask Docker about before a reconciliation.
func (m *Manager) NetworkIDs() ([]string, error) {
	nets, err := m.store.Networks()
	if err != nil {
		return nil, fmt.Errorf("reading networks: %w", err)
	}
	atts, err := m.store.Attachments()
	if err != nil {
		return nil, fmt.Errorf("reading attachments: %w", err)
	}
	seen := map[string]bool{}
	var ids []string
	add := func(id string) {
		if id != "" && !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for _, n := range nets {
		add(n.ID)
	}
	for _, a := range atts {
		add(a.NetworkID)
	}
	return ids, nil
}

// Reconcile removes what no live Docker object owns: leftover staging namespaces and parked links, attachments
// that never completed or that Docker forgot (killed plugin, dockerd restart, reboot), and records of
// networks Docker deleted while cniplug was away. Every removal goes through the one teardown path.
func (m *Manager) Reconcile(ctx context.Context, o ReconcileOptions) (Report, error) {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	rep := Report{DryRun: o.DryRun}
	candidates, err := m.cni.Candidates()
	if err != nil {
		return rep, fmt.Errorf("looking for leftover namespaces and links: %w", err)
	}
	atts, err := m.store.Attachments()
	if err != nil {
		return rep, fmt.Errorf("reading attachments: %w", err)
	}
	known := make([]*cnibridge.Attachment, 0, len(atts))
	for _, a := range atts {
		known = append(known, &a.Attachment)
	}
	rep.Leftovers = candidates.Without(known)
	var errs []error
	if !o.DryRun {
		if err := m.cni.RemoveLeftovers(rep.Leftovers); err != nil {
			errs = append(errs, err)
		}
	}
	for _, a := range atts {
		reason := staleReason(a, o)
		if reason == "" {
			continue
		}
		act := Action{Attachment: a.ID(), Network: a.Network, NetworkID: a.NetworkID, Endpoint: a.EndpointID, Address: a.Interface.IPv4, Reason: reason}
		if !o.DryRun {
			if err := m.Remove(ctx, a); err != nil {
				act.Error = err.Error()
				errs = append(errs, err)
			}
		}
		rep.Attachments = append(rep.Attachments, act)
	}
	if o.Live != nil {
		nets, err := m.store.Networks()
		if err != nil {
			errs = append(errs, err)
		}
		for _, n := range nets {
			if _, ok := o.Live[n.ID]; ok || o.Now.Sub(n.Created) < o.MinAge {
				continue
			}
			rep.ForgottenNetworks = append(rep.ForgottenNetworks, n.ID)
			if !o.DryRun {
				errs = append(errs, m.store.DeleteNetwork(n.ID))
			}
		}
	}
	return rep, errors.Join(errs...)
}
