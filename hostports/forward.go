package hostports

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Forward is what an attachment records about the FORWARD rules that make its network behave like one of
// Docker's own under Docker's firewall: Docker's iptables backend sets the FORWARD policy to DROP and only
// accepts traffic of its own bridges, so routed or bridged traffic of a CNI network needs accepts of its own.
// On an internal network (`docker network create --internal`) the rules instead keep the traffic inside the
// network's subnets. The rules sit in one chain per attachment, CNIPLUG-NET-<id>, jumped to from
// CNIPLUG-FORWARD, which FORWARD reaches after Docker's chains: rules in DOCKER-USER still apply first.
type Forward struct {
	// ID names the chain (its first 12 characters are used).
	ID string `json:"id"`
	// Addresses are the container's addresses in CIDR form; the prefix is the network's subnet.
	Addresses []string `json:"addresses"`
	// Peers are other prefixes of the network that may open connections to the container: those it routes to
	// through its link, such as the other hosts' ranges of a routed multi-host network (flannel's host-gw).
	Peers []string `json:"peers,omitempty"`
	// Internal: only traffic between the addresses and their subnets passes; everything else is dropped.
	Internal bool `json:"internal,omitempty"`
}

func (f Forward) chain() string {
	id := f.ID
	if len(id) > 12 {
		id = id[:12]
	}
	return "CNIPLUG-NET-" + id
}

func (f Forward) jump() []string {
	return []string{"-m", "comment", "--comment", "cniplug net " + f.ID, "-j", f.chain()}
}

// forwardRules returns the rules of one address, in order.
func forwardRules(ip net.IP, subnet *net.IPNet, peers []*net.IPNet, internal bool) [][]string {
	addr, sub := ip.String(), subnet.String()
	if internal {
		return [][]string{
			{"-s", addr, "!", "-d", sub, "-j", "DROP"},
			{"-d", addr, "!", "-s", sub, "-j", "DROP"},
			{"-s", addr, "-d", sub, "-j", "ACCEPT"},
			{"-d", addr, "-s", sub, "-j", "ACCEPT"},
		}
	}
	rules := [][]string{
		// The container's own traffic, to other containers of the network and out.
		{"-s", addr, "-j", "ACCEPT"},
		// Replies to it.
		{"-d", addr, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
		// New connections from its network's subnet (also from containers on other hosts of an overlay).
		{"-d", addr, "-s", sub, "-j", "ACCEPT"},
	}
	// And from the prefixes it routes to through the network (containers on other hosts of a routed network).
	for _, p := range peers {
		if (p.IP.To4() == nil) == (ip.To4() == nil) && p.String() != sub {
			rules = append(rules, []string{"-d", addr, "-s", p.String(), "-j", "ACCEPT"})
		}
	}
	return rules
}

// AddForward programs the rules of a record none of whose rules are programmed yet: one iptables-restore per
// address family, nothing else. On failure it removes whatever it added.
func (p *Programmer) AddForward(f Forward) error {
	if f.ID == "" {
		return errors.New("network rules: record has no id")
	}
	return p.applyOrUndo(func() error { return p.applyForward(f, false) }, func() error { return p.removeForward(f) })
}

// ApplyForward programs the record's rules, replacing those it may already have. It is idempotent, and on
// failure removes whatever it added.
func (p *Programmer) ApplyForward(f Forward) error {
	if f.ID == "" {
		return errors.New("network rules: record has no id")
	}
	return p.applyOrUndo(func() error { return p.applyForward(f, true) }, func() error { return p.removeForward(f) })
}

// families returns the address families (false: IPv4, true: IPv6) of the record's addresses.
func (f Forward) families() map[bool]bool {
	fams := map[bool]bool{}
	for _, a := range f.Addresses {
		if ip, _, err := net.ParseCIDR(a); err == nil {
			fams[ip.To4() == nil] = true
		}
	}
	return fams
}

// RemoveForward deletes the record's chain and the jump to it. Removing what is not there succeeds.
func (p *Programmer) RemoveForward(f Forward) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.removeForward(f)
}

