package hostports

import (
	"errors"
	"fmt"
	"net"

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
func forwardRules(ip net.IP, subnet *net.IPNet, internal bool) [][]string {
	addr, sub := ip.String(), subnet.String()
	if internal {
		return [][]string{
			{"-s", addr, "!", "-d", sub, "-j", "DROP"},
			{"-d", addr, "!", "-s", sub, "-j", "DROP"},
			{"-s", addr, "-d", sub, "-j", "ACCEPT"},
			{"-d", addr, "-s", sub, "-j", "ACCEPT"},
		}
	}
	return [][]string{
		// The container's own traffic, to other containers of the network and out.
		{"-s", addr, "-j", "ACCEPT"},
		// Replies to it.
		{"-d", addr, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
		// New connections from its network's subnet, also from containers on other hosts of a routed network.
		{"-d", addr, "-s", sub, "-j", "ACCEPT"},
	}
}

// ApplyForward programs the record's rules. It is idempotent, and on failure removes whatever it added.
func (p *Programmer) ApplyForward(f Forward) error {
	if f.ID == "" {
		return errors.New("network rules: record has no id")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	err := p.applyForward(f)
	if err != nil {
		if rerr := p.removeForward(f); rerr != nil {
			err = fmt.Errorf("%w; removing the partial rules also failed: %v", err, rerr)
		}
	}
	return err
}

// RemoveForward deletes the record's chain and the jump to it, and the top-level chains once nothing uses
// them. Removing what is not there succeeds.
func (p *Programmer) RemoveForward(f Forward) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.removeForward(f)
}

func (p *Programmer) applyForward(f Forward) error {
	byFamily := map[*iptables.IPTables][][]string{}
	for _, a := range f.Addresses {
		ip, subnet, err := net.ParseCIDR(a)
		if err != nil {
			return fmt.Errorf("network rules: invalid container address %q (want CIDR)", a)
		}
		ipt := p.v4
		if ip.To4() == nil {
			ipt = p.v6
		}
		if ipt == nil {
			continue // no ip6tables: nothing of Docker's filters IPv6 either
		}
		byFamily[ipt] = append(byFamily[ipt], forwardRules(ip, subnet, f.Internal)...)
	}
	for ipt, rules := range byFamily {
		if err := p.ensureTop(ipt, ipt == p.v6); err != nil {
			return err
		}
		// Rebuilt from scratch so that ApplyForward is idempotent.
		if err := ipt.ClearChain(tableFilt, f.chain()); err != nil {
			return fmt.Errorf("creating chain %s: %w", f.chain(), err)
		}
		for _, r := range rules {
			if err := ipt.Append(tableFilt, f.chain(), r...); err != nil {
				return fmt.Errorf("adding FORWARD rule %v: %w", r, err)
			}
		}
		if err := ipt.AppendUnique(tableFilt, topForward, f.jump()...); err != nil {
			return fmt.Errorf("jumping to %s: %w", f.chain(), err)
		}
	}
	return nil
}

func (p *Programmer) removeForward(f Forward) error {
	var errs []error
	for _, ipt := range []*iptables.IPTables{p.v4, p.v6} {
		if ipt == nil {
			continue
		}
		ok, err := ipt.ChainExists(tableFilt, f.chain())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue
		}
		if top, _ := ipt.ChainExists(tableFilt, topForward); top {
			if err := ipt.DeleteIfExists(tableFilt, topForward, f.jump()...); err != nil {
				errs = append(errs, fmt.Errorf("removing jump to %s: %w", f.chain(), err))
				continue
			}
		}
		if err := ipt.ClearAndDeleteChain(tableFilt, f.chain()); err != nil {
			errs = append(errs, fmt.Errorf("removing chain %s: %w", f.chain(), err))
		}
		errs = append(errs, p.removeTopIfUnused(ipt))
	}
	return errors.Join(errs...)
}
