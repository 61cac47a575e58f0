package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// checkEndpoint verifies that inspect, the container and CNI (host-local's reservation) agree.
func checkEndpoint(t *testing.T, container, network string, n cniNet) endpoint {
	t.Helper()
	ep := inspectEndpoint(t, container, network)
	if !strings.HasPrefix(ep.IPAddress, n.Prefix) {
		t.Fatalf("inspect shows address %q, not in CNI subnet %s", ep.IPAddress, n.Subnet)
	}
	in := containerLink(t, container, ep.IPAddress)
	if want := fmt.Sprintf("%s/%d", ep.IPAddress, ep.IPPrefixLen); in.CIDR != want {
		t.Errorf("container has %s, inspect says %s", in.CIDR, want)
	}
	if ep.IPPrefixLen != 24 {
		t.Errorf("inspect prefix length %d, CNI assigned /24", ep.IPPrefixLen)
	}
	if !strings.EqualFold(in.MAC, ep.MacAddress) || ep.MacAddress == "" {
		t.Errorf("container MAC %q, inspect MAC %q", in.MAC, ep.MacAddress)
	}
	if ep.Gateway != n.Gateway {
		t.Errorf("inspect gateway %q, CNI gateway %s", ep.Gateway, n.Gateway)
	}
	// A sandbox has one default route, on the first network that offers a gateway (Docker's rule); a
	// container connected to more networks only gets it from one of them.
	if nets := docker(t, "inspect", "-f", "{{len .NetworkSettings.Networks}}", container); nets == "1" && in.DefaultGateway != n.Gateway {
		t.Errorf("container default route via %q on %s, CNI gateway %s", in.DefaultGateway, in.Name, n.Gateway)
	}
	if !reservedByHostLocal(n.Name, ep.IPAddress) {
		t.Errorf("host-local holds no reservation for %s on %s: the address did not come from CNI", ep.IPAddress, n.Name)
	}
	return ep
}

func TestAddressingModes(t *testing.T) {
	for _, kind := range []string{"bridge", "ptp"} {
		for _, mode := range []addressing{cniIPAM, nullIPAM, dockerIPAM} {
			t.Run(kind+"/"+string(mode), func(t *testing.T) {
				requireSuite(t)
				var n cniNet
				if kind == "bridge" {
					n = bridgeNet(t)
				} else {
					n = ptpNet(t)
				}
				net := createNetwork(t, n, mode)
				a := runContainer(t, net)
				b := runContainer(t, net)
				epA := checkEndpoint(t, a, net, n)
				epB := checkEndpoint(t, b, net, n)
				if epA.IPAddress == epB.IPAddress {
					t.Fatalf("both containers got %s", epA.IPAddress)
				}
				ping(t, a, epB.IPAddress)
				ping(t, b, epA.IPAddress)
				ping(t, a, n.Gateway)
				docker(t, "rm", "-f", a, b)
				for _, ip := range []string{epA.IPAddress, epB.IPAddress} {
					if !releasedByHostLocal(n.Name, ip) {
						t.Errorf("%s still reserved after docker rm -f", ip)
					}
				}
			})
		}
	}
}

func TestRequestedAddress(t *testing.T) {
	for _, mode := range []addressing{cniIPAM, dockerIPAM} {
		t.Run(string(mode), func(t *testing.T) {
			requireSuite(t)
			n := bridgeNet(t)
			// Docker accepts --ip only on networks created with --subnet.
			var extra []string
			if mode == cniIPAM {
				extra = []string{"--subnet", n.Subnet}
			}
			net := createNetwork(t, n, mode, extra...)
			want := n.Prefix + "77"
			c := runContainer(t, net, "--ip", want)
			if ep := checkEndpoint(t, c, net, n); ep.IPAddress != want {
				t.Errorf("--ip %s: got %s", want, ep.IPAddress)
			}
			// The same address again must fail and leave the first container's address alone.
			name := testutil.UniqueName("dc")
			t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
			if out, err := dockerErr("run", "-d", "--name", name, "--net", net, "--ip", want, image, "sleep", "60"); err == nil {
				t.Errorf("second container with --ip %s started", want)
			} else if strings.Contains(out, "Docker's IPAM chose") {
				// Only Docker's IPAM and the chain's own colliding is explained so (TestDockerIPAMBesideCNIIPAM).
				t.Errorf("the refusal of a taken --ip blames Docker's IPAM:\n%s", out)
			} else {
				t.Logf("second --ip %s refused: %s", want, out)
			}
			_, _ = dockerErr("rm", "-f", name)
			if !reservedByHostLocal(n.Name, want) {
				t.Errorf("the failed second request released %s from the first container", want)
			}
			ping(t, c, n.Gateway)
		})
	}
}

