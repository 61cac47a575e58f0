package attach

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/state"
)

// GCResult is the outcome of CNI GC on one CNI network.
type GCResult struct {
	Network string `json:"cniNetwork"`
	Valid   int    `json:"validAttachments"`
	Skipped string `json:"skipped,omitempty"`
	Error   string `json:"error,omitempty"`
}

// collectGarbage runs CNI GC on every CNI network (spec 1.1 and later) this instance has attachments on,
// with the newest recorded conflist of the network.
func (m *Manager) collectGarbage(ctx context.Context) ([]GCResult, error) {
	atts, err := m.store.Attachments()
	if err != nil {
		return nil, fmt.Errorf("reading attachments for CNI GC: %w", err)
	}
	newest := map[string]*state.Attachment{}
	for _, a := range atts {
		if cur := newest[a.Network]; cur == nil || a.Created.After(cur.Created) {
			newest[a.Network] = a
		}
	}
	names := make([]string, 0, len(newest))
	for name := range newest {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []GCResult
	var errs []error
	for _, name := range names {
		nw, err := cnibridge.ParseNetwork(newest[name].Conflist)
		if err != nil || !nw.SupportsGC() {
			continue
		}
		res := m.gcNetwork(ctx, nw)
		if res.Error != "" {
			errs = append(errs, errors.New(res.Error))
		}
		out = append(out, res)
	}
	return out, errors.Join(errs...)
}

// gcNetwork runs CNI GC on one network. Its valid attachments are every attachment anyone holds on it: this
// instance's records and every entry of libcni's cache (other runtimes and instances share the cache and
// may use the same network; this instance's own cache-only entries were torn down before). No ADD or DEL on
// the network runs meanwhile, so the list cannot miss one in flight.
func (m *Manager) gcNetwork(ctx context.Context, nw *cnibridge.Network) GCResult {
	unlock := m.nets.lock(nw.Name)
	defer unlock()
	res := GCResult{Network: nw.Name}
	cached, err := m.cni.CachedAttachments()
	if err != nil {
		res.Skipped, res.Error = "the cache could not be read", err.Error()
		return res
	}
	atts, err := m.store.Attachments()
	if err != nil {
		res.Skipped, res.Error = "the records could not be read", err.Error()
		return res
	}
	seen := map[types.GCAttachment]bool{}
	var valid []types.GCAttachment
	add := func(a types.GCAttachment) {
		if !seen[a] {
			seen[a] = true
			valid = append(valid, a)
		}
	}
	for _, a := range atts {
		if a.Network == nw.Name {
			add(types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
		}
	}
	for _, c := range cached {
		if c.Network == nw.Name {
			add(types.GCAttachment{ContainerID: c.ContainerID, IfName: c.IfName})
		}
	}
	res.Valid = len(valid)
	err = m.cni.GC(ctx, nw, valid)
	switch {
	case errors.Is(err, cnibridge.ErrNoValidAttachments):
		res.Skipped = "no valid attachment to name: an empty list would release everything on the network"
	case err != nil:
		res.Error = err.Error()
	}
	return res
}
