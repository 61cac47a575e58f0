package attach

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/state"
)

// warmRetry is how long a filler waits after a failed ADD before it tries again (unless a claim wakes it).
const warmRetry = 10 * time.Second

// warmFillers are the goroutines that keep each pool's warm attachments filled, one per pool.
type warmFillers struct {
	mu      sync.Mutex
	fillers map[string]*filler // pool ID
}

type filler struct {
	wake   chan struct{} // a claim took one
	cancel context.CancelFunc
	done   chan struct{}
}

// StartWarmPools starts filling the warm pool of every recorded pool that has one (at startup, after the
// startup reconciliation removed what a crash or reboot left).
func (m *Manager) StartWarmPools() error {
	pools, err := m.store.Pools()
	if err != nil {
		return fmt.Errorf("reading pools: %w", err)
	}
	for _, p := range pools {
		m.StartWarmPool(p)
	}
	return nil
}

// StartWarmPool starts the pool's filler, which keeps pool.Warm attachments added in staging namespaces
// ahead of RequestAddress (nothing when pool.Warm is 0, or a filler runs already).
func (m *Manager) StartWarmPool(pool *state.Pool) {
	if pool.Warm <= 0 || pool.V6 {
		return
	}
	m.warm.mu.Lock()
	defer m.warm.mu.Unlock()
	if m.warm.fillers == nil {
		m.warm.fillers = map[string]*filler{}
	}
	if m.warm.fillers[pool.ID] != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &filler{wake: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	m.warm.fillers[pool.ID] = f
	go func() {
		defer close(f.done)
		m.fill(ctx, pool, f.wake)
	}()
}

// fill adds warm attachments until the pool holds pool.Warm of them, then waits for a claim.
func (m *Manager) fill(ctx context.Context, pool *state.Pool, wake <-chan struct{}) {
	for {
		n, err := m.store.WarmCount(pool.ID)
		if err == nil && n < pool.Warm {
			err = m.addWarm(ctx, pool)
			if err == nil {
				continue
			}
		}
		wait := (<-chan time.Time)(nil)
		if err != nil {
			m.log.Warn("warm pool not refilled; retrying", "pool", pool.ID, "cni_network", pool.CNIName, "retry_in", warmRetry, "error", err)
			wait = time.After(warmRetry)
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-wait:
		}
	}
}

// addWarm adds one warm attachment: the pool's ADD without the per-container arguments (no address or MAC
// is asked for). The ADD is not cut short when the filler stops: StopWarmPool waits for it instead.
func (m *Manager) addWarm(ctx context.Context, pool *state.Pool) error {
	nw, err := cnibridge.ParseNetwork(pool.Conflist)
	if err != nil {
		return fmt.Errorf("recorded conflist of %q: %w", pool.CNIName, err)
	}
	req := cnibridge.AddRequest{ContainerID: naming.RandomID(), Network: nw}
	req.Args, req.CapabilityArgs = pool.Extra.Apply(cnibridge.RequestArgs(nw, nil, ""))
	start := time.Now()
	_, err = m.Add(context.WithoutCancel(ctx), req, state.Attachment{Phase: state.PhaseWarm, PoolID: pool.ID})
	if m.warmFillObserver != nil {
		m.warmFillObserver.ObserveWarmFill(time.Since(start), err)
	}
	return err
}

// stopFiller stops the pool's filler and waits for its ADD in flight, or until ctx ends.
func (m *Manager) stopFiller(ctx context.Context, poolID string) error {
	m.warm.mu.Lock()
	f := m.warm.fillers[poolID]
	delete(m.warm.fillers, poolID)
	m.warm.mu.Unlock()
	if f == nil {
		return nil
	}
	f.cancel()
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the warm pool's ADD in flight did not finish: %w", ctx.Err())
	}
}

