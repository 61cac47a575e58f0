package driver

import (
	"context"
	"errors"
	"net"

	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/hostports"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/state"
	"github.com/docker/go-plugins-helpers/network"
)

// Join hands the CNI-created link to Docker through the host netns, with the gateway and routes CNI set up.
func (d *Driver) Join(ctx context.Context, req *network.JoinRequest) (*network.JoinResponse, error) {
	if err := validateJoin(req, d.sandboxDirs); err != nil {
		return nil, d.invalid(err)
	}
	a, nw, err := d.endpointAttachment(req.NetworkID, req.EndpointID)
	if err != nil {
		return nil, err
	}
	if err := d.mgr.Join(ctx, a, attach.PolicyOf(nw), req.SandboxKey); err != nil {
		return nil, d.errorf(req.NetworkID, "endpoint %s: %w", naming.ShortID(req.EndpointID), err)
	}
	resp := &network.JoinResponse{
		InterfaceName: network.InterfaceName{SrcName: a.HostIfName, DstPrefix: "eth"},
		Gateway:       a.Interface.Gateway,
		GatewayIPv6:   a.Interface.GatewayIPv6,
		// The container gets exactly the routes CNI set up; no docker_gwbridge behind the driver's back.
		DisableGatewayService: true,
	}
	routes := a.Interface.Routes
	if nw.Internal {
		// As on Docker's own internal networks: no gateway, no route out of the network's subnets.
		resp.Gateway, resp.GatewayIPv6 = "", ""
		routes = insideRoutes(routes, a.Interface.Addresses())
	}
	if a.Sandbox != "" {
		// The link is in the container already (JoinSandbox), with its connected routes: an empty SrcName
		// makes libnetwork skip its interface step, and it still adds the gateway and next-hop routes.
		resp.InterfaceName = network.InterfaceName{}
		routes = nextHopRoutes(routes)
	}
	for _, r := range routes {
		sr := &network.StaticRoute{Destination: r.Destination, NextHop: r.NextHop}
		if r.NextHop == "" {
			sr.RouteType = routeConnected
		}
		resp.StaticRoutes = append(resp.StaticRoutes, sr)
	}
	return resp, nil
}

// nextHopRoutes keeps the routes via a next hop: libnetwork binds connected routes to the interface it
// moves, and installs none for a Join without SrcName.
func nextHopRoutes(routes []cnibridge.Route) []cnibridge.Route {
	var out []cnibridge.Route
	for _, r := range routes {
		if r.NextHop != "" {
			out = append(out, r)
		}
	}
	return out
}

// insideRoutes keeps the routes whose destination lies within one of the addresses' subnets.
func insideRoutes(routes []cnibridge.Route, addrs []string) []cnibridge.Route {
	var subnets []*net.IPNet
	for _, a := range addrs {
		if _, n, err := net.ParseCIDR(a); err == nil {
			subnets = append(subnets, n)
		}
	}
	var out []cnibridge.Route
	for _, r := range routes {
		_, dst, err := net.ParseCIDR(r.Destination)
		if err != nil {
			continue
		}
		dstOnes, _ := dst.Mask.Size()
		for _, s := range subnets {
			ones, _ := s.Mask.Size()
			if s.Contains(dst.IP) && dstOnes >= ones {
				out = append(out, r)
				break
			}
		}
	}
	return out
}

// libnetwork's route types (types.NEXTHOP = 0, types.CONNECTED = 1).
const routeConnected = 1

// Leave: libnetwork moves the link it was handed back to the host netns after Leave, unless cniplug keeps it
// in the container's netns for DeleteEndpoint's teardown (attach.Manager.Leave).
func (d *Driver) Leave(ctx context.Context, req *network.LeaveRequest) (*struct{}, error) {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, d.invalid(err)
	}
	if a, err := d.store.AttachmentByEndpoint(req.EndpointID); err == nil {
		d.mgr.Leave(a)
	}
	return nil, nil
}

// ProgramExternalConnectivity: the endpoint became the container's gateway endpoint (Docker 28+ choose it
// by gw-priority; 20.10 calls it for the endpoint that gives the default route), the one Docker publishes the
// container's ports through: Options carry them (libnetwork's sandbox labels). Outbound connectivity is the
// CNI network's own.
func (d *Driver) ProgramExternalConnectivity(ctx context.Context, req *network.ProgramExternalConnectivityRequest) (*struct{}, error) {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, d.invalid(err)
	}
	bindings, err := hostports.ParseDockerPortmap(req.Options[hostports.OptionPortMap])
	if err != nil {
		return nil, d.invalid(err)
	}
	if len(bindings) == 0 {
		return nil, nil
	}
	a, nw, err := d.endpointAttachment(req.NetworkID, req.EndpointID)
	if err != nil {
		return nil, err
	}
	if err := d.mgr.Publish(ctx, a, bindings); err != nil {
		return nil, d.errorf(req.NetworkID, "CNI network %q: endpoint %s: cannot publish ports: %w", nw.CNIName, naming.ShortID(req.EndpointID), err)
	}
	return nil, nil
}

// RevokeExternalConnectivity: the endpoint is no longer the container's gateway endpoint (another network
// took over by gw-priority, or the container leaves): its ports go.
func (d *Driver) RevokeExternalConnectivity(ctx context.Context, req *network.RevokeExternalConnectivityRequest) (*struct{}, error) {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, d.invalid(err)
	}
	a, nw, err := d.endpointAttachment(req.NetworkID, req.EndpointID)
	if errors.Is(err, state.ErrNotFound) {
		return nil, nil // already gone: nothing published
	}
	if err != nil {
		return nil, err
	}
	if err := d.mgr.Unpublish(ctx, a); err != nil {
		return nil, d.errorf(req.NetworkID, "CNI network %q: endpoint %s: %w", nw.CNIName, naming.ShortID(req.EndpointID), err)
	}
	return nil, nil
}

// endpointAttachment finds the endpoint's attachment and network.
func (d *Driver) endpointAttachment(networkID, endpointID string) (*state.Attachment, *state.Network, error) {
	a, err := d.store.AttachmentByEndpoint(endpointID)
	if err != nil {
		return nil, nil, d.errorf(networkID, "endpoint %s has no CNI attachment: %w", naming.ShortID(endpointID), err)
	}
	nw, err := d.store.Network(networkID)
	if err != nil {
		return nil, nil, d.errorf(networkID, "unknown to %s (its state was lost?): %w", d.name, err)
	}
	return a, nw, nil
}
