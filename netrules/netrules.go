// Package netrules programs the host firewall rules that make each cniplug Docker network behave like one of
// Docker's own bridge networks: its containers reach each other and (unless it is --internal) the outside,
// nobody outside the network opens connections into it except through a published port, and an internal
// network neither lets anything in nor out.
//
// The rules are per Docker network, never per container: a network is described by its prefixes (the subnets
// of its containers' addresses, and the prefixes it routes to, such as the other hosts' ranges of a routed
// multi-host network) and by its bridges. A container whose addresses fall in prefixes the network already
// has changes nothing, so the usual container costs no iptables command at all.
//
// One place per job, each reached from a top chain of the cniplug instance (CNIPLUG-<job>-<instance>):
//   - Isolation (drops) in the mangle table's FORWARD chain, CNIPLUG-ISOLATION: the mangle hook runs before the
//     filter table, and a drop there is final, whatever accepts the filter table holds in whatever order:
//     Docker's DOCKER-FORWARD accepts everything from its own bridges, the firewall CNI plugin inserts its
//     accepts at the top of FORWARD, and Docker's nftables backend accepts in its own table.
//   - Forwarding (accepts) in the filter table, CNIPLUG-NETWORKS, jumped to from FORWARD after Docker's chains:
//     Docker's iptables backend sets the FORWARD policy to DROP, and frames bridged between two ports of a
//     CNI bridge traverse FORWARD too when br_netfilter's bridge-nf-call-iptables is 1.
//   - Masquerade, for the networks that ask for it, in the nat table's POSTROUTING chain, CNIPLUG-MASQUERADE.
package netrules

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"

	"github.com/cniplug/cniplug/iptcmd"
)

// Member is what one Docker network, or one of its containers, adds to the network's rule set. The rule set
// of a network is the union of its members; it is programmed when that union changes.
type Member struct {
	// ID identifies the member: the attachment's ID for a container, the Docker network's ID for the network
	// itself.
	ID string `json:"id"`
	// Network is the Docker network's ID.
	Network string `json:"network,omitempty"`
	// Addresses are the container's addresses in CIDR form; their subnets are the network's prefixes.
	Addresses []string `json:"addresses,omitempty"`
	// Peers are other prefixes of the network: those the container routes to through its link (the other
	// hosts' ranges of a routed network), or the subnets the network's IPAM declares.
	Peers []string `json:"peers,omitempty"`
	// Bridges are the network's bridges on this host: frames bridged between their ports stay in the network.
	Bridges []string `json:"bridges,omitempty"`
	// Internal (docker network create --internal): nothing leaves the network and nothing enters it.
	Internal bool `json:"internal,omitempty"`
	// Masquerade: traffic from the network's prefixes to anywhere outside the network leaves with the host's
	// address, as Docker's bridge networks do, once for the network instead of per container (a chain's ipMasq).
	Masquerade bool `json:"masquerade,omitempty"`
}

// Chain names. A network's chains carry the first 12 characters of its Docker network ID, as Docker's
// br-<id> bridges do. The top chains carry the instance's tag: each cniplug on a host (a host plugin beside a
// managed one, or another state directory) rewrites only its own.
const (
	isolationPrefix = "CNIPLUG-ISOLATION"  // mangle, from FORWARD (first)
	networksPrefix  = "CNIPLUG-NETWORKS"   // filter, from FORWARD (after Docker's chains)
	masqPrefix      = "CNIPLUG-MASQUERADE" // nat, from POSTROUTING
	netChainPrefix  = "CNIPLUG-ISO-"       // mangle, one per network, and -D for an internal network's second half
	netMasqPrefix   = "CNIPLUG-MASQ-"      // nat, one per masquerading network
	tableMangle     = "mangle"
	tableFilter     = "filter"
	tableNAT        = "nat"
)

// Rules programs the rule sets of every network of one cniplug instance. Members come and go through Join and
// Leave; Load replaces them all (at startup, from the state store).
type Rules struct {
	mu       sync.Mutex
	families []*family
	members  map[string]Member
	top      topChains
}

// topChains names an instance's top chains.
type topChains struct {
	isolation, networks, masquerade string
}

// Instance returns the tag cniplug versions before the state store's own (state.Store.Instance) derived from
// the state dir: six hex digits of its hash, short enough for iptables' 28-character chain names.
func Instance(stateDir string) string {
	sum := sha256.Sum256([]byte(stateDir))
	return hex.EncodeToString(sum[:3])
}

