package tests

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// TestMTU: the MTU the CNI network configures is what the container sees (libnetwork never sets one; moving
// the link keeps it), for bridge and ptp, in every addressing way.
func TestMTU(t *testing.T) {
	for _, kind := range []string{"bridge", "ptp"} {
		for _, mode := range []addressing{cniIPAM, nullIPAM, dockerIPAM} {
			t.Run(kind+"/"+string(mode), func(t *testing.T) {
				requireSuite(t)
				var n cniNet
				if kind == "bridge" {
					br := testutil.UniqueName("e2ebr")
					n = writeConflist(t, "mtu", func(ipam string) string {
						return fmt.Sprintf(`{"type":"bridge","bridge":"%s","isGateway":true,"ipMasq":true,"mtu":1400,"ipam":%s}`, br, ipam)
					})
					t.Cleanup(func() { _ = exec.Command("ip", "link", "del", br).Run() })
				} else {
					n = writeConflist(t, "mtu", func(ipam string) string {
						return fmt.Sprintf(`{"type":"ptp","ipMasq":true,"mtu":1400,"ipam":%s}`, ipam)
					})
				}
				nw := createNetwork(t, n, mode)
				c := runContainer(t, nw)
				ep := checkEndpoint(t, c, nw, n)
				link := containerLink(t, c, ep.IPAddress)
				if mtu := docker(t, "exec", c, "cat", "/sys/class/net/"+link.Name+"/mtu"); mtu != "1400" {
					t.Errorf("container %s MTU %s, CNI network sets 1400", link.Name, mtu)
				}
				ping(t, c, n.Gateway)
			})
		}
	}
}

// TestEmbeddedDNS: Docker's embedded DNS resolves container names and --network-alias on cniplug networks.
func TestEmbeddedDNS(t *testing.T) {
	for _, mode := range []addressing{cniIPAM, nullIPAM, dockerIPAM} {
		t.Run(string(mode), func(t *testing.T) {
			requireSuite(t)
			n := bridgeNet(t)
			nw := createNetwork(t, n, mode)
			server := runContainer(t, nw, "--network-alias", "web-alias")
			client := runContainer(t, nw)
			ip := inspectEndpoint(t, server, nw).IPAddress
			for _, name := range []string{server, "web-alias"} {
				out, err := dockerErr("exec", client, "nslookup", name)
				if err != nil || !strings.Contains(out, ip) {
					t.Errorf("nslookup %s from %s: want %s: %v\n%s", name, client, ip, err, out)
				}
			}
			if out, err := dockerErr("exec", client, "ping", "-c", "1", "-W", "2", server); err != nil || !strings.Contains(out, ip) {
				t.Errorf("ping %s by name: %v\n%s", server, err, out)
			}
		})
	}
}

// TestMACAddress: a requested MAC (`docker run --mac-address`) is honoured in every addressing way (asked
// from CNI, set by Docker) and inspect and the container agree. The docker CLI >= 25 sends --mac-address per
// network, which needs API 1.44, so against Docker 20.10 (API 1.41) it refuses; the container is created
// through the Engine API as older CLIs and docker-compose (mac_address) do.
func TestMACAddress(t *testing.T) {
	for i, mode := range []addressing{cniIPAM, nullIPAM, dockerIPAM} {
		t.Run(string(mode), func(t *testing.T) {
			requireSuite(t)
			n := bridgeNet(t)
			nw := createNetwork(t, n, mode)
			mac := fmt.Sprintf("02:42:c0:ff:ee:%02x", 0x10+i)
			c := runWithMAC(t, nw, mac)
			ep := checkEndpoint(t, c, nw, n)
			if !strings.EqualFold(ep.MacAddress, mac) {
				t.Errorf("inspect MAC %s, requested %s", ep.MacAddress, mac)
			}
			if got := containerLink(t, c, ep.IPAddress).MAC; !strings.EqualFold(got, mac) {
				t.Errorf("container MAC %s, requested %s", got, mac)
			}
			ping(t, c, n.Gateway)
		})
	}
}