// TestRequestedAddressAtOnce: DEL runs in the background by default, so `docker rm -f` does not wait for it
// (3 s here), with CNI IPAM and with Docker's IPAM. A container re-created with the same --ip right after
// gets the address although the old container's CNI DEL has not run yet: cniplug finishes that DEL first.
// With Docker's IPAM that is every address Docker hands out again.
func TestRequestedAddressAtOnce(t *testing.T) {
	for _, tc := range []struct {
		mode  addressing
		flags func(n cniNet) []string
	}{
		{cniIPAM, func(n cniNet) []string { return []string{"--subnet", n.Subnet} }},
		{dockerIPAM, func(cniNet) []string { return nil }},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			requireSuite(t)
			br := testutil.UniqueName("e2ebr")
			t.Cleanup(func() { _ = exec.Command("ip", "link", "del", br).Run() })
			n := writeConflist(t, "slow", func(ipam string) string {
				return fmt.Sprintf(`{"type":"e2e-slowdel"},{"type":"bridge","bridge":"%s","isGateway":true,"ipMasq":true,"ipam":%s}`, br, ipam)
			})
			net := createNetwork(t, n, tc.mode, tc.flags(n)...)
			want := n.Prefix + "77"
			for i := 0; i < 2; i++ {
				c := runContainer(t, net, "--ip", want)
				if ep := checkEndpoint(t, c, net, n); ep.IPAddress != want {
					t.Fatalf("container %d: --ip %s got %s", i, want, ep.IPAddress)
				}
				ping(t, c, n.Gateway)
				start := time.Now()
				docker(t, "rm", "-f", c)
				if took := time.Since(start); took > 2500*time.Millisecond {
					t.Errorf("docker rm -f took %s: it waited for the 3 s CNI DEL", took)
				}
			}
			waitFor(t, 15*time.Second, want+" released by host-local", func() bool { return releasedByHostLocal(n.Name, want) })
		})
	}
}

func TestMacvlan(t *testing.T) {
	requireSuite(t)
	parent, peer := testutil.UniqueName("mvp"), testutil.UniqueName("mvq")
	testutil.Run(t, "ip", "link", "add", parent, "type", "veth", "peer", "name", peer)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", parent).Run() })
	testutil.Run(t, "ip", "link", "set", parent, "up")
	testutil.Run(t, "ip", "link", "set", peer, "up")
	n := writeConflist(t, "mv", func(ipam string) string {
		return fmt.Sprintf(`{"type":"macvlan","master":"%s","mode":"bridge","ipam":%s}`, parent, ipam)
	})
	net := createNetwork(t, n, cniIPAM)
	a := runContainer(t, net)
	b := runContainer(t, net)
	epA := checkEndpoint(t, a, net, n)
	epB := checkEndpoint(t, b, net, n)
	ping(t, a, epB.IPAddress)
	ping(t, b, epA.IPAddress)
}

func TestConnectDisconnect(t *testing.T) {
	requireSuite(t)
	n := bridgeNet(t)
	net := createNetwork(t, n, cniIPAM)
	peer := runContainer(t, net)
	c := runContainer(t, "")
	docker(t, "network", "connect", net, c)
	ep := checkEndpoint(t, c, net, n)
	ping(t, c, inspectEndpoint(t, peer, net).IPAddress)
	docker(t, "network", "disconnect", net, c)
	if out := docker(t, "exec", c, "ip", "-o", "addr"); strings.Contains(out, ep.IPAddress) {
		t.Errorf("address %s still in the container after disconnect:\n%s", ep.IPAddress, out)
	}
	if !releasedByHostLocal(n.Name, ep.IPAddress) {
		t.Errorf("%s still reserved after disconnect", ep.IPAddress)
	}
	// Connect again: a fresh attachment works.
	docker(t, "network", "connect", net, c)
	checkEndpoint(t, c, net, n)
}

