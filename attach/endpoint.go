package attach

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/cniconf"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/state"
)

// Plan is one attachment a driver asks for, translated from Docker's request: the CNI ADD to run (or the
// pending attachment to claim) and what Docker chose that the result must match. Ports are published later,
// when the endpoint becomes the container's gateway (Publish).
type Plan struct {
	Add   cnibridge.AddRequest
	Owner state.Attachment // the phase and owners recorded with the attachment
	// Claim, when Address is set, takes the pending attachment cniplug's IPAM driver created for that address
	// on the CNI network (its ADD ran when Docker allocated the address) instead of running an ADD.
	Claim Claim
	Want  Want
	// AddAtJoin: Docker chose the addresses (Want) and the MAC, so the ADD waits for Join, which runs it in the
	// container's netns when that exists then (Docker 28+): no staging netns, no link move.
	AddAtJoin bool
}

// Claim names a pending attachment by its address on a CNI network.
type Claim struct {
	CNINetwork, Address string
}

// Want is what Docker chose for the interface; "" leaves a field to CNI.
type Want struct {
	Address, AddressIPv6 string // addresses or CIDRs
	MAC                  string
	NeedIPv4             bool // the result must carry an IPv4 address (Docker is answered with it)
}

// check reports a CNI result that differs from what Docker chose.
func (w Want) check(got cnibridge.Interface) error {
	switch {
	case w.NeedIPv4 && got.IPv4 == "":
		return errors.New("CNI assigned no IPv4 address")
	case w.Address != "" && naming.Address(w.Address) != naming.Address(got.IPv4):
		return fmt.Errorf("Docker asked for %s but CNI assigned %s (does the CNI IPAM honour IP=/ips requests?)", w.Address, orNone(got.IPv4))
	case w.AddressIPv6 != "" && naming.Address(w.AddressIPv6) != naming.Address(got.IPv6):
		return fmt.Errorf("Docker asked for %s but CNI assigned %s", w.AddressIPv6, orNone(got.IPv6))
	case w.MAC != "" && !strings.EqualFold(w.MAC, got.MAC):
		return fmt.Errorf("Docker asked for MAC %s but CNI set %s", w.MAC, orNone(got.MAC))
	}
	return nil
}