// TestRequestedIPv6AndErrors: --ip6 with Docker IPAM on a dual-stack network; requested addresses outside
// the range are refused with an error.
func TestRequestedIPv6AndErrors(t *testing.T) {
	requireSuite(t)
	n := dualStackNet(t)
	nw := createNetwork(t, n.cniNet, dockerIPAM, "--ipv6", "--subnet", n.Subnet6, "--gateway", n.Gateway6)
	want4, want6 := n.Prefix+"88", n.Prefix6+"88"
	c := runContainer(t, nw, "--ip", want4, "--ip6", want6)
	ep := checkIPv6(t, c, nw, n)
	if ep.GlobalIPv6Address != want6 || ep.IPAddress != want4 {
		t.Errorf("--ip %s --ip6 %s: got %s and %s", want4, want6, ep.IPAddress, ep.GlobalIPv6Address)
	}
	for _, flags := range [][]string{{"--ip", "10.99.99.99"}, {"--ip6", "fd00:dead::5"}, {"--ip6", want6}} {
		if out, err := runExpectFailure(t, nw, flags...); err == nil {
			t.Errorf("%v accepted", flags)
		} else {
			t.Logf("%v refused: %s", flags, out)
		}
	}
	if !reservedByHostLocal(n.Name, want6) {
		t.Errorf("a refused request released %s from the running container", want6)
	}

	// cniplug IPAM: --ip6 that is not what CNI assigns is refused with the reason.
	n2 := dualStackNet(t)
	nw2 := createNetwork(t, n2.cniNet, cniIPAM, "--ipv6", "--subnet", n2.Subnet, "--subnet", n2.Subnet6)
	out, err := runExpectFailure(t, nw2, "--ip6", n2.Prefix6+"99")
	if err == nil || !strings.Contains(out, "--ip6") {
		t.Errorf("--ip6 with cniplug IPAM: %v: %s", err, out)
	}
	t.Logf("--ip6 with cniplug IPAM: %s", out)
}

// TestCNIArgsOptions: allow-listed CNI args reach the CNI plugins per network (--opt / --ipam-opt) and per
// container (--network name=N,driver-opt=...): CNI_ARGS are in libcni's record of the ADD, and the bandwidth
// capability shapes the container's traffic (a tbf qdisc on the host side of its veth). Anything off the
// allow-list is refused with the list.
func TestCNIArgsOptions(t *testing.T) {
	for _, mode := range []addressing{cniIPAM, dockerIPAM} {
		t.Run(string(mode), func(t *testing.T) {
			requireSuite(t)
			n := bridgeNet(t, `{"type":"bandwidth","capabilities":{"bandwidth":true}}`)
			netOpt := "--opt"
			if mode == cniIPAM {
				netOpt = "--ipam-opt"
			}
			nw := createNetwork(t, n, mode, netOpt, "cni.args.K8S_POD_NAMESPACE=e2e-ns",
				netOpt, "cni.bandwidth.egressRate=8000000", netOpt, "cni.bandwidth.egressBurst=800000")
			var c string
			if mode == cniIPAM {
				c = runContainer(t, nw)
			} else {
				c = runContainerOn(t, fmt.Sprintf("name=%s,driver-opt=cni.args.K8S_POD_NAME=web-0,driver-opt=cni.bandwidth.ingressRate=1000000,driver-opt=cni.bandwidth.ingressBurst=100000", nw))
			}
			ep := checkEndpoint(t, c, nw, n)
			cache := cacheFiles(t, n.Name)
			if len(cache) != 1 {
				t.Fatalf("want one libcni cache file for %s, got %v", n.Name, cache)
			}
			data, _ := os.ReadFile(cache[0])
			wants := []string{`["K8S_POD_NAMESPACE","e2e-ns"]`, `"egressRate":8000000`}
			if mode == dockerIPAM {
				wants = append(wants, `["K8S_POD_NAME","web-0"]`, `"ingressRate":1000000`)
			}
			for _, want := range wants {
				if !strings.Contains(string(data), want) {
					t.Errorf("the ADD did not carry %s:\n%s", want, data)
				}
			}
			// The bandwidth plugin shaped the host side of the container's veth.
			idx := docker(t, "exec", c, "cat", "/sys/class/net/"+containerLink(t, c, ep.IPAddress).Name+"/iflink")
			hostIf := ""
			for _, line := range strings.Split(testutil.Run(t, "ip", "-o", "link"), "\n") {
				if strings.HasPrefix(line, idx+": ") {
					hostIf = strings.TrimSuffix(strings.Split(strings.Fields(line)[1], "@")[0], ":")
				}
			}
			// Ingress shaping is a tbf qdisc on the host veth; egress shaping redirects its ingress to an ifb.
			want := "qdisc ingress"
			if mode == dockerIPAM {
				want = "qdisc tbf"
			}
			if qd := testutil.Run(t, "tc", "qdisc", "show", "dev", hostIf); hostIf == "" || !strings.Contains(qd, want) {
				t.Errorf("no %s on the container's host veth %q:\n%s", want, hostIf, qd)
			}
			ping(t, c, n.Gateway)

			// Refused: keys off the allow-list, per network and per container.
			out, err := dockerErr("network", "create", "-d", driverName, "--opt", "cni="+n.Name, "--opt", "cni.args.CNI_PATH=/tmp", "--ipam-driver", "null", testutil.UniqueName("dn"))
			if err == nil || !strings.Contains(out, "cni.args.K8S_POD_NAME") {
				t.Errorf("--opt cni.args.CNI_PATH: %v: %s", err, out)
			}
			out, err = runExpectFailureOn(t, nw+",driver-opt=cni.ipam.dataDir=/etc")
			if err == nil || !strings.Contains(out, "is not allowed") {
				t.Errorf("driver-opt cni.ipam.dataDir: %v: %s", err, out)
			}
			t.Logf("refused: %s", out)
		})
	}
}

