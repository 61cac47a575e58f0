package tests

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// gatewayCheck is what the test expects of a container on a cniplug network and a Docker bridge network.
type gatewayCheck struct {
	cniplugIsGateway bool
}

// check: the default route goes through the gateway network; the published port answers from another host
// through that network's rules only (cniplug's DNAT or Docker's, never both); outbound traffic to another
// host leaves through the gateway network's link.
func (g gatewayCheck) check(t *testing.T, c, cniNetwork, bridgeNetwork string, n cniNet, r remoteHost, port int) {
	t.Helper()
	bridgeGW := inspectEndpoint(t, c, bridgeNetwork).Gateway
	wantGW := bridgeGW
	if g.cniplugIsGateway {
		wantGW = n.Gateway
	}
	if routes := docker(t, "exec", c, "ip", "route", "show", "default"); !strings.Contains(routes, "default via "+wantGW+" ") {
		t.Errorf("default route %q, want via %s (cniplug is the gateway: %v)", routes, wantGW, g.cniplugIsGateway)
	}
	viaCNI := inspectEndpoint(t, c, cniNetwork).IPAddress
	if route := docker(t, "exec", c, "ip", "route", "get", r.IP); !strings.Contains(route, " src "+viaCNI) == g.cniplugIsGateway {
		t.Errorf("traffic to another host leaves by %q (cniplug is the gateway: %v, its address %s)", route, g.cniplugIsGateway, viaCNI)
	}
	var cniplugDNAT, dockerDNAT int
	for _, line := range iptablesMentions(t, "--dport "+strconv.Itoa(port)+" -j DNAT") {
		switch {
		case strings.Contains(line, "-A CNIPLUG-DN-"):
			cniplugDNAT++
		case strings.Contains(line, "-A DOCKER "):
			dockerDNAT++
		}
	}
	if g.cniplugIsGateway && (cniplugDNAT != 1 || dockerDNAT != 0) || !g.cniplugIsGateway && (cniplugDNAT != 0 || dockerDNAT == 0) {
		t.Errorf("host port %d has %d DNAT rules of cniplug and %d of Docker (cniplug is the gateway: %v)", port, cniplugDNAT, dockerDNAT, g.cniplugIsGateway)
	}
	if out, err := waitHTTP(&r, fmt.Sprintf("http://%s:%d/", r.HostIP, port), "hello-from-"+c); err != nil {
		t.Errorf("another host -> published port %d: %v: %s", port, err, out)
	}
}

// TestGatewayPriority: Docker 28+ publish a container's ports through its gateway endpoint only, the one with
// the highest gw-priority, and tell remote drivers when an endpoint becomes or stops being it. On a cniplug
// network and a Docker bridge, in both priority orders and with `docker network connect`/`disconnect`
// moving the gateway, the default route, the published port and outbound traffic follow the gateway, as
// between two Docker bridges.
func TestGatewayPriority(t *testing.T) {
	requireSuite(t)
	if engineIs2010(t) {
		t.Skip("skipping: Docker 20.10 has no gw-priority; its gateway endpoint is the first network's (docs/docker-features.md)")
	}
	n := bridgeNet(t)
	r := newRemoteHost(t)
	for _, mode := range []addressing{cniIPAM, dockerIPAM} {
		cn := createNetwork(t, n, mode)
		bn := dockerBridgeNetwork(t)
		for _, cniplugFirst := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/cniplug-gateway=%v", mode, cniplugFirst), func(t *testing.T) {
				cniPrio, bridgePrio := 0, 10
				if cniplugFirst {
					cniPrio, bridgePrio = 10, 0
				}
				port := freePort()
				c := httpContainer(t, fmt.Sprintf("name=%s,gw-priority=%d", cn, cniPrio), false,
					"--network", fmt.Sprintf("name=%s,gw-priority=%d", bn, bridgePrio), "-p", fmt.Sprintf("%d:80", port))
				gatewayCheck{cniplugIsGateway: cniplugFirst}.check(t, c, cn, bn, n, r, port)
				docker(t, "rm", "-f", c)
			})
		}
		t.Run(string(mode)+"/connect-disconnect", func(t *testing.T) {
			port := freePort()
			c := httpContainer(t, bn, false, "-p", fmt.Sprintf("%d:80", port))
			docker(t, "network", "connect", "--gw-priority", "10", cn, c)
			gatewayCheck{cniplugIsGateway: true}.check(t, c, cn, bn, n, r, port)
			docker(t, "network", "disconnect", cn, c)
			if lines := iptablesMentions(t, "CNIPLUG-DN-"); len(lines) > 0 && strings.Contains(strings.Join(lines, "\n"), "--dport "+strconv.Itoa(port)) {
				t.Errorf("cniplug's DNAT for port %d remains after disconnect:\n%s", port, strings.Join(lines, "\n"))
			}
			docker(t, "network", "connect", cn, c) // priority 0: the bridge stays the gateway
			gatewayCheck{cniplugIsGateway: false}.check(t, c, cn, bn, n, r, port)
			docker(t, "rm", "-f", c)
		})
	}
}
