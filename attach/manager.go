// Package attach owns the attachment lifecycle: it records an attachment, applies its CNI ADD through
// cnibridge, and is the one teardown path (CNI DEL, then forget) for every caller.
package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/state"
)

// Manager creates, hands over and removes attachments. Operations on one attachment are serialized (libcni
// has no locking of its own); different attachments proceed in parallel.
type Manager struct {
	store *state.Store
	cni   *cnibridge.Runner
	log   *slog.Logger
	locks keyedRWMutex // per attachment ID, only ever held exclusively
	// endpoints is held by CreateEndpoint and DeleteEndpoint of one Docker endpoint for their whole run:
	// dockerd (or a client) may send the same request twice at once, and the second must wait for the first
	// and get its answer, never run a second ADD over the first one's record.
	endpoints keyedRWMutex
	// nets is held shared by every ADD and DEL on a CNI network and exclusively by its CNI GC, which must
	// see every attachment of the network (see collectGarbage).
	nets keyedRWMutex

	removals sync.WaitGroup // background removals (RemoveLater)
	warm     warmFillers    // the warm pools' fillers (warm.go)

	removalObserver  RemovalObserver
	warmFillObserver WarmFillObserver
	leaseDaemon      LeaseDaemon

	ports            portsState // host port publishing (ports.go)
	firewallInstance string
	cniGC            bool
	rules            rulesState // the networks' firewall rule sets (forward.go)
	iptables         string     // the commands that publish ports; "" looks them up in PATH
	ip6tables        string
}

// Config configures a Manager.
type Config struct {
	Store  *state.Store
	Runner *cnibridge.Runner
	Logger *slog.Logger
	// IPTables and IP6Tables are the commands that publish ports ("" looks them up in PATH), those of the
	// selected iptables backend (hostfw.Selection.IPTables).
	IPTables, IP6Tables string
	// CNIGC: reconciliation also runs CNI GC (spec 1.1) on the CNI networks cniplug has attachments on. Off by
	// default: libcni reads its cache again while it collects, and DELs (and the plugins release) whatever is
	// not in the valid list, so an attachment another runtime adds to the same network meanwhile would go.
	CNIGC bool
	// FirewallInstance tags this instance's top firewall chains (netrules.Instance), so that two cniplugs on one
	// host keep to their own.
	FirewallInstance string
	// RemovalObserver, when set, is told the duration of every background removal (metrics).
	RemovalObserver RemovalObserver
	// WarmFillObserver, when set, is told the duration of every ADD that refilled a warm pool (metrics).
	WarmFillObserver WarmFillObserver
	// LeaseDaemon, when set, is the dhcp daemon on its default socket, started before any CNI operation on a
	// chain that needs it (dhcpdaemon.Supervisor).
	LeaseDaemon LeaseDaemon
}

// LeaseDaemon keeps the dhcp IPAM plugin's daemon running.
type LeaseDaemon interface {
	Ensure(ctx context.Context) error
	Answering() bool
	Stop(ctx context.Context) error
}

// RemovalObserver is told about each removal that runs after Docker had its answer (RemoveLater).
type RemovalObserver interface {
	ObserveBackgroundRemoval(d time.Duration, err error)
}

// WarmFillObserver is told about each ADD that refilled a warm pool.
type WarmFillObserver interface {
	ObserveWarmFill(d time.Duration, err error)
}

// NewManager returns a Manager over the store and runner.
func NewManager(cfg Config) *Manager {
	return &Manager{store: cfg.Store, cni: cfg.Runner, log: cfg.Logger, iptables: cfg.IPTables, ip6tables: cfg.IP6Tables, firewallInstance: cfg.FirewallInstance, cniGC: cfg.CNIGC,
		removalObserver: cfg.RemovalObserver, warmFillObserver: cfg.WarmFillObserver, leaseDaemon: cfg.LeaseDaemon}
}

// Store returns the state store the manager records into.
func (m *Manager) Store() *state.Store { return m.store }

// Runner returns the CNI runner.
func (m *Manager) Runner() *cnibridge.Runner { return m.cni }

