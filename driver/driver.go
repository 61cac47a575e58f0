// Package driver is cniplug's libnetwork NetworkDriver: it binds Docker networks to CNI networks and turns
// endpoint create/join/leave/delete into CNI attachments.
package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/cniargs"
	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/cniconf"
	"github.com/cniplug/cniplug/hostports"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/state"
	"github.com/docker/go-plugins-helpers/network"
)

// Option keys understood in `docker network create --opt`, besides cniconf.OptCNI and the cni.* arguments.
const (
	// OptAsyncDelete: DeleteEndpoint returns once the removal is recorded and CNI DEL runs in the background.
	// On by default.
	OptAsyncDelete = "async-delete"
	// OptHostFirewall=false: cniplug adds no FORWARD rules; the CNI network manages its own firewall.
	OptHostFirewall = "host-firewall"
	// OptDirectJoin=true: at Join cniplug moves the link into the container's netns itself when the engine
	// created it already (Docker 28+), one link move instead of two; elsewhere Docker moves it.
	OptDirectJoin = "direct-join"

	genericOptions = "com.docker.network.generic"
	// Options Docker sets itself in CreateNetwork (libnetwork's netlabel package).
	internalOption   = "com.docker.network.internal"
	enableIPv4Option = "com.docker.network.enable_ipv4" // Docker 28+
)

// Driver implements the NetworkDriver side of cniplug.
type Driver struct {
	name    string          // the driver name Docker knows the plugin by, for messages
	chooser cniconf.Chooser // shared with the IPAM driver: the conf dirs and the default network
	mgr     *attach.Manager
	store   *state.Store
	log     *slog.Logger
}

// New returns a Driver that binds Docker networks to the CNI networks chooser picks.
func New(name string, chooser cniconf.Chooser, mgr *attach.Manager, log *slog.Logger) *Driver {
	return &Driver{name: name, chooser: chooser, mgr: mgr, store: mgr.Store(), log: log}
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

// CreateNetwork binds the Docker network to the CNI network named by --opt cni: it reads the options, checks
// that the addressing Docker chose can work with the CNI network, validates the combination and records it.
// The conflist bytes are recorded so later edits of the file cannot break DEL of existing attachments.
func (d *Driver) CreateNetwork(ctx context.Context, req *network.CreateNetworkRequest) (*struct{}, error) {
	if _, err := d.store.Network(req.NetworkID); err == nil {
		return nil, nil // Docker may replay CreateNetwork for a network it already created
	}
	rec, nw, err := d.parseNetwork(ctx, req)
	if err == nil {
		nw, err = d.checkAddressing(rec, nw, req)
	}
	if err == nil {
		err = d.validateNetwork(rec)
	}
	if err != nil {
		return nil, d.errorf(req.NetworkID, "%w", err)
	}
	if err := d.store.PutNetwork(rec); err != nil {
		return nil, d.errorf(req.NetworkID, "recording network: %w", err)
	}
	d.log.Info("network created", "network", req.NetworkID, "cni_network", nw.Name, "file", nw.File, "mode", rec.Mode, "async_delete", rec.AsyncDelete)
	return nil, nil
}

// parseNetwork turns the request into the network's record: its CNI network and arguments, its options, and
// the addressing Docker chose.
func (d *Driver) parseNetwork(ctx context.Context, req *network.CreateNetworkRequest) (*state.Network, *cnibridge.Network, error) {
	opts, err := stringOptions(req.Options[genericOptions])
	if err != nil {
		return nil, nil, err
	}
	if isSwarmNetworkID(req.NetworkID) && opts[cniconf.OptCNI] == "" {
		// The driver's swarm networks are node-local: swarm hands the nodes neither the network's --opt nor its
		// --ipam-* options (moby#34203), only a --config-from network's. Without them this node would silently
		// put the tasks on the default CNI network with its own Docker IPAM pool.
		name := d.name // swarm knows a managed plugin only by its full name
		if !strings.Contains(name, ":") {
			name += ":latest"
		}
		return nil, nil, fmt.Errorf("this swarm network carries no --opt %s: swarm passes a %s network's options to the nodes only from a config-only network. "+
			"On every node run: docker network create --config-only --opt %s=<CNI network> --ipam-driver %s --ipam-opt %s=<CNI network> <name>-config; "+
			"then: docker network create -d %s --scope swarm --config-from <name>-config <name>",
			cniconf.OptCNI, name, cniconf.OptCNI, name, cniconf.OptCNI, name)
	}
	nw, extra, err := d.chooser.Choose(ctx, cniconf.Options{Flag: "--opt", Values: opts, Known: []string{OptAsyncDelete, OptHostFirewall, OptDirectJoin},
		Purpose: "this Docker network uses"})
	if err != nil {
		return nil, nil, err
	}
	hostFirewall, err := boolOption(opts, OptHostFirewall, true)
	if err != nil {
		return nil, nil, err
	}
	directJoin, err := boolOption(opts, OptDirectJoin, false)
	if err != nil {
		return nil, nil, err
	}
	internal, err := dockerFlags(req.Options)
	if err != nil {
		return nil, nil, err
	}
	rec := &state.Network{ID: req.NetworkID, CNIName: nw.Name, Conflist: nw.Bytes, Created: time.Now().UTC(), Extra: extra,
		Internal: internal, NoHostFirewall: !hostFirewall, DirectJoin: directJoin, Mode: state.ModeNull}
	if v4 := firstIPAM(req.IPv4Data); v4 != nil {
		rec.IPv4Pool, rec.IPv4Gateway = v4.Pool, v4.Gateway
		rec.Mode = state.ModeOf(v4.AddressSpace)
	}
	if v6 := firstIPAM(req.IPv6Data); v6 != nil {
		rec.IPv6Pool = v6.Pool
	}
	// DEL runs in the background by default. The CNI IPAM keeps the address reserved until DEL releases it;
	// an ADD that asks for an address a background removal still holds (Docker's IPAM hands a released
	// address out again at once; --ip) finishes that removal first (attach.Manager.Attach).
	if rec.AsyncDelete, err = boolOption(opts, OptAsyncDelete, true); err != nil {
		return nil, nil, err
	}
	return rec, nw, nil
}

// isSwarmNetworkID reports whether a network ID is swarm's (25 characters of [0-9a-z], swarmkit's identity
// package) rather than one a single dockerd made (64 hex digits).
func isSwarmNetworkID(id string) bool {
	if len(id) != 25 {
		return false
	}
	for _, r := range id {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z') {
			return false
		}
	}
	return true
}

