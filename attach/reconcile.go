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
	// MinAge protects in-flight work: attachments changed more recently, and younger networks, are left alone.
	MinAge time.Duration
	// Startup: no request has been served yet, so "adding" records are crash leftovers whatever their age.
	Startup bool
	// DryRun reports what would be done without doing it.
	DryRun bool
	// Now is when Live was taken: set it before asking Docker, so that what changed after Docker answered
	// counts as young. Zero means the time Reconcile starts.
	Now time.Time
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
	// UnusedWarmPools are the pools whose warm attachments were released because no live Docker network
	// uses their CNI network with cniplug's IPAM (Docker removed it while cniplug was down, so no
	// ReleasePool came).
	UnusedWarmPools []string `json:"unusedWarmPools,omitempty"`
	// GC is what CNI GC did on each CNI network (spec 1.1) cniplug has attachments on.
	GC     []GCResult `json:"gc,omitempty"`
	DryRun bool       `json:"dryRun"`
}

// staleReason says why an attachment should be torn down, or "" to keep it. stagingLost: its staging netns
// is gone; poolReleased: no pool of that ID is recorded.
func staleReason(a *state.Attachment, o ReconcileOptions, stagingLost, poolReleased bool) string {
	if a.Phase == state.PhaseDeleting && a.TeardownReason != "" {
		return a.TeardownReason
	}
	if a.Phase == state.PhaseDeleting {
		// Removal is idempotent and serialized per attachment: finishing one a worker is running is harmless.
		return "Docker deleted its endpoint; the background removal has not finished"
	}
	// An attachment whose ADD waits for Join (AddAtJoin) has no netns yet.
	if o.Startup && stagingLost && a.Phase != state.PhaseAdding && !a.AddAtJoin {
		// The staging netns lives as long as the attachment, pinned in /run: only a reboot (or a /run wiped
		// like one) loses it, and every container went with it. Docker does not tell: a swarm network is not
		// restored after a reboot, so no DeleteEndpoint ever comes for its tasks' endpoints.
		return "its staging network namespace is gone: the host rebooted, and the container with it"
	}
	if a.Phase == state.PhaseWarm {
		// No Docker object owns a warm attachment: only its pool does, whatever its age.
		if poolReleased {
			return "warm attachment of a pool Docker released"
		}
		return ""
	}
	if o.Now.Sub(a.LastChanged()) < o.MinAge && !(o.Startup && a.Phase == state.PhaseAdding) {
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
	cached, err := m.cni.CachedAttachments()
	if err != nil {
		return rep, err
	}
	atts, err := m.store.Attachments()
	if err != nil {
		return rep, fmt.Errorf("reading attachments: %w", err)
	}
	rep.Leftovers = candidates.Without(cniAttachments(atts))
	var errs []error
	if o.Startup && !o.DryRun {
		// Before any removal: teardown takes members out of the rule sets that this loads.
		errs = append(errs, m.loadRecordedNetworkRules(ctx, atts))
	}
	if !o.DryRun {
		errs = append(errs, m.cni.RemoveLeftovers(rep.Leftovers))
	}
	poolIDs, err := m.recordedPoolIDs()
	if err != nil {
		return rep, err
	}
	stale, err := m.removeStaleAttachments(ctx, o, atts, poolIDs)
	rep.Attachments = append(rep.Attachments, stale...)
	errs = append(errs, err)
	orphans, err := m.removeCacheOrphans(ctx, o, atts, cached)
	rep.Attachments = append(rep.Attachments, orphans...)
	errs = append(errs, err)
	if !o.DryRun {
		if m.cniGC {
			gc, err := m.collectGarbage(ctx)
			rep.GC = gc
			errs = append(errs, err)
		}
		errs = append(errs, m.takeUpLeases(ctx))
		errs = append(errs, m.repairNetworkRules(ctx))
	}
	if o.Live != nil {
		rep.ForgottenNetworks, rep.UnusedWarmPools, err = m.reconcileNetworks(ctx, o)
		errs = append(errs, err)
	}
	return rep, errors.Join(errs...)
}

// cniAttachments is the CNI side of the recorded attachments.
func cniAttachments(atts []*state.Attachment) []*cnibridge.Attachment {
	out := make([]*cnibridge.Attachment, 0, len(atts))
	for _, a := range atts {
		out = append(out, &a.Attachment)
	}
	return out
}

// recordedPoolIDs is the set of the pools cniplug's IPAM has on record.
func (m *Manager) recordedPoolIDs() (map[string]bool, error) {
	pools, err := m.store.Pools()
	if err != nil {
		return nil, fmt.Errorf("reading pools: %w", err)
	}
	ids := make(map[string]bool, len(pools))
	for _, p := range pools {
		ids[p.ID] = true
	}
	return ids, nil
}

// removeStaleAttachments tears down the recorded attachments staleReason gives a reason for.
func (m *Manager) removeStaleAttachments(ctx context.Context, o ReconcileOptions, atts []*state.Attachment, poolIDs map[string]bool) ([]Action, error) {
	judge := func(a *state.Attachment) string {
		return staleReason(a, o, m.cni.StagingLost(&a.Attachment), !poolIDs[a.PoolID])
	}
	var acts []Action
	var errs []error
	for _, a := range atts {
		reason := judge(a)
		if reason == "" {
			continue
		}
		var err error
		if !o.DryRun {
			if a, reason, err = m.removeIfStale(ctx, a, judge); reason == "" {
				continue
			}
		}
		act := Action{Attachment: a.ID(), Network: a.Network, NetworkID: a.NetworkID, Endpoint: a.EndpointID, Address: a.Interface.IPv4, Reason: reason}
		if err != nil {
			act.Error = err.Error()
			errs = append(errs, err)
		}
		acts = append(acts, act)
	}
	return acts, errors.Join(errs...)
}

// removeIfStale judges the attachment again under its locks, from the record as it is now, and removes it
// if it is still stale: an operation on it may have been running when the snapshot was read (an ADD that
// outlasts the minimum age holds the lock) or have finished since, and what it wrote decides. It returns
// the record judged and the reason, "" when the attachment is gone or no longer stale.
func (m *Manager) removeIfStale(ctx context.Context, a *state.Attachment, judge func(*state.Attachment) string) (*state.Attachment, string, error) {
	runlock := m.nets.rlock(a.Network)
	defer runlock()
	unlock := m.locks.lock(a.ID())
	defer unlock()
	now, err := m.store.Attachment(a.ID())
	if errors.Is(err, state.ErrNotFound) {
		return a, "", nil
	}
	if err != nil {
		return a, judge(a), fmt.Errorf("reading attachment %s again: %w", a.ID(), err)
	}
	reason := judge(now)
	if reason == "" {
		return now, "", nil
	}
	return now, reason, m.removeLocked(ctx, now)
}

// removeCacheOrphans tears down the attachments of this instance that libcni's cache holds but no record
// accounts for.
func (m *Manager) removeCacheOrphans(ctx context.Context, o ReconcileOptions, atts []*state.Attachment, cached []cnibridge.CachedAttachment) ([]Action, error) {
	recorded := make(map[string]bool, len(atts))
	for _, a := range atts {
		recorded[a.Network+"/"+a.ContainerID] = true
	}
	var acts []Action
	var errs []error
	for _, c := range cached {
		if !c.Own || recorded[c.Network+"/"+c.ContainerID] {
			continue
		}
		act := Action{Attachment: c.ContainerID, Network: c.Network, Address: c.Interface.IPv4,
			Reason: "libcni cache entry of this cniplug that no record accounts for (state lost, or a failed rollback)"}
		if !o.DryRun {
			if err := m.removeOrphan(ctx, &c.Attachment); err != nil {
				act.Error = err.Error()
				errs = append(errs, err)
			}
		}
		acts = append(acts, act)
	}
	return acts, errors.Join(errs...)
}

// reconcileNetworks forgets the networks Docker no longer has and releases the warm pools none of the live
// ones uses. It needs o.Live.
func (m *Manager) reconcileNetworks(ctx context.Context, o ReconcileOptions) (forgotten, unusedPools []string, err error) {
	nets, err := m.store.Networks()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range nets {
		if _, ok := o.Live[n.ID]; ok || o.Now.Sub(n.Created) < o.MinAge {
			continue
		}
		forgotten = append(forgotten, n.ID)
		if !o.DryRun {
			errs = append(errs, m.RemoveNetwork(ctx, n.ID))
		}
	}
	if err == nil { // without the networks every warm pool would look unused
		unused, uerr := m.releaseUnusedWarmPools(ctx, o, nets)
		unusedPools = unused
		errs = append(errs, uerr)
	}
	return forgotten, unusedPools, errors.Join(errs...)
}

// removeOrphan tears down an attachment of this instance that only libcni's cache still knows, through the
// same Teardown as every other removal (with the cached conflist, args and addresses).
func (m *Manager) removeOrphan(ctx context.Context, a *cnibridge.Attachment) error {
	runlock := m.nets.rlock(a.Network)
	defer runlock()
	unlock := m.locks.lock(a.ContainerID)
	defer unlock()
	if _, err := m.store.Attachment(a.ContainerID); err == nil || !m.cni.Cached(a) {
		return nil // recorded or DELeted since it was listed
	}
	if err := m.cni.Teardown(ctx, a); err != nil {
		return fmt.Errorf("attachment %s on CNI network %q (known only to libcni's cache): %w", a.ContainerID, a.Network, err)
	}
	m.log.Info("attachment removed", "attachment", a.ContainerID, "cni_network", a.Network, "address", a.Interface.IPv4,
		"reason", "known only to libcni's cache")
	return nil
}

// takeUpLeases gives a dhcp daemon that is not running (it died, or was killed with cniplug's systemd unit)
// the leases of the running containers again: the daemon keeps them only in memory, so a new one would renew
// none. It starts the daemon and has it acquire each joined attachment's lease from the container's netns,
// with the same client ID, so the server confirms the address the container has.
func (m *Manager) takeUpLeases(ctx context.Context) error {
	if m.leaseDaemon == nil || m.leaseDaemon.Answering() {
		return nil
	}
	atts, err := m.store.Attachments()
	if err != nil {
		return fmt.Errorf("reading attachments: %w", err)
	}
	var errs []error
	for _, a := range atts {
		if !a.LeaseInSandbox || a.Phase != state.PhaseJoined || !cnibridge.SandboxReady(a.Sandbox) {
			continue
		}
		nw, err := cnibridge.ParseNetwork(a.Conflist)
		if err != nil || !nw.UsesDefaultDHCPDaemon() {
			continue
		}
		if err := m.ensureLeaseDaemon(ctx, nw); err != nil {
			return err
		}
		unlock := m.locks.lock(a.ID())
		err = m.cni.TakeUpLease(ctx, &a.Attachment)
		unlock()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.log.Info("DHCP lease taken up again by a new dhcp daemon", "attachment", a.ID(), "cni_network", a.Network,
			"endpoint", a.EndpointID, "address", a.Interface.IPv4)
	}
	return errors.Join(errs...)
}
