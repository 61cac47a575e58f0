// Package hostports publishes a container's ports on the host (`docker run -p`) for one attachment: it
// programs and removes the iptables rules (DNAT, masquerade for localhost and hairpin clients, and FORWARD
// accepts past Docker's DROP policy), checks that host ports are free, and decodes Docker's portmap option.
//
// Rules go through the `iptables-save` and `iptables-restore` of the iptables found in PATH (iptables-legacy
// or iptables-nft, or the one hostfw selected): that binary decides the backend, so the rules land where the
// host's are.
//
// Layout: top-level chains CNIPLUG-HOSTPORTS (nat, from PREROUTING and OUTPUT for local destinations),
// CNIPLUG-POSTROUTING (nat) and CNIPLUG-FORWARD (filter) each jump to per-attachment chains
// CNIPLUG-DN-<id>, CNIPLUG-SN-<id> and CNIPLUG-FW-<id>. Removing an attachment deletes its chains and the
// jumps to them. The top-level chains and their jumps are created on first use and then kept (empty when no
// container uses them), as the CNI plugins keep CNI-FORWARD and CNI-HOSTPORT-*: removing and re-creating them
// around every container cost two dozen iptables execs per lifecycle. A change costs one iptables-save and one
// iptables-restore per family.
package hostports

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/cniplug/cniplug/iptcmd"
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
	// DNAT: cniplug programs the DNAT itself, as it always does now. False only in records of earlier
	// versions, where the chain's portmap plugin did it and cniplug only let the traffic through FORWARD.
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

// Programmer programs host port rules. A change reads a family's ruleset once (iptables-save) and writes one
// batch (iptables-restore), each bounded by a deadline (package iptcmd).
type Programmer struct {
	// mu serializes changes: each writes a batch computed from the ruleset it read, and the top-level chains
	// are shared by every attachment.
	mu sync.Mutex
	v4 *iptcmd.Command
	v6 *iptcmd.Command
	// procSys is where route_localnet is set ("/proc/sys"; tests may point elsewhere).
	procSys string
}

// New returns a Programmer running the given iptables and ip6tables binaries ("" looks `iptables` or
// `ip6tables` up in PATH), e.g. iptables-legacy, through their -save and -restore commands. IPv6 is optional:
// without ip6tables only IPv4 mappings can be programmed.
func New(v4Path, v6Path string) (*Programmer, error) {
	v4, err := iptcmd.New(v4Path, false)
	if err != nil {
		return nil, fmt.Errorf("iptables is needed to publish ports: %w", err)
	}
	v6, _ := iptcmd.New(v6Path, true)
	return &Programmer{v4: v4, v6: v6, procSys: "/proc/sys"}, nil
}

// Apply programs the record's rules. It is idempotent, and on failure removes whatever it added.
func (p *Programmer) Apply(ctx context.Context, r Record) error {
	if len(r.Mappings) == 0 {
		return nil
	}
	if len(r.ID) < 1 {
		return errors.New("host ports: record has no id")
	}
	if err := Check(r); err != nil {
		return err
	}
	fams, err := p.families(r)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range fams {
		if err := p.applyFamily(ctx, r, f); err != nil {
			// iptables-restore commits table by table: a failed batch may have left part of itself.
			if rerr := p.remove(ctx, r); rerr != nil {
				err = fmt.Errorf("%w; removing the partial rules also failed: %v", err, rerr)
			}
			return err
		}
	}
	return nil
}

// Remove deletes the record's rules and chains (the top-level chains stay). It is
// idempotent: removing what is not there succeeds.
func (p *Programmer) Remove(ctx context.Context, r Record) error {
	if len(r.Mappings) == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.remove(ctx, r)
}

type family struct {
	cmd         *iptcmd.Command
	containerIP net.IP
	subnet      *net.IPNet
	v6          bool
}

