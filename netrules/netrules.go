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
// Two places, one per job:
//   - Isolation (drops) in the mangle table's FORWARD chain, CNIPLUG-ISOLATION: the mangle hook runs before the
//     filter table, and a drop there is final, whatever accepts the filter table holds in whatever order:
//     Docker's DOCKER-FORWARD accepts everything from its own bridges, the firewall CNI plugin inserts its
//     accepts at the top of FORWARD, and Docker's nftables backend accepts in its own table.
//   - Forwarding (accepts) in the filter table, CNIPLUG-NETWORKS, jumped to from FORWARD after Docker's chains:
//     Docker's iptables backend sets the FORWARD policy to DROP, and frames bridged between two ports of a
//     CNI bridge traverse FORWARD too when br_netfilter's bridge-nf-call-iptables is 1.
package netrules

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
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

// Instance returns the tag of the instance whose state lives in stateDir: six hex digits of its hash, short
// enough for iptables' 28-character chain names.
func Instance(stateDir string) string {
	sum := sha256.Sum256([]byte(stateDir))
	return hex.EncodeToString(sum[:3])
}

type family struct {
	top     topChains
	v6      bool
	ipt     *iptables.IPTables
	restore string
	// programmed is the batch last applied, and chains the per-network chains it made: a batch equal to the
	// last one is not applied again.
	programmed string
	chains     []string
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
		proto iptables.Protocol
		path  string
		def   string
	}{{iptables.ProtocolIPv4, v4Path, "iptables"}, {iptables.ProtocolIPv6, v6Path, "ip6tables"}} {
		var ipt *iptables.IPTables
		var err error
		if f.path != "" {
			ipt, err = iptables.New(iptables.IPFamily(f.proto), iptables.Timeout(10), iptables.Path(f.path))
		} else {
			ipt, err = iptables.New(iptables.IPFamily(f.proto), iptables.Timeout(10))
		}
		if err != nil {
			if f.proto == iptables.ProtocolIPv4 {
				return nil, fmt.Errorf("iptables is needed for the networks' firewall rules: %w", err)
			}
			continue
		}
		path := f.path
		if path == "" {
			path = f.def
		}
		r.families = append(r.families, &family{v6: f.proto == iptables.ProtocolIPv6, ipt: ipt, restore: path + "-restore", top: r.top})
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
		stale, err := f.existingChains()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.chains, f.programmed = stale, "" // removed by the next batch unless still wanted
		if err := f.removeLegacy(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, r.program(ctx))
	return errors.Join(errs...)
}

// Members returns the members by ID (for tests and the operator's view).
func (r *Rules) Members() map[string]Member {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]Member, len(r.members))
	for k, v := range r.members {
		out[k] = v
	}
	return out
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

func (f *family) name() string {
	if f.v6 {
		return "IPv6"
	}
	return "IPv4"
}

// apply programs the family's batch for the sets if it changed since the last one. The jumps from the
// built-in chains are checked each time a batch is applied, so a batch after a flush (a firewalld reload)
// puts them back.
func (f *family) apply(ctx context.Context, sets []networkSet) error {
	b := renderBatch(f.top, sets, f.v6, f.chains)
	if b.text == f.programmed {
		return nil
	}
	if b.empty {
		if err := f.removeJumps(); err != nil {
			return err
		}
	} else if err := f.ensureJumps(); err != nil {
		return err
	}
	if err := restore(ctx, f.restore, b.text); err != nil {
		f.programmed = "" // unknown state: the next change applies again
		return fmt.Errorf("programming the networks' %s firewall rules: %w", f.name(), err)
	}
	f.programmed, f.chains = b.text, b.chains
	if b.empty {
		f.programmed = ""
	}
	return nil
}

func (t topChains) isolationJump() []string {
	return []string{"-m", "comment", "--comment", "cniplug network isolation", "-j", t.isolation}
}

func (t topChains) acceptJump() []string {
	return []string{"-m", "comment", "--comment", "cniplug networks", "-j", t.networks}
}

func (t topChains) masqueradeJump() []string {
	return []string{"-m", "comment", "--comment", "cniplug network masquerade", "-j", t.masquerade}
}

// jumps are the instance's jumps from the built-in chains, with the table and chain each sits in.
func (t topChains) jumps() []struct {
	table, from, chain string
	rule               []string
} {
	return []struct {
		table, from, chain string
		rule               []string
	}{
		{tableMangle, "FORWARD", t.isolation, t.isolationJump()},
		{tableFilter, "FORWARD", t.networks, t.acceptJump()},
		{tableNAT, "POSTROUTING", t.masquerade, t.masqueradeJump()},
	}
}