// New returns Rules that run the given iptables and ip6tables commands ("" looks them up in PATH), those of
// the host's iptables backend. Without ip6tables only IPv4 is filtered, as nothing of Docker's filters IPv6
// there either.
// instance tags the top chains (Instance).
func New(v4Path, v6Path, instance string) (*Rules, error) {
	r := &Rules{members: map[string]Member{}, top: topChains{isolation: isolationPrefix, networks: networksPrefix, masquerade: masqPrefix}}
	if instance != "" {
		r.top = topChains{isolation: isolationPrefix + "-" + instance, networks: networksPrefix + "-" + instance,
			masquerade: masqPrefix + "-" + instance}
	}
	for _, f := range []struct {
		path string
		v6   bool
	}{{v4Path, false}, {v6Path, true}} {
		cmd, err := iptcmd.New(f.path, f.v6)
		if err != nil {
			if !f.v6 {
				return nil, fmt.Errorf("iptables is needed for the networks' firewall rules: %w", err)
			}
			continue
		}
		r.families = append(r.families, &family{v6: f.v6, cmd: cmd, top: r.top})
	}
	return r, nil
}

// Join adds or replaces a member and programs its network's rules if they changed.
func (r *Rules) Join(ctx context.Context, m Member) error {
	if m.ID == "" || m.Network == "" {
		return errors.New("network rules: member without an id or network")
	}
	if err := m.validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old, had := r.members[m.ID]
	r.members[m.ID] = m
	if err := r.program(ctx); err != nil {
		if had {
			r.members[m.ID] = old
		} else {
			delete(r.members, m.ID)
		}
		return err
	}
	return nil
}

// Leave removes a member and programs its network's rules if they changed; a network whose last member left
// has no rules any more. Leaving twice succeeds.
func (r *Rules) Leave(ctx context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, had := r.members[id]
	if !had {
		return nil
	}
	delete(r.members, id)
	if err := r.program(ctx); err != nil {
		r.members[id] = old
		return err
	}
	return nil
}

// Load replaces every member with the given ones and programs the result, removing the chains of networks
// that are gone (cniplug stopped while Docker removed them) and those of cniplug versions that kept one chain
// per container.
func (r *Rules) Load(ctx context.Context, members []Member) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.members = map[string]Member{}
	for _, m := range members {
		if m.ID == "" || m.Network == "" || m.validate() != nil {
			continue
		}
		r.members[m.ID] = m
	}
	var errs []error
	for _, f := range r.families {
		rs, err := f.cmd.Read(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("reading the %s firewall rules: %w", f.name(), err))
			continue
		}
		f.chains, f.programmed = existingChains(r.top, rs), "" // removed by the next batch unless still wanted
		var legacy iptcmd.Batch
		removeLegacy(&legacy, rs)
		if err := f.cmd.Write(ctx, &legacy); err != nil {
			errs = append(errs, fmt.Errorf("removing the per-container rules of an earlier cniplug: %w", err))
		}
	}
	errs = append(errs, r.program(ctx))
	return errors.Join(errs...)
}

func (m Member) validate() error {
	for _, a := range m.Addresses {
		if _, _, err := net.ParseCIDR(a); err != nil {
			return fmt.Errorf("network rules: invalid address %q (want CIDR)", a)
		}
	}
	for _, p := range m.Peers {
		if _, _, err := net.ParseCIDR(p); err != nil {
			return fmt.Errorf("network rules: invalid prefix %q (want CIDR)", p)
		}
	}
	for _, b := range m.Bridges {
		if b == "" || len(b) > 15 || strings.ContainsAny(b, " /\t\n\"'") {
			return fmt.Errorf("network rules: invalid bridge name %q", b)
		}
	}
	return nil
}

// program applies every family's batch when it differs from the one last applied. Caller holds mu.
func (r *Rules) program(ctx context.Context) error {
	sets := networkSets(r.members)
	var errs []error
	for _, f := range r.families {
		if err := f.apply(ctx, sets); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sortedUnique sorts and deduplicates in place.
func sortedUnique(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// Repair programs again every family whose jumps went missing behind cniplug's back (a flushed table, a
// firewalld reload): the rule set is only rewritten when it changes, so nothing else would put them back. It
// costs one iptables-save per family and reports whether it had to repair.
func (r *Rules) Repair(ctx context.Context) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	repaired := false
	for _, f := range r.families {
		if f.programmed == "" {
			continue
		}
		ok, err := f.intact(ctx)
		if err != nil {
			return false, err
		}
		if !ok {
			f.programmed = ""
			repaired = true
		}
	}
	if !repaired {
		return false, nil
	}
	return true, r.program(ctx)
}
