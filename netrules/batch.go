package netrules

import (
	"net"
	"slices"
	"strings"

	"github.com/cniplug/cniplug/iptcmd"
)

// networkSet is one Docker network's rule set: the union of its members.
type networkSet struct {
	id         string
	prefixes   map[bool][]string // by family (true: IPv6), sorted
	bridges    []string
	internal   bool
	masquerade bool
	// ownPolicy: every address is a host route (/32, /128) and the network has no bridge, as Calico
	// assigns them. There is no subnet to tell the network's traffic by, and the chain's agent enforces its
	// own policy, so cniplug lets the containers' traffic out and replies in, and isolates nothing.
	ownPolicy bool
}

// networkSets groups the members by network, in a stable order.
func networkSets(members map[string]Member) []networkSet {
	byNet := map[string]*networkSet{}
	hostOnly := map[string]bool{}
	for _, m := range members {
		s := byNet[m.Network]
		if s == nil {
			s = &networkSet{id: m.Network, prefixes: map[bool][]string{}}
			byNet[m.Network] = s
			hostOnly[m.Network] = true
		}
		s.internal = s.internal || m.Internal
		s.masquerade = s.masquerade || m.Masquerade
		s.bridges = append(s.bridges, m.Bridges...)
		for _, a := range m.Addresses {
			ip, subnet, err := net.ParseCIDR(a)
			if err != nil {
				continue
			}
			if ones, bits := subnet.Mask.Size(); ones != bits {
				hostOnly[m.Network] = false
			}
			s.prefixes[ip.To4() == nil] = append(s.prefixes[ip.To4() == nil], subnet.String())
		}
		for _, p := range m.Peers {
			ip, n, err := net.ParseCIDR(p)
			if err != nil {
				continue
			}
			hostOnly[m.Network] = false
			s.prefixes[ip.To4() == nil] = append(s.prefixes[ip.To4() == nil], n.String())
		}
	}
	out := make([]networkSet, 0, len(byNet))
	for id, s := range byNet {
		s.bridges = sortedUnique(s.bridges)
		for fam := range s.prefixes {
			s.prefixes[fam] = sortedUnique(s.prefixes[fam])
		}
		s.ownPolicy = hostOnly[id] && len(s.bridges) == 0 && (len(s.prefixes[false]) > 0 || len(s.prefixes[true]) > 0)
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b networkSet) int { return strings.Compare(a.id, b.id) })
	return out
}

// chainOf names a network's isolation chain.
func chainOf(networkID string) string {
	id := networkID
	if len(id) > 12 {
		id = id[:12]
	}
	return netChainPrefix + id
}

// batch is one family's iptables-restore input for the rule sets, without the jumps from the built-in
// chains (those depend on what the host has: family.apply adds them).
type batch struct {
	restore *iptcmd.Batch
	text    string   // the rule sets' part, to tell whether anything changed
	chains  []string // "table chain" of every chain it makes: the top chains and the per-network ones
	empty   bool     // no network has rules in this family: the top chains go too
}

// writer builds a batch.
type writer struct {
	top    topChains
	b      *iptcmd.Batch
	chains []string
}

func (w *writer) declare(table, chain string) {
	w.b.Declare(table, chain)
	w.chains = append(w.chains, table+" "+chain)
}

func (w *writer) rule(table, chain string, args ...string) {
	w.b.Append(table, chain, args...)
}