// ensureJumps makes the top chains and the jumps to them: the isolation jump first in mangle FORWARD, the
// accepts appended to filter FORWARD (after Docker's chains: DOCKER-USER stays first), the masquerade
// appended to nat POSTROUTING.
func (f *family) ensureJumps() error {
	for _, j := range f.top.jumps() {
		ok, err := f.ipt.ChainExists(j.table, j.chain)
		if err != nil {
			return fmt.Errorf("reading the %s table: %w", j.table, err)
		}
		if !ok {
			if err := f.ipt.NewChain(j.table, j.chain); err != nil {
				return fmt.Errorf("creating chain %s: %w", j.chain, err)
			}
		}
		if j.table != tableMangle {
			if err := f.ipt.AppendUnique(j.table, j.from, j.rule...); err != nil {
				return fmt.Errorf("adding the jump to %s: %w", j.chain, err)
			}
			continue
		}
		ok, err = f.ipt.Exists(j.table, j.from, j.rule...)
		if err == nil && !ok {
			err = f.ipt.Insert(j.table, j.from, 1, j.rule...)
		}
		if err != nil {
			return fmt.Errorf("adding the jump to %s: %w", j.chain, err)
		}
	}
	return nil
}

// removeJumps deletes the jumps to the top chains (the batch then deletes the chains).
func (f *family) removeJumps() error {
	for _, j := range f.top.jumps() {
		ok, err := f.ipt.ChainExists(j.table, j.chain)
		if err != nil {
			return fmt.Errorf("reading the %s table: %w", j.table, err)
		}
		if !ok {
			continue
		}
		if err := f.ipt.DeleteIfExists(j.table, j.from, j.rule...); err != nil {
			return fmt.Errorf("removing the jump to %s: %w", j.chain, err)
		}
	}
	return nil
}

// existingChains lists the instance's chains on the host: its top chains and the per-network chains its
// isolation chain jumps to.
func (f *family) existingChains() ([]string, error) {
	var out []string
	for _, c := range []struct{ table, chain string }{{tableMangle, f.top.isolation}, {tableFilter, f.top.networks}, {tableNAT, f.top.masquerade}} {
		ok, err := f.ipt.ChainExists(c.table, c.chain)
		if err != nil {
			return nil, fmt.Errorf("reading the %s table: %w", c.table, err)
		}
		if !ok {
			continue
		}
		out = append(out, c.table+" "+c.chain)
		if c.table == tableFilter {
			continue
		}
		rules, err := f.ipt.List(c.table, c.chain)
		if err != nil {
			return nil, fmt.Errorf("reading chain %s: %w", c.chain, err)
		}
		seen := map[string]bool{}
		for _, r := range rules {
			fields := strings.Fields(r)
			if n := len(fields); n >= 2 && fields[n-2] == "-j" && (strings.HasPrefix(fields[n-1], netChainPrefix) || strings.HasPrefix(fields[n-1], netMasqPrefix)) && !seen[fields[n-1]] {
				seen[fields[n-1]] = true
				out = append(out, c.table+" "+fields[n-1])
				if strings.HasSuffix(fields[n-1], "-D") {
					continue
				}
				if ok, _ := f.ipt.ChainExists(tableMangle, fields[n-1]+"-D"); ok {
					seen[fields[n-1]+"-D"] = true
					out = append(out, tableMangle+" "+fields[n-1]+"-D")
				}
			}
		}
	}
	return out, nil
}

// removeLegacy deletes the per-container chains (CNIPLUG-NET-<attachment>) that cniplug versions before the
// per-network rules made, with their jumps from CNIPLUG-FORWARD.
func (f *family) removeLegacy(ctx context.Context) error {
	chains, err := f.ipt.ListChains(tableFilter)
	if err != nil {
		return fmt.Errorf("reading the filter table: %w", err)
	}
	var b strings.Builder
	for _, c := range chains {
		if !strings.HasPrefix(c, "CNIPLUG-NET-") {
			continue
		}
		rules, err := f.ipt.List(tableFilter, "CNIPLUG-FORWARD")
		if err == nil {
			for _, rule := range rules {
				if strings.HasSuffix(rule, "-j "+c) {
					fmt.Fprintf(&b, "%s\n", strings.Replace(rule, "-A ", "-D ", 1))
				}
			}
		}
		fmt.Fprintf(&b, "-F %s\n-X %s\n", c, c)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := restore(ctx, f.restore, "*filter\n"+b.String()+"COMMIT\n"); err != nil {
		return fmt.Errorf("removing the per-container rules of an earlier cniplug: %w", err)
	}
	return nil
}

// restore feeds a batch to iptables-restore without flushing the tables' other rules: all or nothing.
func restore(ctx context.Context, binary, batch string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "--noflush", "--wait")
	cmd.Stdin = strings.NewReader(batch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", binary, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sortedUnique sorts and deduplicates in place.
func sortedUnique(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// Repair programs again every family whose jumps went missing behind cniplug's back (a flushed table, a
// firewalld reload): the rule set is only rewritten when it changes, so nothing else would put them back. It
// costs two iptables commands per family and reports whether it had to repair.
func (r *Rules) Repair(ctx context.Context) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	repaired := false
	for _, f := range r.families {
		if f.programmed != "" && !f.intact() {
			f.programmed = ""
			repaired = true
		}
	}
	if !repaired {
		return false, nil
	}
	return true, r.program(ctx)
}

// intact reports whether both jumps to the top chains are there (a jump cannot exist without its chain).
func (f *family) intact() bool {
	for _, j := range f.top.jumps() {
		if ok, err := f.ipt.Exists(j.table, j.from, j.rule...); err != nil || !ok {
			return false
		}
	}
	return true
}
