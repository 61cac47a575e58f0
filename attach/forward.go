package attach

import (
	"fmt"
	"net"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/hostports"
	"github.com/cniplug/cniplug/state"
)

// JoinPolicy is what the attachment's Docker network asks of the host firewall at Join.
type JoinPolicy struct {
	// HostFirewall: program FORWARD rules for the container's addresses (false: --opt host-firewall=false).
	HostFirewall bool
	// Internal: the rules keep traffic inside the network's subnets (docker network create --internal).
	Internal bool
	// IntoSandbox: move the link straight into the container's netns when it exists at Join (--opt
	// direct-join=true).
	IntoSandbox bool
}

// PolicyOf returns the join policy of a recorded network.
func PolicyOf(nw *state.Network) JoinPolicy {
	return JoinPolicy{HostFirewall: !nw.NoHostFirewall, Internal: nw.Internal, IntoSandbox: nw.DirectJoin}
}

// planForward sets the attachment's FORWARD rules as the policy asks and returns what programs them (nil when
// there are none). The caller records the attachment before it calls that: teardown must find the rules.
// Rules are recorded before they are programmed, so a record without them has none programmed: a first Join
// adds them in one iptables-restore per family, a repeated one (Docker retries Join) replaces them.
func (m *Manager) planForward(a *state.Attachment, p JoinPolicy) (func() error, error) {
	if !p.HostFirewall || len(a.Interface.Addresses()) == 0 {
		return nil, nil
	}
	prog, err := m.programmer()
	if err != nil {
		return nil, fmt.Errorf("letting the container's traffic through the host firewall: %w", err)
	}
	apply := prog.AddForward
	if a.Forward != nil {
		apply = prog.ApplyForward
	}
	fwd := &hostports.Forward{ID: a.ID(), Addresses: a.Interface.Addresses(), Peers: routedPrefixes(a.Interface), Internal: p.Internal}
	a.Forward = fwd
	return func() error {
		if err := apply(*fwd); err != nil {
			return fmt.Errorf("letting the container's traffic through the host firewall: %w", err)
		}
		return nil
	}, nil
}

// routedPrefixes returns the prefixes the container reaches through its link by a route of the CNI result,
// except host routes (an off-link gateway's): the network's other parts, such as the ranges of the other hosts
// of a routed multi-host network, whose containers open connections to this one.
func routedPrefixes(iface cnibridge.Interface) []string {
	var out []string
	for _, rt := range iface.Routes {
		_, n, err := net.ParseCIDR(rt.Destination)
		if err != nil {
			continue
		}
		if ones, bits := n.Mask.Size(); ones == bits {
			continue
		}
		out = append(out, n.String())
	}
	return out
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
