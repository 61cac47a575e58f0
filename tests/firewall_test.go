package tests

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// dockerIPTables reports whether dockerd programs its firewall through iptables, as opposed to its nftables
// backend (--firewall-backend=nftables, Docker 29), which has no DOCKER-USER and no FORWARD DROP. A
// DOCKER-USER chain left by an earlier iptables-backend dockerd proves nothing, so dockerd is asked.
func dockerIPTables() bool {
	out, err := exec.Command("docker", "info", "--format", "{{if .FirewallBackend}}{{.FirewallBackend.Driver}}{{end}}").Output()
	return err == nil && strings.TrimSpace(string(out)) != "nftables"
}

// forwardDrop gives FORWARD the DROP policy Docker's iptables backend sets on a host where it had to enable
// IP forwarding itself (a fresh host); on these machines forwarding is already on, so dockerd leaves ACCEPT.
// The old policy comes back when the test ends.
func forwardDrop(t *testing.T) {
	t.Helper()
	if !dockerIPTables() {
		return
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		out, err := exec.Command(ipt, "-S", "FORWARD").Output()
		if err != nil {
			continue
		}
		first := strings.SplitN(string(out), "\n", 2)[0] // "-P FORWARD ACCEPT"
		policy := strings.TrimPrefix(first, "-P FORWARD ")
		testutil.Run(t, ipt, "-P", "FORWARD", "DROP")
		t.Cleanup(func() { _ = exec.Command(ipt, "-P", "FORWARD", policy).Run() })
	}
}

func pingFails(t *testing.T, container, ip string) {
	t.Helper()
	if out, err := dockerErr("exec", container, "ping", "-c", "1", "-W", "1", ip); err == nil {
		t.Errorf("%s reaches %s, which it must not:\n%s", container, ip, out)
	}
}

// plainNet is what a new user writes: bridge or ptp with host-local and ipMasq, no firewall plugin.
func plainNet(t *testing.T, kind string) cniNet {
	t.Helper()
	if kind == "ptp" {
		return writeConflistWith(t, "ptp", false, func(ipam string) string {
			return fmt.Sprintf(`{"type":"ptp","ipMasq":true,"ipam":%s}`, ipam)
		})
	}
	br := testutil.UniqueName("e2ebr")
	n := writeConflistWith(t, "br", false, func(ipam string) string {
		return fmt.Sprintf(`{"type":"bridge","bridge":"%s","isGateway":true,"ipMasq":true,"ipam":%s}`, br, ipam)
	})
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", br).Run() })
	return n
}

