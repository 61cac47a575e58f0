package driver

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/cniconf"
	"github.com/cniplug/cniplug/state"
	"github.com/docker/go-plugins-helpers/network"
)

// CreateNetwork binds the Docker network to the CNI network named by --opt cni: it reads the options, checks
// that the addressing Docker chose can work with the CNI network, validates the combination and records it.
// The conflist bytes are recorded so later edits of the file cannot break DEL of existing attachments.
func (d *Driver) CreateNetwork(ctx context.Context, req *network.CreateNetworkRequest) (*struct{}, error) {
	if err := validateCreateNetwork(req); err != nil {
		return nil, d.invalid(err)
	}
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
	if err := d.mgr.AddNetwork(ctx, rec); err != nil {
		return nil, d.errorf(req.NetworkID, "%w", err)
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
	if err := takeICC(opts); err != nil {
		return nil, nil, err
	}
	nw, extra, err := d.chooser.Choose(ctx, cniconf.Options{Flag: "--opt", Values: opts, Known: []string{OptAsyncDelete, OptHostFirewall, OptDirectJoin, OptMasquerade},
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
	masquerade, err := boolOption(opts, OptMasquerade, false)
	if err != nil {
		return nil, nil, err
	}
	internal, err := dockerFlags(req.Options)
	if err != nil {
		return nil, nil, err
	}
	rec := &state.Network{ID: req.NetworkID, CNIName: nw.Name, Conflist: nw.Bytes, Created: time.Now().UTC(), Extra: extra,
		Internal: internal, NoHostFirewall: !hostFirewall, DirectJoin: directJoin, Masquerade: masquerade, Mode: state.ModeNull}
	if v4 := firstIPAM(req.IPv4Data); v4 != nil {
		rec.IPv4Pool, rec.IPv4Gateway = v4.Pool, v4.Gateway
		rec.Mode = state.ModeOf(v4.AddressSpace)
	}
	if v6 := firstIPAM(req.IPv6Data); v6 != nil {
		rec.IPv6Pool = v6.Pool
	}
	// DEL runs in the background by default. The CNI IPAM keeps the address reserved until DEL releases it;
	// an ADD that asks for an address a background removal still holds (Docker's IPAM hands a released
	// address out again at once; --ip) finishes that removal first (attach.Manager.Apply).
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
		return fmt.Errorf("--internal needs cniplug's firewall rules to keep traffic inside the network: drop --opt %s=false", OptHostFirewall)
	}
	if rec.Masquerade && (rec.Internal || rec.NoHostFirewall) {
		return fmt.Errorf("--opt %s=true masquerades what leaves the network, which needs cniplug's firewall rules and a network that traffic may leave: drop it with --internal or --opt %s=false", OptMasquerade, OptHostFirewall)
	}
	return d.checkSharedCNINetwork(rec)
}

// checkSharedCNINetwork refuses an internal and a non-internal Docker network on one CNI network: they would
// share its bridge and subnet, and the rules tell networks apart by those alone.
func (d *Driver) checkSharedCNINetwork(rec *state.Network) error {
	if rec.NoHostFirewall {
		return nil
	}
	others, err := d.store.Networks()
	if err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	for _, o := range others {
		if o.CNIName != rec.CNIName || o.NoHostFirewall || o.Internal == rec.Internal {
			continue
		}
		kind := map[bool]string{true: "an internal", false: "a non-internal"}
		return fmt.Errorf("CNI network %q already backs %s Docker network (%.12s), and cniplug cannot keep %s and %s network apart on one CNI network: they share its bridge and subnet. "+
			"Use another CNI network (another bridge and subnet) for this one", rec.CNIName, kind[o.Internal], o.ID, kind[true], kind[false])
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
	if wantGW == "" {
		wantGW = "none"
	}
	if gw == "" {
		gw = "none"
	}
	return fmt.Errorf("CNI network %q assigns %s addresses from %s (gateway %s) but Docker's IPAM chose %s (gateway %s): "+
		"create the network with %s, or use --ipam-driver cniplug --ipam-opt cni=%s",
		nw.Name, family, r.Subnet, wantGW, pool, gw, flags, nw.Name)
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
	if err := checkNetworkID(req.NetworkID); err != nil {
		return nil, d.invalid(err)
	}
	if err := d.mgr.RemoveNetwork(ctx, req.NetworkID); err != nil {
		return nil, d.errorf(req.NetworkID, "%w", err)
	}
	d.log.Info("network deleted", "network", req.NetworkID)
	return nil, nil
}

// CreateEndpoint creates (or, with cniplug IPAM, claims) the endpoint's CNI attachment in a staging netns and

func firstIPAM(data []*network.IPAMData) *network.IPAMData {
	if len(data) == 0 {
		return nil
	}
	return data[0]
}