func (p *Programmer) families(r Record) ([]family, error) {
	var out []family
	add := func(addr string, cmd *iptcmd.Command, v6 bool) error {
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
		if cmd == nil {
			return nil
		}
		out = append(out, family{cmd: cmd, containerIP: ip, subnet: subnet, v6: v6})
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

func (f family) name() string {
	if f.v6 {
		return "IPv6"
	}
	return "IPv4"
}

// perAttachment lists the record's chains with the table each is in and the top-level chain that jumps to it.
func (r Record) perAttachment() []struct{ table, chain, top string } {
	dn, sn, fw := r.chains()
	return []struct{ table, chain, top string }{{tableFilt, fw, topForward}, {tableNAT, sn, topSNAT}, {tableNAT, dn, topNAT}}
}

// applyFamily writes one family's rules for the record in one batch: the top-level chains and jumps that are
// missing, the attachment's chains rebuilt from scratch (so that Apply is idempotent), and the
// route_localnet guard.
func (p *Programmer) applyFamily(ctx context.Context, r Record, f family) error {
	ms := mappingsFor(r, f.v6)
	if len(ms) == 0 {
		return nil
	}
	rs, err := f.cmd.Read(ctx)
	if err != nil {
		return fmt.Errorf("reading the %s rules: %w", f.name(), err)
	}
	var b iptcmd.Batch
	addTop(&b, rs)
	for _, c := range r.perAttachment() {
		if c.table == tableNAT && !r.DNAT {
			continue
		}
		b.Declare(c.table, c.chain)
		if len(rs.Jumps(c.table, c.top, c.chain)) == 0 {
			b.Append(c.table, c.top, "-m", "comment", "--comment", "cniplug "+r.ID, "-j", c.chain)
		}
	}
	dn, sn, fw := r.chains()
	cip := f.containerIP.String()
	for _, m := range ms {
		cport := strconv.Itoa(m.ContainerPort)
		// Let DNATed traffic to and from the published port through FORWARD (Docker's policy is DROP).
		b.Append(tableFilt, fw, "-d", cip, "-p", m.Proto, "-m", m.Proto, "--dport", cport, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
		b.Append(tableFilt, fw, "-s", cip, "-p", m.Proto, "-m", m.Proto, "--sport", cport, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
		if !r.DNAT {
			continue
		}
		dst := cip + ":" + cport
		if f.v6 {
			dst = "[" + cip + "]:" + cport
		}
		rule := []string{"-p", m.Proto, "-m", m.Proto, "--dport", strconv.Itoa(m.HostPort)}
		if !isAny(m.HostIP) {
			rule = append([]string{"-d", m.HostIP}, rule...)
		}
		b.Append(tableNAT, dn, append(rule, "-j", "DNAT", "--to-destination", dst)...)
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
			b.Append(tableNAT, sn, "-s", src, "-d", cip, "-p", m.Proto, "-m", m.Proto, "--dport", cport,
				"-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE")
		}
	}
	localnetLink := ""
	if r.DNAT && !f.v6 {
		localnetLink = guardLocalnet(&b, rs, f.containerIP)
	}
	if err := f.cmd.Write(ctx, &b); err != nil {
		return fmt.Errorf("programming the %s rules: %w", f.name(), err)
	}
	if localnetLink != "" {
		return p.setLocalnet(localnetLink, true)
	}
	return nil
}

// addTop adds the top-level chains and their jumps from the built-in chains that the ruleset lacks: made on
// first use, and again after a flush or a firewall reload behind cniplug's back.
func addTop(b *iptcmd.Batch, rs iptcmd.Ruleset) {
	for _, c := range []struct{ table, chain string }{{tableFilt, topForward}, {tableNAT, topNAT}, {tableNAT, topSNAT}} {
		if !rs.HasChain(c.table, c.chain) {
			b.Declare(c.table, c.chain)
		}
	}
	for _, j := range topJumps() {
		if len(rs.Jumps(j.table, j.from, j.rule[len(j.rule)-1])) == 0 {
			b.Append(j.table, j.from, j.rule...)
		}
	}
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

// remove deletes the record's chains and the jumps to them, family by family, and the route_localnet guards
// no cniplug DNAT needs any more. Caller holds mu.
func (p *Programmer) remove(ctx context.Context, r Record) error {
	var errs []error
	for _, f := range []struct {
		cmd *iptcmd.Command
		v6  bool
	}{{p.v4, false}, {p.v6, true}} {
		if f.cmd == nil || (f.v6 && r.ContainerIPv6 == "") || (!f.v6 && r.ContainerIPv4 == "") {
			continue // Apply made no chain in a family the container has no address of
		}
		name := family{v6: f.v6}.name()
		rs, err := f.cmd.Read(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("reading the %s rules: %w", name, err))
			continue
		}
		var b iptcmd.Batch
		removing := map[string]bool{}
		for _, c := range r.perAttachment() {
			if !rs.HasChain(c.table, c.chain) {
				continue
			}
			for _, j := range rs.Jumps(c.table, "", c.chain) {
				b.Delete(c.table, j)
			}
			b.Remove(c.table, c.chain)
			removing[c.chain] = true
		}
		var unguarded []string
		if r.DNAT && !f.v6 {
			unguarded = releaseLocalnet(&b, rs, removing)
		}
		if err := f.cmd.Write(ctx, &b); err != nil {
			errs = append(errs, fmt.Errorf("removing the %s rules: %w", name, err))
			continue
		}
		for _, ifname := range unguarded {
			errs = append(errs, p.setLocalnet(ifname, false))
		}
	}
	return errors.Join(errs...)
}