// Add plans the attachment, records it as adding, runs CNI ADD, and records the result with the phase and
// owners given in owner. On failure nothing is left behind: not the CNI side, not the record.
func (m *Manager) Add(ctx context.Context, req cnibridge.AddRequest, owner state.Attachment) (*state.Attachment, error) {
	planned, err := m.cni.NewAttachment(req)
	if err != nil {
		return nil, err
	}
	runlock := m.nets.rlock(planned.Network)
	defer runlock()
	unlock := m.locks.lock(planned.ContainerID)
	defer unlock()

	rec := owner
	rec.Attachment = *planned
	rec.Created = time.Now().UTC()
	final := rec.Phase
	rec.Phase = state.PhaseAdding
	if err := m.ensureLeaseDaemon(ctx, req.Network); err != nil {
		return nil, err
	}
	if err := m.store.PutAttachment(&rec); err != nil {
		return nil, fmt.Errorf("recording attachment: %w", err)
	}
	if err := m.cni.Add(ctx, &rec.Attachment); err != nil {
		if errors.Is(err, cnibridge.ErrRollback) {
			return nil, m.keepForTeardown(&rec, err)
		}
		if derr := m.store.DeleteAttachment(&rec); derr != nil {
			m.log.Error("forgetting failed attachment", "attachment", rec.ID(), "cni_network", rec.Network,
				"network", rec.NetworkID, "endpoint", rec.EndpointID, "error", derr)
		}
		return nil, err
	}
	rec.Phase = final
	if err := m.store.PutAttachment(&rec); err != nil {
		err = fmt.Errorf("recording attachment: %w", err)
		if terr := m.cni.Teardown(context.WithoutCancel(ctx), &rec.Attachment); terr != nil {
			return nil, errors.Join(err, terr)
		}
		return nil, err
	}
	m.log.Info("attachment added", "attachment", rec.ID(), "cni_network", rec.Network, "network", rec.NetworkID,
		"endpoint", rec.EndpointID, "pool", rec.PoolID, "address", rec.Interface.IPv4, "address_v6", rec.Interface.IPv6)
	return &rec, nil
}

// keepForTeardown records an attachment whose ADD and rollback both failed as being removed, instead of
// forgetting it: reconciliation (and `cniplug gc`) retries its teardown until it succeeds, and `cniplug ls`
// shows it meanwhile. It returns the error for Docker.
func (m *Manager) keepForTeardown(rec *state.Attachment, err error) error {
	rec.Phase = state.PhaseDeleting
	rec.TeardownReason = "its CNI ADD failed and so did the rollback DEL"
	if perr := m.store.PutAttachment(rec); perr != nil {
		m.log.Error("an attachment whose rollback failed could not be recorded for a later teardown", "attachment", rec.ID(),
			"cni_network", rec.Network, "error", perr)
		return err
	}
	m.log.Warn("rollback of a failed ADD failed; the attachment is kept and its teardown retried by reconciliation",
		"attachment", rec.ID(), "cni_network", rec.Network, "error", err)
	return fmt.Errorf("%w (cniplug keeps the attachment and retries its teardown)", err)
}

// Join lets the attachment's traffic through the host firewall as the policy says and puts its link where
// the container gets it. This is the choice point between the two attachment paths, which share everything
// else: when the engine created the container's netns before Join (Docker 28+, sandboxKey names it) and the
// policy asks for it, or the chain leases its address by DHCP, cniplug moves the link straight into it;
// otherwise (Docker 20.10-27 create it later) the link is handed to Docker in the host netns for Docker to
// move. An attachment whose ADD waited for Join (AddAtJoin: Docker chose its address) is added first, straight
// into the container's netns when that exists, which leaves no link to move. Teardown finds the link either
// way.
func (m *Manager) Join(ctx context.Context, a *state.Attachment, p JoinPolicy, sandboxKey string) error {
	m.finishRemovalsIn(ctx, sandboxKey) // before any lock: Remove takes the network's and the attachment's
	if a.AddAtJoin {
		// An ADD, as in Add: shared with the network's CNI GC, taken before the attachment's lock.
		runlock := m.nets.rlock(a.Network)
		defer runlock()
	}
	unlock := m.locks.lock(a.ID())
	defer unlock()
	nw, err := cnibridge.ParseNetwork(a.Conflist)
	if err != nil {
		return fmt.Errorf("recorded conflist of CNI network %q: %w", a.Network, err)
	}
	// An ADD at Join programs the FORWARD rules itself, while it runs.
	addedAtJoin, addedInContainer := a.AddAtJoin, false
	if addedAtJoin {
		if addedInContainer, err = m.addAtJoin(ctx, a, p, sandboxKey); err != nil {
			return err
		}
	}
	// The dhcp daemon renews a lease from the netns it was acquired in: the lease must follow the link into
	// the container, which only a netns that exists at Join allows.
	dhcp := nw.UsesDHCP()
	intoSandbox := (p.IntoSandbox || dhcp) && cnibridge.SandboxReady(sandboxKey)
	if dhcp && !intoSandbox {
		return fmt.Errorf("CNI network %q leases its address by DHCP, and the DHCP lease must be renewed from the container's network namespace, which cniplug cannot see at Join (%s): Docker creates it only after Join before 28.0, and a managed plugin sees it only where the host's mounts propagate (a shared root mount, as systemd makes it)", a.Network, orNone(sandboxKey))
	}
	var allowForward func() error
	if !addedAtJoin {
		if allowForward, err = m.joinNetworkRules(ctx, a, p); err != nil {
			return err
		}
	}
	if intoSandbox {
		if err := m.cni.SetSandbox(&a.Attachment, sandboxKey); err != nil {
			return err
		}
		// Recorded before the hand-over: teardown then releases with the container's key, which is harmless
		// if the hand-over never happened (the staging lease is released by the chain's DEL).
		a.LeaseInSandbox = dhcp
	} else if !addedInContainer {
		a.ContainerNetNS = sandboxKey // where Leave finds the link Docker moved in (HoldAtLeave)
	}
	// One durable write records the rules and where the link goes, before either is applied, so that
	// teardown finds them.
	a.Phase = state.PhaseJoined
	if err := m.store.PutAttachment(a); err != nil {
		return fmt.Errorf("recording the join: %w", err)
	}
	// The FORWARD rules (an iptables-restore, ~10 ms) and the link's move (an RCU grace period, ~20 ms) are
	// independent: they run side by side, and Join answers once both are done.
	forwarded := alongside(allowForward)
	if addedInContainer {
		return <-forwarded // the link was created where the container gets it
	}
	if err := m.placeLink(ctx, a, nw, intoSandbox, dhcp); err != nil {
		return errors.Join(err, <-forwarded)
	}
	return <-forwarded
}

