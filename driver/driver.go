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
	// OptAsyncDelete=true: DeleteEndpoint returns once the removal is recorded; CNI DEL runs in the background.
	OptAsyncDelete = "async-delete"

	genericOptions = "com.docker.network.generic"
)

// Config configures a Driver.
type Config struct {
	Name     string // the driver name Docker knows the plugin by, for messages
	ConfDirs string // colon-separated conf dirs, searched in order
	// DefaultNetwork is the CNI network of Docker networks created without --opt cni ("" requires the option).
	DefaultNetwork string
	Manager        *attach.Manager
	Logger         *slog.Logger
}

// Driver implements the NetworkDriver side of cniplug.
type Driver struct {
	name    string
	chooser cniconf.Chooser
	mgr     *attach.Manager
	store   *state.Store
	log     *slog.Logger
}

// New returns a Driver.
func New(cfg Config) *Driver {
	return &Driver{
		name:    cfg.Name,
		chooser: cniconf.Chooser{ConfDirs: cfg.ConfDirs, DefaultNetwork: cfg.DefaultNetwork, Validator: cfg.Manager.Runner()},
		mgr:     cfg.Manager, store: cfg.Manager.Store(), log: cfg.Logger,
	}
}

func (d *Driver) errorf(netID, format string, args ...any) error {
	return fmt.Errorf("%s: network %s: %w", d.name, naming.ShortID(netID), fmt.Errorf(format, args...))
}

