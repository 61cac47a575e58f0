// Package ipam is cniplug's libnetwork IpamDriver: it lets a CNI network's own IPAM (host-local, Calico,
// DHCP, ...) choose container addresses, by running the CNI ADD when Docker asks for an address.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/cniconf"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/state"
	"github.com/docker/go-plugins-helpers/ipam"
)

// libnetwork's keys.
const (
	requestAddressType = "RequestAddressType"
	gatewayType        = "com.docker.network.gateway"
	poolGatewayKey     = "com.docker.network.gateway"
	macAddressOption   = "com.docker.network.endpoint.macaddress"
	// endpointNameOption: the endpoint's name (the container's name), sent with RequestAddress since Docker 29.
	endpointNameOption = "com.docker.network.endpoint.name"
)

// OptWarmPool (--ipam-opt warm-pool=N) keeps N attachments added ahead of RequestAddress.
const OptWarmPool = "warm-pool"

// maxWarmPool bounds a warm pool: each warm attachment holds an address, a staging netns and a veth pair.
const maxWarmPool = 64

// Ipam implements the IpamDriver side of cniplug.
type Ipam struct {
	name    string          // the driver name Docker knows the plugin by, for messages
	chooser cniconf.Chooser // shared with the network driver: the conf dirs and the default network
	mgr     *attach.Manager
	store   *state.Store
	log     *slog.Logger
	// maxWarmTotal bounds the warm attachments of all pools together: each holds an address of a CNI network
	// that other networks, and other users of the host, share. warmMu makes checking and recording atomic.
	maxWarmTotal int
	warmMu       sync.Mutex
}

// DefaultMaxWarmTotal is the default bound on the warm attachments of all pools together.
const DefaultMaxWarmTotal = 64

// New returns an Ipam whose pools use the CNI networks chooser picks, with at most maxWarmTotal warm
// attachments across its pools.
func New(name string, chooser cniconf.Chooser, mgr *attach.Manager, log *slog.Logger, maxWarmTotal int) *Ipam {
	return &Ipam{name: name, chooser: chooser, mgr: mgr, store: mgr.Store(), log: log, maxWarmTotal: maxWarmTotal}
}

func (p *Ipam) errorf(format string, args ...any) error {
	return fmt.Errorf("%s IPAM: %w", p.name, fmt.Errorf(format, args...))
}

// GetCapabilities asks Docker for the endpoint's MAC with every RequestAddress. Docker then generates one for
// each endpoint (or uses --mac-address) and sends it with both the IPv4 and the IPv6 request: it is the only
// endpoint identity those calls carry, and it pairs the IPv6 request with the CNI attachment the IPv4 request
// created. The MAC is also requested from CNI (MAC=/mac capability), and Docker sets it on the container's
// interface, so inspect and the container agree.
func (p *Ipam) GetCapabilities(context.Context, *struct{}) (*ipam.CapabilitiesResponse, error) {
	return &ipam.CapabilitiesResponse{RequiresMACAddress: true}, nil
}

// GetDefaultAddressSpaces returns cniplug's address spaces.
func (p *Ipam) GetDefaultAddressSpaces(context.Context, *struct{}) (*ipam.AddressSpacesResponse, error) {
	return &ipam.AddressSpacesResponse{LocalDefaultAddressSpace: state.LocalAddressSpace, GlobalDefaultAddressSpace: state.GlobalAddressSpace}, nil
}