func TestMultipleNetworks(t *testing.T) {
	requireSuite(t)
	n1, n2 := bridgeNet(t), ptpNet(t)
	net1 := createNetwork(t, n1, cniIPAM)
	net2 := createNetwork(t, n2, nullIPAM)
	dbr := testutil.UniqueName("dbr")
	docker(t, "network", "create", dbr)
	t.Cleanup(func() { _, _ = dockerErr("network", "rm", dbr) })
	c := runContainer(t, net1)
	docker(t, "network", "connect", net2, c)
	docker(t, "network", "connect", dbr, c)
	ep1 := inspectEndpoint(t, c, net1)
	ep2 := inspectEndpoint(t, c, net2)
	ep3 := inspectEndpoint(t, c, dbr)
	for _, ep := range []endpoint{ep1, ep2, ep3} {
		containerLink(t, c, ep.IPAddress)
	}
	if !strings.HasPrefix(ep1.IPAddress, n1.Prefix) || !strings.HasPrefix(ep2.IPAddress, n2.Prefix) {
		t.Errorf("addresses %s / %s not from their CNI networks", ep1.IPAddress, ep2.IPAddress)
	}
	ping(t, c, n1.Gateway)
	ping(t, c, n2.Gateway)
	ping(t, c, ep3.Gateway)
}

func TestStopStartRestart(t *testing.T) {
	requireSuite(t)
	n := bridgeNet(t)
	net := createNetwork(t, n, cniIPAM)
	c := runContainer(t, net)
	checkEndpoint(t, c, net, n)
	for _, step := range [][]string{{"stop", "-t", "1", c}, {"start", c}, {"restart", "-t", "1", c}} {
		docker(t, step...)
		if step[0] == "stop" {
			if out := docker(t, "inspect", "-f", "{{json .NetworkSettings.Networks}}", c); strings.Contains(out, n.Prefix) {
				t.Errorf("stopped container still has a CNI address: %s", out)
			}
			continue
		}
		ep := checkEndpoint(t, c, net, n)
		ping(t, c, n.Gateway)
		t.Logf("after %s: %s", step[0], ep.IPAddress)
	}
}

// TestPluginRestart: state is durable; a crashed and restarted cniplug still cleans up existing containers.
func TestPluginRestart(t *testing.T) {
	requireSuite(t)
	n := bridgeNet(t)
	net := createNetwork(t, n, cniIPAM)
	c := runContainer(t, net)
	ep := checkEndpoint(t, c, net, n)
	stopPluginWith(syscall.SIGKILL)
	if err := startPlugin(); err != nil {
		t.Fatal(err)
	}
	ping(t, c, n.Gateway)
	docker(t, "rm", "-f", c)
	if !releasedByHostLocal(n.Name, ep.IPAddress) {
		t.Errorf("%s still reserved after rm -f across a plugin restart", ep.IPAddress)
	}
	c2 := runContainer(t, net)
	checkEndpoint(t, c2, net, n)
}

// TestTwoNetworksOnOneCNINetwork: a second Docker network on a CNI network whose bridge already exists must
// be created (libnetwork retries forever a pool that overlaps a host route, so the CNI range cannot be the
// pool without --subnet), and containers on both reach each other.
func TestTwoNetworksOnOneCNINetwork(t *testing.T) {
	requireSuite(t)
	n := bridgeNet(t)
	net1 := createNetwork(t, n, cniIPAM)
	a := runContainer(t, net1)
	epA := checkEndpoint(t, a, net1, n)
	name := testutil.UniqueName("dn")
	out, err := exec.Command("timeout", "60", "docker", "network", "create", "-d", driverName, "--opt", "cni="+n.Name,
		"--ipam-driver", driverName, "--ipam-opt", "cni="+n.Name, name).CombinedOutput()
	if err != nil {
		t.Fatalf("second network on CNI network %s: %v: %s", n.Name, err, out)
	}
	t.Cleanup(func() { _, _ = dockerErr("network", "rm", name) })
	b := runContainer(t, name)
	checkEndpoint(t, b, name, n)
	ping(t, b, epA.IPAddress)
}

