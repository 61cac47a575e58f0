package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// dualNet is a CNI bridge network handing out IPv4 and IPv6 (host-local with a range set per family).
type dualNet struct {
	cniNet
	Subnet6, Gateway6, Prefix6 string
}

func dualStackNet(t *testing.T) dualNet {
	t.Helper()
	subnet, gw, prefix := nextSubnet()
	third := strings.Split(prefix, ".")[2]
	n := dualNet{
		cniNet:   cniNet{Name: testutil.UniqueName("e2e6"), Subnet: subnet, Gateway: gw, Prefix: prefix},
		Subnet6:  fmt.Sprintf("fd00:213:%s::/64", third),
		Gateway6: fmt.Sprintf("fd00:213:%s::1", third),
		Prefix6:  fmt.Sprintf("fd00:213:%s::", third),
	}
	br := testutil.UniqueName("e2ebr")
	// The bridge's own IPv6 gateway address would sit out duplicate address detection while the bridge plugin
	// waits for it; created here without DAD, the plugin just adopts it.
	testutil.Run(t, "ip", "link", "add", br, "type", "bridge")
	testutil.Run(t, "sysctl", "-qw", "net.ipv6.conf."+br+".accept_dad=0")
	testutil.Run(t, "ip", "link", "set", br, "up")
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"%s","plugins":[
	  {"type":"bridge","bridge":"%s","isGateway":true,"ipMasq":true,
	   "ipam":{"type":"host-local","ranges":[[{"subnet":"%s"}],[{"subnet":"%s"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}},
	  {"type":"firewall"}]}`, n.Name, br, n.Subnet, n.Subnet6)
	path := testutil.WriteFile(t, env.confDir, n.Name+".conflist", conf)
	t.Cleanup(func() {
		os.Remove(path)
		testutil.RemoveHostLocalBookkeeping(n.Name)
		_ = exec.Command("ip", "link", "del", br).Run()
	})
	return n
}

type endpoint6 struct {
	IPAddress, GlobalIPv6Address, IPv6Gateway, MacAddress string
	GlobalIPv6PrefixLen                                   int
}

func inspectEndpoint6(t *testing.T, container, network string) endpoint6 {
	t.Helper()
	out := docker(t, "inspect", "-f", fmt.Sprintf(`{{json (index .NetworkSettings.Networks %q)}}`, network), container)
	var ep endpoint6
	if err := json.Unmarshal([]byte(out), &ep); err != nil {
		t.Fatalf("inspect %s: %v: %s", container, err, out)
	}
	return ep
}

// checkIPv6 verifies that inspect shows the IPv6 address and gateway CNI assigned, that the container has
// the address, and that host-local holds it.
func checkIPv6(t *testing.T, container, network string, n dualNet) endpoint6 {
	t.Helper()
	ep := inspectEndpoint6(t, container, network)
	if !strings.HasPrefix(ep.GlobalIPv6Address, n.Prefix6) || ep.GlobalIPv6PrefixLen != 64 {
		t.Fatalf("inspect shows IPv6 %q/%d, not in CNI range %s", ep.GlobalIPv6Address, ep.GlobalIPv6PrefixLen, n.Subnet6)
	}
	if ep.IPv6Gateway != n.Gateway6 {
		t.Errorf("inspect IPv6Gateway %q, CNI gateway %s", ep.IPv6Gateway, n.Gateway6)
	}
	if addrs := docker(t, "exec", container, "ip", "-6", "-o", "addr"); !strings.Contains(addrs, ep.GlobalIPv6Address+"/64") {
		t.Errorf("container lacks %s:\n%s", ep.GlobalIPv6Address, addrs)
	}
	if !reservedByHostLocal(n.Name, ep.GlobalIPv6Address) {
		t.Errorf("host-local holds no reservation for %s", ep.GlobalIPv6Address)
	}
	return ep
}

func ping6(t *testing.T, container, ip string) {
	t.Helper()
	var out string
	var err error
	for i := 0; i < 3; i++ { // the first echo can be lost while neighbour discovery runs
		if out, err = dockerErr("exec", container, "ping6", "-c", "1", "-W", "2", ip); err == nil {
			return
		}
	}
	t.Errorf("%s cannot ping6 %s: %v\n%s", container, ip, err, out)
}

// TestIPv6DualStack: containers on a dual-stack CNI network get both families, inspect shows
// GlobalIPv6Address and IPv6Gateway, and containers reach each other and the gateway over IPv6, in every
// addressing way with and without --ipv6 where Docker allows it.
func TestIPv6DualStack(t *testing.T) {
	cases := []struct {
		name  string
		mode  addressing
		ipv6  bool
		extra []string
	}{
		{"cni-ipam", cniIPAM, false, nil},
		{"cni-ipam/--ipv6", cniIPAM, true, nil},
		// Both families come from a warm attachment; the IPv6 request finds it by the MAC the claim recorded.
		{"cni-ipam/--ipv6/warm-pool", cniIPAM, true, []string{"--ipam-opt", "warm-pool=2"}},
		{"null-ipam", nullIPAM, false, nil},
		{"docker-ipam", dockerIPAM, false, nil},
		{"docker-ipam/--ipv6", dockerIPAM, true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			requireSuite(t)
			n := dualStackNet(t)
			extra := tc.extra
			if tc.ipv6 {
				extra = append(extra, "--ipv6")
				if tc.mode == dockerIPAM {
					extra = append(extra, "--subnet", n.Subnet6, "--gateway", n.Gateway6)
				}
			}
			nw := createNetwork(t, n.cniNet, tc.mode, extra...)
			a := runContainer(t, nw)
			b := runContainer(t, nw)
			checkEndpoint(t, a, nw, n.cniNet)
			epA := checkIPv6(t, a, nw, n)
			epB := checkIPv6(t, b, nw, n)
			if epA.GlobalIPv6Address == epB.GlobalIPv6Address {
				t.Fatalf("both containers got %s", epA.GlobalIPv6Address)
			}
			ping6(t, a, epB.GlobalIPv6Address)
			ping6(t, b, n.Gateway6)
			ping(t, a, inspectEndpoint(t, b, nw).IPAddress)
			docker(t, "rm", "-f", a, b)
			for _, ip := range []string{epA.GlobalIPv6Address, epB.GlobalIPv6Address} {
				if !releasedByHostLocal(n.Name, ip) {
					t.Errorf("%s still reserved after docker rm -f", ip)
				}
			}
		})
	}
}

// TestIPv6ParallelPairing: with cniplug IPAM and --ipv6, Docker's IPv6 address request carries no endpoint
// identity but the MAC; containers started in parallel must each get the IPv6 address of their own CNI
// attachment (the one on their interface).
func TestIPv6ParallelPairing(t *testing.T) {
	requireSuite(t)
	refreshIPAMCapabilities(t)
	n := dualStackNet(t)
	nw := createNetwork(t, n.cniNet, cniIPAM, "--ipv6")
	const count = 6
	names := make([]string, count)
	errs := make(chan error, count)
	for i := range names {
		names[i] = testutil.UniqueName("dc")
		name := names[i]
		t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
		go func() {
			out, err := dockerErr("run", "-d", "--name", name, "--net", nw, image, "sleep", "600")
			if err != nil {
				err = fmt.Errorf("%s: %v: %s", name, err, out)
			}
			errs <- err
		}()
	}
	for range names {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		return
	}
	seen := map[string]bool{}
	for _, c := range names {
		ep := checkIPv6(t, c, nw, n)
		if seen[ep.GlobalIPv6Address] {
			t.Errorf("%s given twice", ep.GlobalIPv6Address)
		}
		seen[ep.GlobalIPv6Address] = true
	}
}

// TestIPv6Errors: --ipv6 where it cannot work fails with a clear error.
func TestIPv6Errors(t *testing.T) {
	requireSuite(t)
	v4only := bridgeNet(t)
	name := testutil.UniqueName("dn")
	out, err := dockerErr("network", "create", "-d", driverName, "--opt", "cni="+v4only.Name,
		"--ipam-driver", driverName, "--ipam-opt", "cni="+v4only.Name, "--ipv6", name)
	if err == nil {
		_, _ = dockerErr("network", "rm", name)
		t.Fatalf("--ipv6 on an IPv4-only CNI network with %s IPAM succeeded", driverName)
	}
	if !strings.Contains(out, "assigns no IPv6 addresses") || !strings.Contains(out, v4only.Name) {
		t.Errorf("unclear error: %s", out)
	}
	t.Logf("IPv4-only CNI network with --ipv6: %s", out)

	// Null IPAM with --ipv6: Docker 20.10 refuses it ("null ipam driver does not handle IPv6"); newer engines
	// accept it, and the CNI network's IPv6 address must then reach the container and docker inspect.
	n := dualStackNet(t)
	out, err = dockerErr("network", "create", "-d", driverName, "--opt", "cni="+n.Name, "--ipam-driver", "null", "--ipv6", name)
	if engineIs2010(t) {
		if err == nil {
			_, _ = dockerErr("network", "rm", name)
			t.Errorf("--ipam-driver null --ipv6 succeeded on Docker 20.10")
		}
		t.Logf("null IPAM with --ipv6 (Docker 20.10 refuses it; IPv6 still reaches containers without --ipv6): %s", out)
		return
	}
	if err != nil {
		t.Fatalf("--ipam-driver null --ipv6: %v: %s", err, out)
	}
	t.Cleanup(func() { _, _ = dockerErr("network", "rm", name) })
	c := runContainer(t, name)
	checkIPv6(t, c, name, n)
}

// engineIs2010 reports whether the running dockerd is Docker 20.10 (as opposed to today's engine).
func engineIs2010(t *testing.T) bool {
	t.Helper()
	return strings.HasPrefix(docker(t, "version", "--format", "{{.Server.Version}}"), "20.10.")
}

var (
	capsOnce   sync.Once
	capsReason string
)

// refreshIPAMCapabilities restarts dockerd once per run: dockerd reads a v1 plugin's IPAM capabilities when it
// first activates the plugin and keeps them until it restarts, so a dockerd that served an older cniplug under
// this driver name does not send the endpoint MAC that pairs IPv6 requests exactly.
func refreshIPAMCapabilities(t *testing.T) {
	t.Helper()
	capsOnce.Do(func() {
		capsReason = "dockerd cannot be restarted here"
		restartDockerd(t, syscall.SIGTERM, false, nil)
		capsReason = ""
	})
	if capsReason != "" {
		t.Skip("skipping: " + capsReason)
	}
}