// checkAddressing checks that the CNI network can assign the addresses the network's IPAM chooses. With
// Docker's IPAM, a conflist that opts in (the bundled default network) first takes Docker's pool as its range;
// the conflist to use is returned.
func (d *Driver) checkAddressing(rec *state.Network, nw *cnibridge.Network, req *network.CreateNetworkRequest) (*cnibridge.Network, error) {
	switch rec.Mode {
	case state.ModeDocker:
		nw, err := cniconf.AdoptDockerPool(nw, req.NetworkID, rec.IPv4Pool, rec.IPv4Gateway)
		if err != nil {
			return nil, err
		}
		rec.Conflist = nw.Bytes
		if err := checkDockerPool(nw, firstIPAM(req.IPv4Data), false); err != nil {
			return nil, err
		}
		if v6 := firstIPAM(req.IPv6Data); v6 != nil {
			if err := checkDockerPool(nw, v6, true); err != nil {
				return nil, err
			}
		}
		return nw, nil
	case state.ModeCNIIPAM:
		if err := d.checkCNIPool(nw, rec.IPv4Pool); err != nil {
			return nil, err
		}
		if !rec.Extra.Empty() {
			return nil, fmt.Errorf("with %s IPAM the CNI ADD runs when Docker allocates an address, which only sees the IPAM options: pass the cni.* options with --ipam-opt instead of --opt", d.name)
		}
	}
	return nw, nil
}

// validateNetwork refuses option combinations that cannot work.
func (d *Driver) validateNetwork(rec *state.Network) error {
	if rec.Internal && rec.NoHostFirewall {
		return fmt.Errorf("--internal needs cniplug's FORWARD rules to keep traffic inside the network: drop --opt %s=false", OptHostFirewall)
	}
	return nil
}

