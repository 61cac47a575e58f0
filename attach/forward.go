package attach

import (
	"fmt"

	"github.com/cniplug/cniplug/hostports"
	"github.com/cniplug/cniplug/state"
)

// JoinPolicy is what the attachment's Docker network asks of the host firewall at Join.
type JoinPolicy struct {
	// HostFirewall: program FORWARD rules for the container's addresses (false: --opt host-firewall=false).
	HostFirewall bool
	// Internal: the rules keep traffic inside the network's subnets (docker network create --internal).
	Internal bool
}

// PolicyOf returns the join policy of a recorded network.
func PolicyOf(nw *state.Network) JoinPolicy {
	return JoinPolicy{HostFirewall: !nw.NoHostFirewall, Internal: nw.Internal}
}

// allowForward records the attachment's FORWARD rules and then programs them. Called with the attachment's
// lock held. On failure no rule is left programmed; the record stays for the one teardown path (Remove).
func (m *Manager) allowForward(a *state.Attachment, p JoinPolicy) error {
	if !p.HostFirewall {
		return nil
	}
	fwd := &hostports.Forward{ID: a.ID(), Addresses: a.Interface.Addresses(), Internal: p.Internal}
	if len(fwd.Addresses) == 0 {
		return nil
	}
	prog, err := m.programmer()
	if err != nil {
		return fmt.Errorf("letting the container's traffic through the host firewall: %w", err)
	}
	a.Forward = fwd
	if err := m.store.PutAttachment(a); err != nil {
		a.Forward = nil
		return fmt.Errorf("recording FORWARD rules: %w", err)
	}
	if err := prog.ApplyForward(*fwd); err != nil {
		return fmt.Errorf("letting the container's traffic through the host firewall: %w", err)
	}
	return nil
}

// revokeForward removes the attachment's FORWARD rules; part of the one teardown path (Remove).
func (m *Manager) revokeForward(a *state.Attachment) error {
	if a.Forward == nil {
		return nil
	}
	prog, err := m.programmer()
	if err != nil {
		return fmt.Errorf("removing FORWARD rules: %w", err)
	}
	if err := prog.RemoveForward(*a.Forward); err != nil {
		return fmt.Errorf("removing FORWARD rules: %w", err)
	}
	return nil
}