// StopWarmPools stops every filler (cniplug stops); the warm attachments stay recorded for the next start.
func (m *Manager) StopWarmPools(ctx context.Context) error {
	m.warm.mu.Lock()
	ids := make([]string, 0, len(m.warm.fillers))
	for id := range m.warm.fillers {
		ids = append(ids, id)
	}
	m.warm.mu.Unlock()
	var errs []error
	for _, id := range ids {
		errs = append(errs, m.stopFiller(ctx, id))
	}
	return errors.Join(errs...)
}

// ClaimWarm takes a warm attachment of the pool for Docker's RequestAddress, as the pending attachment an
// ADD at RequestAddress would have made: address, when set, must be the one it holds. The link gets the
// endpoint's MAC (the chain gave it a random one, see cnibridge.Network.CheckWarmPool), and the host forgets
// any neighbour entry of the address, learnt from the link's old MAC. It returns nil when none is warm; the
// caller then runs the ADD itself. The filler is woken to add a replacement.
func (m *Manager) ClaimWarm(ctx context.Context, pool *state.Pool, address, mac string) (*state.Attachment, error) {
	if pool.Warm <= 0 {
		return nil, nil
	}
	a, err := m.store.ClaimWarm(pool.ID, address, mac)
	if errors.Is(err, state.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	m.wakeFiller(pool.ID)
	unlock := m.locks.lock(a.ID())
	err = m.cni.SetMAC(&a.Attachment, mac)
	if err == nil {
		forgetNeighbours(a.Interface.Addresses())
		err = m.store.PutAttachment(a)
	}
	unlock()
	if err == nil {
		m.log.Info("warm attachment claimed", "attachment", a.ID(), "cni_network", a.Network, "pool", a.PoolID,
			"address", a.Interface.IPv4, "mac", a.Interface.MAC)
		return a, nil
	}
	if rerr := m.Remove(context.WithoutCancel(ctx), a); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return nil, fmt.Errorf("claiming warm attachment %s: %w", a.ID(), err)
}

func (m *Manager) wakeFiller(poolID string) {
	m.warm.mu.Lock()
	defer m.warm.mu.Unlock()
	if f := m.warm.fillers[poolID]; f != nil {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}

// ReleaseWarmPool stops the pool's filler and removes its warm attachments (Docker released the pool).
func (m *Manager) ReleaseWarmPool(ctx context.Context, poolID string) error {
	// Not the request's deadline: an ADD that finished after it would stay warm with no pool to release it.
	// The runner's deadline bounds the ADD.
	if err := m.stopFiller(context.WithoutCancel(ctx), poolID); err != nil {
		return err
	}
	return m.removeAll(ctx, func(a *state.Attachment) bool { return a.PoolID == poolID && a.Phase == state.PhaseWarm })
}

// releaseUnusedWarmPools releases the warm attachments of pools that no live Docker network can be using:
// none of cniplug's live networks with cniplug's IPAM is on the pool's CNI network. The pool record stays,
// with no warm pool (Docker may still release it, or, with another network driver, request addresses).
func (m *Manager) releaseUnusedWarmPools(ctx context.Context, o ReconcileOptions, nets []*state.Network) ([]string, error) {
	used := map[string]bool{}
	for _, n := range nets {
		if _, ok := o.Live[n.ID]; ok && n.Mode == state.ModeCNIIPAM {
			used[n.CNIName] = true
		}
	}
	pools, err := m.store.Pools()
	if err != nil {
		return nil, fmt.Errorf("reading pools: %w", err)
	}
	var released []string
	var errs []error
	for _, p := range pools {
		if p.Warm == 0 || used[p.CNIName] || o.Now.Sub(p.Created) < o.MinAge {
			continue
		}
		released = append(released, p.ID)
		if o.DryRun {
			continue
		}
		if err := m.ReleaseWarmPool(ctx, p.ID); err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", p.ID, err))
			continue
		}
		p.Warm = 0
		if err := m.store.PutPool(p); err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", p.ID, err))
		}
		m.log.Info("warm pool released: no live Docker network uses its CNI network", "pool", p.ID, "cni_network", p.CNIName)
	}
	return released, errors.Join(errs...)
}
