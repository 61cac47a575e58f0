// Package hostports publishes a container's ports on the host (`docker run -p`) for one attachment: it
// programs and removes the iptables rules (DNAT, masquerade for localhost and hairpin clients, and FORWARD
// accepts past Docker's DROP policy), checks that host ports are free, and decodes Docker's portmap option.
//
// Rules go through go-iptables, which runs the `iptables` found in PATH: that binary (iptables-legacy or
// iptables-nft, or the one hostfw selected) decides the backend, so the rules land where the host's are.
//
// Layout: top-level chains CNIPLUG-HOSTPORTS (nat, from PREROUTING and OUTPUT for local destinations),
// CNIPLUG-POSTROUTING (nat) and CNIPLUG-FORWARD (filter) each jump to per-attachment chains
// CNIPLUG-DN-<id>, CNIPLUG-SN-<id> and CNIPLUG-FW-<id>. Removing an attachment deletes its chains and the
// jumps to them. The top-level chains and their jumps are created on first use and then kept (empty when no
// container uses them), as the CNI plugins keep CNI-FORWARD and CNI-HOSTPORT-*: removing and re-creating them
// around every container cost two dozen iptables execs per lifecycle.
package hostports

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"

	"github.com/cniplug/cniplug/naming"
)

// Mapping is one published port of one attachment.
type Mapping struct {
	Proto         string `json:"proto"`            // tcp, udp or sctp
	HostIP        string `json:"hostIP,omitempty"` // "" = every host address
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
}

func (m Mapping) String() string {
	host := m.HostIP
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return fmt.Sprintf("%s:%d->%d/%s", host, m.HostPort, m.ContainerPort, m.Proto)
}

// Record is what an attachment stores about its published ports, enough to remove the rules after a
// restart of cniplug.
type Record struct {
	// ID names the per-attachment chains (its first 12 characters are used).
	ID string `json:"id"`
	// ContainerIPv4/ContainerIPv6 are the container's addresses (CIDR or plain) the ports map to.
	ContainerIPv4 string    `json:"containerIPv4,omitempty"`
	ContainerIPv6 string    `json:"containerIPv6,omitempty"`
	Mappings      []Mapping `json:"mappings"`
	// DNAT: cniplug programs the DNAT itself. False when the CNI chain's portmap plugin does it (the
	// portMappings capability) and cniplug only lets the traffic through FORWARD.
	DNAT bool `json:"dnat"`
}

const (
	topNAT     = "CNIPLUG-HOSTPORTS"
	topSNAT    = "CNIPLUG-POSTROUTING"
	topForward = "CNIPLUG-FORWARD"
	tableNAT   = "nat"
	tableFilt  = "filter"
)

func (r Record) chains() (dn, sn, fw string) {
	s := naming.ShortID(r.ID)
	return "CNIPLUG-DN-" + s, "CNIPLUG-SN-" + s, "CNIPLUG-FW-" + s
}

// Programmer programs host port rules through one iptables binary per family.
type Programmer struct {
	mu sync.Mutex // top-level chains are shared by every attachment
	v4 *iptables.IPTables
	v6 *iptables.IPTables
	// topReady: the top-level chains and jumps of a family were made by this Programmer (guarded by mu).
	topReady map[*iptables.IPTables]bool
	// procSys is where route_localnet is set ("/proc/sys"; tests may point elsewhere).
	procSys string
	// v4Path is the iptables command, for listing a whole table at once.
	v4Path string
}

// New returns a Programmer running the given iptables and ip6tables binaries ("" looks `iptables` or
// `ip6tables` up in PATH), e.g. iptables-legacy. IPv6 is optional: without ip6tables only IPv4 mappings can
// be programmed.
func New(v4Path, v6Path string) (*Programmer, error) {
	newIPT := func(proto iptables.Protocol, path string) (*iptables.IPTables, error) {
		if path != "" {
			return iptables.New(iptables.IPFamily(proto), iptables.Timeout(10), iptables.Path(path))
		}
		return iptables.New(iptables.IPFamily(proto), iptables.Timeout(10))
	}
	v4, err := newIPT(iptables.ProtocolIPv4, v4Path)
	if err != nil {
		return nil, fmt.Errorf("iptables is needed to publish ports: %w", err)
	}
	v6, _ := newIPT(iptables.ProtocolIPv6, v6Path)
	if v4Path == "" {
		v4Path = "iptables"
	}
	return &Programmer{v4: v4, v6: v6, procSys: "/proc/sys", topReady: map[*iptables.IPTables]bool{}, v4Path: v4Path}, nil
}

// Apply programs the record's rules. It is idempotent, and on failure removes whatever it added.
func (p *Programmer) Apply(r Record) error {
	if len(r.Mappings) == 0 {
		return nil
	}
	if len(r.ID) < 1 {
		return errors.New("host ports: record has no id")
	}
	return p.applyOrUndo(func() error { return p.apply(r) }, func() error { return p.remove(r) })
}

