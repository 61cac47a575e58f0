package tests

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// portmapBridgeNet is a bridge network whose chain has portmap (portMappings capability): cniplug publishes
// the ports itself all the same, and portmap, given no mappings, leaves them alone.
func portmapBridgeNet(t *testing.T) cniNet {
	return bridgeNet(t, `{"type":"portmap","capabilities":{"portMappings":true}}`)
}

// TestPublishPorts: `docker run -p` on cniplug networks, in every addressing way, on a chain without and with
// the portmap plugin. TCP and UDP reach the container from another
// host, TCP from the host itself (its own address and 127.0.0.1); `docker port` shows the mapping; removal
// removes every rule.
func TestPublishPorts(t *testing.T) {
	for _, via := range []string{"cniplug", "portmap"} {
		for _, mode := range []addressing{cniIPAM, nullIPAM, dockerIPAM} {
			t.Run(via+"/"+string(mode), func(t *testing.T) {
				requireSuite(t)
				var n cniNet
				if via == "portmap" {
					n = portmapBridgeNet(t)
				} else {
					n = bridgeNet(t)
				}
				r := newRemoteHost(t)
				nw := createNetwork(t, n, mode)
				tcpPort, udpPort := freePort(), freePort()
				c := httpContainer(t, nw, true, "-p", fmt.Sprintf("%d:80", tcpPort), "-p", fmt.Sprintf("%d:9999/udp", udpPort))
				want := "hello-from-" + c

				if out, err := waitHTTP(&r, fmt.Sprintf("http://%s:%d/", r.HostIP, tcpPort), want); err != nil {
					t.Errorf("remote host -> %s:%d/tcp: %v: %s", r.HostIP, tcpPort, err, out)
				}
				if out, err := waitHTTP(nil, fmt.Sprintf("http://%s:%d/", r.HostIP, tcpPort), want); err != nil {
					t.Errorf("test host -> its own address %s:%d/tcp: %v: %s", r.HostIP, tcpPort, err, out)
				}
				if out, err := waitHTTP(nil, fmt.Sprintf("http://127.0.0.1:%d/", tcpPort), want); err != nil {
					t.Errorf("test host -> 127.0.0.1:%d/tcp: %v: %s", tcpPort, err, out)
				}
				if out, err := udpAsk(t, &r, fmt.Sprintf("%s:%d", r.HostIP, udpPort), "hi"); err != nil || out != "echo:hi" {
					t.Errorf("remote host -> %s:%d/udp: %v: %q", r.HostIP, udpPort, err, out)
				}
				checkPortVisibility(t, c, fmt.Sprintf(`"80/tcp":[{"HostIp":"","HostPort":"%d"}]`, tcpPort))
				// Hairpin: another container on the network reaches the published port through the host address.
				peer := runContainer(t, nw)
				if out, err := httpFromContainer(peer, r.HostIP, tcpPort); err != nil || !strings.Contains(out, want) {
					t.Errorf("container on the same network -> %s:%d: %v: %s", r.HostIP, tcpPort, err, out)
				}
				// Docker's own port publishing (docker-proxy, DOCKER chain) is not involved.
				if ps, _ := exec.Command("pgrep", "-af", "docker-proxy").Output(); strings.Contains(string(ps), fmt.Sprintf("-host-port %d ", tcpPort)) {
					t.Errorf("docker-proxy serves host port %d: %s", tcpPort, ps)
				}

				docker(t, "rm", "-f", c)
				if lines := iptablesMentions(t, "--dport "+strconv.Itoa(tcpPort)); len(lines) > 0 {
					t.Errorf("rules for host port %d remain after docker rm -f:\n%s", tcpPort, strings.Join(lines, "\n"))
				}
				if out, err := httpGet(&r, fmt.Sprintf("http://%s:%d/", r.HostIP, tcpPort)); err == nil {
					t.Errorf("host port %d still answers after the container is gone: %s", tcpPort, out)
				}
				// The port is free again.
				c2 := httpContainer(t, nw, false, "-p", fmt.Sprintf("%d:80", tcpPort))
				if out, err := waitHTTP(&r, fmt.Sprintf("http://%s:%d/", r.HostIP, tcpPort), "hello-from-"+c2); err != nil {
					t.Errorf("second container on the same host port: %v: %s", err, out)
				}
			})
		}
	}
}

