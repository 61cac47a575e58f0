// Package driver is cniplug's libnetwork NetworkDriver: it binds Docker networks to CNI networks and turns
// endpoint create/join/leave/delete into CNI attachments.
package driver

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/cniconf"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/state"
	"github.com/docker/go-plugins-helpers/network"
)

// Driver implements the NetworkDriver side of cniplug.
type Driver struct {
	name    string          // the driver name Docker knows the plugin by, for messages
	chooser cniconf.Chooser // shared with the IPAM driver: the conf dirs and the default network
	mgr     *attach.Manager
	store   *state.Store
	log     *slog.Logger
	// sandboxDirs are where Join accepts a SandboxKey: Docker's netns directory.
	sandboxDirs []string
}

// New returns a Driver that binds Docker networks to the CNI networks chooser picks, for a dockerd whose
// --exec-root is dockerExecRoot ("" is DefaultDockerExecRoot).
func New(name string, chooser cniconf.Chooser, mgr *attach.Manager, log *slog.Logger, dockerExecRoot string) *Driver {
	if dockerExecRoot == "" {
		dockerExecRoot = DefaultDockerExecRoot
	}
	return &Driver{name: name, chooser: chooser, mgr: mgr, store: mgr.Store(), log: log, sandboxDirs: sandboxDirs(dockerExecRoot)}
}

func (d *Driver) errorf(netID, format string, args ...any) error {
	return fmt.Errorf("%s: network %s: %w", d.name, naming.ShortID(netID), fmt.Errorf(format, args...))
}

// GetCapabilities reports local data scope (each host keeps its own networks, endpoints and addresses; swarm
// networks of the driver are "node-local": the managers allocate nothing, every node's cniplug does) and
// global connectivity scope, as Docker's macvlan does: a CNI network may span hosts, and on a swarm-scoped
// network libnetwork then gossips service names and tasks.<service> between the nodes.
func (d *Driver) GetCapabilities(context.Context, *struct{}) (*network.CapabilitiesResponse, error) {
	return &network.CapabilitiesResponse{Scope: network.LocalScope, ConnectivityScope: network.GlobalScope}, nil
}

// Nothing to do for the calls below on a local-scope driver that lets CNI own connectivity.

func (d *Driver) AllocateNetwork(_ context.Context, req *network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	if err := checkNetworkID(req.NetworkID); err != nil {
		return nil, d.invalid(err)
	}
	return &network.AllocateNetworkResponse{}, nil
}
func (d *Driver) FreeNetwork(_ context.Context, req *network.FreeNetworkRequest) (*struct{}, error) {
	if err := checkNetworkID(req.NetworkID); err != nil {
		return nil, d.invalid(err)
	}
	return nil, nil
}
func (d *Driver) DiscoverNew(context.Context, *network.DiscoveryNotification) (*struct{}, error) {
	return nil, nil
}
func (d *Driver) DiscoverDelete(context.Context, *network.DiscoveryNotification) (*struct{}, error) {
	return nil, nil
}