// checkDockerPool verifies that addresses from Docker's IPAM pool can be requested from the CNI network: the
// pool and gateway must be the ones the conflist declares, else CNI would hand out other addresses.
func checkDockerPool(nw *cnibridge.Network, data *network.IPAMData, v6 bool) error {
	family := "IPv4"
	subnetFlag, gwFlag := "--subnet", "--gateway"
	if v6 {
		family = "IPv6"
	}
	r := nw.FirstRange(v6)
	if r == nil {
		_, ipamType := nw.DeclaredRanges()
		return fmt.Errorf("CNI network %q declares no fixed %s range (ipam type %q), so Docker's IPAM cannot choose its addresses: "+
			"create the network with --ipam-driver cniplug --ipam-opt cni=%s (addresses from CNI), or --ipam-driver null",
			nw.Name, family, ipamType, nw.Name)
	}
	_, pool, err := net.ParseCIDR(data.Pool)
	if err != nil {
		return fmt.Errorf("docker sent an unparsable %s pool %q: %w", family, data.Pool, err)
	}
	gw := ""
	if data.Gateway != "" {
		if ip, _, err := net.ParseCIDR(data.Gateway); err == nil {
			gw = ip.String()
		}
	}
	wantGW := ""
	if r.Gateway != nil {
		wantGW = r.Gateway.String()
	}
	if pool.String() == r.Subnet.String() && (wantGW == "" || gw == wantGW) {
		if r.Partial() {
			// Docker's IPAM allocates from the whole pool (--ip-range never reaches a driver), on every host on
			// its own: on one host's slice of a shared subnet it would pick addresses CNI refuses here, and on
			// several hosts the same ones.
			return fmt.Errorf("CNI network %q hands out only %s on this host, a slice of a subnet that other hosts may share; "+
				"Docker's IPAM would choose any %s address of the pool, the same on every host: "+
				"use --ipam-driver cniplug --ipam-opt cni=%s (addresses from CNI), or --ipam-driver null",
				nw.Name, r.Bounds(), family, nw.Name)
		}
		return nil
	}
	flags := fmt.Sprintf("%s %s", subnetFlag, r.Subnet)
	if wantGW != "" {
		flags += fmt.Sprintf(" %s %s", gwFlag, wantGW)
	}
	return fmt.Errorf("CNI network %q assigns %s addresses from %s (gateway %s) but Docker's IPAM chose %s (gateway %s): "+
		"create the network with %s, or use --ipam-driver cniplug --ipam-opt cni=%s",
		nw.Name, family, r.Subnet, orNone(wantGW), pool, orNone(gw), flags, nw.Name)
}

func (d *Driver) checkCNIPool(nw *cnibridge.Network, pool string) error {
	pools, err := d.store.Pools()
	if err != nil {
		return err
	}
	var names []string
	for _, p := range pools {
		if p.CIDR == pool && !p.V6 {
			if p.CNIName == nw.Name {
				return nil
			}
			names = append(names, p.CNIName)
		}
	}
	return fmt.Errorf("the network uses %s IPAM for CNI network %s but --opt cni=%s: pass the same CNI network to --opt cni and --ipam-opt cni",
		d.name, strings.Join(names, "/"), nw.Name)
}

// DeleteNetwork forgets the network, tearing down any attachment Docker did not delete first.
func (d *Driver) DeleteNetwork(ctx context.Context, req *network.DeleteNetworkRequest) (*struct{}, error) {
	if err := d.mgr.RemoveNetwork(ctx, req.NetworkID); err != nil {
		return nil, d.errorf(req.NetworkID, "removing leftover attachments: %w", err)
	}
	rec, _ := d.store.Network(req.NetworkID)
	if err := d.store.DeleteNetwork(req.NetworkID); err != nil {
		return nil, d.errorf(req.NetworkID, "forgetting network: %w", err)
	}
	if rec != nil {
		if err := cniconf.RemoveAdopted(rec.Conflist); err != nil {
			d.log.Warn("network deleted but its bridge was not", "network", req.NetworkID, "error", err)
		}
	}
	if err := d.mgr.StopLeaseDaemonIfUnused(ctx); err != nil {
		d.log.Warn("network deleted but the dhcp daemon nothing needs any more was not stopped", "network", req.NetworkID, "error", err)
	}
	d.log.Info("network deleted", "network", req.NetworkID)
	return nil, nil
}

