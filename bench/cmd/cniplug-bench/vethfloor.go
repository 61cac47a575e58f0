package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/vishvananda/netlink"
)

// vethFloor is the smallest remote network driver that gives a container working networking on this engine:
// CreateEndpoint makes a veth pair in the host (its container end named after the endpoint), Join hands that
// end to Docker (libnetwork moves it into the container and sets the address Docker's IPAM chose), and
// DeleteEndpoint deletes the pair. Nothing is recorded, no CNI plugin runs, no firewall rule is written. Its
// lifecycle is the floor any remote driver that hands a link over pays on this engine: the plugin API calls
// and the link moves.
type vethFloor struct {
	mu sync.Mutex
	// hostEnds: the host end of each endpoint's pair, which deleting removes the container end with.
	hostEnds map[string]string
}

func floorNames(endpointID string) (host, container string) {
	return "vfh" + endpointID[:11], "vfc" + endpointID[:11]
}

func (d *vethFloor) GetCapabilities() (*network.CapabilitiesResponse, error) {
	return &network.CapabilitiesResponse{Scope: network.LocalScope}, nil
}

func (d *vethFloor) CreateNetwork(*network.CreateNetworkRequest) error { return nil }
func (d *vethFloor) AllocateNetwork(*network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	return &network.AllocateNetworkResponse{}, nil
}
func (d *vethFloor) DeleteNetwork(*network.DeleteNetworkRequest) error { return nil }
func (d *vethFloor) FreeNetwork(*network.FreeNetworkRequest) error     { return nil }

func (d *vethFloor) CreateEndpoint(req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	if len(req.EndpointID) < 11 {
		return nil, fmt.Errorf("endpoint id %q too short", req.EndpointID)
	}
	host, ctr := floorNames(req.EndpointID)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: ctr}); err != nil {
		return nil, fmt.Errorf("creating veth %s: %w", host, err)
	}
	l, err := netlink.LinkByName(host)
	if err == nil {
		err = netlink.LinkSetUp(l)
	}
	if err != nil {
		_ = netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}})
		return nil, fmt.Errorf("setting %s up: %w", host, err)
	}
	d.mu.Lock()
	d.hostEnds[req.EndpointID] = host
	d.mu.Unlock()
	return &network.CreateEndpointResponse{}, nil
}

func (d *vethFloor) DeleteEndpoint(req *network.DeleteEndpointRequest) error {
	d.mu.Lock()
	host, ok := d.hostEnds[req.EndpointID]
	delete(d.hostEnds, req.EndpointID)
	d.mu.Unlock()
	if !ok {
		return nil
	}
	if l, err := netlink.LinkByName(host); err == nil {
		return netlink.LinkDel(l)
	}
	return nil
}

func (d *vethFloor) EndpointInfo(*network.InfoRequest) (*network.InfoResponse, error) {
	return &network.InfoResponse{Value: map[string]string{}}, nil
}

func (d *vethFloor) Join(req *network.JoinRequest) (*network.JoinResponse, error) {
	_, ctr := floorNames(req.EndpointID)
	return &network.JoinResponse{InterfaceName: network.InterfaceName{SrcName: ctr, DstPrefix: "eth"}, DisableGatewayService: true}, nil
}

func (d *vethFloor) Leave(*network.LeaveRequest) error                   { return nil }
func (d *vethFloor) DiscoverNew(*network.DiscoveryNotification) error    { return nil }
func (d *vethFloor) DiscoverDelete(*network.DiscoveryNotification) error { return nil }
func (d *vethFloor) ProgramExternalConnectivity(*network.ProgramExternalConnectivityRequest) error {
	return nil
}
func (d *vethFloor) RevokeExternalConnectivity(*network.RevokeExternalConnectivityRequest) error {
	return nil
}

// leftovers deletes the pairs of endpoints Docker never deleted.
func (d *vethFloor) leftovers() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for id, host := range d.hostEnds {
		if l, err := netlink.LinkByName(host); err == nil {
			errs = append(errs, netlink.LinkDel(l))
		}
		delete(d.hostEnds, id)
	}
	return errors.Join(errs...)
}

// startVethFloor serves the floor driver as the v1 plugin name on /run/docker/plugins/<name>.sock from this
// process, until cleanup.
func (e *env) startVethFloor(name string) error {
	d := &vethFloor{hostEnds: map[string]string{}}
	sock := filepath.Join("/run/docker/plugins", name+".sock")
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("veth floor driver: %w", err)
	}
	h := network.NewHandler(d)
	go func() { _ = h.Serve(l) }()
	e.onCleanup("stopping the veth floor driver", func() error {
		err := l.Close()
		_ = os.Remove(sock)
		return errors.Join(err, d.leftovers())
	})
	return nil
}
