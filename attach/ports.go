package attach

import (
	"context"
	"fmt"
	"sync"

	"github.com/cniplug/cniplug/hostports"
	"github.com/cniplug/cniplug/state"
)

// portsState is the manager's host port programmer, created on first use (iptables is only needed by
// containers that publish ports), and the lock that makes choosing and recording host ports atomic.
type portsState struct {
	once sync.Once
	prog *hostports.Programmer
	err  error
	mu   sync.Mutex
}

func (m *Manager) programmer() (*hostports.Programmer, error) {
	m.ports.once.Do(func() {
		m.ports.prog, m.ports.err = hostports.New(m.iptables, m.ip6tables)
	})
	return m.ports.prog, m.ports.err
}

// takenPorts returns a predicate for host ports that attachments other than self already publish.
func (m *Manager) takenPorts(self string) (func(hostports.Mapping) bool, error) {
	atts, err := m.store.Attachments()
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	var used []hostports.Mapping
	for _, a := range atts {
		if a.ID() != self && a.HostPorts != nil {
			used = append(used, a.HostPorts.Mappings...)
		}
	}
	return func(m hostports.Mapping) bool {
		for _, u := range used {
			if hostports.Overlap(u, m) {
				return true
			}
		}
		return false
	}, nil
}

// ResolvePorts chooses concrete host ports for Docker's bindings (ephemeral and range requests), refusing
// ports that are in use on the host or published by another container.
func (m *Manager) ResolvePorts(bs []hostports.Binding) ([]hostports.Mapping, error) {
	m.ports.mu.Lock()
	defer m.ports.mu.Unlock()
	taken, err := m.takenPorts("")
	if err != nil {
		return nil, err
	}
	return hostports.Resolve(bs, taken)
}

// publishPorts records the attachment's published ports and then programs them. dnat says whether cniplug
// programs the DNAT itself (false when the CNI chain's portmap plugin did, through the portMappings
// capability). On failure no rule is left programmed; the record stays, and Attach removes the attachment
// through Remove, which also forgets the ports.
func (m *Manager) publishPorts(ctx context.Context, a *state.Attachment, ms []hostports.Mapping, dnat bool) error {
	if len(ms) == 0 {
		return nil
	}
	prog, err := m.programmer()
	if err != nil {
		return err
	}
	m.ports.mu.Lock()
	defer m.ports.mu.Unlock()
	unlock := m.locks.lock(a.ID())
	defer unlock()
	taken, err := m.takenPorts(a.ID())
	if err != nil {
		return err
	}
	for _, p := range ms {
		if taken(p) {
			return fmt.Errorf("host port %d/%s is already in use (published by another container)", p.HostPort, p.Proto)
		}
	}
	rec := &hostports.Record{ID: a.ID(), ContainerIPv4: a.Interface.IPv4, ContainerIPv6: a.Interface.IPv6, Mappings: ms, DNAT: dnat}
	if err := hostports.Check(*rec); err != nil {
		return err
	}
	a.HostPorts = rec
	if err := m.store.PutAttachment(a); err != nil {
		a.HostPorts = nil
		return fmt.Errorf("recording published ports: %w", err)
	}
	if err := prog.Apply(ctx, *rec); err != nil {
		return fmt.Errorf("publishing ports: %w", err)
	}
	m.log.Info("ports published", "attachment", a.ID(), "network", a.NetworkID, "endpoint", a.EndpointID,
		"ports", fmt.Sprint(ms), "by", map[bool]string{true: "cniplug", false: "portmap plugin"}[dnat])
	return nil
}

// unpublish removes the attachment's host port rules; part of the one teardown path (Remove).
func (m *Manager) unpublish(ctx context.Context, a *state.Attachment) error {
	if a.HostPorts == nil || len(a.HostPorts.Mappings) == 0 {
		return nil
	}
	prog, err := m.programmer()
	if err != nil {
		return fmt.Errorf("removing published ports: %w", err)
	}
	if err := prog.Remove(ctx, *a.HostPorts); err != nil {
		return fmt.Errorf("removing published ports %v: %w", a.HostPorts.Mappings, err)
	}
	return nil
}