// TestPublishPortConflicts: a host port held by a host process, or published by another container, is refused
// with a clear error, and the failed `docker run` leaves nothing behind (the suite's leak check).
func TestPublishPortConflicts(t *testing.T) {
	for _, via := range []string{"cniplug", "portmap"} {
		for _, mode := range []addressing{cniIPAM, dockerIPAM} {
			t.Run(via+"/"+string(mode), func(t *testing.T) {
				requireSuite(t)
				n := bridgeNet(t)
				if via == "portmap" {
					n = portmapBridgeNet(t)
				}
				nw := createNetwork(t, n, mode)
				held := freePort()
				l, err := net.Listen("tcp", fmt.Sprintf(":%d", held))
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				heldUDP := freePort()
				u, err := net.ListenPacket("udp", fmt.Sprintf(":%d", heldUDP))
				if err != nil {
					t.Fatal(err)
				}
				defer u.Close()
				for _, tc := range []struct{ flag, want string }{
					{fmt.Sprintf("%d:80", held), fmt.Sprintf("host port %d/tcp is already in use", held)},
					{fmt.Sprintf("%d:53/udp", heldUDP), fmt.Sprintf("host port %d/udp is already in use", heldUDP)},
				} {
					out, err := runExpectFailure(t, nw, "-p", tc.flag)
					if err == nil {
						t.Errorf("-p %s started although the host port is taken", tc.flag)
					} else if !strings.Contains(out, tc.want) || !strings.Contains(out, n.Name) {
						t.Errorf("-p %s: error does not say %q on CNI network %s:\n%s", tc.flag, tc.want, n.Name, out)
					} else {
						t.Logf("-p %s refused: %s", tc.flag, out)
					}
				}
				p := freePort()
				httpContainer(t, nw, false, "-p", fmt.Sprintf("%d:80", p))
				out, err := runExpectFailure(t, nw, "-p", fmt.Sprintf("%d:80", p))
				if err == nil || !strings.Contains(out, fmt.Sprintf("host port %d/tcp is already in use", p)) {
					t.Errorf("second container on host port %d: %v:\n%s", p, err, out)
				}
			})
		}
	}
}

// runExpectFailure runs a short container that is expected to fail to start, and removes it.
func runExpectFailure(t *testing.T, network string, extra ...string) (string, error) {
	t.Helper()
	name := "dcfail" + strconv.Itoa(freePort())
	args := append([]string{"run", "-d", "--name", name, "--net", network}, extra...)
	args = append(args, image, "sleep", "60")
	out, err := dockerErr(args...)
	_, _ = dockerErr("rm", "-f", name)
	return out, err
}

// TestPublishPortRangesAndHostIP: a host port range takes its first free port, `-p 80` an ephemeral one, and
// a host IP limits the mapping to that address.
func TestPublishPortRangesAndHostIP(t *testing.T) {
	requireSuite(t)
	n := bridgeNet(t)
	r := newRemoteHost(t)
	nw := createNetwork(t, n, cniIPAM)
	low := freePort()
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", low))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	bound := freePort()
	c := httpContainer(t, nw, false,
		"-p", fmt.Sprintf("%d-%d:80", low, low+2),
		"-p", "81",
		"-p", fmt.Sprintf("%s:%d:80", r.HostIP, bound))
	want := "hello-from-" + c
	if out, err := waitHTTP(&r, fmt.Sprintf("http://%s:%d/", r.HostIP, low+1), want); err != nil {
		t.Errorf("range port %d: %v: %s", low+1, err, out)
	}
	if out, err := waitHTTP(&r, fmt.Sprintf("http://%s:%d/", r.HostIP, bound), want); err != nil {
		t.Errorf("host-IP bound port %s:%d: %v: %s", r.HostIP, bound, err, out)
	}
	if out, err := httpGet(nil, fmt.Sprintf("http://127.0.0.1:%d/", bound)); err == nil {
		t.Errorf("port bound to %s also answers on 127.0.0.1: %s", r.HostIP, out)
	}
	// -p 81: an ephemeral host port, visible in the DNAT rule cniplug programmed.
	if lines := iptablesMentions(t, "--to-destination "+inspectEndpoint(t, c, nw).IPAddress+":81"); len(lines) != 1 {
		t.Errorf("-p 81: want one DNAT rule to port 81, got:\n%s", strings.Join(lines, "\n"))
	} else {
		t.Logf("-p 81 published as: %s", lines[0])
	}
}