// Apply applies the plan: it adds (or claims) the attachment and checks the result against what Docker
// chose. Whatever fails after the attachment exists removes it again through Remove, so a failed request
// leaves nothing behind.
func (m *Manager) Apply(ctx context.Context, p Plan) (*state.Attachment, error) {
	if p.Owner.EndpointID != "" {
		unlock := m.endpoints.lock(p.Owner.EndpointID)
		defer unlock()
		if a, err := m.store.AttachmentByEndpoint(p.Owner.EndpointID); err == nil {
			return a, nil // a retried CreateEndpoint, or one sent twice at once: the first one's answer
		}
	}
	var a *state.Attachment
	var err error
	if p.Claim.Address != "" {
		a, err = m.store.ClaimPending(p.Claim.CNINetwork, p.Claim.Address, p.Owner.NetworkID, p.Owner.EndpointID)
		if err != nil {
			return nil, fmt.Errorf("no address %s allocated by the IPAM driver is pending: %w", p.Claim.Address, err)
		}
	} else {
		if err := m.finishRemovalsHolding(ctx, p.Add.Network.Name, p.Want.Address, p.Want.AddressIPv6); err != nil {
			return nil, err
		}
		if p.AddAtJoin {
			a, err = m.recordForJoin(p)
		} else {
			a, err = m.Add(ctx, p.Add, p.Owner)
			if p.Owner.EndpointID != "" {
				// CreateEndpoint: the address is Docker's IPAM's (cniplug's IPAM asks at RequestAddress, with no
				// endpoint yet, for an address the user gave with --ip).
				err = m.explainHeld(err, p.Add.Network.Name, "", p.Want.Address, p.Want.AddressIPv6)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	if !p.AddAtJoin {
		err = p.Want.check(a.Interface)
	}
	if err == nil {
		return a, nil
	}
	if rerr := m.Remove(context.WithoutCancel(ctx), a); rerr != nil {
		err = fmt.Errorf("%w; removing the attachment also failed: %v", err, rerr)
	}
	return nil, err
}

// recordForJoin records an attachment whose ADD waits for Join (Plan.AddAtJoin): its planned names, the
// addresses Docker chose and the MAC CreateEndpoint answers. Teardown of such a record (the endpoint went
// before Join) finds nothing to remove and releases nothing that is not its own.
func (m *Manager) recordForJoin(p Plan) (*state.Attachment, error) {
	planned, err := m.cni.NewAttachment(p.Add)
	if err != nil {
		return nil, err
	}
	rec := p.Owner
	rec.Attachment = *planned
	rec.Attachment.Interface = cnibridge.Interface{IPv4: p.Want.Address, IPv6: p.Want.AddressIPv6, MAC: p.Want.MAC}
	rec.Created = time.Now().UTC()
	rec.AddAtJoin = true
	rec.RequestMAC = p.Want.MAC
	unlock := m.locks.lock(rec.ID())
	defer unlock()
	if err := m.store.PutAttachment(&rec); err != nil {
		return nil, fmt.Errorf("recording attachment: %w", err)
	}
	return &rec, nil
}

// addAtJoin runs the ADD that CreateEndpoint left to Join (AddAtJoin): into the container's netns when it
// exists at Join (Docker 28+) and has no other network yet, else into a staging netns as Add does. It records
// where before it applies, and a failed ADD leaves nothing of the CNI side (the record goes with the
// endpoint's DeleteEndpoint). The link gets the MAC CreateEndpoint answered, and the result must carry the
// addresses Docker chose. The FORWARD rules need only those addresses: they are programmed while the ADD
// runs (and again if the result routes to other prefixes of the network, see routedPrefixes).
func (m *Manager) addAtJoin(ctx context.Context, a *state.Attachment, p JoinPolicy, sandboxKey string) (inContainer bool, err error) {
	want := Want{Address: a.Interface.IPv4, AddressIPv6: a.Interface.IPv6, MAC: a.RequestMAC, NeedIPv4: a.Interface.IPv4 != ""}
	add := m.cni.Add
	if inContainer = cnibridge.SandboxReady(sandboxKey) && cnibridge.SandboxEmpty(sandboxKey); inContainer {
		if err := m.cni.SetSandbox(&a.Attachment, sandboxKey); err != nil {
			return false, err
		}
		a.IfName = a.SandboxIfName // CNI_IFNAME: the link is created under its name in the container
		add = m.cni.AddInSandbox
	}
	allowForward, err := m.joinNetworkRules(ctx, a, p)
	if err != nil {
		return false, err
	}
	a.Phase = state.PhaseAdding
	if err := m.store.PutAttachment(a); err != nil {
		return false, fmt.Errorf("recording attachment: %w", err)
	}
	forwarded := alongside(allowForward)
	err = m.explainHeld(add(ctx, &a.Attachment), a.Network, a.ID(), want.Address, want.AddressIPv6)
	if err == nil {
		a.AddAtJoin = false
		err = m.cni.SetMAC(&a.Attachment, a.RequestMAC)
	}
	if err == nil && inContainer {
		err = m.cni.ClearNextHopRoutes(&a.Attachment)
	}
	if err == nil {
		err = want.check(a.Interface)
	}
	if err := errors.Join(err, <-forwarded); err != nil {
		return false, err
	}
	if a.Forward != nil && len(routedPrefixes(a.Interface)) > 0 {
		if allowForward, err = m.joinNetworkRules(ctx, a, p); err != nil {
			return false, err
		}
		if err := m.store.PutAttachment(a); err != nil {
			return false, fmt.Errorf("recording attachment: %w", err)
		}
		if err := allowForward(); err != nil {
			return false, err
		}
	}
	m.log.Info("attachment added", "attachment", a.ID(), "cni_network", a.Network, "network", a.NetworkID,
		"endpoint", a.EndpointID, "address", a.Interface.IPv4, "address_v6", a.Interface.IPv6, "in_container", inContainer)
	return inContainer, nil
}

// finishRemovalsHolding completes the background removals of attachments on the CNI network that still hold
// one of the requested addresses, before the ADD asks CNI for them: a container re-created with the same --ip
// right after `docker rm` must not fail because the old container's DEL has not run yet.
func (m *Manager) finishRemovalsHolding(ctx context.Context, cniNetwork string, addresses ...string) error {
	wanted := addressSet(addresses...)
	if len(wanted) == 0 {
		return nil
	}
	err := m.removeAll(ctx, func(a *state.Attachment) bool {
		return a.Phase == state.PhaseDeleting && a.Network == cniNetwork && heldAddress(a, wanted) != ""
	})
	if err != nil {
		return fmt.Errorf("an address asked for (%s) is still held by a removed container whose CNI DEL failed: %w", strings.Join(slices.Sorted(maps.Keys(wanted)), ", "), err)
	}
	return nil
}

// finishRemovalsIn completes the background removals of attachments whose link is still in the container's
// netns at sandboxKey, moved in at Join (direct join, DHCP) or held there at Leave: a container connected
// again right after a disconnect would otherwise find the old link under the name its new one should take
// (eth0, which a DHCP chain's client ID needs), and the old DEL could meet the new link. It only logs a DEL
// that fails: reconciliation retries it, and Join goes on as it would have.
func (m *Manager) finishRemovalsIn(ctx context.Context, sandboxKey string) {
	if sandboxKey == "" {
		return
	}
	err := m.removeAll(ctx, func(a *state.Attachment) bool {
		inSandbox := a.Sandbox == sandboxKey || (a.HeldInSandbox && a.ContainerNetNS == sandboxKey)
		return a.Phase == state.PhaseDeleting && inSandbox
	})
	if err != nil {
		m.log.Warn("the CNI DEL of an earlier attachment whose link is still in the container's netns failed",
			"netns", sandboxKey, "error", err)
	}
}

// holder is an attachment that holds one of the addresses asked about (holders).
type holder struct {
	attachment *state.Attachment
	address    string // the address it holds, without prefix length
}

// holders returns the attachments on the CNI network that hold one of the addresses, each once.
func (m *Manager) holders(cniNetwork string, addresses ...string) ([]holder, error) {
	wanted := addressSet(addresses...)
	if len(wanted) == 0 {
		return nil, nil
	}
	atts, err := m.store.Attachments()
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	var out []holder
	for _, a := range atts {
		if held := heldAddress(a, wanted); a.Network == cniNetwork && held != "" {
			out = append(out, holder{attachment: a, address: held})
		}
	}
	return out, nil
}

// addressSet is the set of the addresses without their prefix lengths; "" is not one.
func addressSet(addresses ...string) map[string]bool {
	set := map[string]bool{}
	for _, a := range addresses {
		if a != "" {
			set[naming.Address(a)] = true
		}
	}
	return set
}

// heldAddress is the first address of the attachment in wanted, without prefix length, or "".
func heldAddress(a *state.Attachment, wanted map[string]bool) string {
	for _, held := range a.Interface.Addresses() {
		if wanted[naming.Address(held)] {
			return naming.Address(held)
		}
	}
	return ""
}

// explainHeld adds the likely cause to an ADD's error for addresses Docker's IPAM chose: another attachment on
// the same CNI network holds one of them. Docker's IPAM and the chain's own IPAM (host-local continues after
// the last address anyone reserved in its range, Docker's requested ones included) then hand out addresses
// from one range independently, and sooner or later the same one.
func (m *Manager) explainHeld(err error, cniNetwork, self string, addresses ...string) error {
	if err == nil {
		return nil
	}
	holders, herr := m.holders(cniNetwork, addresses...)
	if herr != nil {
		return err
	}
	for _, h := range holders {
		if h.attachment.ID() == self {
			continue
		}
		return fmt.Errorf("%w (address %s, which Docker's IPAM chose, is held by attachment %s of Docker network %s on the same CNI network %q: Docker's IPAM (--subnet) and the CNI network's own IPAM allocate from its range independently; give a Docker network with --subnet a CNI network of its own)",
			err, h.address, naming.ShortID(h.attachment.ID()), orNone(naming.ShortID(h.attachment.NetworkID)), cniNetwork)
	}
	return err
}

// RemoveNetwork removes a Docker network (DeleteNetwork, and reconciliation for one Docker removed while
// cniplug was down): every attachment Docker did not delete first, its firewall rules, the bridge of a
// conflist that adopted Docker's pool, then its record. The record goes last, so that a step that fails is
// retried by the next DeleteNetwork or reconciliation instead of leaving something nothing knows of.
func (m *Manager) RemoveNetwork(ctx context.Context, networkID string) error {
	if err := m.removeAll(ctx, func(a *state.Attachment) bool { return a.NetworkID == networkID }); err != nil {
		return fmt.Errorf("removing leftover attachments: %w", err)
	}
	if err := m.closeNetworkRules(ctx, networkID); err != nil {
		return err
	}
	if nw, err := m.store.Network(networkID); err == nil {
		if err := cniconf.RemoveAdopted(nw.Conflist); err != nil {
			return fmt.Errorf("removing the bridge of CNI network %q: %w", nw.CNIName, err)
		}
	}
	if err := m.store.DeleteNetwork(networkID); err != nil {
		return fmt.Errorf("forgetting network: %w", err)
	}
	if err := m.StopLeaseDaemonIfUnused(ctx); err != nil {
		m.log.Warn("network deleted but the dhcp daemon nothing needs any more was not stopped", "network", networkID, "error", err)
	}
	return nil
}

// RemoveEndpoint tears down the endpoint's attachment (DeleteEndpoint): in the background when later is set and
// it publishes no ports (the next container may publish the same ones at once), else before it returns. An
// endpoint cniplug does not know, or one whose removal is under way, is done; a CreateEndpoint of the same
// endpoint still running is waited for.
func (m *Manager) RemoveEndpoint(ctx context.Context, endpointID string, later bool) error {
	unlock := m.endpoints.lock(endpointID)
	defer unlock()
	a, err := m.store.AttachmentByEndpoint(endpointID)
	if errors.Is(err, state.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	if a.Phase == state.PhaseDeleting {
		return nil // Docker retried: the removal is already under way
	}
	if later && a.HostPorts == nil {
		return m.RemoveLater(a)
	}
	return m.Remove(ctx, a)
}

// RemovePending removes the attachments cniplug's IPAM allocated from a pool that no endpoint claimed.
func (m *Manager) RemovePending(ctx context.Context, poolID string) error {
	return m.removeAll(ctx, func(a *state.Attachment) bool { return a.PoolID == poolID && a.Phase == state.PhasePending })
}

func (m *Manager) removeAll(ctx context.Context, match func(*state.Attachment) bool) error {
	atts, err := m.store.Attachments()
	if err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	var errs []error
	for _, a := range atts {
		if match(a) {
			if err := m.Remove(ctx, a); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
