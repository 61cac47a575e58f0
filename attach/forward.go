package attach

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/netrules"
	"github.com/cniplug/cniplug/state"
)

// JoinPolicy is what the attachment's Docker network asks of the host firewall at Join.
type JoinPolicy struct {
	// HostFirewall: the network has its rule set (isolation and accepts); false: --opt host-firewall=false.
	HostFirewall bool
	// Internal: nothing enters or leaves the network (docker network create --internal).
	Internal bool
	// IntoSandbox: move the link straight into the container's netns when it exists at Join (--opt
	// direct-join=true).
	IntoSandbox bool
}

// PolicyOf returns the join policy of a recorded network.
func PolicyOf(nw *state.Network) JoinPolicy {
	return JoinPolicy{HostFirewall: !nw.NoHostFirewall, Internal: nw.Internal, IntoSandbox: nw.DirectJoin}
}

// rulesState is the manager's network rule sets, created on first use.
type rulesState struct {
	once  sync.Once
	rules *netrules.Rules
	err   error
}

func (m *Manager) networkRules() (*netrules.Rules, error) {
	m.rules.once.Do(func() {
		m.rules.rules, m.rules.err = netrules.New(m.iptables, m.ip6tables, m.firewallInstance)
	})
	return m.rules.rules, m.rules.err
}

// joinNetworkRules records the attachment as a member of its network's rule set and returns what joins it (nil
// when the network has none). The caller records the attachment before it calls that: teardown must find the
// member. Joining costs no iptables command when the container's prefixes are the network's already.
func (m *Manager) joinNetworkRules(ctx context.Context, a *state.Attachment, p JoinPolicy) (func() error, error) {
	if !p.HostFirewall || len(a.Interface.Addresses()) == 0 {
		return nil, nil
	}
	rules, err := m.networkRules()
	if err != nil {
		return nil, fmt.Errorf("letting the container's traffic through the host firewall: %w", err)
	}
	member := &netrules.Member{ID: a.ID(), Network: a.NetworkID, Addresses: a.Interface.Addresses(),
		Peers: routedPrefixes(a.Interface), Internal: p.Internal}
	a.Forward = member
	return func() error {
		if err := rules.Join(ctx, *member); err != nil {
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
		if ones, bits := n.Mask.Size(); ones == bits || ones == 0 {
			continue
		}
		out = append(out, n.String())
	}
	return out
}

// leaveNetworkRules takes the attachment out of its network's rule set; part of the one teardown path (Remove).
func (m *Manager) leaveNetworkRules(ctx context.Context, a *state.Attachment) error {
	if a.Forward == nil {
		return nil
	}
	rules, err := m.networkRules()
	if err != nil {
		return fmt.Errorf("removing the container from the host firewall rules: %w", err)
	}
	if err := rules.Leave(ctx, a.Forward.ID); err != nil {
		return fmt.Errorf("removing the container from the host firewall rules: %w", err)
	}
	return nil
}

// networkMember is what a Docker network itself adds to its rule set, before any container: its bridge
// (frames bridged between its ports, a DHCP exchange during the first ADD among them, stay in the network)
// and the subnets its IPAM declares.
func networkMember(nw *state.Network) (*netrules.Member, error) {
	if nw.NoHostFirewall {
		return nil, nil
	}
	cniNet, err := cnibridge.ParseNetwork(nw.Conflist)
	if err != nil {
		return nil, fmt.Errorf("recorded conflist of CNI network %q: %w", nw.CNIName, err)
	}
	member := &netrules.Member{ID: nw.ID, Network: nw.ID, Internal: nw.Internal, Masquerade: nw.Masquerade, Bridges: cniNet.Bridges()}
	ranges, _ := cniNet.DeclaredRanges()
	for _, r := range ranges {
		member.Peers = append(member.Peers, r.Subnet.String())
	}
	if nw.Mode == state.ModeDocker {
		// Docker's IPAM chose the subnet; cniplug's IPAM answers 0.0.0.0/0 when the conflist has none.
		for _, pool := range []string{nw.IPv4Pool, nw.IPv6Pool} {
			if _, n, err := net.ParseCIDR(pool); err == nil {
				if ones, _ := n.Mask.Size(); ones > 0 {
					member.Peers = append(member.Peers, n.String())
				}
			}
		}
	}
	return member, nil
}

// AddNetwork gives a new Docker network its rule set and records the network (CreateNetwork). The rules come
// first, so that the network's bridge passes traffic before the first container's ADD (a DHCP exchange) and a
// recorded network always has them; startup removes the rules of a network that was never recorded.
func (m *Manager) AddNetwork(ctx context.Context, nw *state.Network) error {
	member, err := networkMember(nw)
	if err != nil {
		return err
	}
	if member != nil {
		rules, err := m.networkRules()
		if err == nil {
			err = rules.Join(ctx, *member)
		}
		if err != nil {
			return fmt.Errorf("programming the network's host firewall rules: %w", err)
		}
	}
	if err := m.store.PutNetwork(nw); err != nil {
		err = fmt.Errorf("recording network: %w", err)
		if member != nil {
			err = errors.Join(err, m.closeNetworkRules(ctx, nw.ID))
		}
		return err
	}
	return nil
}

// closeNetworkRules removes what the network itself added to its rule set (RemoveNetwork); the set goes with
// its last member.
func (m *Manager) closeNetworkRules(ctx context.Context, networkID string) error {
	rules, err := m.networkRules()
	if err == nil {
		err = rules.Leave(ctx, networkID)
	}
	if err != nil {
		return fmt.Errorf("removing the network's host firewall rules: %w", err)
	}
	return nil
}

// loadRecordedNetworkRules programs the rule sets of every recorded network and attachment (startup), and
// removes the rules of networks that are gone.
func (m *Manager) loadRecordedNetworkRules(ctx context.Context, atts []*state.Attachment) error {
	networks, err := m.store.Networks()
	if err != nil {
		return fmt.Errorf("reading networks: %w", err)
	}
	var members []netrules.Member
	for _, nw := range networks {
		member, err := networkMember(nw)
		if err != nil {
			m.log.Warn("network without firewall rules", "network", nw.ID, "error", err)
			continue
		}
		if member != nil {
			members = append(members, *member)
		}
	}
	for _, a := range atts {
		if a.Forward == nil {
			continue
		}
		member := *a.Forward
		if member.Network == "" {
			member.Network = a.NetworkID // recorded by a version that kept one chain per container
		}
		members = append(members, member)
	}
	rules, err := m.networkRules()
	if err == nil {
		err = rules.Load(ctx, members)
	}
	if err != nil {
		return fmt.Errorf("programming the networks' host firewall rules: %w", err)
	}
	return nil
}

// repairNetworkRules puts the rule sets back when their jumps went missing (a flushed table, a firewalld
// reload); reconciliation runs it.
func (m *Manager) repairNetworkRules(ctx context.Context) error {
	rules, err := m.networkRules()
	if err != nil {
		return nil // no iptables: nothing was programmed
	}
	repaired, err := rules.Repair(ctx)
	if err != nil {
		return fmt.Errorf("restoring the networks' host firewall rules: %w", err)
	}
	if repaired {
		m.log.Warn("the networks' host firewall rules had been removed by something else (a flushed table, a firewall reload); programmed them again")
	}
	return nil
}
