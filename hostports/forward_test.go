package hostports

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/vishvananda/netns"
)

// TestForwardRules programs an attachment's FORWARD rules in a fresh namespace standing in for the host and
// checks the exact chain (normal and internal, IPv4 and IPv6), that a repeated apply changes nothing, and
// that removal leaves no chain or jump behind, also when repeated.
func TestForwardRules(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("iptables-nft"); err != nil {
		t.Skip("skipping: iptables-nft not installed")
	}
	for _, tc := range []struct {
		name     string
		internal bool
		peers    []string
		want4    []string
		want6    []string
	}{
		{"normal", false, nil, []string{
			"-A CNIPLUG-NET-0123456789ab -s 10.99.0.2/32 -j ACCEPT",
			"-A CNIPLUG-NET-0123456789ab -d 10.99.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A CNIPLUG-NET-0123456789ab -s 10.99.0.0/24 -d 10.99.0.2/32 -j ACCEPT",
		}, []string{
			"-A CNIPLUG-NET-0123456789ab -s fd00:99::2/128 -j ACCEPT",
			"-A CNIPLUG-NET-0123456789ab -d fd00:99::2/128 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A CNIPLUG-NET-0123456789ab -s fd00:99::/64 -d fd00:99::2/128 -j ACCEPT",
		}},
		// A routed multi-host network: the other hosts' ranges open connections too, per family.
		{"peers", false, []string{"10.98.0.0/16", "fd00:98::/48", "10.99.0.0/24"}, []string{
			"-A CNIPLUG-NET-0123456789ab -s 10.99.0.2/32 -j ACCEPT",
			"-A CNIPLUG-NET-0123456789ab -d 10.99.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A CNIPLUG-NET-0123456789ab -s 10.99.0.0/24 -d 10.99.0.2/32 -j ACCEPT",
			"-A CNIPLUG-NET-0123456789ab -s 10.98.0.0/16 -d 10.99.0.2/32 -j ACCEPT",
		}, []string{
			"-A CNIPLUG-NET-0123456789ab -s fd00:99::2/128 -j ACCEPT",
			"-A CNIPLUG-NET-0123456789ab -d fd00:99::2/128 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A CNIPLUG-NET-0123456789ab -s fd00:99::/64 -d fd00:99::2/128 -j ACCEPT",
			"-A CNIPLUG-NET-0123456789ab -s fd00:98::/48 -d fd00:99::2/128 -j ACCEPT",
		}},
		{"internal", true, nil, []string{
			"-A CNIPLUG-NET-0123456789ab -s 10.99.0.2/32 ! -d 10.99.0.0/24 -j DROP",
			"-A CNIPLUG-NET-0123456789ab ! -s 10.99.0.0/24 -d 10.99.0.2/32 -j DROP",
			"-A CNIPLUG-NET-0123456789ab -s 10.99.0.2/32 -d 10.99.0.0/24 -j ACCEPT",
			"-A CNIPLUG-NET-0123456789ab -s 10.99.0.0/24 -d 10.99.0.2/32 -j ACCEPT",
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := nsName("hpf")
			testutil.Run(t, "ip", "netns", "add", host)
			t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", host).Run() })
			hostNS, err := netns.GetFromName(host)
			testutil.Must(t, err)
			defer hostNS.Close()
			chain := func(save string) []string {
				var out []string
				for _, l := range strings.Split(testutil.Run(t, "ip", "netns", "exec", host, save, "-t", "filter"), "\n") {
					if strings.Contains(l, "CNIPLUG") {
						out = append(out, strings.TrimSpace(l))
					}
				}
				return out
			}
			p, err := New("iptables-nft", "ip6tables-nft")
			testutil.Must(t, err)
			f := Forward{ID: "0123456789abcdef", Addresses: []string{"10.99.0.2/24", "fd00:99::2/64"}, Peers: tc.peers, Internal: tc.internal}
			if tc.internal {
				f.Addresses = f.Addresses[:1]
			}
			testutil.InNetNS(t, hostNS, func() {
				err = p.AddForward(f)
				if err == nil {
					err = p.ApplyForward(f) // replaces: still one chain and one jump
				}
			})
			testutil.Must(t, err)
			for save, want := range map[string][]string{"iptables-nft-save": tc.want4, "ip6tables-nft-save": tc.want6} {
				got := chain(save)
				var rules []string
				jumps := 0
				for _, l := range got {
					if strings.HasPrefix(l, "-A CNIPLUG-NET-") {
						rules = append(rules, l)
					}
					if strings.HasPrefix(l, "-A CNIPLUG-FORWARD ") && strings.HasSuffix(l, "-j CNIPLUG-NET-0123456789ab") {
						jumps++
					}
				}
				if strings.Join(rules, "\n") != strings.Join(want, "\n") {
					t.Errorf("%s: chain is\n%s\nwant\n%s", save, strings.Join(rules, "\n"), strings.Join(want, "\n"))
				}
				if wantJumps := map[bool]int{true: 1, false: 0}[len(want) > 0]; jumps != wantJumps {
					t.Errorf("%s: %d jumps to the chain, want %d:\n%s", save, jumps, wantJumps, strings.Join(got, "\n"))
				}
			}
			for i := 0; i < 2; i++ {
				testutil.InNetNS(t, hostNS, func() { err = p.RemoveForward(f) })
				testutil.Must(t, err)
			}
			for _, save := range []string{"iptables-nft-save", "ip6tables-nft-save"} {
				var left []string
				for _, l := range chain(save) {
					if strings.Contains(l, "CNIPLUG-NET-") {
						left = append(left, l)
					}
				}
				if len(left) > 0 {
					t.Errorf("%s after removal:\n%s", save, strings.Join(left, "\n"))
				}
			}
		})
	}
}

