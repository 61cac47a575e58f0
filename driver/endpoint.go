package driver

import (
	"context"
	"fmt"

	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/cniargs"
	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/hostports"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/state"
	"github.com/docker/go-plugins-helpers/network"
)

// tells Docker the address and MAC it got, for whichever fields Docker's IPAM left empty. The request becomes
// a plan, which attach applies, checks and, on failure, rolls back.
func (d *Driver) CreateEndpoint(ctx context.Context, req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	if err := validateCreateEndpoint(req); err != nil {
		return nil, d.invalid(err)
	}
	nw, err := d.store.Network(req.NetworkID)
	if err != nil {
		return nil, d.errorf(req.NetworkID, "unknown to %s (its state was lost?): %w", d.name, err)
	}
	want := network.EndpointInterface{}
	if req.Interface != nil {
		want = *req.Interface
	}
	plan, err := d.planEndpoint(nw, req, want)
	var a *state.Attachment
	if err == nil {
		a, err = d.mgr.Apply(ctx, plan)
	}
	if err != nil {
		return nil, d.errorf(req.NetworkID, "CNI network %q: %w", nw.CNIName, err)
	}
	return endpointResponse(want, a), nil
}

// planEndpoint translates Docker's request into the attachment to make: the CNI args and capability args
// (the network's and the endpoint's cni.* options) and the addresses and MAC Docker chose. With cniplug IPAM the attachment already exists, pending under the address Docker was given.
func (d *Driver) planEndpoint(nw *state.Network, req *network.CreateEndpointRequest, want network.EndpointInterface) (attach.Plan, error) {
	owner := state.Attachment{Phase: state.PhaseEndpoint, NetworkID: req.NetworkID, EndpointID: req.EndpointID}
	cniNet, err := cnibridge.ParseNetwork(nw.Conflist)
	if err != nil {
		return attach.Plan{}, fmt.Errorf("recorded conflist: %w", err)
	}
	extra, err := d.endpointExtra(nw, cniNet, req.Options)
	if err != nil {
		return attach.Plan{}, err
	}
	// Docker 29 sends the ports to publish with the first endpoint it creates for a container, whichever
	// becomes the gateway: they are checked here and published at ProgramExternalConnectivity.
	if _, err := hostports.ParseDockerPortmap(req.Options[hostports.OptionPortMap]); err != nil {
		return attach.Plan{}, err
	}
	if nw.Mode == state.ModeCNIIPAM {
		return attach.Plan{Owner: owner, Claim: attach.Claim{CNINetwork: nw.CNIName, Address: naming.Address(want.Address)}}, nil
	}
	plan := attach.Plan{
		Owner: owner,
		Want:  attach.Want{Address: want.Address, AddressIPv6: want.AddressIPv6, MAC: want.MacAddress},
		// Docker chose the addresses, so with direct join the ADD can wait for Join and run in the
		// container's netns. CreateEndpoint must still answer a MAC for Docker to show: one generated here,
		// which the ADD asks for (and Join sets when the chain ignores it, as direct join does).
		AddAtJoin: nw.Mode == state.ModeDocker && nw.DirectJoin && !cniNet.UsesDHCP(),
	}
	if plan.AddAtJoin && plan.Want.MAC == "" {
		plan.Want.MAC = naming.RandomMAC()
	}
	plan.Add, err = addRequest(req.EndpointID, cniNet, extra, plan)
	return plan, err
}

// endpointExtra merges the network's cni.* options with the endpoint's (`docker run --network
// name=N,driver-opt=cni.<...>=<value>`) and checks that the CNI network's chain can take them.
func (d *Driver) endpointExtra(nw *state.Network, cniNet *cnibridge.Network, options map[string]any) (cniargs.Extra, error) {
	epExtra, err := parseEndpointOptions(options)
	if err != nil {
		return cniargs.Extra{}, fmt.Errorf("driver-opt: %w", err)
	}
	if nw.Mode == state.ModeCNIIPAM && !epExtra.Empty() {
		return cniargs.Extra{}, fmt.Errorf("driver-opt cni.* cannot be applied on a network with %s IPAM: the CNI ADD already ran when Docker allocated the address; set them per network with --ipam-opt, or use --ipam-driver null or Docker IPAM", d.name)
	}
	extra := nw.Extra.Merge(epExtra)
	if err := extra.Check(nw.CNIName, cniNet.Capabilities()); err != nil {
		return cniargs.Extra{}, fmt.Errorf("driver-opt: %w", err)
	}
	return extra, nil
}