// TestDockerFirewall: a cniplug network behaves like a Docker network under Docker's firewall, whatever
// conflist the user brings: its containers reach each other and the outside past a FORWARD DROP policy,
// DOCKER-USER rules still apply first, --internal networks have no way out, and --opt host-firewall=false
// leaves the firewall to the CNI network.
func TestDockerFirewall(t *testing.T) {
	requireSuite(t)
	forwardDrop(t)
	remote := newRemoteHost(t)

	for _, tc := range []struct {
		name string
		net  func(t *testing.T) cniNet
		mode addressing
	}{
		{"bridge without firewall plugin", func(t *testing.T) cniNet { return plainNet(t, "bridge") }, cniIPAM},
		{"ptp without firewall plugin", func(t *testing.T) cniNet { return plainNet(t, "ptp") }, nullIPAM},
		{"bridge with firewall plugin", func(t *testing.T) cniNet { return bridgeNet(t) }, dockerIPAM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.net(t)
			net := createNetwork(t, n, tc.mode)
			a, b := runContainer(t, net), runContainer(t, net)
			ping(t, a, inspectEndpoint(t, b, net).IPAddress)
			ping(t, a, remote.IP)
			if len(iptablesMentions(t, "CNIPLUG-ISO-")) == 0 {
				t.Errorf("no CNIPLUG-ISO-* rules for the network")
			}
		})
	}

	t.Run("DOCKER-USER applies first", func(t *testing.T) {
		if !dockerIPTables() {
			t.Skip("skipping: dockerd uses its nftables backend, which has no DOCKER-USER chain")
		}
		net := createNetwork(t, plainNet(t, "bridge"), cniIPAM)
		a := runContainer(t, net)
		ip := inspectEndpoint(t, a, net).IPAddress
		rule := []string{"DOCKER-USER", "-s", ip, "-d", remote.IP, "-j", "DROP"}
		testutil.Run(t, "iptables", append([]string{"-I"}, rule...)...)
		pingFails(t, a, remote.IP)
		testutil.Run(t, "iptables", append([]string{"-D"}, rule...)...)
		ping(t, a, remote.IP)
	})

	t.Run("internal", func(t *testing.T) {
		for _, kind := range []string{"bridge", "ptp"} {
			n := plainNet(t, kind)
			net := createNetwork(t, n, cniIPAM, "--internal")
			a, b := runContainer(t, net), runContainer(t, net)
			ping(t, a, inspectEndpoint(t, b, net).IPAddress)
			if out := docker(t, "exec", a, "ip", "route"); strings.Contains(out, "default") {
				t.Errorf("%s: container on an internal network has a default route:\n%s", kind, out)
			}
			if gw := inspectEndpoint(t, a, net).Gateway; gw != "" {
				t.Errorf("%s: docker inspect shows gateway %s on an internal network", kind, gw)
			}
			pingFails(t, a, remote.IP)
			// Even a route the container adds itself (with NET_ADMIN) leads nowhere: FORWARD drops it.
			c := runContainer(t, net, "--cap-add", "NET_ADMIN")
			docker(t, "exec", c, "ip", "route", "add", "default", "via", n.Gateway)
			pingFails(t, c, remote.IP)
		}
	})

	t.Run("host-firewall=false", func(t *testing.T) {
		n := plainNet(t, "bridge")
		net := createNetwork(t, n, cniIPAM, "--opt", "host-firewall=false")
		a := runContainer(t, net)
		ip := inspectEndpoint(t, a, net).IPAddress
		id := strings.TrimSpace(docker(t, "network", "inspect", "-f", "{{.Id}}", net))
		m := iptablesMentions(t, "CNIPLUG-ISO-"+id[:12])
		for _, line := range iptablesMentions(t, n.Subnet) {
			if strings.Contains(line, "CNIPLUG") {
				m = append(m, line) // the network's prefix in the accepts or masquerade of cniplug
			}
		}
		if len(m) > 0 {
			t.Errorf("cniplug programmed rules for %s although host-firewall=false:\n%s", ip, strings.Join(m, "\n"))
		}
		if dockerIPTables() {
			pingFails(t, a, remote.IP) // nothing lets it past the DROP policy: the CNI network's job now
		}
		out, err := dockerErr("network", "create", "-d", driverName, "--opt", "cni="+n.Name, "--opt", "host-firewall=false",
			"--ipam-driver", "null", "--internal", testutil.UniqueName("dn"))
		if err == nil || !strings.Contains(out, "--internal needs cniplug's firewall rules") {
			t.Errorf("--internal with host-firewall=false: want a refusal, got %v: %s", err, out)
		}
	})
}

// TestMasqueradeOption: --opt masquerade=true masquerades what leaves the network once for the network, as
// Docker does for its bridges, so a conflist without ipMasq reaches a host that has no route back to it; the
// same conflist without the option does not, and containers of the network still reach each other.
func TestMasqueradeOption(t *testing.T) {
	requireSuite(t)
	forwardDrop(t)
	remote := newRemoteHost(t)
	if out, err := remote.run("ip", "route", "del", "default"); err != nil {
		t.Fatalf("removing the remote host's route back: %v: %s", err, out)
	}
	noMasq := func() cniNet {
		br := testutil.UniqueName("e2ebr")
		n := writeConflistWith(t, "br", false, func(ipam string) string {
			return fmt.Sprintf(`{"type":"bridge","bridge":"%s","isGateway":true,"ipam":%s}`, br, ipam)
		})
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", br).Run() })
		return n
	}
	masq := createNetwork(t, noMasq(), cniIPAM, "--opt", "masquerade=true")
	plain := createNetwork(t, noMasq(), cniIPAM)
	a, b := runContainer(t, masq), runContainer(t, masq)
	ping(t, a, remote.IP)
	pingFails(t, runContainer(t, plain), remote.IP)
	ping(t, b, inspectEndpoint(t, a, masq).IPAddress)
	if out, err := dockerErr("network", "create", "-d", driverName, "--opt", "cni="+noMasq().Name, "--opt", "masquerade=true",
		"--ipam-driver", "null", "--internal", testutil.UniqueName("dn")); err == nil || !strings.Contains(out, "masquerades what leaves the network") {
		t.Errorf("masquerade with --internal: want a refusal, got %v: %s", err, out)
	}
}