// TestForwardRulesAfterFlush: the top-level chains are made once per Programmer; when something removes them
// behind its back (a flushed table, a firewalld reload), the next apply makes them again instead of failing.
func TestForwardRulesAfterFlush(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("iptables-nft"); err != nil {
		t.Skip("skipping: iptables-nft not installed")
	}
	host := nsName("hpf")
	testutil.Run(t, "ip", "netns", "add", host)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", host).Run() })
	hostNS, err := netns.GetFromName(host)
	testutil.Must(t, err)
	defer hostNS.Close()
	p, err := New("iptables-nft", "ip6tables-nft")
	testutil.Must(t, err)
	first := Forward{ID: "aaaaaaaaaaaaaaaa", Addresses: []string{"10.99.0.2/24"}}
	second := Forward{ID: "bbbbbbbbbbbbbbbb", Addresses: []string{"10.99.0.3/24"}}
	testutil.InNetNS(t, hostNS, func() { err = p.ApplyForward(first) })
	testutil.Must(t, err)
	// Someone flushes the filter table and deletes cniplug's chains.
	testutil.Run(t, "ip", "netns", "exec", host, "sh", "-c", "iptables-nft -F && iptables-nft -X")
	testutil.InNetNS(t, hostNS, func() { err = p.ApplyForward(second) })
	if err != nil {
		t.Fatalf("apply after the chains were flushed: %v", err)
	}
	rules := testutil.Run(t, "ip", "netns", "exec", host, "iptables-nft-save", "-t", "filter")
	for _, want := range []string{"-A FORWARD -m comment --comment \"cniplug host ports\" -j CNIPLUG-FORWARD",
		"-A CNIPLUG-FORWARD -m comment --comment \"cniplug net bbbbbbbbbbbbbbbb\" -j CNIPLUG-NET-bbbbbbbbbbbb",
		"-A CNIPLUG-NET-bbbbbbbbbbbb -s 10.99.0.3/32 -j ACCEPT"} {
		if !strings.Contains(rules, want) {
			t.Errorf("rules lack %q:\n%s", want, rules)
		}
	}
}