// Leave keeps a link that was handed over to Docker in the container's netns, for teardown to delete it
// there (cnibridge.Runner.HoldAtLeave): libnetwork would move it back to the host after Leave, and teardown
// on into staging. Leave cannot fail the container's stop (dockerd only logs a driver's Leave error), so a
// link that cannot be held is left to Docker, as before, and teardown takes it from the host. A DHCP chain's
// link is in the container already, with its lease.
func (m *Manager) Leave(a *state.Attachment) {
	unlock := m.locks.lock(a.ID())
	defer unlock()
	// Read again under the lock: reconciliation may have removed it meanwhile, and the hold records it.
	a, err := m.store.Attachment(a.ID())
	if err != nil || a.Phase != state.PhaseJoined {
		return
	}
	held, err := m.cni.HoldAtLeave(&a.Attachment, func() error { return m.store.PutAttachment(a) })
	if err != nil {
		m.log.Warn("Docker moves the link back to the host; teardown takes it from there", "attachment", a.ID(),
			"cni_network", a.Network, "network", a.NetworkID, "endpoint", a.EndpointID, "error", err)
		return
	}
	if held {
		m.log.Debug("link held in the container's netns for teardown", "attachment", a.ID(), "netns", a.ContainerNetNS)
	}
}

// placeLink puts the joined attachment's link where the container gets it (Join's choice, see there).
func (m *Manager) placeLink(ctx context.Context, a *state.Attachment, nw *cnibridge.Network, intoSandbox, dhcp bool) error {
	if !intoSandbox {
		return m.cni.MoveToHost(&a.Attachment)
	}
	// RequestMAC: the MAC Docker chose when cniplug's IPAM allocated the address, which a chain that ignores
	// MAC= (ptp) did not give the link.
	if err := m.cni.JoinSandbox(&a.Attachment, a.RequestMAC); err != nil {
		return err
	}
	if dhcp {
		if err := m.ensureLeaseDaemon(ctx, nw); err != nil {
			return err
		}
		if err := m.cni.HandOverLease(ctx, &a.Attachment); err != nil {
			return err
		}
	}
	// Without the pin teardown takes the link back to staging first, which works too: not worth failing Join.
	if err := m.cni.PinSandbox(&a.Attachment); err != nil {
		m.log.Warn("teardown will move the link back out of the container", "attachment", a.ID(), "cni_network", a.Network, "error", err)
	}
	m.log.Info("link moved into the container", "attachment", a.ID(), "cni_network", a.Network, "network", a.NetworkID,
		"endpoint", a.EndpointID, "netns", a.Sandbox, "ifname", a.SandboxIfName, "dhcp", dhcp)
	return nil
}

// Remove tears the attachment down (CNI DEL with its recorded conflist and args) and forgets it. When DEL
// fails the record is kept so that a later Remove (or reconciliation) can retry.
func (m *Manager) Remove(ctx context.Context, a *state.Attachment) error {
	runlock := m.nets.rlock(a.Network)
	defer runlock()
	unlock := m.locks.lock(a.ID())
	defer unlock()
	// Another caller (DeleteEndpoint, ReleaseAddress, reconciliation) may have removed it while we waited.
	if _, err := m.store.Attachment(a.ID()); errors.Is(err, state.ErrNotFound) {
		return nil
	}
	return m.removeLocked(ctx, a)
}

