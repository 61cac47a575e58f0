package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil"
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

// engineAPI sends one request to dockerd's Engine API and returns the status and body.
func engineAPI(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", "/var/run/docker.sock")
	}}}
	req, err := http.NewRequest(method, "http://docker"+path, strings.NewReader(body))
	testutil.Must(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	testutil.Must(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestConnectMACAndIP: Docker 29 lets `docker network connect` choose the endpoint's MAC (--mac-address, 29.3+)
// and its address on a network without a user subnet (--ip, 29.0.4+, here cniplug's IPAM, whose pool is the CNI
// network's). The CLI of this machine (28.2) has no `connect --mac-address`, so the MAC goes the way that flag
// sends it: POST /networks/{id}/connect with EndpointConfig.MacAddress, at the daemon's API version (dockerd
// ignored the field at API 1.51 on this engine).
func TestConnectMACAndIP(t *testing.T) {
	requireSuite(t)
	if engineIs2010(t) {
		t.Skip("skipping: Docker 20.10 sets neither a MAC at connect nor --ip without a user subnet")
	}
	n := bridgeNet(t)
	api := docker(t, "version", "--format", "{{.Server.APIVersion}}")
	for _, mode := range []addressing{cniIPAM, dockerIPAM} {
		t.Run(string(mode), func(t *testing.T) {
			nw := createNetwork(t, n, mode)
			c := runContainer(t, "")
			mac := "02:42:0a:d6:00:" + map[addressing]string{cniIPAM: "41", dockerIPAM: "42"}[mode]
			status, body := engineAPI(t, "POST", "/v"+api+"/networks/"+nw+"/connect",
				fmt.Sprintf(`{"Container":%q,"EndpointConfig":{"MacAddress":%q}}`, c, mac))
			if status != http.StatusOK {
				t.Fatalf("connect with MacAddress %s: %d: %s", mac, status, body)
			}
			ep := checkEndpoint(t, c, nw, n)
			if !strings.EqualFold(ep.MacAddress, mac) {
				t.Errorf("docker inspect shows MAC %s, connect asked for %s", ep.MacAddress, mac)
			}
			if l := containerLink(t, c, ep.IPAddress); !strings.EqualFold(l.MAC, mac) {
				t.Errorf("the link has MAC %s, connect asked for %s", l.MAC, mac)
			}
			ping(t, c, n.Gateway)

			ip := n.Prefix + map[addressing]string{cniIPAM: "61", dockerIPAM: "62"}[mode]
			d := runContainer(t, "")
			docker(t, "network", "connect", "--ip", ip, nw, d)
			if got := checkEndpoint(t, d, nw, n).IPAddress; got != ip {
				t.Errorf("connect --ip %s gave %s", ip, got)
			}
			ping(t, d, ep.IPAddress)
			docker(t, "rm", "-f", c, d)
		})
	}
}