// TestReconnectRightAway: `docker network disconnect` and at once `connect` again, while the first
// attachment's CNI DEL still runs in the background with its link in the container (e2e-slowdel holds the DEL
// 3 s before bridge deletes the link): the new link is eth0 again, as with Docker's bridge, because Join
// finishes that removal first. With direct join cniplug names the link itself; a DHCP chain needs eth0.
func TestReconnectRightAway(t *testing.T) {
	requireSuite(t)
	if engineIs2010(t) || !pluginSeesContainerNetns() {
		t.Skip("skipping: cniplug names the link only with direct join, which needs the container's netns at Join (Docker 28+)")
	}
	n := bridgeNet(t, `{"type":"e2e-slowdel"}`) // ADD order bridge, e2e-slowdel, firewall; DEL the reverse
	net := createNetwork(t, n, cniIPAM, "--opt", "direct-join=true")
	c := runContainer(t, net)
	first := checkEndpoint(t, c, net, n)
	docker(t, "network", "disconnect", net, c)
	docker(t, "network", "connect", net, c)
	// The first DEL (3 s) ended before the connect returned: its address is free already.
	if reservedByHostLocal(n.Name, first.IPAddress) {
		t.Errorf("the first attachment's %s is still reserved after the connect: its DEL had not finished", first.IPAddress)
	}
	second := checkEndpoint(t, c, net, n)
	if name := containerLink(t, c, second.IPAddress).Name; name != "eth0" {
		t.Errorf("after disconnect and connect the link is %s, want eth0", name)
	}
	ping(t, c, n.Gateway)
}

// TestDirectJoin: on a network created with --opt direct-join=true, containers get working networking in
// every addressing way, with a second such network connected and disconnected at run time. On Docker 28+
// (the container's netns exists at Join) cniplug moves the link into the container itself, or with Docker's
// IPAM runs the ADD there at Join; on 20.10, or a managed plugin that cannot see the container's netns, it
// hands the link to Docker as usual.
func TestDirectJoin(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode addressing
		net  func(*testing.T) cniNet
	}{
		{"bridge/cni-ipam", cniIPAM, func(t *testing.T) cniNet { return bridgeNet(t) }},
		{"bridge/null-ipam", nullIPAM, func(t *testing.T) cniNet { return bridgeNet(t) }},
		{"bridge/docker-ipam", dockerIPAM, func(t *testing.T) cniNet { return bridgeNet(t) }},
		{"ptp/cni-ipam", cniIPAM, ptpNet}, // routes via a next hop, and a connected /32 to it
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireSuite(t)
			direct := !engineIs2010(t) && pluginSeesContainerNetns()
			n := tc.net(t)
			net := createNetwork(t, n, tc.mode, "--opt", "direct-join=true")
			a, b := runContainer(t, net), runContainer(t, net)
			epA, epB := checkEndpoint(t, a, net, n), checkEndpoint(t, b, net, n)
			if name := containerLink(t, a, epA.IPAddress).Name; name != "eth0" {
				t.Errorf("the container's only interface is %s, want eth0", name)
			}
			ping(t, a, epB.IPAddress)
			ping(t, a, n.Gateway)
			// Docker chose the address: the ADD waits for Join and creates the link in the container itself.
			addedThere := direct && tc.mode == dockerIPAM
			for _, ep := range []endpoint{epA, epB} {
				if moved := pluginLogHas("link moved into the container", "endpoint="+ep.EndpointID); moved != (direct && !addedThere) {
					t.Errorf("endpoint %s: moved into the container by cniplug: %v, want %v", ep.EndpointID[:12], moved, direct && !addedThere)
				}
				if added := pluginLogHas("attachment added", "endpoint="+ep.EndpointID, "in_container=true"); added != addedThere {
					t.Errorf("endpoint %s: CNI ADD in the container's netns: %v, want %v", ep.EndpointID[:12], added, addedThere)
				}
			}

			// A second direct-join network at run time becomes eth1, and goes again cleanly.
			n2 := bridgeNet(t)
			net2 := createNetwork(t, n2, tc.mode, "--opt", "direct-join=true")
			docker(t, "network", "connect", net2, a)
			ep2 := inspectEndpoint(t, a, net2)
			if name := containerLink(t, a, ep2.IPAddress).Name; name != "eth1" {
				t.Errorf("the second network's interface is %s, want eth1", name)
			}
			ping(t, a, n2.Gateway)
			docker(t, "network", "disconnect", net2, a)
			if out := docker(t, "exec", a, "ip", "-o", "link"); strings.Contains(out, "eth1") {
				t.Errorf("eth1 still in the container after disconnect:\n%s", out)
			}
			ping(t, a, epB.IPAddress)
			docker(t, "rm", "-f", a, b)
			for _, ip := range []string{epA.IPAddress, epB.IPAddress} {
				if !releasedByHostLocal(n.Name, ip) {
					t.Errorf("%s still reserved after docker rm -f", ip)
				}
			}
		})
	}
}