// renderBatch writes the family's rules for the sets. It rewrites both top chains whole (a declared chain is
// flushed) and removes the chains of the previous batch that this one does not make. The text depends only
// on the sets and the previous chains, so an unchanged rule set gives an equal batch.
func renderBatch(top topChains, sets []networkSet, v6 bool, previous []string) batch {
	w := &writer{top: top, b: &iptcmd.Batch{}}
	var active []networkSet
	for _, s := range sets {
		if len(s.prefixes[v6]) > 0 || len(s.bridges) > 0 {
			active = append(active, s)
		}
	}
	if len(active) > 0 {
		w.declare(tableMangle, w.top.isolation)
		w.declare(tableFilter, w.top.networks)
		w.declare(tableNAT, w.top.masquerade)
		w.rule(tableMangle, w.top.isolation, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN")
		// Internal networks first: nothing in or out, through a published port (DNAT) neither.
		for _, s := range active {
			if s.internal {
				w.internal(s, v6)
			}
		}
		// A published port is reachable from every network and host, as Docker's are.
		w.rule(tableMangle, w.top.isolation, "-m", "conntrack", "--ctstate", "DNAT", "-j", "RETURN")
		for _, s := range active {
			if !s.internal && !s.ownPolicy {
				w.inbound(s, v6)
			}
		}
		// Into the networks' own bridges first, so that a CNI bridge named like Docker's is not taken for one.
		for _, s := range active {
			for _, b := range s.bridges {
				w.rule(tableFilter, w.top.networks, "-o", b, "-j", "ACCEPT")
			}
		}
		// What the networks send into Docker's own bridges is Docker's to decide: Docker 20.10 drops nothing from
		// a foreign interface into its bridges but by its FORWARD policy, which the accepts below would override.
		for _, b := range []string{"docker0", "br-+"} {
			w.rule(tableFilter, w.top.networks, "-o", b, "-j", "RETURN")
		}
		for _, s := range active {
			w.accepts(s, v6)
			if s.masquerade && !s.internal {
				w.masquerade(s, v6)
			}
		}
	}
	made := map[string]bool{}
	for _, c := range w.chains {
		made[c] = true
	}
	for _, c := range previous {
		table, chain, _ := strings.Cut(c, " ")
		if !made[c] {
			w.b.Remove(table, chain)
		}
	}
	return batch{restore: w.b, text: w.b.String(), chains: w.chains, empty: len(active) == 0}
}

// match writes one rule in chain for each prefix and each bridge of the network, matching the packet's source
// (-s, -i) or its destination (-d, -o), with the given target.
func (w *writer) match(table, chain string, s networkSet, v6, source bool, target ...string) {
	addr, iface := "-d", "-o"
	if source {
		addr, iface = "-s", "-i"
	}
	for _, p := range s.prefixes[v6] {
		w.rule(table, chain, append([]string{addr, p}, target...)...)
	}
	for _, b := range s.bridges {
		w.rule(table, chain, append([]string{iface, b}, target...)...)
	}
}

// internal writes an internal network's isolation: a packet with one end in the network (by prefix, or by
// the bridge it came in or goes out on) must have the other end there too. Traffic to the host itself (the
// gateway address) is not forwarded and stays allowed, as on Docker's internal networks.
func (w *writer) internal(s networkSet, v6 bool) {
	from, to := chainOf(s.id), chainOf(s.id)+"-D"
	w.declare(tableMangle, from)
	w.declare(tableMangle, to)
	w.match(tableMangle, w.top.isolation, s, v6, true, "-j", from)
	w.match(tableMangle, w.top.isolation, s, v6, false, "-j", from)
	// from: is the source in the network? Then check the destination (goto: its RETURN ends this jump).
	w.match(tableMangle, from, s, v6, true, "-g", to)
	w.rule(tableMangle, from, "-j", "DROP")
	w.match(tableMangle, to, s, v6, false, "-j", "RETURN")
	w.rule(tableMangle, to, "-j", "DROP")
}

// inbound writes a network's isolation from everything else: a new connection into the network must come from
// the network (its prefixes, its bridges); replies and published ports passed before.
func (w *writer) inbound(s networkSet, v6 bool) {
	c := chainOf(s.id)
	w.declare(tableMangle, c)
	w.match(tableMangle, w.top.isolation, s, v6, false, "-j", c)
	w.match(tableMangle, c, s, v6, true, "-j", "RETURN")
	w.rule(tableMangle, c, "-j", "DROP")
}

// accepts writes what lets a network's traffic past a FORWARD policy of DROP. Whatever reaches the filter
// table has passed the isolation, so every packet from or to the network is accepted; a network that
// isolates nothing (ownPolicy) gets its containers' own traffic and the replies to it only.
func (w *writer) accepts(s networkSet, v6 bool) {
	for _, p := range s.prefixes[v6] {
		w.rule(tableFilter, w.top.networks, "-s", p, "-j", "ACCEPT")
		if s.ownPolicy {
			w.rule(tableFilter, w.top.networks, "-d", p, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
		} else {
			w.rule(tableFilter, w.top.networks, "-d", p, "-j", "ACCEPT")
		}
	}
	for _, b := range s.bridges {
		w.rule(tableFilter, w.top.networks, "-i", b, "-j", "ACCEPT")
	}
}

// masquerade writes a network's source NAT: what leaves the network for anywhere else leaves with the host's
// address, as from Docker's bridge networks. Traffic to the network's own prefixes and bridges (the other
// hosts' ranges of a routed network among them) keeps its source. POSTROUTING knows no input interface, so
// the network's traffic is told by its source prefixes alone.
func (w *writer) masquerade(s networkSet, v6 bool) {
	c := netMasqPrefix + strings.TrimPrefix(chainOf(s.id), netChainPrefix)
	w.declare(tableNAT, c)
	for _, p := range s.prefixes[v6] {
		w.rule(tableNAT, w.top.masquerade, "-s", p, "-j", c)
	}
	w.match(tableNAT, c, s, v6, false, "-j", "RETURN")
	w.rule(tableNAT, c, "-j", "MASQUERADE")
}