// RequestPool binds a pool to the CNI network named by --ipam-opt cni. The pool is the CNI network's declared
// range (0.0.0.0/0 when its IPAM declares none, e.g. Calico or DHCP), and the gateway is given in the pool
// data so that Docker does not allocate one: the CNI network owns every address.
func (p *Ipam) RequestPool(ctx context.Context, req *ipam.RequestPoolRequest) (*ipam.RequestPoolResponse, error) {
	if err := validateRequestPool(req); err != nil {
		return nil, p.errorf("%w", err)
	}
	if req.SubPool != "" {
		return nil, p.errorf("--ip-range is not supported: the CNI network chooses addresses from its own ranges")
	}
	nw, extra, err := p.chooser.Choose(ctx, cniconf.Options{Flag: "--ipam-opt", Values: req.Options, Known: []string{OptWarmPool}, Purpose: "allocates the addresses"})
	if err != nil {
		return nil, p.errorf("%w", err)
	}
	warm, err := warmPoolOption(req.Options, nw)
	if err != nil {
		return nil, p.errorf("%w", err)
	}
	name := nw.Name
	cidr, gateway := "0.0.0.0/0", "0.0.0.0/0"
	if req.V6 {
		cidr, gateway = "::/0", "::/0"
		if ranges, ipamType := nw.DeclaredRanges(); len(ranges) > 0 && nw.FirstRange(true) == nil {
			return nil, p.errorf("CNI network %q assigns no IPv6 addresses (its %s IPAM declares only IPv4 ranges), so --ipv6 cannot be honoured: "+
				"add an IPv6 range to the conflist, or create the network without --ipv6", name, ipamType)
		}
	}
	if r := nw.FirstRange(req.V6); r != nil {
		cidr = r.Subnet.String()
		if r.Gateway != nil {
			ones, _ := r.Subnet.Mask.Size()
			gateway = fmt.Sprintf("%s/%d", r.Gateway, ones)
		}
		if req.Pool != "" && !sameCIDR(req.Pool, cidr) {
			return nil, p.errorf("--subnet %s does not match CNI network %q's range %s: omit --subnet, or pass --subnet %s", req.Pool, name, cidr, cidr)
		}
	} else if req.Pool != "" {
		return nil, p.errorf("CNI network %q declares no address range, so --subnet %s cannot be honoured: omit --subnet", name, req.Pool)
	}
	if req.Pool == "" && !req.V6 {
		// Without --subnet, libnetwork checks a returned pool against the host's interfaces and routes and,
		// on overlap, releases it and asks again, forever: the CNI network's range always overlaps once its
		// bridge exists (a second Docker network on it, or a re-created one). 0.0.0.0/0 is exempt from that
		// check; the CNI IPAM still owns every address. With --subnet Docker skips the check.
		cidr, gateway = "0.0.0.0/0", "0.0.0.0/0"
	}
	pool := &state.Pool{ID: newPoolID(), CNIName: nw.Name, Conflist: nw.Bytes, CIDR: cidr, V6: req.V6, Extra: extra,
		Created: time.Now().UTC()}
	if !req.V6 {
		pool.Warm = warm // the IPv4 request runs the ADD, which assigns both families
	}
	if err := p.recordPool(pool); err != nil {
		return nil, p.errorf("%w", err)
	}
	p.log.Info("pool requested", "pool", pool.ID, "cni_network", nw.Name, "cidr", cidr, "v6", req.V6, "warm", pool.Warm)
	p.mgr.StartWarmPool(pool)
	return &ipam.RequestPoolResponse{PoolID: pool.ID, Pool: cidr, Data: map[string]string{poolGatewayKey: gateway}}, nil
}

// recordPool records the pool if its warm attachments fit under the bound shared by all pools.
func (p *Ipam) recordPool(pool *state.Pool) error {
	p.warmMu.Lock()
	defer p.warmMu.Unlock()
	if pool.Warm > 0 {
		pools, err := p.store.Pools()
		if err != nil {
			return fmt.Errorf("reading pools: %w", err)
		}
		total := pool.Warm
		for _, other := range pools {
			total += other.Warm
		}
		if total > p.maxWarmTotal {
			return fmt.Errorf("--ipam-opt %s=%d would bring the warm attachments of all of this plugin's pools to %d, over its limit of %d "+
				"(each holds an address of a CNI network others share; an operator raises it with --warm-pool-max-total, env CNIPLUG_WARM_POOL_MAX_TOTAL): "+
				"ask for fewer", OptWarmPool, pool.Warm, total, p.maxWarmTotal)
		}
	}
	if err := p.store.PutPool(pool); err != nil {
		return fmt.Errorf("recording pool: %w", err)
	}
	return nil
}

