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

// Publish publishes the ports Docker asks for on the attachment's endpoint when it becomes the container's
// gateway endpoint (ProgramExternalConnectivity). Docker publishes a container's ports only through that
// endpoint: since 28 it is chosen by gw-priority and 29 tells the driver each time it changes; 20.10 calls
// it on the endpoint that gives the container its default route. The host ports are chosen here (ephemeral
// and range requests, refusing ports in use on the host or published by another container) and recorded
// before their rules exist, so the one teardown path removes them whatever fails next. An endpoint that
// publishes already keeps its ports: a container's bindings do not change.
func (m *Manager) Publish(ctx context.Context, a *state.Attachment, bs []hostports.Binding) error {
	if len(bs) == 0 {
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
	if a, err = m.store.Attachment(a.ID()); err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	if a.HostPorts != nil && len(a.HostPorts.Mappings) > 0 {
		return prog.Apply(ctx, *a.HostPorts)
	}
	taken, err := m.takenPorts(a.ID())
	if err != nil {
		return err
	}
	ms, err := hostports.Resolve(bs, taken)
	if err != nil {
		return err
	}
	rec := &hostports.Record{ID: a.ID(), ContainerIPv4: a.Interface.IPv4, ContainerIPv6: a.Interface.IPv6, Mappings: ms, DNAT: true}
	if err := hostports.Check(*rec); err != nil {
		return err
	}
	a.HostPorts = rec
	if err := m.store.PutAttachment(a); err != nil {
		return fmt.Errorf("recording published ports: %w", err)
	}
	if err := prog.Apply(ctx, *rec); err != nil {
		return fmt.Errorf("publishing ports: %w", err)
	}
	m.log.Info("ports published", "attachment", a.ID(), "network", a.NetworkID, "endpoint", a.EndpointID, "ports", fmt.Sprint(ms))
	return nil
}

// Unpublish removes the attachment's published ports when its endpoint stops being the container's gateway
// endpoint (RevokeExternalConnectivity), and forgets them.
func (m *Manager) Unpublish(ctx context.Context, a *state.Attachment) error {
	m.ports.mu.Lock()
	defer m.ports.mu.Unlock()
	unlock := m.locks.lock(a.ID())
	defer unlock()
	a, err := m.store.Attachment(a.ID())
	if err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	if a.HostPorts == nil {
		return nil
	}
	if err := m.unpublish(ctx, a); err != nil {
		return err
	}
	a.HostPorts = nil
	if err := m.store.PutAttachment(a); err != nil {
		return fmt.Errorf("recording that the ports are no longer published: %w", err)
	}
	m.log.Info("ports unpublished", "attachment", a.ID(), "network", a.NetworkID, "endpoint", a.EndpointID)
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