// applyOrUndo runs apply under the lock that guards the shared top-level chains; when it fails, undo removes
// whatever it added, so a failed apply leaves no rule behind.
func (p *Programmer) applyOrUndo(apply, undo func() error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	err := apply()
	if err != nil && len(p.topReady) > 0 {
		// The top-level chains may have gone behind our back (a flushed table, a firewalld reload): make them
		// again and try once more; apply is idempotent.
		p.topReady = map[*iptables.IPTables]bool{}
		err = apply()
	}
	if err != nil {
		if rerr := undo(); rerr != nil {
			err = fmt.Errorf("%w; removing the partial rules also failed: %v", err, rerr)
		}
	}
	return err
}

// Remove deletes the record's rules and chains (the top-level chains stay). It is
// idempotent: removing what is not there succeeds.
func (p *Programmer) Remove(r Record) error {
	if len(r.Mappings) == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.remove(r)
}

type family struct {
	ipt         *iptables.IPTables
	containerIP net.IP
	subnet      *net.IPNet
	v6          bool
}

func (p *Programmer) families(r Record) ([]family, error) {
	var out []family
	add := func(addr string, ipt *iptables.IPTables, v6 bool) error {
		if addr == "" {
			return nil
		}
		ip, subnet, err := net.ParseCIDR(addr)
		if err != nil {
			ip = net.ParseIP(addr)
			if ip == nil {
				return fmt.Errorf("host ports: invalid container address %q", addr)
			}
			subnet = nil
		}
		if ipt == nil {
			return nil
		}
		out = append(out, family{ipt: ipt, containerIP: ip, subnet: subnet, v6: v6})
		return nil
	}
	if err := add(r.ContainerIPv4, p.v4, false); err != nil {
		return nil, err
	}
	if err := add(r.ContainerIPv6, p.v6, true); err != nil {
		return nil, err
	}
	return out, nil
}

// mappingsFor returns the mappings that apply to a family: a host IP of that family, or every host address.
func mappingsFor(r Record, v6 bool) []Mapping {
	var out []Mapping
	for _, m := range r.Mappings {
		if m.HostIP == "" {
			out = append(out, m)
			continue
		}
		ip := net.ParseIP(m.HostIP)
		if ip != nil && (ip.To4() == nil) == v6 {
			out = append(out, m)
		}
	}
	return out
}

// Check reports mappings that cannot be programmed for the container's addresses.
func Check(r Record) error {
	for _, m := range r.Mappings {
		if m.HostIP == "" {
			continue
		}
		ip := net.ParseIP(m.HostIP)
		if ip == nil {
			return fmt.Errorf("invalid host IP %q in %s", m.HostIP, m)
		}
		if ip.To4() == nil && r.ContainerIPv6 == "" {
			return fmt.Errorf("cannot publish %s: the host IP is IPv6 but the container has no IPv6 address", m)
		}
		if ip.To4() != nil && r.ContainerIPv4 == "" {
			return fmt.Errorf("cannot publish %s: the host IP is IPv4 but the container has no IPv4 address", m)
		}
	}
	if r.ContainerIPv4 == "" && r.ContainerIPv6 == "" {
		return errors.New("cannot publish ports: the container has no address")
	}
	return nil
}