// warmPoolOption reads --ipam-opt warm-pool=N and checks that the CNI network's attachments can be added
// before their container is known.
func warmPoolOption(opts map[string]string, nw *cnibridge.Network) (int, error) {
	v, ok := opts[OptWarmPool]
	if !ok {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > maxWarmPool {
		return 0, fmt.Errorf("--ipam-opt %s=%q: want a number of attachments from 0 to %d", OptWarmPool, v, maxWarmPool)
	}
	if n > 0 {
		if err := nw.CheckWarmPool(); err != nil {
			return 0, fmt.Errorf("--ipam-opt %s: %w", OptWarmPool, err)
		}
	}
	return n, nil
}

// releasedPool looks up the pool a release names. A pool cniplug does not know is already released (Docker
// retries releases and must not get stuck): then it returns nil and no error.
func (p *Ipam) releasedPool(id string) (*state.Pool, error) {
	pool, err := p.store.Pool(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, p.errorf("reading state: %w", err)
	}
	return pool, nil
}

// ReleasePool forgets the pool and tears down addresses allocated from it that no endpoint claimed.
func (p *Ipam) ReleasePool(ctx context.Context, req *ipam.ReleasePoolRequest) (*struct{}, error) {
	if err := checkPoolID(req.PoolID); err != nil {
		return nil, p.errorf("%w", err)
	}
	pool, err := p.releasedPool(req.PoolID)
	if pool == nil {
		return nil, err
	}
	if err := p.mgr.ReleaseWarmPool(ctx, pool.ID); err != nil {
		return nil, p.errorf("pool %s: its warm pool: %w", pool.ID, err)
	}
	if err := p.mgr.RemovePending(ctx, pool.ID); err != nil {
		return nil, p.errorf("pool %s: %w", pool.ID, err)
	}
	if err := p.store.DeletePool(pool.ID); err != nil {
		return nil, p.errorf("forgetting pool: %w", err)
	}
	return nil, nil
}

// RequestAddress runs the CNI ADD (Docker has no other way to learn the address CNI will assign) into a
// staging netns and keeps the attachment pending until CreateEndpoint claims it by address.
func (p *Ipam) RequestAddress(ctx context.Context, req *ipam.RequestAddressRequest) (*ipam.RequestAddressResponse, error) {
	if err := validateRequestAddress(req); err != nil {
		return nil, p.errorf("%w", err)
	}
	pool, err := p.store.Pool(req.PoolID)
	if err != nil {
		return nil, p.errorf("unknown pool %q: %w", req.PoolID, err)
	}
	if req.Options[requestAddressType] == gatewayType {
		// Only reached with an explicit --gateway: the pool data already carries the CNI gateway.
		if req.Address == "" {
			return nil, p.errorf("CNI network %q: no gateway to allocate", pool.CNIName)
		}
		return &ipam.RequestAddressResponse{Address: inPool(req.Address, pool)}, nil
	}
	mac := req.Options[macAddressOption]
	if pool.V6 {
		return p.requestV6(pool, req.Address, mac)
	}
	warm, err := p.mgr.ClaimWarm(ctx, pool, req.Address, mac)
	if err != nil {
		return nil, p.errorf("CNI network %q: %w", pool.CNIName, err)
	}
	if warm != nil {
		return &ipam.RequestAddressResponse{Address: warm.Interface.IPv4}, nil
	}
	nw, err := cnibridge.ParseNetwork(pool.Conflist)
	if err != nil {
		return nil, p.errorf("recorded conflist of %q: %w", pool.CNIName, err)
	}
	var requested []string
	if req.Address != "" {
		requested = []string{inPool(req.Address, pool)}
	}
	addReq := cnibridge.AddRequest{ContainerID: naming.RandomID(), Network: nw}
	addReq.Args, addReq.CapabilityArgs = pool.Extra.Apply(cnibridge.RequestArgs(nw, requested, mac))
	// Docker puts no limit on container names: a long one is shortened (naming.BoundName), never refused.
	addReq.Args = cnibridge.WithContainerName(addReq.Args, naming.BoundName(req.Options[endpointNameOption]))
	a, err := p.mgr.Apply(ctx, attach.Plan{
		Add:   addReq,
		Owner: state.Attachment{Phase: state.PhasePending, PoolID: pool.ID, RequestMAC: mac},
		Want:  attach.Want{Address: req.Address, NeedIPv4: true},
	})
	if err != nil {
		return nil, p.errorf("CNI network %q: %w", pool.CNIName, err)
	}
	return &ipam.RequestAddressResponse{Address: a.Interface.IPv4}, nil
}

// inPool writes address as a CIDR with the pool's prefix length.
func inPool(address string, pool *state.Pool) string {
	_, poolNet, _ := net.ParseCIDR(pool.CIDR)
	ones, _ := poolNet.Mask.Size()
	return fmt.Sprintf("%s/%d", address, ones)
}

// requestV6 answers Docker's IPv6 RequestAddress, which follows the endpoint's IPv4 one: the IPv4 request ran
// the CNI ADD, which also assigned the IPv6 address. The pending attachment is found by the endpoint's MAC.
func (p *Ipam) requestV6(pool *state.Pool, address, mac string) (*ipam.RequestAddressResponse, error) {
	a, err := p.store.TakePendingV6(pool.CNIName, mac)
	if errors.Is(err, state.ErrAmbiguous) {
		return nil, p.errorf("CNI network %q: several containers are starting at once and Docker sent no endpoint MAC with the IPv6 address request, so it cannot be paired with its CNI attachment: "+
			"restart dockerd once so that it reads %s IPAM's capabilities again (it caches them from the first activation of the plugin)", pool.CNIName, p.name)
	}
	if errors.Is(err, state.ErrNotFound) {
		return nil, p.errorf("CNI network %q: no CNI attachment waits for the IPv6 address of endpoint MAC %s (its IPv4 address must be requested first)", pool.CNIName, mac)
	}
	if err != nil {
		return nil, p.errorf("reading state: %w", err)
	}
	got := a.Interface.IPv6
	switch {
	case got == "":
		return nil, p.errorf("CNI network %q assigned no IPv6 address, but the Docker network has --ipv6: add an IPv6 range to the CNI network, or create the Docker network without --ipv6", pool.CNIName)
	case address != "" && naming.Address(got) != address:
		return nil, p.errorf("CNI network %q assigned %s, not the requested --ip6 %s: with %s IPAM the CNI ADD runs when the IPv4 address is allocated, before Docker asks for IPv6, so --ip6 can only be honoured when it is what CNI assigns; use Docker IPAM (--subnet and --gateway for both families) to choose IPv6 addresses",
			pool.CNIName, got, address, p.name)
	}
	return &ipam.RequestAddressResponse{Address: got}, nil
}

// ReleaseAddress tears down a pending attachment nobody claimed; the release Docker sends after deleting an
// endpoint finds nothing pending (DeleteEndpoint already tore that attachment down).
func (p *Ipam) ReleaseAddress(ctx context.Context, req *ipam.ReleaseAddressRequest) (*struct{}, error) {
	if err := validateReleaseAddress(req); err != nil {
		return nil, p.errorf("%w", err)
	}
	pool, err := p.releasedPool(req.PoolID)
	if pool == nil {
		return nil, err
	}
	if pool.V6 {
		return nil, nil // the attachment is released with its IPv4 address (or by DeleteEndpoint)
	}
	pending, err := p.store.TakeRelease(pool.CNIName, naming.Address(req.Address))
	if errors.Is(err, state.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, p.errorf("reading state: %w", err)
	}
	if pending == nil {
		return nil, nil // the release Docker owed an address an endpoint claimed
	}
	if err := p.mgr.Remove(ctx, pending); err != nil {
		return nil, p.errorf("releasing %s on CNI network %q: %w", req.Address, pool.CNIName, err)
	}
	return nil, nil
}

func sameCIDR(a, b string) bool {
	_, x, err1 := net.ParseCIDR(a)
	_, y, err2 := net.ParseCIDR(b)
	return err1 == nil && err2 == nil && x.String() == y.String()
}