func cacheFiles(t *testing.T, cniName string) []string {
	m, _ := filepath.Glob(filepath.Join(testutil.CNIDataDir, "results", cniName+"-*"))
	return m
}

// runContainerOn is runContainer with a full --network value (name=N,driver-opt=...).
func runContainerOn(t *testing.T, network string) string {
	t.Helper()
	name := testutil.UniqueName("dc")
	t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
	docker(t, "run", "-d", "--name", name, "--network", network, image, "sleep", "600")
	return name
}

func runExpectFailureOn(t *testing.T, network string) (string, error) {
	name := testutil.UniqueName("dcf")
	out, err := dockerErr("run", "-d", "--name", name, "--network", "name="+network, image, "sleep", "60")
	_, _ = dockerErr("rm", "-f", name)
	return out, err
}

// TestCompose: today's Compose (`docker compose`, v5, which scripts/setup.sh builds) brings up an app on
// cniplug networks: a dual-stack network with Docker's IPAM (driver, driver_opts, enable_ipv6, ipam.config),
// one with cniplug's IPAM (ipam.driver and ipam.options) and an external network created beforehand (a Docker
// bridge). The web service asks for ipv4_address, ipv6_address, mac_address, aliases and gw_priority, and
// publishes a port: it gets each of them, the client reaches it by alias over the CNI network, the port is
// published through the gateway network (cniplug's, by gw_priority), and `down` removes everything.
func TestCompose(t *testing.T) {
	requireSuite(t)
	if out, err := dockerErr("compose", "version"); err != nil {
		t.Skipf("skipping: the docker compose plugin is not installed (scripts/setup.sh builds it): %v: %s", err, out)
	}
	if engineIs2010(t) {
		t.Skip("skipping: the file uses gw_priority and a per-network mac_address, which need Docker 28 or later")
	}
	n := dualStackNet(t)
	ipamNet := bridgeNet(t)
	ext := dockerBridgeNetwork(t)
	project := testutil.UniqueName("e2ecomp")
	port := freePort()
	web := struct{ ip, ip6, mac string }{n.Prefix + "50", n.Prefix6 + "50", "02:42:0a:d5:00:32"}
	file := testutil.WriteFile(t, t.TempDir(), "compose.yaml", fmt.Sprintf(`name: %[1]s
services:
  web:
    image: %[2]s
    command: ["sh", "-c", "mkdir -p /www && echo hello-compose > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["%[3]d:80"]
    networks:
      cninet:
        ipv4_address: %[4]s
        ipv6_address: %[5]s
        mac_address: %[6]s
        aliases: [www]
        gw_priority: 10
      ext: {}
  client:
    image: %[2]s
    command: ["sleep", "600"]
    networks: [cninet, cniipam]
networks:
  cninet:
    driver: %[7]s
    driver_opts:
      cni: %[8]s
    enable_ipv6: true
    ipam:
      config:
        - {subnet: %[9]s, gateway: %[10]s}
        - {subnet: %[11]s, gateway: %[12]s}
  cniipam:
    driver: %[7]s
    driver_opts:
      cni: %[13]s
    ipam:
      driver: %[7]s
      options:
        cni: %[13]s
  ext:
    external: true
    name: %[14]s
`, project, image, port, web.ip, web.ip6, web.mac, driverName, n.Name, n.Subnet, n.Gateway, n.Subnet6, n.Gateway6, ipamNet.Name, ext))
	compose := func(args ...string) (string, error) {
		return dockerErr(append([]string{"compose", "-f", file}, args...)...)
	}
	t.Cleanup(func() {
		if out, err := compose("down", "--timeout", "1"); err != nil {
			t.Errorf("docker compose down: %v: %s", err, out)
		}
		if out, _ := dockerErr("network", "ls", "-q", "--filter", "name="+project); out != "" {
			t.Errorf("networks of the project remain after down: %s", out)
		}
	})
	if out, err := compose("up", "-d"); err != nil {
		t.Fatalf("docker compose up: %v: %s", err, out)
	}
	webC, clientC := project+"-web-1", project+"-client-1"
	cninet, cniipam := project+"_cninet", project+"_cniipam"
	ep := checkEndpoint(t, webC, cninet, n.cniNet)
	ep6 := checkIPv6(t, webC, cninet, n)
	if ep.IPAddress != web.ip || ep6.GlobalIPv6Address != web.ip6 || !strings.EqualFold(ep.MacAddress, web.mac) {
		t.Errorf("web on %s: %s, %s, %s; compose asked for %s, %s, %s", cninet, ep.IPAddress, ep6.GlobalIPv6Address, ep.MacAddress, web.ip, web.ip6, web.mac)
	}
	if l := containerLink(t, webC, web.ip); !strings.EqualFold(l.MAC, web.mac) {
		t.Errorf("web's link has MAC %s, compose asked for %s", l.MAC, web.mac)
	}
	checkEndpoint(t, clientC, cninet, n.cniNet)
	checkEndpoint(t, clientC, cniipam, ipamNet)
	// By alias through the embedded DNS, over the CNI network.
	var out string
	var err error
	for deadline := time.Now().Add(8 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		out, err = dockerErr("exec", clientC, "sh", "-c", `ip=$(nslookup www 2>/dev/null | awk '/^Address/ && $NF !~ /:/ {a=$NF} END {print a}'); echo "$ip"; printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 "$ip" 80`)
		if err == nil && strings.Contains(out, "hello-compose") {
			break
		}
	}
	if !strings.Contains(out, "hello-compose") || !strings.HasPrefix(out, web.ip+"\n") {
		t.Errorf("client could not fetch from web by its alias at %s: %v: %s", web.ip, err, out)
	}
	// gw_priority made cninet the gateway: default route and published port go through it.
	if routes := docker(t, "exec", webC, "ip", "route", "show", "default"); !strings.Contains(routes, "via "+n.Gateway+" ") {
		t.Errorf("web's default route %q, want via %s (gw_priority 10)", routes, n.Gateway)
	}
	netHelper(t)
	if out, err := waitHTTP(nil, fmt.Sprintf("http://127.0.0.1:%d/", port), "hello-compose"); err != nil {
		t.Errorf("published port %d: %v: %s", port, err, out)
	}
	lines := iptablesMentions(t, fmt.Sprintf("--dport %d -j DNAT", port))
	for _, l := range lines {
		if !strings.Contains(l, "CNIPLUG-DN-") {
			t.Errorf("port %d is published by another network than the gateway: %s", port, l)
		}
	}
	if len(lines) == 0 {
		t.Errorf("no DNAT rule for port %d", port)
	}
}

// runWithMAC creates and starts a container with Config.MacAddress through the Engine API (API 1.41).
func runWithMAC(t *testing.T, network, mac string) string {
	t.Helper()
	if out, err := dockerErr("run", "--rm", "--net", "none", "--mac-address", mac, image, "true"); err == nil {
		_ = out // a CLI/daemon pair that supports --mac-address: use it
		name := testutil.UniqueName("dc")
		t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
		docker(t, "run", "-d", "--name", name, "--net", network, "--mac-address", mac, image, "sleep", "600")
		return name
	}
	name := testutil.UniqueName("dc")
	t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
	body := fmt.Sprintf(`{"Image":%q,"Cmd":["sleep","600"],"MacAddress":%q,"HostConfig":{"NetworkMode":%q}}`, image, mac, network)
	if status, b := engineAPI(t, "POST", "/v1.41/containers/create?name="+name, body); status != http.StatusCreated {
		t.Fatalf("creating a container with MAC %s: %d: %s", mac, status, b)
	}
	docker(t, "start", name)
	return name
}