// checkPortVisibility: Docker keeps the requested bindings (HostConfig.PortBindings). Docker (20.10, 29.x) does not
// show a remote driver's mappings in `docker port` / `docker ps` (it reads them from the driver's endpoint info
// by type assertion to its in-process types, which JSON from a plugin never matches); log what it shows.
func checkPortVisibility(t *testing.T, c, wantBinding string) {
	t.Helper()
	if b := docker(t, "inspect", "-f", "{{json .HostConfig.PortBindings}}", c); !strings.Contains(b, wantBinding) {
		t.Errorf("inspect HostConfig.PortBindings = %s, want %s", b, wantBinding)
	}
	t.Logf("docker port: %q; docker ps ports: %q", docker(t, "port", c), docker(t, "ps", "--filter", "name="+c, "--format", "{{.Ports}}"))
}

var (
	net_Listen       = net.Listen
	net_ListenPacket = net.ListenPacket
)

// httpFromContainer fetches / from ip:port inside a container with nc (busybox wget crashes).
func httpFromContainer(container, ip string, port int) (string, error) {
	var out string
	var err error
	for i := 0; i < 10; i++ {
		out, err = dockerErr("exec", container, "sh", "-c", fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 %s %d`, ip, port))
		if err == nil && strings.Contains(out, "hello-from-") {
			return out, nil
		}
		time.Sleep(300 * time.Millisecond)
	}
	return out, err
}

// TestPublishPortsAcrossPluginRestart: published ports are recorded with the attachment, so a cniplug that
// was killed and restarted still removes their rules when the container goes, and still refuses the port
// to another container while it is published.
func TestPublishPortsAcrossPluginRestart(t *testing.T) {
	requireSuite(t)
	n := bridgeNet(t)
	r := newRemoteHost(t)
	nw := createNetwork(t, n, dockerIPAM)
	p := freePort()
	c := httpContainer(t, nw, false, "-p", fmt.Sprintf("%d:80", p))
	if out, err := waitHTTP(&r, fmt.Sprintf("http://%s:%d/", r.HostIP, p), "hello-from-"+c); err != nil {
		t.Fatalf("before the restart: %v: %s", err, out)
	}
	stopPluginWith(syscall.SIGKILL)
	if err := startPlugin(); err != nil {
		t.Fatal(err)
	}
	if out, err := runExpectFailure(t, nw, "-p", fmt.Sprintf("%d:80", p)); err == nil || !strings.Contains(out, "already in use") {
		t.Errorf("host port %d given twice after a plugin restart: %v: %s", p, err, out)
	}
	if out, err := waitHTTP(&r, fmt.Sprintf("http://%s:%d/", r.HostIP, p), "hello-from-"+c); err != nil {
		t.Errorf("after the restart: %v: %s", err, out)
	}
	docker(t, "rm", "-f", c)
	if lines := iptablesMentions(t, "--dport "+strconv.Itoa(p)); len(lines) > 0 {
		t.Errorf("rules for host port %d remain after docker rm -f across a plugin restart:\n%s", p, strings.Join(lines, "\n"))
	}
}

// TestPublishPortsIPv6: on a dual-stack network cniplug publishes the port over IPv6 too (ip6tables DNAT):
// another host and the test host reach the container at the host's IPv6 address.
func TestPublishPortsIPv6(t *testing.T) {
	requireSuite(t)
	n := dualStackNet(t)
	r := newRemoteHost(t)
	nw := createNetwork(t, n.cniNet, cniIPAM)
	p := freePort()
	c := httpContainer(t, nw, false, "-p", fmt.Sprintf("%d:80", p))
	want := "hello-from-" + c
	url := fmt.Sprintf("http://[%s]:%d/", r.HostIP6, p)
	if out, err := waitHTTP(&r, url, want); err != nil {
		t.Errorf("remote host -> %s: %v: %s", url, err, out)
	}
	if out, err := waitHTTP(nil, url, want); err != nil {
		t.Errorf("test host -> %s: %v: %s", url, err, out)
	}
	if out, err := waitHTTP(&r, fmt.Sprintf("http://%s:%d/", r.HostIP, p), want); err != nil {
		t.Errorf("remote host over IPv4: %v: %s", err, out)
	}
	docker(t, "rm", "-f", c)
	if lines := iptablesMentions(t, "--dport "+strconv.Itoa(p)); len(lines) > 0 {
		t.Errorf("rules for host port %d remain:\n%s", p, strings.Join(lines, "\n"))
	}
}