func (p *Programmer) applyForward(f Forward, replace bool) error {
	type family struct {
		ipt     *iptables.IPTables
		restore string
		rules   [][]string
	}
	fams := map[bool]*family{false: {ipt: p.v4, restore: p.v4Restore}, true: {ipt: p.v6, restore: p.v6Restore}}
	var peers []*net.IPNet
	for _, pr := range f.Peers {
		_, n, err := net.ParseCIDR(pr)
		if err != nil {
			return fmt.Errorf("network rules: invalid peer prefix %q (want CIDR)", pr)
		}
		peers = append(peers, n)
	}
	for _, a := range f.Addresses {
		ip, subnet, err := net.ParseCIDR(a)
		if err != nil {
			return fmt.Errorf("network rules: invalid container address %q (want CIDR)", a)
		}
		fam := fams[ip.To4() == nil]
		fam.rules = append(fam.rules, forwardRules(ip, subnet, peers, f.Internal)...)
	}
	for v6, fam := range fams {
		if fam.ipt == nil || len(fam.rules) == 0 {
			continue // no ip6tables: nothing of Docker's filters IPv6 either
		}
		if err := p.ensureTop(fam.ipt, v6); err != nil {
			return err
		}
		if replace {
			if err := dropJump(fam.ipt, f); err != nil {
				return err
			}
		}
		// One iptables-restore per family: a dozen separate iptables execs cost about 100 ms per container.
		var b strings.Builder
		fmt.Fprintf(&b, "*%s\n:%s - [0:0]\n", tableFilt, f.chain())
		for _, r := range fam.rules {
			fmt.Fprintf(&b, "-A %s %s\n", f.chain(), restoreArgs(r))
		}
		fmt.Fprintf(&b, "-A %s %s\nCOMMIT\n", topForward, restoreArgs(f.jump()))
		if err := restore(fam.restore, b.String()); err != nil {
			return fmt.Errorf("adding FORWARD rules for %s: %w", strings.Join(f.Addresses, ", "), err)
		}
	}
	return nil
}

// dropJump removes the jump to the record's chain if the chain exists: a repeated apply rebuilds the chain
// (iptables-restore flushes a declared chain) and must leave one jump to it.
func dropJump(ipt *iptables.IPTables, f Forward) error {
	ok, err := ipt.ChainExists(tableFilt, f.chain())
	if err != nil {
		return fmt.Errorf("reading chain %s: %w", f.chain(), err)
	}
	if !ok {
		return nil
	}
	if err := ipt.DeleteIfExists(tableFilt, topForward, f.jump()...); err != nil {
		return fmt.Errorf("removing jump to %s: %w", f.chain(), err)
	}
	return nil
}

// removeForward deletes the chain and the jump to it in one iptables-restore per family; when that fails (the
// jump or chain is already gone, a partial apply) it removes them step by step, each only if present.
func (p *Programmer) removeForward(f Forward) error {
	var errs []error
	present := f.families()
	for _, fam := range []struct {
		ipt     *iptables.IPTables
		restore string
		v6      bool
	}{{p.v4, p.v4Restore, false}, {p.v6, p.v6Restore, true}} {
		if fam.ipt == nil || !present[fam.v6] {
			continue // applyForward makes no chain in a family the record has no address of
		}
		batch := fmt.Sprintf("*%s\n-D %s %s\n-F %s\n-X %s\nCOMMIT\n", tableFilt, topForward, restoreArgs(f.jump()), f.chain(), f.chain())
		if restore(fam.restore, batch) == nil {
			continue
		}
		ok, err := fam.ipt.ChainExists(tableFilt, f.chain())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue
		}
		if top, _ := fam.ipt.ChainExists(tableFilt, topForward); top {
			if err := fam.ipt.DeleteIfExists(tableFilt, topForward, f.jump()...); err != nil {
				errs = append(errs, fmt.Errorf("removing jump to %s: %w", f.chain(), err))
				continue
			}
		}
		if err := fam.ipt.ClearAndDeleteChain(tableFilt, f.chain()); err != nil {
			errs = append(errs, fmt.Errorf("removing chain %s: %w", f.chain(), err))
		}
	}
	return errors.Join(errs...)
}

// restoreArgs writes a rule's arguments for iptables-restore, quoting those with spaces (comments).
func restoreArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t") {
			a = `"` + a + `"`
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// restore feeds a batch to iptables-restore without flushing the tables' other rules, all or nothing.
func restore(binary, batch string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "--noflush", "--wait")
	cmd.Stdin = strings.NewReader(batch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", binary, err, strings.TrimSpace(string(out)))
	}
	return nil
}