// GetCapabilities reports a local-scope driver.
func (d *Driver) GetCapabilities(context.Context, *struct{}) (*network.CapabilitiesResponse, error) {
	return &network.CapabilitiesResponse{Scope: network.LocalScope, ConnectivityScope: network.LocalScope}, nil
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
	nw, extra, err := d.chooser.Choose(ctx, cniconf.Options{Flag: "--opt", Values: opts, Known: []string{OptAsyncDelete},
		Purpose: "this Docker network uses"})
	if err != nil {
		return nil, nil, err
	}
	asyncDelete, err := boolOption(opts, OptAsyncDelete)
	if err != nil {
		return nil, nil, err
	}
	rec := &state.Network{ID: req.NetworkID, CNIName: nw.Name, Conflist: nw.Bytes, Created: time.Now().UTC(), Extra: extra,
		AsyncDelete: asyncDelete, Mode: state.ModeNull}
	if v4 := firstIPAM(req.IPv4Data); v4 != nil {
		rec.IPv4Pool, rec.IPv4Gateway = v4.Pool, v4.Gateway
		rec.Mode = state.ModeOf(v4.AddressSpace)
	}
	if v6 := firstIPAM(req.IPv6Data); v6 != nil {
		rec.IPv6Pool = v6.Pool
	}
	return rec, nw, nil
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
	if rec.AsyncDelete && rec.Mode == state.ModeDocker {
		// Docker's IPAM may hand the address to the next container before a background DEL has released it in
		// the CNI IPAM, whose ADD would then fail.
		return fmt.Errorf("--opt %s=true needs addresses from CNI (--ipam-driver %s) or none (--ipam-driver null): with Docker's IPAM an address could be reused before its CNI DEL ran",
			OptAsyncDelete, d.name)
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
	atts, err := d.store.Attachments()
	if err != nil {
		return nil, d.errorf(req.NetworkID, "reading state: %w", err)
	}
	var errs []error
	for _, a := range atts {
		if a.NetworkID == req.NetworkID {
			if err := d.mgr.Remove(ctx, a); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return nil, d.errorf(req.NetworkID, "removing leftover attachments: %w", errors.Join(errs...))
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
	d.log.Info("network deleted", "network", req.NetworkID)
	return nil, nil
}

// CreateEndpoint creates (or, with cniplug IPAM, claims) the endpoint's CNI attachment in a staging netns and
// tells Docker the address and MAC it got, for whichever fields Docker's IPAM left empty.
func (d *Driver) CreateEndpoint(ctx context.Context, req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	nw, err := d.store.Network(req.NetworkID)
	if err != nil {
		return nil, d.errorf(req.NetworkID, "unknown to %s (its state was lost?): %w", d.name, err)
	}
	want := network.EndpointInterface{}
	if req.Interface != nil {
		want = *req.Interface
	}
	a, err := d.store.AttachmentByEndpoint(req.EndpointID)
	if err == nil {
		return endpointResponse(want, a), nil // a retried CreateEndpoint
	}
	cniNet, err := cnibridge.ParseNetwork(nw.Conflist)
	if err != nil {
		return nil, d.errorf(req.NetworkID, "recorded conflist: %w", err)
	}
	bindings, err := hostports.ParseDockerPortmap(req.Options[hostports.OptionPortMap])
	if err != nil {
		return nil, d.errorf(req.NetworkID, "CNI network %q: %w", nw.CNIName, err)
	}
	epExtra, err := endpointExtra(req.Options)
	if err != nil {
		return nil, d.errorf(req.NetworkID, "CNI network %q: driver-opt: %w", nw.CNIName, err)
	}
	if nw.Mode == state.ModeCNIIPAM && !epExtra.Empty() {
		return nil, d.errorf(req.NetworkID, "CNI network %q: driver-opt cni.* cannot be applied on a network with %s IPAM: the CNI ADD already ran when Docker allocated the address; set them per network with --ipam-opt, or use --ipam-driver null or Docker IPAM", nw.CNIName, d.name)
	}
	extra := nw.Extra.Merge(epExtra)
	if err := extra.Check(nw.CNIName, cniNet.Capabilities()); err != nil {
		return nil, d.errorf(req.NetworkID, "CNI network %q: driver-opt: %w", nw.CNIName, err)
	}
	var ports []hostports.Mapping
	if len(bindings) > 0 {
		if ports, err = d.mgr.ResolvePorts(bindings); err != nil {
			return nil, d.errorf(req.NetworkID, "CNI network %q: cannot publish ports: %w", nw.CNIName, err)
		}
	}
	if nw.Mode == state.ModeCNIIPAM {
		ip := naming.Address(want.Address)
		a, err = d.store.ClaimPending(nw.CNIName, ip, req.NetworkID, req.EndpointID)
		if err != nil {
			return nil, d.errorf(req.NetworkID, "no address %s allocated by %s IPAM is waiting on CNI network %q: %w", ip, d.name, nw.CNIName, err)
		}
		// The CNI ADD ran at RequestAddress, before Docker said which ports to publish: cniplug programs them.
		if err := d.publish(ctx, a, ports, true); err != nil {
			return nil, d.errorf(req.NetworkID, "CNI network %q: %w", nw.CNIName, err)
		}
		return endpointResponse(want, a), nil
	}
	// With portmap in the chain, the CNI network publishes the ports itself (portMappings capability).
	viaPortmap := len(ports) > 0 && cniNet.Capabilities()["portMappings"]
	var requested []string
	for _, addr := range []string{want.Address, want.AddressIPv6} {
		if addr != "" {
			requested = append(requested, addr)
		}
	}
	if len(requested) > 1 && !cniNet.Capabilities()["ips"] {
		// Dual stack from Docker's IPAM: CNI_ARGS IP= carries one address, args.cni.ips carries both.
		if cniNet, err = cniNet.WithArgs(map[string]any{"ips": requested}); err != nil {
			return nil, d.errorf(req.NetworkID, "CNI network %q: requesting %v: %w", nw.CNIName, requested, err)
		}
	}
	addReq := cnibridge.AddRequest{
		ContainerID: req.EndpointID,
		Network:     cniNet,
	}
	addReq.Args, addReq.CapabilityArgs = extra.Apply(cnibridge.RequestArgs(cniNet, requested, want.MacAddress))
	if viaPortmap {
		if addReq.CapabilityArgs == nil {
			addReq.CapabilityArgs = map[string]any{}
		}
		addReq.CapabilityArgs["portMappings"] = portMappings(ports)
	}
	a, err = d.mgr.Add(ctx, addReq, state.Attachment{Phase: state.PhaseEndpoint, NetworkID: req.NetworkID, EndpointID: req.EndpointID})
	if err != nil {
		return nil, d.errorf(req.NetworkID, "CNI network %q: %w", nw.CNIName, err)
	}
	err = mismatch(want, a)
	if err == nil {
		err = d.publish(ctx, a, ports, !viaPortmap)
	} else if rerr := d.mgr.Remove(context.WithoutCancel(ctx), a); rerr != nil {
		err = fmt.Errorf("%w; removing it also failed: %v", err, rerr)
	}
	if err != nil {
		return nil, d.errorf(req.NetworkID, "CNI network %q: %w", nw.CNIName, err)
	}
	return endpointResponse(want, a), nil
}

// publish programs the endpoint's published ports; on failure the whole attachment is removed (through the
// one teardown path, which also removes any rule already recorded), so a failed `docker run -p` leaks nothing.
func (d *Driver) publish(ctx context.Context, a *state.Attachment, ports []hostports.Mapping, dnat bool) error {
	if len(ports) == 0 {
		return nil
	}
	err := d.mgr.PublishPorts(a, ports, dnat)
	if err == nil {
		return nil
	}
	err = fmt.Errorf("cannot publish ports: %w", err)
	if rerr := d.mgr.Remove(context.WithoutCancel(ctx), a); rerr != nil {
		err = fmt.Errorf("%w; removing the attachment also failed: %v", err, rerr)
	}
	return err
}

// endpointExtra reads the cni.* options of `docker run --network name=N,driver-opt=cni.<...>=<value>`, which
// Docker passes as top-level CreateEndpoint options. Keys Docker itself sets (com.docker.*) are not ours.
func endpointExtra(options map[string]any) (cniargs.Extra, error) {
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

// mismatch reports a CNI result that differs from what Docker asked for.
func mismatch(want network.EndpointInterface, a *state.Attachment) error {
	got := a.Interface
	if want.Address != "" && naming.Address(want.Address) != naming.Address(got.IPv4) {
		return fmt.Errorf("Docker's IPAM chose %s but CNI assigned %s (does the CNI IPAM honour IP=/ips requests?)", want.Address, orNone(got.IPv4))
	}
	if want.AddressIPv6 != "" && naming.Address(want.AddressIPv6) != naming.Address(got.IPv6) {
		return fmt.Errorf("Docker's IPAM chose %s but CNI assigned %s", want.AddressIPv6, orNone(got.IPv6))
	}
	if want.MacAddress != "" && !strings.EqualFold(want.MacAddress, got.MAC) {
		return fmt.Errorf("requested MAC %s but CNI set %s", want.MacAddress, got.MAC)
	}
	return nil
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
	if err := d.mgr.Join(a); err != nil {
		return nil, d.errorf(req.NetworkID, "endpoint %s: %w", naming.ShortID(req.EndpointID), err)
	}
	resp := &network.JoinResponse{
		InterfaceName: network.InterfaceName{SrcName: a.HostIfName, DstPrefix: "eth"},
		Gateway:       a.Interface.Gateway,
		GatewayIPv6:   a.Interface.GatewayIPv6,
		// The container gets exactly the routes CNI set up; no docker_gwbridge behind the driver's back.
		DisableGatewayService: true,
	}
	for _, r := range a.Interface.Routes {
		sr := &network.StaticRoute{Destination: r.Destination, NextHop: r.NextHop}
		if r.NextHop == "" {
			sr.RouteType = routeConnected
		}
		resp.StaticRoutes = append(resp.StaticRoutes, sr)
	}
	return resp, nil
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

// boolOption reads an optional true/false option.
func boolOption(opts map[string]string, key string) (bool, error) {
	v, ok := opts[key]
	if !ok || v == "" {
		return false, nil
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
