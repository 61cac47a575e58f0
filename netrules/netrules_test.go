package netrules

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// testHost is a network namespace standing in for a Docker host: three CNI-style bridges with two containers
// each (A and B plain, C internal), an upstream host "out" routed through it, IP forwarding on and the
// FORWARD policy DROP, as Docker's iptables backend leaves a fresh host.
type testHost struct {
	t        *testing.T
	name     string
	ns       netns.NsHandle
	rules    *Rules
	other    *Rules // another instance's
	execLog  string
	children map[string]string // container or "out" -> its netns name
}

const (
	netA = "aaaaaaaaaaaaaaaa1111"
	netB = "bbbbbbbbbbbbbbbb2222"
	netC = "cccccccccccccccc3333"
)

// address of each container netns on its bridge, by name.
var testAddrs = map[string]struct{ bridge, addr, gw string }{
	"a1": {"tbrA", "10.231.1.2/24", "10.231.1.1"},
	"a2": {"tbrA", "10.231.1.3/24", "10.231.1.1"},
	"b1": {"tbrB", "10.231.2.2/24", "10.231.2.1"},
	"c1": {"tbrC", "10.231.3.2/24", "10.231.3.1"},
	"c2": {"tbrC", "10.231.3.3/24", "10.231.3.1"},
}

func newTestHost(t *testing.T) *testHost {
	testutil.RequireRoot(t)
	for _, c := range []string{"iptables-nft", "ip6tables-nft", "iptables-nft-restore", "busybox"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("skipping: %s not installed", c)
		}
	}
	h := &testHost{t: t, name: testutil.UniqueName("nrh"), children: map[string]string{}}
	h.run("ip", "netns", "add", h.name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", h.name).Run() })
	ns, err := netns.GetFromName(h.name)
	testutil.Must(t, err)
	t.Cleanup(func() { ns.Close() })
	h.ns = ns
	h.in("sysctl", "-qw", "net.ipv4.ip_forward=1")
	h.in("ip", "link", "set", "lo", "up")
	for _, br := range []struct{ name, addr string }{{"tbrA", "10.231.1.1/24"}, {"tbrB", "10.231.2.1/24"}, {"tbrC", "10.231.3.1/24"}} {
		h.in("ip", "link", "add", br.name, "type", "bridge")
		h.in("ip", "addr", "add", br.addr, "dev", br.name)
		h.in("ip", "link", "set", br.name, "up")
	}
	for name, a := range testAddrs {
		h.child(name, a.bridge, a.addr, a.gw)
	}
	// The upstream host: routed, not bridged; it routes the containers' range back through the test host.
	out := h.newNS("out")
	h.in("ip", "link", "add", "vout", "type", "veth", "peer", "name", "eth0", "netns", out)
	h.in("ip", "addr", "add", "10.231.9.1/24", "dev", "vout")
	h.in("ip", "link", "set", "vout", "up")
	h.inNS(out, "ip", "addr", "add", "10.231.9.2/24", "dev", "eth0")
	h.inNS(out, "ip", "link", "set", "eth0", "up")
	h.inNS(out, "ip", "link", "set", "lo", "up")
	h.inNS(out, "ip", "route", "add", "10.231.0.0/16", "via", "10.231.9.1")
	h.in("iptables-nft", "-P", "FORWARD", "DROP")

	// Every iptables command the rules run is logged, to count them.
	dir := t.TempDir()
	h.execLog = filepath.Join(dir, "log")
	for _, c := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			script := fmt.Sprintf("#!/bin/sh\necho %s%s \"$@\" >>%s\nexec %s-nft%s \"$@\"\n", c, suffix, h.execLog, c, suffix)
			testutil.Must(t, os.WriteFile(filepath.Join(dir, c+suffix), []byte(script), 0o755))
		}
	}
	h.rules, err = New(filepath.Join(dir, "iptables"), filepath.Join(dir, "ip6tables"), "111111")
	testutil.Must(t, err)
	// A second cniplug on the same host, with its own networks.
	h.other, err = New("iptables-nft", "ip6tables-nft", "222222")
	testutil.Must(t, err)
	return h
}