// CreateEndpoint creates (or, with cniplug IPAM, claims) the endpoint's CNI attachment in a staging netns and
// tells Docker the address and MAC it got, for whichever fields Docker's IPAM left empty. The request becomes
// a plan, which attach applies, checks and, on failure, rolls back.
func (d *Driver) CreateEndpoint(ctx context.Context, req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	nw, err := d.store.Network(req.NetworkID)
	if err != nil {
		return nil, d.errorf(req.NetworkID, "unknown to %s (its state was lost?): %w", d.name, err)
	}
	want := network.EndpointInterface{}
	if req.Interface != nil {
		want = *req.Interface
	}
	if a, err := d.store.AttachmentByEndpoint(req.EndpointID); err == nil {
		return endpointResponse(want, a), nil // a retried CreateEndpoint
	}
	plan, err := d.planEndpoint(nw, req, want)
	var a *state.Attachment
	if err == nil {
		a, err = d.mgr.Attach(ctx, plan)
	}
	if err != nil {
		return nil, d.errorf(req.NetworkID, "CNI network %q: %w", nw.CNIName, err)
	}
	return endpointResponse(want, a), nil
}

// planEndpoint translates Docker's request into the attachment to make: the CNI args and capability args
// (the network's and the endpoint's cni.* options), the addresses and MAC Docker chose, and the ports to
// publish. With cniplug IPAM the attachment already exists, pending under the address Docker was given.
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
	ports, err := d.endpointPorts(nw, req.Options)
	if err != nil {
		return attach.Plan{}, err
	}
	if nw.Mode == state.ModeCNIIPAM {
		// The CNI ADD ran at RequestAddress, before Docker said which ports to publish: cniplug programs them.
		return attach.Plan{Owner: owner, Claim: attach.Claim{CNINetwork: nw.CNIName, Address: naming.Address(want.Address)}, Ports: ports}, nil
	}
	plan := attach.Plan{
		Owner: owner, Ports: ports,
		Want: attach.Want{Address: want.Address, AddressIPv6: want.AddressIPv6, MAC: want.MacAddress},
		// With portmap in the chain, the CNI network publishes the ports itself (portMappings capability).
		PortsByPlugin: len(ports) > 0 && cniNet.Capabilities()["portMappings"],
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

// endpointPorts chooses the host ports for the ports Docker asks to publish.
func (d *Driver) endpointPorts(nw *state.Network, options map[string]any) ([]hostports.Mapping, error) {
	bindings, err := hostports.ParseDockerPortmap(options[hostports.OptionPortMap])
	if err != nil || len(bindings) == 0 {
		return nil, err
	}
	if nw.Internal {
		return nil, errors.New("ports cannot be published from an internal network (it has no way in or out); connect the container to another network to publish them")
	}
	ports, err := d.mgr.ResolvePorts(bindings)
	if err != nil {
		return nil, fmt.Errorf("cannot publish ports: %w", err)
	}
	return ports, nil
}

// addRequest is the CNI ADD for the plan: the addresses and MAC Docker chose as CNI_ARGS/capability args,
// the cni.* arguments, and the port mappings when the chain's portmap plugin publishes them.
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
	if plan.PortsByPlugin {
		if req.CapabilityArgs == nil {
			req.CapabilityArgs = map[string]any{}
		}
		req.CapabilityArgs["portMappings"] = portMappings(plan.Ports)
	}
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

// portMappings is the portmap plugin's runtime config for the mappings (CNI CONVENTIONS portMappings).
func portMappings(ms []hostports.Mapping) []map[string]any {
	out := make([]map[string]any, 0, len(ms))
	for _, m := range ms {
		e := map[string]any{"hostPort": m.HostPort, "containerPort": m.ContainerPort, "protocol": m.Proto}
		if m.HostIP != "" && !net.ParseIP(m.HostIP).IsUnspecified() {
			e["hostIP"] = m.HostIP
		}
		out = append(out, e)
	}
	return out
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

// Join hands the CNI-created link to Docker through the host netns, with the gateway and routes CNI set up.
func (d *Driver) Join(ctx context.Context, req *network.JoinRequest) (*network.JoinResponse, error) {
	a, err := d.store.AttachmentByEndpoint(req.EndpointID)
	if err != nil {
		return nil, d.errorf(req.NetworkID, "endpoint %s has no CNI attachment: %w", naming.ShortID(req.EndpointID), err)
	}
	nw, err := d.store.Network(req.NetworkID)
	if err != nil {
		return nil, d.errorf(req.NetworkID, "unknown to %s (its state was lost?): %w", d.name, err)
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

// Leave needs no work: libnetwork itself moves the link back to the host netns under SrcName, where
// DeleteEndpoint's teardown picks it up.
func (d *Driver) Leave(ctx context.Context, req *network.LeaveRequest) (*struct{}, error) {
	return nil, nil
}

// DeleteEndpoint tears the endpoint's attachment down. An endpoint cniplug does not know is already gone.
func (d *Driver) DeleteEndpoint(ctx context.Context, req *network.DeleteEndpointRequest) (*struct{}, error) {
	a, err := d.store.AttachmentByEndpoint(req.EndpointID)
	if errors.Is(err, state.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, d.errorf(req.NetworkID, "reading state: %w", err)
	}
	if a.Phase == state.PhaseDeleting {
		return nil, nil // Docker retried: the removal is already under way
	}
	// Published ports are unpublished synchronously: the next container may publish the same ones at once.
	if nw, err := d.store.Network(req.NetworkID); err == nil && nw.AsyncDelete && a.HostPorts == nil {
		if err := d.mgr.RemoveLater(a); err != nil {
			return nil, d.errorf(req.NetworkID, "endpoint %s: %w", naming.ShortID(req.EndpointID), err)
		}
		return nil, nil
	}
	if err := d.mgr.Remove(ctx, a); err != nil {
		return nil, d.errorf(req.NetworkID, "endpoint %s: %w", naming.ShortID(req.EndpointID), err)
	}
	return nil, nil
}

// dockerFlags reads the flags Docker itself passes to CreateNetwork and refuses those cniplug cannot honour,
// so that none is accepted and silently ignored. It returns whether the network is internal.
func dockerFlags(options map[string]any) (internal bool, err error) {
	internal, err = boolFlag(options, internalOption)
	if err != nil {
		return false, err
	}
	if v, ok := options[enableIPv4Option]; ok {
		if on, err := boolFlag(options, enableIPv4Option); err != nil {
			return false, err
		} else if !on {
			return false, fmt.Errorf("--ipv4=false is not supported: the CNI network decides which address families its containers get (%s=%v)", enableIPv4Option, v)
		}
	}
	return internal, nil
}

// boolFlag reads a boolean Docker sends as a JSON bool (or, from some clients, a string).
func boolFlag(options map[string]any, key string) (bool, error) {
	switch v := options[key].(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case string:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("docker sent %s=%q: want true or false", key, v)
		}
		return b, nil
	default:
		return false, fmt.Errorf("docker sent %s of type %T: want a boolean", key, v)
	}
}

// boolOption reads an optional true/false option, def when it is absent.
func boolOption(opts map[string]string, key string, def bool) (bool, error) {
	v, ok := opts[key]
	if !ok || v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("--opt %s=%q: want true or false", key, v)
	}
	return b, nil
}

// EndpointInfo reports where the endpoint's attachment lives.
func (d *Driver) EndpointInfo(ctx context.Context, req *network.InfoRequest) (*network.InfoResponse, error) {
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

// Nothing to do for the calls below on a local-scope driver that lets CNI own connectivity.

func (d *Driver) AllocateNetwork(context.Context, *network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	return &network.AllocateNetworkResponse{}, nil
}
func (d *Driver) FreeNetwork(context.Context, *network.FreeNetworkRequest) (*struct{}, error) {
	return nil, nil
}
func (d *Driver) DiscoverNew(context.Context, *network.DiscoveryNotification) (*struct{}, error) {
	return nil, nil
}
func (d *Driver) DiscoverDelete(context.Context, *network.DiscoveryNotification) (*struct{}, error) {
	return nil, nil
}
func (d *Driver) ProgramExternalConnectivity(context.Context, *network.ProgramExternalConnectivityRequest) (*struct{}, error) {
	return nil, nil
}
func (d *Driver) RevokeExternalConnectivity(context.Context, *network.RevokeExternalConnectivityRequest) (*struct{}, error) {
	return nil, nil
}

func firstIPAM(data []*network.IPAMData) *network.IPAMData {
	if len(data) == 0 {
		return nil
	}
	return data[0]
}

// stringOptions reads Docker's generic option map (`--opt k=v`, JSON-decoded as map[string]interface{}).
func stringOptions(v any) (map[string]string, error) {
	out := map[string]string{}
	if v == nil {
		return out, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("malformed network options: %T", v)
	}
	for k, val := range m {
		s, ok := val.(string)
		if !ok {
			return nil, fmt.Errorf("option %q must be a string", k)
		}
		out[k] = s
	}
	return out, nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