// removeLocked is Remove with the network's and the attachment's locks held.
func (m *Manager) removeLocked(ctx context.Context, a *state.Attachment) error {
	if nw, err := cnibridge.ParseNetwork(a.Conflist); err == nil {
		if err := m.ensureLeaseDaemon(ctx, nw); err != nil {
			return err // the DEL needs it to end the lease; a later Remove or reconciliation retries
		}
	}
	if err := m.unpublish(ctx, a); err != nil {
		return err
	}
	// Independent too, as at Join: the FORWARD rules go while the CNI DEL runs.
	revoked := alongside(func() error { return m.leaveNetworkRules(ctx, a) })
	if err := errors.Join(m.cni.Teardown(ctx, &a.Attachment), <-revoked); err != nil {
		return err
	}
	forgetNeighbours(a.Interface.Addresses())
	if err := m.store.DeleteAttachment(a); err != nil {
		return fmt.Errorf("forgetting attachment %s: %w", a.ID(), err)
	}
	m.log.Info("attachment removed", "attachment", a.ID(), "cni_network", a.Network, "network", a.NetworkID,
		"endpoint", a.EndpointID, "address", a.Interface.IPv4)
	return nil
}

// ensureLeaseDaemon starts the dhcp daemon when the chain leases by DHCP through its default socket.
func (m *Manager) ensureLeaseDaemon(ctx context.Context, nw *cnibridge.Network) error {
	if m.leaseDaemon == nil || !nw.UsesDefaultDHCPDaemon() {
		return nil
	}
	if err := m.leaseDaemon.Ensure(ctx); err != nil {
		return fmt.Errorf("CNI network %q leases its address by DHCP, and its dhcp daemon could not be started: %w", nw.Name, err)
	}
	return nil
}

// StopLeaseDaemonIfUnused stops the dhcp daemon cniplug started once no recorded network, pool or attachment
// uses it any more: nothing is leased through it then.
func (m *Manager) StopLeaseDaemonIfUnused(ctx context.Context) error {
	if m.leaseDaemon == nil {
		return nil
	}
	var conflists [][]byte
	nets, err := m.store.Networks()
	if err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	for _, n := range nets {
		conflists = append(conflists, n.Conflist)
	}
	pools, err := m.store.Pools()
	if err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	for _, p := range pools {
		conflists = append(conflists, p.Conflist)
	}
	atts, err := m.store.Attachments()
	if err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	for _, a := range atts {
		conflists = append(conflists, a.Conflist)
	}
	for _, c := range conflists {
		if nw, err := cnibridge.ParseNetwork(c); err == nil && nw.UsesDefaultDHCPDaemon() {
			return nil
		}
	}
	return m.leaseDaemon.Stop(ctx)
}

// RemoveLater records the attachment as deleting (durably) and tears it down in the background through
// Remove. A removal a stop or crash interrupts is finished by reconciliation, which treats deleting records
// as stale whatever their age.
func (m *Manager) RemoveLater(a *state.Attachment) error {
	unlock := m.locks.lock(a.ID())
	a.Phase = state.PhaseDeleting
	err := m.store.PutAttachment(a)
	unlock()
	if err != nil {
		return fmt.Errorf("recording the removal of attachment %s: %w", a.ID(), err)
	}
	m.removals.Add(1)
	go func() {
		defer m.removals.Done()
		// Not the request's context: Docker has its answer. Each CNI DEL has the runner's deadline.
		start := time.Now()
		err := m.Remove(context.Background(), a)
		if m.removalObserver != nil {
			m.removalObserver.ObserveBackgroundRemoval(time.Since(start), err)
		}
		if err != nil {
			m.log.Error("background removal failed; reconciliation retries it", "attachment", a.ID(), "cni_network", a.Network,
				"network", a.NetworkID, "endpoint", a.EndpointID, "error", err)
		}
	}()
	return nil
}

// WaitRemovals waits for the background removals until ctx ends; what is left stays recorded as deleting.
func (m *Manager) WaitRemovals(ctx context.Context) error {
	done := make(chan struct{})
	go func() { m.removals.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("background removals still running: %w", ctx.Err())
	}
}

// alongside runs fn (when set) in a goroutine of its own and delivers its error.
func alongside(fn func() error) <-chan error {
	done := make(chan error, 1)
	if fn == nil {
		done <- nil
		return done
	}
	go func() { done <- fn() }()
	return done
}