func (h *testHost) run(name string, args ...string) string {
	h.t.Helper()
	return testutil.Run(h.t, name, args...)
}

func (h *testHost) in(args ...string) string {
	h.t.Helper()
	return h.inNS(h.name, args...)
}

func (h *testHost) inNS(ns string, args ...string) string {
	h.t.Helper()
	return h.run("ip", append([]string{"netns", "exec", ns}, args...)...)
}

func (h *testHost) newNS(role string) string {
	h.t.Helper()
	ns := h.name + "-" + role
	h.run("ip", "netns", "add", ns)
	h.t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	h.children[role] = ns
	return ns
}

func (h *testHost) child(name, bridge, addr, gw string) {
	h.t.Helper()
	ns := h.newNS(name)
	host := "v" + name
	h.in("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
	h.in("ip", "link", "set", host, "master", bridge, "up")
	h.inNS(ns, "ip", "addr", "add", addr, "dev", "eth0")
	h.inNS(ns, "ip", "link", "set", "eth0", "up")
	h.inNS(ns, "ip", "link", "set", "lo", "up")
	h.inNS(ns, "ip", "route", "add", "default", "via", gw)
}

func (h *testHost) reaches(from, toIP string) bool {
	err := exec.Command("ip", "netns", "exec", h.children[from], "busybox", "ping", "-c", "1", "-W", "1", toIP).Run()
	return err == nil
}

func (h *testHost) do(fn func() error) {
	h.t.Helper()
	var err error
	testutil.InNetNS(h.t, h.ns, func() { err = fn() })
	testutil.Must(h.t, err)
}

func (h *testHost) execs() int {
	b, _ := os.ReadFile(h.execLog)
	return strings.Count(string(b), "\n")
}

func ip(name string) string { return strings.Split(testAddrs[name].addr, "/")[0] }

// members are the three networks and their containers, as attach records them.
func members() []Member {
	var ms []Member
	for _, n := range []struct {
		id, bridge string
		internal   bool
		ctrs       []string
	}{{netA, "tbrA", false, []string{"a1", "a2"}}, {netB, "tbrB", false, []string{"b1"}}, {netC, "tbrC", true, []string{"c1", "c2"}}} {
		ms = append(ms, Member{ID: n.id, Network: n.id, Bridges: []string{n.bridge}, Internal: n.internal})
		for _, c := range n.ctrs {
			ms = append(ms, Member{ID: "att-" + c, Network: n.id, Addresses: []string{testAddrs[c].addr}, Internal: n.internal})
		}
	}
	return ms
}

// TestIsolation programs the three networks and checks by traffic, with br_netfilter's
// bridge-nf-call-iptables at 1 (the kernel's default here) and at 0, what Docker's bridge networks do:
// containers of one network reach each other and the outside, nothing opens connections into a network from
// another network or from outside (but through a published port), and an internal network lets nothing in or
// out, also past accepts that other tools insert at the top of FORWARD (the firewall CNI plugin's, Docker's
// for its own bridges).
func TestIsolation(t *testing.T) {
	h := newTestHost(t)
	ctx := context.Background()
	for _, m := range members() {
		rules := h.rules
		if m.Network == netB {
			rules = h.other // network B belongs to another cniplug instance on the host
		}
		h.do(func() error { return rules.Join(ctx, m) })
	}
	// Accepts that come before cniplug's rules in the filter table: the firewall plugin's for the internal
	// network's containers (and B's), Docker's for traffic from its own bridge (as if tbrB were Docker's).
	h.in("iptables-nft", "-I", "FORWARD", "1", "-s", "10.231.3.0/24", "-j", "ACCEPT")
	h.in("iptables-nft", "-I", "FORWARD", "1", "-i", "tbrB", "-j", "ACCEPT")
	// A published port of a1: the upstream host pings the test host's address and reaches a1.
	h.in("iptables-nft", "-t", "nat", "-A", "PREROUTING", "-i", "vout", "-d", "10.231.9.1", "-p", "icmp", "-j", "DNAT", "--to-destination", ip("a1"))

	cases := []struct {
		from, to string
		want     bool
	}{
		{"a1", ip("a2"), true},      // within a network, bridged
		{"a1", "10.231.9.2", true},  // out, routed
		{"c1", ip("c2"), true},      // within an internal network
		{"c1", "10.231.3.1", true},  // the internal network's gateway address on the host
		{"a1", ip("b1"), false},     // between networks
		{"b1", ip("a1"), false},     // the other way, past Docker-style accepts of b's bridge
		{"a1", ip("c1"), false},     // into an internal network
		{"b1", ip("c1"), false},     //   also past the accepts
		{"c1", ip("a1"), false},     // out of an internal network
		{"c1", "10.231.9.2", false}, //   to the outside, past the firewall plugin's accept
		{"out", ip("a1"), false},    // from outside, not published
		{"out", "10.231.9.1", true}, // through the published port
		{"out", ip("c1"), false},    // into the internal network
	}
	for _, nf := range []string{"1", "0"} {
		h.in("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables="+nf)
		for _, tc := range cases {
			if got := h.reaches(tc.from, tc.to); got != tc.want {
				t.Errorf("bridge-nf-call-iptables=%s: %s reaches %s: %v, want %v", nf, tc.from, tc.to, got, tc.want)
			}
		}
	}
	// A bridge named as Docker names its own: nothing of the networks' may open connections into it past the
	// FORWARD policy (Docker 20.10 has no drop of its own for that), replies still come back.
	h.in("ip", "link", "add", "br-0123456789ab", "type", "bridge")
	h.in("ip", "addr", "add", "10.231.8.1/24", "dev", "br-0123456789ab")
	h.in("ip", "link", "set", "br-0123456789ab", "up")
	h.child("d1", "br-0123456789ab", "10.231.8.2/24", "10.231.8.1")
	h.in("iptables-nft", "-I", "FORWARD", "1", "-i", "br-0123456789ab", "-j", "ACCEPT") // Docker's accept of its bridge's own traffic
	h.in("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
	if h.reaches("a1", "10.231.8.2") {
		t.Errorf("a1 opens a connection into a Docker-named bridge")
	}
	if t.Failed() {
		t.Logf("mangle:\n%s\nfilter:\n%s", h.in("iptables-nft-save", "-t", "mangle"), h.in("iptables-nft-save", "-t", "filter"))
	}
}

// TestNoCommandForAKnownPrefix: a container whose address is in a prefix its network already has costs no
// iptables command; the network's first container and a network's last leave do.
func TestNoCommandForAKnownPrefix(t *testing.T) {
	h := newTestHost(t)
	ctx := context.Background()
	ms := members()
	h.do(func() error { return h.rules.Join(ctx, ms[0]) }) // network A
	h.do(func() error { return h.rules.Join(ctx, ms[1]) }) // a1: A's first prefix
	before := h.execs()
	h.do(func() error { return h.rules.Join(ctx, ms[2]) }) // a2: same subnet
	h.do(func() error { return h.rules.Leave(ctx, ms[2].ID) })
	if n := h.execs() - before; n != 0 {
		b, _ := os.ReadFile(h.execLog)
		t.Errorf("a container in a known prefix ran %d iptables commands:\n%s", n, b)
	}
	if !h.reaches("a1", "10.231.9.2") {
		t.Errorf("a1 does not reach the outside")
	}
}

// TestRulesGoWithTheLastMember: once every member left, and after Load of an empty set (a restart after the
// networks went), no cniplug chain or jump is left in any table, and Load removes the per-container chains of
// earlier cniplug versions.
func TestRulesGoWithTheLastMember(t *testing.T) {
	h := newTestHost(t)
	ctx := context.Background()
	leftovers := func() []string {
		var out []string
		for _, save := range []string{"iptables-nft-save", "ip6tables-nft-save"} {
			for _, l := range strings.Split(h.in(save), "\n") {
				if strings.Contains(l, "CNIPLUG") {
					out = append(out, save+": "+l)
				}
			}
		}
		return out
	}
	for _, m := range members() {
		h.do(func() error { return h.rules.Join(ctx, m) })
	}
	for _, m := range members() {
		h.do(func() error { return h.rules.Leave(ctx, m.ID) })
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("after every member left:\n%s", strings.Join(left, "\n"))
	}
	// A restart: the rules of networks Docker removed meanwhile, and an earlier version's per-container chain.
	for _, m := range members() {
		h.do(func() error { return h.rules.Join(ctx, m) })
	}
	h.in("iptables-nft", "-N", "CNIPLUG-FORWARD")
	h.in("iptables-nft", "-N", "CNIPLUG-NET-0123456789ab")
	h.in("iptables-nft", "-A", "CNIPLUG-FORWARD", "-m", "comment", "--comment", "cniplug net 0123456789abcdef", "-j", "CNIPLUG-NET-0123456789ab")
	// Another instance's network: its rules are not this instance's to remove.
	other := Member{ID: "other", Network: "dddddddddddddddd4444", Addresses: []string{"10.231.4.2/24"}}
	h.do(func() error { return h.other.Join(ctx, other) })
	fresh, err := New("iptables-nft", "ip6tables-nft", "111111")
	testutil.Must(t, err)
	h.do(func() error { return fresh.Load(ctx, nil) })
	if mangle := h.in("iptables-nft-save", "-t", "mangle"); !strings.Contains(mangle, "-A CNIPLUG-ISO-dddddddddddd -s 10.231.4.0/24 -j RETURN") {
		t.Errorf("Load removed another instance's rules:\n%s", mangle)
	}
	h.do(func() error { return h.other.Leave(ctx, other.ID) })
	h.in("iptables-nft", "-X", "CNIPLUG-FORWARD")
	if left := leftovers(); len(left) > 0 {
		t.Errorf("after Load with no members:\n%s", strings.Join(left, "\n"))
	}
}

// TestRepairAfterFlush: after someone flushes both tables (a firewalld reload), Repair puts the rule set back,
// and the networks are isolated again; with nothing missing it runs no restore.
func TestRepairAfterFlush(t *testing.T) {
	h := newTestHost(t)
	ctx := context.Background()
	for _, m := range members() {
		if m.Network != netB {
			h.do(func() error { return h.rules.Join(ctx, m) })
		}
	}
	var repaired bool
	var err error
	h.do(func() error { repaired, err = h.rules.Repair(ctx); return err })
	if repaired {
		t.Errorf("Repair rewrote intact rules")
	}
	h.in("sh", "-c", "iptables-nft -t mangle -F && iptables-nft -F")
	h.in("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
	if h.reaches("a1", ip("a2")) {
		t.Fatalf("after the flush a1 still reaches a2 past the DROP policy: the flush proves nothing")
	}
	h.do(func() error { repaired, err = h.rules.Repair(ctx); return err })
	if !repaired {
		t.Errorf("Repair did not notice the flushed rules")
	}
	if h.reaches("a1", ip("c1")) {
		t.Errorf("after Repair a1 still reaches the internal network's c1")
	}
	if !h.reaches("a1", ip("a2")) {
		t.Errorf("after Repair a1 does not reach a2 on its own network")
	}
}

// TestMasquerade: a network with Masquerade reaches a host that has no route back to it, with the host's
// address, once for the network; one without does not; within the network sources stay as they are.
func TestMasquerade(t *testing.T) {
	h := newTestHost(t)
	ctx := context.Background()
	for _, m := range members() {
		if m.Network == netA {
			m.Masquerade = true
		}
		h.do(func() error { return h.rules.Join(ctx, m) })
	}
	h.inNS(h.children["out"], "ip", "route", "del", "10.231.0.0/16")
	if !h.reaches("a1", "10.231.9.2") {
		t.Errorf("a1 on the masquerading network does not reach the host without a route back")
	}
	if h.reaches("b1", "10.231.9.2") {
		t.Errorf("b1 reaches the host without a route back although its network does not masquerade")
	}
	if !h.reaches("a1", ip("a2")) {
		t.Errorf("a1 does not reach a2 on its own network")
	}
	if nat := h.in("iptables-nft-save", "-t", "nat"); !strings.Contains(nat, "-A CNIPLUG-MASQ-aaaaaaaaaaaa -j MASQUERADE") || strings.Contains(nat, "CNIPLUG-MASQ-bbbbbbbbbbbb") {
		t.Errorf("nat table:\n%s", nat)
	}
}