// addRequest is the CNI ADD for the plan: the addresses and MAC Docker chose as CNI_ARGS/capability args, and
// the cni.* arguments. It passes no portMappings: cniplug publishes ports itself when the endpoint becomes the
// container's gateway (ProgramExternalConnectivity), which a chain's portmap plugin, called only at ADD,
// could not follow; portmap then has nothing to do.
func addRequest(containerID string, cniNet *cnibridge.Network, extra cniargs.Extra, plan attach.Plan) (cnibridge.AddRequest, error) {
	var requested []string
	for _, addr := range []string{plan.Want.Address, plan.Want.AddressIPv6} {
		if addr != "" {
			requested = append(requested, addr)
		}
	}
	if len(requested) > 1 && !cniNet.Capabilities()["ips"] {
		// Dual stack from Docker's IPAM: CNI_ARGS IP= carries one address, args.cni.ips carries both.
		var err error
		if cniNet, err = cniNet.WithArgs(map[string]any{"ips": requested}); err != nil {
			return cnibridge.AddRequest{}, fmt.Errorf("requesting %v: %w", requested, err)
		}
	}
	req := cnibridge.AddRequest{ContainerID: containerID, Network: cniNet}
	req.Args, req.CapabilityArgs = extra.Apply(cnibridge.RequestArgs(cniNet, requested, plan.Want.MAC))
	return req, nil
}

// parseEndpointOptions reads the cni.* options among CreateEndpoint's top-level options, where Docker passes
// `driver-opt`. Keys Docker itself sets (com.docker.*) are not ours.
func parseEndpointOptions(options map[string]any) (cniargs.Extra, error) {
	opts := map[string]string{}
	for k, v := range options {
		if !cniargs.IsOption(k) {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return cniargs.Extra{}, fmt.Errorf("option %s must be a string", k)
		}
		opts[k] = s
	}
	return cniargs.Parse(opts)
}

// endpointResponse fills in only what Docker left empty: libnetwork rejects a driver changing a field it set.
func endpointResponse(want network.EndpointInterface, a *state.Attachment) *network.CreateEndpointResponse {
	out := &network.EndpointInterface{}
	if want.Address == "" {
		out.Address = a.Interface.IPv4
	}
	if want.AddressIPv6 == "" {
		out.AddressIPv6 = a.Interface.IPv6
	}
	if want.MacAddress == "" {
		out.MacAddress = a.Interface.MAC
	}
	return &network.CreateEndpointResponse{Interface: out}
}

// DeleteEndpoint tears the endpoint's attachment down. An endpoint cniplug does not know is already gone.
func (d *Driver) DeleteEndpoint(ctx context.Context, req *network.DeleteEndpointRequest) (*struct{}, error) {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, d.invalid(err)
	}
	nw, err := d.store.Network(req.NetworkID)
	later := err == nil && nw.AsyncDelete
	if err := d.mgr.RemoveEndpoint(ctx, req.EndpointID, later); err != nil {
		return nil, d.errorf(req.NetworkID, "endpoint %s: %w", naming.ShortID(req.EndpointID), err)
	}
	return nil, nil
}

// EndpointInfo reports where the endpoint's attachment lives.
func (d *Driver) EndpointInfo(ctx context.Context, req *network.InfoRequest) (*network.InfoResponse, error) {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, d.invalid(err)
	}
	a, err := d.store.AttachmentByEndpoint(req.EndpointID)
	if err != nil {
		return &network.InfoResponse{Value: map[string]string{}}, nil
	}
	return &network.InfoResponse{Value: map[string]string{
		"cniplug.cni_network":      a.Network,
		"cniplug.cni_container_id": a.ContainerID,
		"cniplug.staging_netns":    a.NetNS,
	}}, nil
}