// TestWarmPool: a network with --ipam-opt warm-pool=2 keeps two attachments added ahead of any container.
// `docker run` takes one: the container has its address, the MAC Docker chose (inspect and the link agree),
// its gateway and route, and the pool is refilled. After cniplug is killed with the warm attachments' staging
// namespaces lost (a reboot), they are released and added again. Network removal leaves nothing (the leak
// check).
func TestWarmPool(t *testing.T) {
	for _, tc := range []struct {
		name  string
		net   func(*testing.T) cniNet
		extra []string
	}{
		{"bridge", func(t *testing.T) cniNet { return bridgeNet(t) }, nil},
		{"ptp/direct-join", ptpNet, []string{"--opt", "direct-join=true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireSuite(t)
			n := tc.net(t)
			net := createNetwork(t, n, cniIPAM, append([]string{"--ipam-opt", "warm-pool=2"}, tc.extra...)...)
			reserved := func(want int) []string {
				var got []string
				waitFor(t, 30*time.Second, fmt.Sprintf("%d reservations on %s", want, n.Name), func() bool {
					got = reservations(n.Name)
					return len(got) == want
				})
				return got
			}
			warm := reserved(2)

			c := runContainer(t, net)
			ep := checkEndpoint(t, c, net, n)
			if !slices.Contains(warm, filepath.Join(filepath.Dir(warm[0]), ep.IPAddress)) {
				t.Errorf("the container got %s, not a warm attachment's address (%v)", ep.IPAddress, warm)
			}
			if !pluginLogHas("warm attachment claimed", "address="+ep.IPAddress+"/") {
				t.Errorf("no warm attachment claimed for %s in the plugin's log", ep.IPAddress)
			}
			ping(t, c, n.Gateway)
			reserved(3)
			docker(t, "rm", "-f", c)
			warm = reserved(2)

			// A reboot: cniplug dies and /run with it, so the warm attachments' staging namespaces are gone.
			stopPluginWith(syscall.SIGKILL)
			staging, _ := filepath.Glob("/run/netns/cniplug-*")
			for _, s := range staging {
				_ = syscall.Unmount(s, syscall.MNT_DETACH)
				_ = os.Remove(s)
			}
			if err := startPlugin(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 30*time.Second, "the warm attachments lost with their namespaces to be released and added again", func() bool {
				now := reservations(n.Name)
				return len(now) == 2 && !slices.Contains(now, warm[0]) && !slices.Contains(now, warm[1])
			})
			c2 := runContainer(t, net)
			checkEndpoint(t, c2, net, n)
			ping(t, c2, n.Gateway)
		})
	}
}