func (p *Programmer) apply(r Record) error {
	if err := Check(r); err != nil {
		return err
	}
	fams, err := p.families(r)
	if err != nil {
		return err
	}
	dn, sn, fw := r.chains()
	for _, f := range fams {
		ms := mappingsFor(r, f.v6)
		if len(ms) == 0 {
			continue
		}
		if err := p.ensureTop(f.ipt, f.v6); err != nil {
			return err
		}
		// Per-attachment chains, rebuilt from scratch so that Apply is idempotent.
		for _, c := range []struct{ table, chain, top string }{{tableFilt, fw, topForward}, {tableNAT, sn, topSNAT}, {tableNAT, dn, topNAT}} {
			if c.table == tableNAT && !r.DNAT {
				continue
			}
			if err := f.ipt.ClearChain(c.table, c.chain); err != nil {
				return fmt.Errorf("creating chain %s: %w", c.chain, err)
			}
			if err := f.ipt.AppendUnique(c.table, c.top, "-m", "comment", "--comment", "cniplug "+r.ID, "-j", c.chain); err != nil {
				return fmt.Errorf("jumping to %s: %w", c.chain, err)
			}
		}
		cip := f.containerIP.String()
		for _, m := range ms {
			cport := strconv.Itoa(m.ContainerPort)
			hport := strconv.Itoa(m.HostPort)
			// Let DNATed traffic to and from the published port through FORWARD (Docker's policy is DROP).
			for _, rule := range [][]string{
				{"-d", cip, "-p", m.Proto, "-m", m.Proto, "--dport", cport, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"},
				{"-s", cip, "-p", m.Proto, "-m", m.Proto, "--sport", cport, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"},
			} {
				if err := f.ipt.Append(tableFilt, fw, rule...); err != nil {
					return fmt.Errorf("adding FORWARD accept for %s: %w", m, err)
				}
			}
			if !r.DNAT {
				continue
			}
			dst := cip + ":" + cport
			if f.v6 {
				dst = "[" + cip + "]:" + cport
			}
			rule := []string{"-p", m.Proto, "-m", m.Proto, "--dport", hport}
			if !isAny(m.HostIP) {
				rule = append([]string{"-d", m.HostIP}, rule...)
			}
			if err := f.ipt.Append(tableNAT, dn, append(rule, "-j", "DNAT", "--to-destination", dst)...); err != nil {
				return fmt.Errorf("adding DNAT for %s: %w", m, err)
			}
			// Clients whose replies would not come back through this host's NAT: localhost (route_localnet)
			// and other containers on the same subnet (hairpin) are masqueraded.
			srcs := []string{}
			if !f.v6 {
				srcs = append(srcs, "127.0.0.0/8")
			}
			if f.subnet != nil {
				srcs = append(srcs, f.subnet.String())
			}
			for _, src := range srcs {
				if err := f.ipt.Append(tableNAT, sn, "-s", src, "-d", cip, "-p", m.Proto, "-m", m.Proto, "--dport", cport,
					"-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"); err != nil {
					return fmt.Errorf("adding masquerade for %s: %w", m, err)
				}
			}
		}
		if r.DNAT && !f.v6 {
			if err := p.enableLocalnet(f.containerIP); err != nil {
				return err
			}
		}
	}
	return nil
}

// ensureTop creates the top-level chains and their jumps from the built-in chains, once per Programmer and
// family.
func (p *Programmer) ensureTop(ipt *iptables.IPTables, v6 bool) error {
	if p.topReady[ipt] {
		return nil
	}
	if err := p.makeTop(ipt); err != nil {
		return err
	}
	p.topReady[ipt] = true
	return nil
}

func (p *Programmer) makeTop(ipt *iptables.IPTables) error {
	for _, c := range []struct{ table, chain string }{{tableFilt, topForward}, {tableNAT, topNAT}, {tableNAT, topSNAT}} {
		ok, err := ipt.ChainExists(c.table, c.chain)
		if err != nil {
			return fmt.Errorf("reading %s table: %w", c.table, err)
		}
		if !ok {
			if err := ipt.NewChain(c.table, c.chain); err != nil {
				return fmt.Errorf("creating chain %s: %w", c.chain, err)
			}
		}
	}
	for _, j := range topJumps() {
		if err := ipt.AppendUnique(j.table, j.from, j.rule...); err != nil {
			return fmt.Errorf("adding %s jump to %s: %w", j.from, j.rule[len(j.rule)-1], err)
		}
	}
	return nil
}

type jump struct {
	table, from string
	rule        []string
}

func topJumps() []jump {
	local := []string{"-m", "addrtype", "--dst-type", "LOCAL", "-m", "comment", "--comment", "cniplug host ports", "-j", topNAT}
	return []jump{
		{tableNAT, "PREROUTING", local},
		{tableNAT, "OUTPUT", local},
		{tableNAT, "POSTROUTING", []string{"-m", "comment", "--comment", "cniplug host ports", "-j", topSNAT}},
		{tableFilt, "FORWARD", []string{"-m", "comment", "--comment", "cniplug host ports", "-j", topForward}},
	}
}

func (p *Programmer) remove(r Record) error {
	dn, sn, fw := r.chains()
	var errs []error
	for _, ipt := range []*iptables.IPTables{p.v4, p.v6} {
		if ipt == nil {
			continue
		}
		for _, c := range []struct{ table, chain, top string }{{tableNAT, dn, topNAT}, {tableNAT, sn, topSNAT}, {tableFilt, fw, topForward}} {
			// A jump cannot exist without its target chain (and iptables cannot even look for one).
			ok, err := ipt.ChainExists(c.table, c.chain)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if !ok {
				continue
			}
			if top, _ := ipt.ChainExists(c.table, c.top); top {
				if err := ipt.DeleteIfExists(c.table, c.top, "-m", "comment", "--comment", "cniplug "+r.ID, "-j", c.chain); err != nil {
					errs = append(errs, fmt.Errorf("removing jump to %s: %w", c.chain, err))
					continue
				}
			}
			if err := ipt.ClearAndDeleteChain(c.table, c.chain); err != nil {
				errs = append(errs, fmt.Errorf("removing chain %s: %w", c.chain, err))
			}
		}
	}
	if r.DNAT && r.ContainerIPv4 != "" {
		errs = append(errs, p.releaseLocalnet())
	}
	return errors.Join(errs...)
}
