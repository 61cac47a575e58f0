package plugin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/teststack"
	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/cniplug/cniplug/metrics"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/plugin"
	"github.com/cniplug/cniplug/state"
	dipam "github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"
	"github.com/vishvananda/netlink"
)

// ---------------------------------------------------------------------------------------------------------
// The real stack: store, CNI runner, attachment manager, both drivers and the handler.

// newStack builds the real cniplug stack (without the admin service) over confDir and binDir. log may be nil
// (discard).
func newStack(t testing.TB, confDir, binDir string, log *slog.Logger) *teststack.Stack {
	t.Helper()
	return teststack.New(t, teststack.Options{ConfDir: confDir, BinDirs: []string{binDir}, Logger: log, NoAdmin: true})
}

// tlogWriter sends the plugin's log lines to the test log, so a failure shows what the plugin said.
type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// client talks to a plugin served on a real unix socket.
type client struct {
	t  testing.TB
	hc *http.Client
}

// serve serves h with plugin.Listen and plugin.Serve on a socket in a temp dir until the test ends.
func serve(t testing.TB, h http.Handler) *client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cniplug.sock")
	l, err := plugin.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(sock); err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: mode %v, %v; want a 0600 socket", sock, st.Mode(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- plugin.Serve(ctx, l, h) }()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("plugin.Serve returned %v after cancel", err)
			}
		case <-time.After(70 * time.Second):
			t.Errorf("plugin.Serve did not return after cancel")
		}
	})
	return &client{t: t, hc: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

// raw POSTs body to path and returns the status and body.
func (c *client) raw(method, path string, body []byte) (int, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(method, "http://cniplug"+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/vnd.docker.plugins.v1.2+json")
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("%s %s: reading response: %v", method, path, err)
	}
	if !json.Valid(out) {
		c.t.Fatalf("%s %s: response is not JSON: %q", method, path, out)
	}
	return resp.StatusCode, out
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// call POSTs req to /path and decodes a 200 answer into resp (when not nil). A failure fails the test.
func (c *client) call(path string, req, resp any) {
	c.t.Helper()
	status, body := c.raw(http.MethodPost, "/"+path, mustMarshal(c.t, req))
	var e struct{ Err string }
	_ = json.Unmarshal(body, &e)
	if status != http.StatusOK || e.Err != "" {
		c.t.Fatalf("%s: status %d: %s", path, status, body)
	}
	if resp != nil {
		if err := json.Unmarshal(body, resp); err != nil {
			c.t.Fatalf("%s: decoding %s: %v", path, body, err)
		}
	}
}

// callErr POSTs req to /path, expects a failure (non-200 with a non-empty Err) and returns Err.
func (c *client) callErr(path string, req any) string {
	c.t.Helper()
	return c.errOf(path, http.MethodPost, mustMarshal(c.t, req))
}

func (c *client) errOf(path, method string, body []byte) string {
	c.t.Helper()
	status, out := c.raw(method, "/"+path, body)
	var e struct{ Err string }
	if err := json.Unmarshal(out, &e); err != nil {
		c.t.Fatalf("%s: decoding %s: %v", path, out, err)
	}
	if status == http.StatusOK {
		c.t.Fatalf("%s: status 200 for a failing request (libnetwork's IPAM client reads a 200 as success): %s", path, out)
	}
	if e.Err == "" {
		c.t.Fatalf("%s: status %d without an Err: %s", path, status, out)
	}
	return e.Err
}

func wantContains(t testing.TB, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%s: %q\n does not contain %q", what, got, w)
		}
	}
}

func genericOpts(kv map[string]any) map[string]any {
	return map[string]any{"com.docker.network.generic": kv, "com.docker.network.enable_ipv6": false}
}

// ---------------------------------------------------------------------------------------------------------
// Protocol tests (no CNI plugin runs).

// errorStack is a stack whose conf dir holds the given conflists and whose bin dir is empty: every request
// fails or succeeds before a CNI plugin would run.
func errorStack(t *testing.T, conflists map[string]string) (*teststack.Stack, *client) {
	confDir := t.TempDir()
	for file, content := range conflists {
		testutil.WriteFile(t, confDir, file, content)
	}
	s := newStack(t, confDir, t.TempDir(), slog.New(slog.NewTextHandler(tlogWriter{t}, nil)))
	return s, serve(t, s.Handler)
}

func TestActivate(t *testing.T) {
	_, c := errorStack(t, nil)
	status, body := c.raw(http.MethodPost, "/Plugin.Activate", nil)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	var got map[string][]string
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if want := []string{"NetworkDriver", "IpamDriver"}; len(got) != 1 || strings.Join(got["Implements"], ",") != strings.Join(want, ",") {
		t.Fatalf("Activate = %s, want {\"Implements\":%q}", body, want)
	}
}

func TestRoutingErrors(t *testing.T) {
	_, c := errorStack(t, nil)
	t.Run("unknown path", func(t *testing.T) {
		status, body := c.raw(http.MethodPost, "/VolumeDriver.Create", []byte(`{}`))
		var e network.ErrorResponse
		if err := json.Unmarshal(body, &e); err != nil || status != http.StatusNotFound || !strings.Contains(e.Err, "/VolumeDriver.Create") {
			t.Fatalf("status %d body %s; want 404 with an Err naming the path", status, body)
		}
	})
	t.Run("GET", func(t *testing.T) {
		for _, p := range []string{"/Plugin.Activate", "/NetworkDriver.CreateNetwork", "/IpamDriver.RequestPool"} {
			status, body := c.raw(http.MethodGet, p, nil)
			var e network.ErrorResponse
			if err := json.Unmarshal(body, &e); err != nil || status != http.StatusMethodNotAllowed || !strings.Contains(e.Err, "POST") {
				t.Fatalf("GET %s: status %d body %s; want 405 with an Err", p, status, body)
			}
		}
	})
	t.Run("empty body is an empty request", func(t *testing.T) {
		var caps network.CapabilitiesResponse
		status, body := c.raw(http.MethodPost, "/NetworkDriver.GetCapabilities", nil)
		if err := json.Unmarshal(body, &caps); err != nil || status != http.StatusOK || caps.Scope != "local" || caps.ConnectivityScope != "global" {
			t.Fatalf("status %d body %s; want 200 with local data and global connectivity scope", status, body)
		}
	})
}

func TestMalformedRequests(t *testing.T) {
	_, c := errorStack(t, nil)
	for _, tc := range []struct{ path, body string }{
		{"NetworkDriver.CreateNetwork", `{`},
		{"NetworkDriver.CreateEndpoint", `{"Interface": "eth0"}`},
		{"NetworkDriver.Join", `[1,2]`},
		{"IpamDriver.RequestPool", `{"Options": 5}`},
		{"IpamDriver.RequestAddress", `"nope"`},
		{"IpamDriver.GetCapabilities", `[]`},
	} {
		t.Run(tc.path, func(t *testing.T) {
			status, body := c.raw(http.MethodPost, "/"+tc.path, []byte(tc.body))
			var e network.ErrorResponse
			if err := json.Unmarshal(body, &e); err != nil || status != http.StatusBadRequest {
				t.Fatalf("status %d body %s; want 400", status, body)
			}
			wantContains(t, "Err", e.Err, "malformed "+tc.path+" request")
		})
	}

	t.Run("body larger than MaxRequestBytes", func(t *testing.T) {
		big := append([]byte(`{"Options":{"cni":"`), bytes.Repeat([]byte("a"), plugin.MaxRequestBytes)...)
		big = append(big, `"}}`...)
		errMsg := c.errOf("IpamDriver.RequestPool", http.MethodPost, big)
		wantContains(t, "Err", errMsg, "IpamDriver.RequestPool", "too large")
		// The server survived and serves the next request.
		if status, body := c.raw(http.MethodPost, "/Plugin.Activate", nil); status != http.StatusOK || !strings.Contains(string(body), "IpamDriver") {
			t.Fatalf("Activate after an oversized request: status %d body %s", status, body)
		}
	})
}

const minimalConflist = `{"cniVersion":"1.0.0","name":"%s","plugins":[{"type":"bridge","bridge":"cnpnever0",
	"ipam":{"type":"host-local","ranges":[[{"subnet":"10.251.0.0/24"}]]}}]}`

// unknownPool has the form of cniplug's pool IDs but names no pool.
const unknownPool = "cniplug-000000000000000000000000"

func TestIPAMErrors(t *testing.T) {
	s, c := errorStack(t, map[string]string{
		"10-alpha.conflist": fmt.Sprintf(minimalConflist, "alpha"),
		"20-beta.conflist":  fmt.Sprintf(minimalConflist, "beta"),
	})
	cases := []struct {
		name  string
		path  string
		req   any
		wants []string
	}{
		{"RequestPool without cni", "IpamDriver.RequestPool", dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace},
			[]string{"missing --ipam-opt cni=<name>", s.ConfDir}},
		{"RequestPool unknown option", "IpamDriver.RequestPool",
			dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace, Options: map[string]string{"cni": "alpha", "zzz": "1", "aaa": "2"}},
			[]string{"unknown option(s) aaa, zzz", "--ipam-opt accepts cni=<CNI network>, warm-pool, cni.args."}},
		{"RequestPool unknown CNI network", "IpamDriver.RequestPool",
			dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace, Options: map[string]string{"cni": "gamma"}},
			[]string{`no CNI network named "gamma"`, "networks found: alpha, beta"}},
		{"RequestPool path-like name", "IpamDriver.RequestPool",
			dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace, Options: map[string]string{"cni": "../alpha"}},
			[]string{`invalid CNI network name "../alpha"`}},
		{"RequestPool with --ip-range", "IpamDriver.RequestPool",
			dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace, SubPool: "10.251.0.128/25", Options: map[string]string{"cni": "alpha"}},
			[]string{"--ip-range is not supported"}},
		{"RequestPool plugin binaries missing", "IpamDriver.RequestPool",
			dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace, Options: map[string]string{"cni": "alpha"}},
			[]string{`CNI plugin "bridge" not found`}},
		{"RequestAddress unknown pool", "IpamDriver.RequestAddress", dipam.RequestAddressRequest{PoolID: unknownPool},
			[]string{`unknown pool "` + unknownPool + `"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantContains(t, "Err", c.callErr(tc.path, tc.req), tc.wants...)
		})
	}
	// Releases of what cniplug does not know succeed: Docker retries them and must not get stuck.
	c.call("IpamDriver.ReleasePool", dipam.ReleasePoolRequest{PoolID: unknownPool}, nil)
	c.call("IpamDriver.ReleaseAddress", dipam.ReleaseAddressRequest{PoolID: unknownPool, Address: "10.0.0.2"}, nil)
	if pools, _ := s.Store.Pools(); len(pools) != 0 {
		t.Fatalf("failed requests recorded pools: %+v", pools)
	}
}

func TestNetworkDriverErrors(t *testing.T) {
	s, c := errorStack(t, map[string]string{
		"10-alpha.conflist": fmt.Sprintf(minimalConflist, "alpha"),
		"20-beta.conflist":  fmt.Sprintf(minimalConflist, "beta"),
		"30-broken.conf":    `{"name": "broken", "plugins": [`,
	})
	nid := naming.RandomID()
	v4 := []*network.IPAMData{{AddressSpace: "LocalDefault", Pool: "10.251.0.0/24", Gateway: "10.251.0.1/24"}}
	cases := []struct {
		name  string
		path  string
		req   any
		wants []string
	}{
		{"CreateNetwork without cni", "NetworkDriver.CreateNetwork",
			network.CreateNetworkRequest{NetworkID: nid, Options: genericOpts(map[string]any{}), IPv4Data: v4},
			[]string{"missing --opt cni=<name>", s.ConfDir, nid[:12]}},
		{"CreateNetwork without any options", "NetworkDriver.CreateNetwork",
			network.CreateNetworkRequest{NetworkID: nid, IPv4Data: v4},
			[]string{"missing --opt cni=<name>"}},
		{"CreateNetwork unknown option", "NetworkDriver.CreateNetwork",
			network.CreateNetworkRequest{NetworkID: nid, Options: genericOpts(map[string]any{"cni": "alpha", "mtu": "1400"}), IPv4Data: v4},
			[]string{"unknown option(s) mtu", "--opt accepts cni=<CNI network>, async-delete, host-firewall, direct-join, ", "cni.args."}},
		{"CreateNetwork non-string option", "NetworkDriver.CreateNetwork",
			network.CreateNetworkRequest{NetworkID: nid, Options: genericOpts(map[string]any{"cni": 7}), IPv4Data: v4},
			[]string{`option "cni" must be a string`}},
		{"CreateNetwork unknown CNI network", "NetworkDriver.CreateNetwork",
			network.CreateNetworkRequest{NetworkID: nid, Options: genericOpts(map[string]any{"cni": "gamma"}), IPv4Data: v4},
			[]string{`no CNI network named "gamma"`, "networks found: alpha, beta", "unparsable files: 30-broken.conf"}},
		{"CreateNetwork plugin binaries missing", "NetworkDriver.CreateNetwork",
			network.CreateNetworkRequest{NetworkID: nid, Options: genericOpts(map[string]any{"cni": "alpha"}), IPv4Data: v4},
			[]string{`CNI plugin "bridge" not found`}},
		{"CreateEndpoint on an unknown network", "NetworkDriver.CreateEndpoint",
			network.CreateEndpointRequest{NetworkID: nid, EndpointID: naming.RandomID(), Interface: &network.EndpointInterface{}},
			[]string{"unknown to cniplug"}},
		{"Join of an unknown endpoint", "NetworkDriver.Join",
			network.JoinRequest{NetworkID: nid, EndpointID: naming.RandomID(), SandboxKey: "/var/run/docker/netns/x"},
			[]string{"has no CNI attachment"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantContains(t, "Err", c.callErr(tc.path, tc.req), tc.wants...)
		})
	}
	if _, err := s.Store.Network(nid); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("a failed CreateNetwork was recorded: %v", err)
	}
	// Deleting what cniplug does not know succeeds (Docker retries, and gets stuck on errors).
	c.call("NetworkDriver.DeleteEndpoint", network.DeleteEndpointRequest{NetworkID: nid, EndpointID: naming.RandomID()}, nil)
	c.call("NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: nid}, nil)
}

// TestInvalidFields: the drivers refuse requests whose fields are not what Docker sends, with a 400 whose Err
// names the field and its rule, before acting on them.
func TestInvalidFields(t *testing.T) {
	s, c := errorStack(t, map[string]string{"10-alpha.conflist": fmt.Sprintf(minimalConflist, "alpha")})
	nid, eid := naming.RandomID(), naming.RandomID()
	for _, tc := range []struct {
		name, path string
		req        any
		want       string
	}{
		{"NetworkID with a path", "NetworkDriver.CreateNetwork",
			network.CreateNetworkRequest{NetworkID: "../../../../tmp/x", Options: genericOpts(map[string]any{"cni": "alpha"}),
				IPv4Data: []*network.IPAMData{{AddressSpace: "null", Pool: "0.0.0.0/0"}}},
			`cniplug: invalid NetworkID "../../../../tmp/x": want a Docker network ID of 64 lowercase hex digits`},
		{"MacAddress with IP=", "NetworkDriver.CreateEndpoint",
			network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Interface: &network.EndpointInterface{MacAddress: "02:00:00:5b:00:77;IP=10.91.0.200"}},
			`invalid MacAddress "02:00:00:5b:00:77;IP=10.91.0.200": want six hex bytes like 02:42:ac:11:00:02`},
		{"SandboxKey of the host", "NetworkDriver.Join",
			network.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/proc/1/ns/net"},
			`invalid SandboxKey "/proc/1/ns/net": want the path of a network namespace in Docker's /var/run/docker/netns`},
		{"EndpointID with a path", "NetworkDriver.DeleteEndpoint",
			network.DeleteEndpointRequest{NetworkID: nid, EndpointID: "../x"}, `invalid EndpointID "../x"`},
		{"PoolID not cniplug's", "IpamDriver.ReleasePool", dipam.ReleasePoolRequest{PoolID: "../x"}, `cniplug IPAM: invalid PoolID "../x"`},
		{"IPAM MAC with IP=", "IpamDriver.RequestAddress",
			dipam.RequestAddressRequest{PoolID: unknownPool, Options: map[string]string{"com.docker.network.endpoint.macaddress": "02:00:00:5b:00:77;IP=10.91.0.200"}},
			`invalid option com.docker.network.endpoint.macaddress "02:00:00:5b:00:77;IP=10.91.0.200"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := c.raw(http.MethodPost, "/"+tc.path, mustMarshal(t, tc.req))
			var e network.ErrorResponse
			if err := json.Unmarshal(body, &e); err != nil || status != http.StatusBadRequest {
				t.Fatalf("status %d body %s; want 400", status, body)
			}
			wantContains(t, "Err", e.Err, tc.want)
		})
	}
	if nws, _ := s.Store.Networks(); len(nws) != 0 {
		t.Fatalf("refused requests recorded networks: %+v", nws)
	}
}

// ---------------------------------------------------------------------------------------------------------
// Flows through the socket with real CNI plugins (bridge + host-local, ipMasq).

type cniEnv struct {
	*teststack.Stack
	c       *client
	name    string // CNI network name
	bridge  string
	third   int    // the x in 10.201.x.0/24
	subnet  string // 10.201.x.0/24
	gateway string // 10.201.x.1
	before  testutil.Snapshot
}

func (e *cniEnv) ip(host int) string { return fmt.Sprintf("10.201.%d.%d", e.third, host) }

// pickSubnet chooses 10.201.x.0/24 not routed on this host, so parallel test runs do not collide.
func pickSubnet(t *testing.T) int {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		t.Fatalf("ip route: %v", err)
	}
	for range 100 {
		x := 1 + mrand.IntN(254)
		if !strings.Contains(string(out), fmt.Sprintf("10.201.%d.", x)) {
			return x
		}
	}
	t.Fatal("no free 10.201.x.0/24")
	return 0
}

func newCNIEnv(t *testing.T) *cniEnv {
	testutil.RequireRoot(t)
	binDir := testutil.CNIBinDir(t)
	e := &cniEnv{before: testutil.TakeSnapshot(t)}
	e.name = testutil.UniqueName("cnptest")
	e.bridge = testutil.UniqueName("cnpbr") // 11 characters
	e.third = pickSubnet(t)
	e.subnet = fmt.Sprintf("10.201.%d.0/24", e.third)
	e.gateway = e.ip(1)
	confDir := t.TempDir()
	testutil.WriteFile(t, confDir, "10-"+e.name+".conflist", fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": true,
    "ipMasq": true,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}`, e.name, e.bridge, e.subnet))
	// Registered first so it runs last: the bridge the plugin creates (and keeps by design) and host-local's
	// bookkeeping dir go, whatever happened.
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(e.bridge); err == nil {
			_ = netlink.LinkDel(l)
		}
		_ = os.RemoveAll(filepath.Join(testutil.CNIDataDir, "networks", e.name))
	})
	e.Stack = newStack(t, confDir, binDir, slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	e.c = serve(t, e.Handler)
	return e
}

// finish checks that cniplug forgot everything and left nothing on the host.
// createNullNetwork creates a Docker network with null IPAM (CNI chooses addresses at CreateEndpoint) on
// the env's CNI network and returns its ID.
func (e *cniEnv) createNullNetwork(t *testing.T) string {
	t.Helper()
	nid := naming.RandomID()
	e.c.call("NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: nid, Options: genericOpts(map[string]any{"cni": e.name}),
		IPv4Data: []*network.IPAMData{{AddressSpace: "null", Pool: "0.0.0.0/0"}}}, nil)
	return nid
}

func (e *cniEnv) finish(t *testing.T) {
	t.Helper()
	if atts, err := e.Store.Attachments(); err != nil || len(atts) != 0 {
		t.Errorf("attachments left in the store: %d (%v)", len(atts), err)
		for _, a := range atts {
			t.Errorf("  %s phase %s address %s endpoint %s", a.ID(), a.Phase, a.Interface.IPv4, a.EndpointID)
		}
	}
	if pools, err := e.Store.Pools(); err != nil || len(pools) != 0 {
		t.Errorf("pools left in the store: %+v (%v)", pools, err)
	}
	if ents, err := os.ReadDir(e.NetNSDir); err != nil || len(ents) != 0 {
		t.Errorf("staging netns dir not empty: %v (%v)", ents, err)
	}
	if l, err := netlink.LinkByName(e.bridge); err == nil {
		_ = netlink.LinkDel(l)
	}
	testutil.AssertNoLeaks(t, e.before)
}

// hostLink returns the link called name in the test's (host) netns.
func hostLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("Join SrcName %q is not a link in the host netns: %v", name, err)
	}
	return l
}

func (e *cniEnv) inSubnet(t *testing.T, cidr string) net.IP {
	t.Helper()
	ip, ipn, err := net.ParseCIDR(cidr)
	if err != nil {
		t.Fatalf("address %q: %v", cidr, err)
	}
	if ipn.String() != e.subnet {
		t.Fatalf("address %s is not in %s", cidr, e.subnet)
	}
	return ip
}

// joinAndCheck runs Join and checks what Docker is told, then Leave.
func (e *cniEnv) joinAndLeave(t *testing.T, nid, eid, mac string) {
	t.Helper()
	var jr network.JoinResponse
	e.c.call("NetworkDriver.Join", network.JoinRequest{NetworkID: nid, EndpointID: eid,
		SandboxKey: "/var/run/docker/netns/" + eid[:12], Options: map[string]any{}}, &jr)
	l := hostLink(t, jr.InterfaceName.SrcName)
	if got := l.Attrs().HardwareAddr.String(); !strings.EqualFold(got, mac) {
		t.Errorf("link %s has MAC %s, CreateEndpoint reported %s", jr.InterfaceName.SrcName, got, mac)
	}
	if jr.InterfaceName.DstPrefix != "eth" {
		t.Errorf("DstPrefix = %q, want eth", jr.InterfaceName.DstPrefix)
	}
	if jr.Gateway != e.gateway {
		t.Errorf("Join Gateway = %q, want %s", jr.Gateway, e.gateway)
	}
	if !jr.DisableGatewayService {
		t.Error("Join DisableGatewayService = false: Docker would add docker_gwbridge")
	}
	for _, r := range jr.StaticRoutes {
		if r.Destination == e.subnet {
			t.Errorf("Join returned a route to the link's own subnet (Docker's address add creates it): %+v", r)
		}
	}
	// Join is retried by nothing, but calling it twice must not break the link (MoveToHost is idempotent).
	var again network.JoinResponse
	e.c.call("NetworkDriver.Join", network.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/var/run/docker/netns/" + eid[:12]}, &again)
	if again.InterfaceName.SrcName != jr.InterfaceName.SrcName {
		t.Errorf("second Join SrcName %q, first %q", again.InterfaceName.SrcName, jr.InterfaceName.SrcName)
	}
	e.c.call("NetworkDriver.ProgramExternalConnectivity", network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid,
		Options: map[string]any{"com.docker.network.portmap": []any{}}}, nil)
	var info network.InfoResponse
	e.c.call("NetworkDriver.EndpointOperInfo", network.InfoRequest{NetworkID: nid, EndpointID: eid}, &info)
	if info.Value["cniplug.cni_network"] != e.name {
		t.Errorf("EndpointOperInfo = %v, want cniplug.cni_network %s", info.Value, e.name)
	}
	e.c.call("NetworkDriver.RevokeExternalConnectivity", network.RevokeExternalConnectivityRequest{NetworkID: nid, EndpointID: eid}, nil)
	e.c.call("NetworkDriver.Leave", network.LeaveRequest{NetworkID: nid, EndpointID: eid}, nil)
}

func (e *cniEnv) deleteEndpoint(t *testing.T, nid, eid, srcName string) {
	t.Helper()
	e.c.call("NetworkDriver.DeleteEndpoint", network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}, nil)
	// On networks that delete in the background (the default with CNI or null IPAM) the teardown finishes
	// after the answer.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testutil.Must(t, e.Manager.WaitRemovals(ctx))
	if _, err := netlink.LinkByName(srcName); err == nil {
		t.Errorf("link %s still in the host netns after DeleteEndpoint", srcName)
	}
	if _, err := e.Store.AttachmentByEndpoint(eid); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("endpoint still recorded after DeleteEndpoint: %v", err)
	}
	// A retried DeleteEndpoint succeeds.
	e.c.call("NetworkDriver.DeleteEndpoint", network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}, nil)
}

func srcNameOf(t *testing.T, s *teststack.Stack, eid string) string {
	t.Helper()
	a, err := s.Store.AttachmentByEndpoint(eid)
	if err != nil {
		t.Fatalf("endpoint %s has no attachment: %v", eid[:12], err)
	}
	return a.HostIfName
}

// TestCNIIPAMFlow is `docker network create -d cniplug --ipam-driver cniplug --ipam-opt cni=N --opt cni=N`,
// `docker run`, `docker stop`, `docker network rm`, in the order Docker calls.
func TestCNIIPAMFlow(t *testing.T) {
	e := newCNIEnv(t)
	c := e.c

	var spaces dipam.AddressSpacesResponse
	c.call("IpamDriver.GetDefaultAddressSpaces", struct{}{}, &spaces)
	if spaces.LocalDefaultAddressSpace != state.LocalAddressSpace || spaces.GlobalDefaultAddressSpace != state.GlobalAddressSpace {
		t.Fatalf("address spaces = %+v", spaces)
	}
	var caps dipam.CapabilitiesResponse
	c.call("IpamDriver.GetCapabilities", struct{}{}, &caps)

	// A --subnet other than the CNI network's is refused with the one that works.
	msg := c.callErr("IpamDriver.RequestPool", dipam.RequestPoolRequest{AddressSpace: spaces.LocalDefaultAddressSpace,
		Pool: "192.0.2.0/24", Options: map[string]string{"cni": e.name}})
	wantContains(t, "RequestPool with a wrong --subnet", msg, "pass --subnet "+e.subnet)
	msg = c.callErr("IpamDriver.RequestPool", dipam.RequestPoolRequest{AddressSpace: spaces.LocalDefaultAddressSpace,
		V6: true, Options: map[string]string{"cni": e.name}})
	wantContains(t, "RequestPool v6 on a v4-only CNI network", msg, "--ipv6 cannot be honoured")

	var pool dipam.RequestPoolResponse
	c.call("IpamDriver.RequestPool", dipam.RequestPoolRequest{AddressSpace: spaces.LocalDefaultAddressSpace,
		Options: map[string]string{"cni": e.name}}, &pool)
	// Without --subnet the pool is 0.0.0.0/0: libnetwork loops forever on a pool that overlaps a host route,
	// which the CNI range does once its bridge exists. With --subnet it is the CNI range and gateway.
	if pool.Pool != "0.0.0.0/0" || pool.Data["com.docker.network.gateway"] != "0.0.0.0/0" {
		t.Fatalf("RequestPool without --subnet = %q %v, want 0.0.0.0/0", pool.Pool, pool.Data)
	}
	var exact dipam.RequestPoolResponse
	c.call("IpamDriver.RequestPool", dipam.RequestPoolRequest{AddressSpace: spaces.LocalDefaultAddressSpace,
		Pool: e.subnet, Options: map[string]string{"cni": e.name}}, &exact)
	if exact.Pool != e.subnet || exact.Data["com.docker.network.gateway"] != e.gateway+"/24" {
		t.Fatalf("RequestPool --subnet %s = %q %v, want the CNI range and gateway %s/24", e.subnet, exact.Pool, exact.Data, e.gateway)
	}
	c.call("IpamDriver.ReleasePool", dipam.ReleasePoolRequest{PoolID: exact.PoolID}, nil)
	if pool.PoolID == "" {
		t.Fatal("RequestPool returned no PoolID")
	}

	nid := naming.RandomID()
	create := network.CreateNetworkRequest{NetworkID: nid, Options: genericOpts(map[string]any{"cni": e.name}),
		IPv4Data: []*network.IPAMData{{AddressSpace: state.LocalAddressSpace, Pool: pool.Pool, Gateway: pool.Data["com.docker.network.gateway"]}}}
	c.call("NetworkDriver.CreateNetwork", create, nil)
	c.call("NetworkDriver.CreateNetwork", create, nil) // a replayed CreateNetwork is idempotent
	if rec, err := e.Store.Network(nid); err != nil || rec.Mode != state.ModeCNIIPAM || rec.CNIName != e.name {
		t.Fatalf("recorded network = %+v, %v", rec, err)
	}

	var addr dipam.RequestAddressResponse
	c.call("IpamDriver.RequestAddress", dipam.RequestAddressRequest{PoolID: pool.PoolID, Options: map[string]string{}}, &addr)
	ip := e.inSubnet(t, addr.Address)
	if ip.String() == e.gateway {
		t.Fatalf("RequestAddress handed out the gateway %s", addr.Address)
	}

	eid := naming.RandomID()
	var ep network.CreateEndpointResponse
	c.call("NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{Address: addr.Address}, Options: map[string]any{}}, &ep)
	if ep.Interface == nil || ep.Interface.MacAddress == "" {
		t.Fatalf("CreateEndpoint gave no MacAddress: %+v", ep.Interface)
	}
	if ep.Interface.Address != "" {
		t.Fatalf("CreateEndpoint returned Address %q which Docker's IPAM already set (libnetwork rejects that)", ep.Interface.Address)
	}
	if a, err := e.Store.AttachmentByEndpoint(eid); err != nil || a.Interface.IPv4 != addr.Address || a.Phase != state.PhaseEndpoint {
		t.Fatalf("endpoint's attachment = %+v, %v; want the one holding %s", a, err, addr.Address)
	}
	src := srcNameOf(t, e.Stack, eid)

	e.joinAndLeave(t, nid, eid, ep.Interface.MacAddress)
	e.deleteEndpoint(t, nid, eid, src)
	c.call("IpamDriver.ReleaseAddress", dipam.ReleaseAddressRequest{PoolID: pool.PoolID, Address: ip.String()}, nil)
	c.call("IpamDriver.ReleasePool", dipam.ReleasePoolRequest{PoolID: pool.PoolID}, nil)
	c.call("NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: nid}, nil)
	// The pool is gone: an address request against it is an IPAM error, answered non-200.
	wantContains(t, "RequestAddress after ReleasePool",
		c.callErr("IpamDriver.RequestAddress", dipam.RequestAddressRequest{PoolID: pool.PoolID}), "unknown pool")
	if _, err := e.Store.Network(nid); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("network still recorded after DeleteNetwork: %v", err)
	}
	e.finish(t)
}

// TestCNIIPAMUnclaimedRelease: RequestAddress runs the CNI ADD; when Docker then gives the address back
// without an endpoint ever claiming it (CreateEndpoint failed, or the container never started), the
// attachment is torn down. ReleasePool likewise tears down what is still pending.
func TestCNIIPAMUnclaimedRelease(t *testing.T) {
	e := newCNIEnv(t)
	c := e.c
	var pool dipam.RequestPoolResponse
	c.call("IpamDriver.RequestPool", dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace,
		Options: map[string]string{"cni": e.name}}, &pool)

	var addr dipam.RequestAddressResponse
	c.call("IpamDriver.RequestAddress", dipam.RequestAddressRequest{PoolID: pool.PoolID}, &addr)
	ip := e.inSubnet(t, addr.Address)
	atts, _ := e.Store.Attachments()
	if len(atts) != 1 || atts[0].Phase != state.PhasePending || atts[0].Interface.IPv4 != addr.Address {
		t.Fatalf("after RequestAddress the store holds %+v; want one pending attachment of %s", atts, addr.Address)
	}
	if ents, _ := os.ReadDir(e.NetNSDir); len(ents) != 1 {
		t.Fatalf("staging netns dir holds %d entries, want 1", len(ents))
	}
	c.call("IpamDriver.ReleaseAddress", dipam.ReleaseAddressRequest{PoolID: pool.PoolID, Address: ip.String()}, nil)
	if atts, _ := e.Store.Attachments(); len(atts) != 0 {
		t.Fatalf("ReleaseAddress of an unclaimed address left %d attachments", len(atts))
	}
	if ents, _ := os.ReadDir(e.NetNSDir); len(ents) != 0 {
		t.Fatalf("ReleaseAddress left the staging netns: %v", ents)
	}

	// A specific address (--ip) is honoured, and ReleasePool tears down what nobody claimed.
	var want dipam.RequestAddressResponse
	c.call("IpamDriver.RequestAddress", dipam.RequestAddressRequest{PoolID: pool.PoolID, Address: e.ip(77)}, &want)
	if want.Address != e.ip(77)+"/24" {
		t.Fatalf("RequestAddress of %s gave %s", e.ip(77), want.Address)
	}
	c.call("IpamDriver.RequestAddress", dipam.RequestAddressRequest{PoolID: pool.PoolID}, nil)
	if atts, _ := e.Store.Attachments(); len(atts) != 2 {
		t.Fatalf("store holds %d attachments, want 2 pending", len(atts))
	}
	c.call("IpamDriver.ReleasePool", dipam.ReleasePoolRequest{PoolID: pool.PoolID}, nil)
	e.finish(t)
}

// TestNullIPAMFlow is `docker network create -d cniplug --ipam-driver null --opt cni=N`: CNI chooses the
// address at CreateEndpoint and the driver reports it.
func TestNullIPAMFlow(t *testing.T) {
	e := newCNIEnv(t)
	c := e.c
	nid := e.createNullNetwork(t)
	if rec, err := e.Store.Network(nid); err != nil || rec.Mode != state.ModeNull {
		t.Fatalf("recorded network = %+v, %v; want mode %s", rec, err, state.ModeNull)
	}
	eid := naming.RandomID()
	var ep network.CreateEndpointResponse
	c.call("NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{}, Options: map[string]any{}}, &ep)
	if ep.Interface == nil || ep.Interface.MacAddress == "" || ep.Interface.Address == "" {
		t.Fatalf("CreateEndpoint on a null-IPAM network must report Address and MacAddress: %+v", ep.Interface)
	}
	ip := e.inSubnet(t, ep.Interface.Address)
	if ep.Interface.AddressIPv6 != "" {
		t.Errorf("AddressIPv6 %q from an IPv4-only network", ep.Interface.AddressIPv6)
	}
	// A retried CreateEndpoint answers the same without a second ADD.
	var again network.CreateEndpointResponse
	c.call("NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{}}, &again)
	if again.Interface == nil || again.Interface.Address != ep.Interface.Address {
		t.Fatalf("retried CreateEndpoint = %+v, first %+v", again.Interface, ep.Interface)
	}
	if atts, _ := e.Store.Attachments(); len(atts) != 1 {
		t.Fatalf("retried CreateEndpoint made %d attachments", len(atts))
	}
	if _, err := os.Stat(filepath.Join(testutil.CNIDataDir, "networks", e.name, ip.String())); err != nil {
		t.Errorf("no host-local reservation for %s: %v", ip, err)
	}
	src := srcNameOf(t, e.Stack, eid)
	e.joinAndLeave(t, nid, eid, ep.Interface.MacAddress)
	e.deleteEndpoint(t, nid, eid, src)
	// The removal ran in the background (the default with null IPAM) and is measured as such.
	if removals := e.observations(t, metrics.BackgroundRemoval); removals != 1 {
		t.Errorf("%s counted %d background removals, want 1", metrics.BackgroundRemoval, removals)
	}
	c.call("NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: nid}, nil)
	e.finish(t)
}

// TestDockerIPAMFlow is `docker network create -d cniplug --subnet S --gateway G --opt cni=N`: Docker's
// IPAM chooses the address and CNI is asked for exactly it.
func TestDockerIPAMFlow(t *testing.T) {
	e := newCNIEnv(t)
	c := e.c
	nid := naming.RandomID()
	opts := genericOpts(map[string]any{"cni": e.name})

	msg := c.callErr("NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: nid, Options: opts,
		IPv4Data: []*network.IPAMData{{AddressSpace: "LocalDefault", Pool: "172.31.250.0/24", Gateway: "172.31.250.1/24"}}})
	wantContains(t, "CreateNetwork with Docker's default pool", msg,
		fmt.Sprintf("--subnet %s --gateway %s", e.subnet, e.gateway), "--ipam-driver cniplug --ipam-opt cni="+e.name)
	if _, err := e.Store.Network(nid); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("refused network was recorded: %v", err)
	}

	c.call("NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: nid, Options: opts,
		IPv4Data: []*network.IPAMData{{AddressSpace: "LocalDefault", Pool: e.subnet, Gateway: e.gateway + "/24"}}}, nil)
	if rec, err := e.Store.Network(nid); err != nil || rec.Mode != state.ModeDocker || rec.IPv4Pool != e.subnet {
		t.Fatalf("recorded network = %+v, %v; want mode %s", rec, err, state.ModeDocker)
	}

	eid := naming.RandomID()
	want := e.ip(10) + "/24"
	var ep network.CreateEndpointResponse
	c.call("NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{Address: want}, Options: map[string]any{}}, &ep)
	if ep.Interface == nil || ep.Interface.MacAddress == "" {
		t.Fatalf("CreateEndpoint gave no MacAddress: %+v", ep.Interface)
	}
	if ep.Interface.Address != "" {
		t.Fatalf("CreateEndpoint returned Address %q which Docker's IPAM already set", ep.Interface.Address)
	}
	a, err := e.Store.AttachmentByEndpoint(eid)
	if err != nil || a.Interface.IPv4 != want {
		t.Fatalf("CNI assigned %+v (%v), want exactly %s", a, err, want)
	}
	if _, err := os.Stat(filepath.Join(testutil.CNIDataDir, "networks", e.name, e.ip(10))); err != nil {
		t.Errorf("host-local has no reservation for %s: %v", e.ip(10), err)
	}

	// Docker's IPAM choosing an address host-local already gave out fails cleanly, leaving nothing behind.
	eid2 := naming.RandomID()
	msg = c.callErr("NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid2,
		Interface: &network.EndpointInterface{Address: want}})
	wantContains(t, "CreateEndpoint of a taken address", msg, e.name)
	if _, err := e.Store.AttachmentByEndpoint(eid2); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("failed CreateEndpoint left an attachment: %v", err)
	}

	e.joinAndLeave(t, nid, eid, ep.Interface.MacAddress)
	e.deleteEndpoint(t, nid, eid, a.HostIfName)
	c.call("NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: nid}, nil)
	e.finish(t)
}

// TestDeleteNetworkRemovesLeftovers: an endpoint Docker never deleted (e.g. lost in a dockerd crash) is torn
// down with its network.
func TestDeleteNetworkRemovesLeftovers(t *testing.T) {
	e := newCNIEnv(t)
	c := e.c
	nid := e.createNullNetwork(t)
	joined, idle := naming.RandomID(), naming.RandomID()
	var ep network.CreateEndpointResponse
	c.call("NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: nid, EndpointID: joined, Interface: &network.EndpointInterface{}}, &ep)
	c.call("NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: nid, EndpointID: idle, Interface: &network.EndpointInterface{}}, nil)
	c.call("NetworkDriver.Join", network.JoinRequest{NetworkID: nid, EndpointID: joined, SandboxKey: "/var/run/docker/netns/" + joined[:12]}, nil)
	c.call("NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: nid}, nil)
	e.finish(t)
}

// ---------------------------------------------------------------------------------------------------------
// Fuzzing the handler.

// fuzzPaths are the routed method paths; a fuzz input's first byte picks one.
var fuzzPaths = []string{
	"/Plugin.Activate",
	"/NetworkDriver.GetCapabilities",
	"/NetworkDriver.CreateNetwork",
	"/NetworkDriver.AllocateNetwork",
	"/NetworkDriver.DeleteNetwork",
	"/NetworkDriver.FreeNetwork",
	"/NetworkDriver.CreateEndpoint",
	"/NetworkDriver.DeleteEndpoint",
	"/NetworkDriver.EndpointOperInfo",
	"/NetworkDriver.Join",
	"/NetworkDriver.Leave",
	"/NetworkDriver.DiscoverNew",
	"/NetworkDriver.DiscoverDelete",
	"/NetworkDriver.ProgramExternalConnectivity",
	"/NetworkDriver.RevokeExternalConnectivity",
	"/IpamDriver.GetCapabilities",
	"/IpamDriver.GetDefaultAddressSpaces",
	"/IpamDriver.RequestPool",
	"/IpamDriver.ReleasePool",
	"/IpamDriver.RequestAddress",
	"/IpamDriver.ReleaseAddress",
}

// fuzzSeeds are valid example requests, by path.
var fuzzSeeds = map[string][]string{
	"/Plugin.Activate":               {``, `{}`},
	"/NetworkDriver.GetCapabilities": {`{}`},
	"/NetworkDriver.CreateNetwork": {
		`{"NetworkID":"0123456789abcdef","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"cni":"mynet"}},` +
			`"IPv4Data":[{"AddressSpace":"CniplugLocal","Pool":"10.22.0.0/24","Gateway":"10.22.0.1/24","AuxAddresses":{}}],"IPv6Data":[]}`,
		`{"NetworkID":"0123456789abcdef","Options":{"com.docker.network.generic":{"cni":"mynet","x":"y"}},"IPv4Data":[{"AddressSpace":"null","Pool":"0.0.0.0/0"}]}`,
		`{"NetworkID":"0123456789abcdef","Options":{"com.docker.network.generic":{"cni":"mynet"}},"IPv4Data":[null]}`,
		`{"NetworkID":"n","Options":{"com.docker.network.generic":"cni=x"}}`,
	},
	"/NetworkDriver.AllocateNetwork": {`{"NetworkID":"n","Options":{"a":"b"},"IPv4Data":[{"AddressSpace":"x","Pool":"10.0.0.0/8"}]}`},
	"/NetworkDriver.DeleteNetwork":   {`{"NetworkID":"0123456789abcdef"}`, `{"NetworkID":""}`},
	"/NetworkDriver.FreeNetwork":     {`{"NetworkID":"n"}`},
	"/NetworkDriver.CreateEndpoint": {
		`{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210","Interface":{"Address":"10.22.0.2/24","AddressIPv6":"","MacAddress":""},` +
			`"Options":{"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}],` +
			`"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}]}}`,
		`{"NetworkID":"n","EndpointID":"e","Interface":null}`,
	},
	"/NetworkDriver.DeleteEndpoint":   {`{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210"}`},
	"/NetworkDriver.EndpointOperInfo": {`{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210"}`},
	"/NetworkDriver.Join": {
		`{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210","SandboxKey":"/var/run/docker/netns/abc","Options":{"com.docker.network.endpoint.exposedports":[]}}`,
	},
	"/NetworkDriver.Leave":          {`{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210"}`},
	"/NetworkDriver.DiscoverNew":    {`{"DiscoveryType":1,"DiscoveryData":{"Address":"10.0.0.1","self":true}}`},
	"/NetworkDriver.DiscoverDelete": {`{"DiscoveryType":1,"DiscoveryData":null}`},
	"/NetworkDriver.ProgramExternalConnectivity": {
		`{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210","Options":{"com.docker.network.portmap":[]}}`,
	},
	"/NetworkDriver.RevokeExternalConnectivity": {`{"NetworkID":"0123456789abcdef","EndpointID":"fedcba9876543210"}`},
	"/IpamDriver.GetCapabilities":               {`{}`},
	"/IpamDriver.GetDefaultAddressSpaces":       {`{}`},
	"/IpamDriver.RequestPool": {
		`{"AddressSpace":"CniplugLocal","Pool":"","SubPool":"","Options":{"cni":"mynet"},"V6":false}`,
		`{"AddressSpace":"CniplugLocal","Pool":"10.22.0.0/24","SubPool":"10.22.0.0/25","Options":{"cni":"mynet"},"V6":true}`,
		`{"AddressSpace":"CniplugLocal","Options":{"cni":"../../etc"}}`,
		`{"AddressSpace":"CniplugLocal","Options":null}`,
	},
	"/IpamDriver.ReleasePool": {`{"PoolID":"cniplug-0123456789abcdef01234567"}`},
	"/IpamDriver.RequestAddress": {
		`{"PoolID":"cniplug-0123456789abcdef01234567","Address":"","Options":{}}`,
		`{"PoolID":"cniplug-0123456789abcdef01234567","Address":"10.22.0.1","Options":{"RequestAddressType":"com.docker.network.gateway"}}`,
	},
	"/IpamDriver.ReleaseAddress": {`{"PoolID":"cniplug-0123456789abcdef01234567","Address":"10.22.0.2"}`},
}

// FuzzHandler sends arbitrary bodies to every method against a plugin whose conf dir holds no networks (so no
// CNI operation can run). Every answer must be JSON, a failure must carry an Err, and no handler may panic
// (a recovered panic still shows as "internal error").
func FuzzHandler(f *testing.F) {
	for i, p := range fuzzPaths {
		seeds, ok := fuzzSeeds[p]
		if !ok {
			f.Fatalf("no seed for %s", p)
		}
		for _, s := range seeds {
			f.Add(append([]byte{byte(i)}, s...))
		}
	}
	s := newStack(f, f.TempDir(), f.TempDir(), nil)
	h := s.Handler
	f.Fuzz(func(t *testing.T, data []byte) {
		path, body := fuzzPaths[0], []byte(nil)
		if len(data) > 0 {
			path, body = fuzzPaths[int(data[0])%len(fuzzPaths)], data[1:]
		}
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		out := rec.Body.Bytes()
		if !json.Valid(out) {
			t.Fatalf("%s %q: status %d, response is not JSON: %q", path, body, rec.Code, out)
		}
		var e struct {
			Err *string
		}
		if err := json.Unmarshal(out, &e); err != nil {
			t.Fatalf("%s %q: response %q is not a JSON object: %v", path, body, out, err)
		}
		switch {
		case rec.Code == http.StatusOK && e.Err != nil && *e.Err != "":
			t.Fatalf("%s %q: 200 carrying Err %q (libnetwork's IPAM client reads that as success)", path, body, *e.Err)
		case rec.Code != http.StatusOK && (e.Err == nil || *e.Err == ""):
			t.Fatalf("%s %q: status %d without an Err: %q", path, body, rec.Code, out)
		case e.Err != nil && strings.Contains(*e.Err, "internal error"):
			t.Fatalf("%s %q: handler panicked: %s", path, body, *e.Err)
		case rec.Code == http.StatusNotFound || rec.Code == http.StatusMethodNotAllowed:
			t.Fatalf("%s: routed path answered %d", path, rec.Code)
		}
	})
}

// DEL runs in the background by default in every addressing way, and --opt async-delete=false turns it off.
func TestAsyncDeleteDefault(t *testing.T) {
	e := newCNIEnv(t)
	defer e.finish(t)
	var pool dipam.RequestPoolResponse
	e.c.call("IpamDriver.RequestPool", dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace,
		Pool: e.subnet, Options: map[string]string{"cni": e.name}}, &pool)
	defer e.c.call("IpamDriver.ReleasePool", dipam.ReleasePoolRequest{PoolID: pool.PoolID}, nil)
	modes := []struct {
		mode state.AddressMode
		ipam network.IPAMData
	}{
		{state.ModeNull, network.IPAMData{AddressSpace: "null", Pool: "0.0.0.0/0"}},
		{state.ModeCNIIPAM, network.IPAMData{AddressSpace: state.LocalAddressSpace, Pool: e.subnet}},
		{state.ModeDocker, network.IPAMData{AddressSpace: "LocalDefault", Pool: e.subnet, Gateway: e.gateway + "/24"}},
	}
	for _, m := range modes {
		for _, tc := range []struct {
			opt  string // "" = not given
			want bool
		}{
			{"", true},
			{"false", false},
			{"true", true},
		} {
			t.Run(fmt.Sprintf("%s/%q", m.mode, tc.opt), func(t *testing.T) {
				opts := map[string]any{"cni": e.name}
				if tc.opt != "" {
					opts["async-delete"] = tc.opt
				}
				nid := naming.RandomID()
				req := network.CreateNetworkRequest{NetworkID: nid, Options: genericOpts(opts), IPv4Data: []*network.IPAMData{&m.ipam}}
				e.c.call("NetworkDriver.CreateNetwork", req, nil)
				defer e.c.call("NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: nid}, nil)
				rec, err := e.Store.Network(nid)
				testutil.Must(t, err)
				if rec.Mode != m.mode || rec.AsyncDelete != tc.want {
					t.Errorf("recorded mode %s async-delete %v, want %s %v", rec.Mode, rec.AsyncDelete, m.mode, tc.want)
				}
			})
		}
	}
}

// observations is how many times the histogram called name was observed, over all its labels.
func (e *cniEnv) observations(t *testing.T, name string) uint64 {
	t.Helper()
	fams, err := e.Metrics.Registry().Gather()
	testutil.Must(t, err)
	var n uint64
	for _, f := range fams {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

// TestCNIIPAMWarmPool is `docker network create --ipam-driver cniplug --ipam-opt warm-pool=2`: attachments are
// added before any request; RequestAddress takes one (a requested address takes the one holding it, or runs
// its own ADD), gives its link the endpoint's MAC, and the pool is refilled; the endpoint's lifecycle is the
// usual one; ReleasePool removes the warm ones, leaving nothing.
func TestCNIIPAMWarmPool(t *testing.T) {
	e := newCNIEnv(t)
	c := e.c
	var pool dipam.RequestPoolResponse
	c.call("IpamDriver.RequestPool", dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace,
		Options: map[string]string{"cni": e.name, "warm-pool": "2"}}, &pool)
	warm := e.WaitWarm(t, pool.PoolID, 2)
	if ents, _ := os.ReadDir(e.NetNSDir); len(ents) != 2 {
		t.Fatalf("staging netns dir holds %d entries for 2 warm attachments", len(ents))
	}

	nid := naming.RandomID()
	c.call("NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: nid, Options: genericOpts(map[string]any{"cni": e.name}),
		IPv4Data: []*network.IPAMData{{AddressSpace: state.LocalAddressSpace, Pool: pool.Pool, Gateway: pool.Data["com.docker.network.gateway"]}}}, nil)

	const mac = "02:42:0a:c9:00:42"
	var addr dipam.RequestAddressResponse
	c.call("IpamDriver.RequestAddress", dipam.RequestAddressRequest{PoolID: pool.PoolID,
		Options: map[string]string{"com.docker.network.endpoint.macaddress": mac}}, &addr)
	if addr.Address != warm[0].Interface.IPv4 && addr.Address != warm[1].Interface.IPv4 {
		t.Fatalf("RequestAddress gave %s, not a warm attachment's address (%s, %s)", addr.Address, warm[0].Interface.IPv4, warm[1].Interface.IPv4)
	}
	ip := e.inSubnet(t, addr.Address)
	e.WaitWarm(t, pool.PoolID, 2) // refilled

	// --ip of an address a warm attachment holds takes that one; another address runs an ADD of its own.
	var held *state.Attachment
	for _, a := range e.WaitWarm(t, pool.PoolID, 2) {
		held = a
	}
	heldIP := naming.Address(held.Interface.IPv4)
	var got dipam.RequestAddressResponse
	c.call("IpamDriver.RequestAddress", dipam.RequestAddressRequest{PoolID: pool.PoolID, Address: heldIP}, &got)
	if a, err := e.Store.Attachment(held.ID()); err != nil || a.Phase != state.PhasePending || got.Address != held.Interface.IPv4 {
		t.Fatalf("RequestAddress of warm %s gave %s; its attachment %+v, %v", heldIP, got.Address, a, err)
	}
	c.call("IpamDriver.RequestAddress", dipam.RequestAddressRequest{PoolID: pool.PoolID, Address: e.ip(77)}, &got)
	if got.Address != e.ip(77)+"/24" {
		t.Fatalf("RequestAddress of %s gave %s", e.ip(77), got.Address)
	}
	c.call("IpamDriver.ReleaseAddress", dipam.ReleaseAddressRequest{PoolID: pool.PoolID, Address: heldIP}, nil)
	c.call("IpamDriver.ReleaseAddress", dipam.ReleaseAddressRequest{PoolID: pool.PoolID, Address: e.ip(77)}, nil)

	// The claimed one is an ordinary endpoint from here, with the MAC Docker chose.
	eid := naming.RandomID()
	var ep network.CreateEndpointResponse
	c.call("NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
		Interface: &network.EndpointInterface{Address: addr.Address, MacAddress: mac}, Options: map[string]any{}}, &ep)
	if a, err := e.Store.AttachmentByEndpoint(eid); err != nil || a.Interface.MAC != mac || a.Phase != state.PhaseEndpoint {
		t.Fatalf("endpoint's attachment = %+v, %v; want MAC %s", a, err, mac)
	}
	src := srcNameOf(t, e.Stack, eid)
	e.joinAndLeave(t, nid, eid, mac)
	e.deleteEndpoint(t, nid, eid, src)
	c.call("IpamDriver.ReleaseAddress", dipam.ReleaseAddressRequest{PoolID: pool.PoolID, Address: ip.String()}, nil)
	e.WaitWarm(t, pool.PoolID, 2)
	// Two to fill the pool, and one for each of the two claims.
	if fills := e.observations(t, metrics.WarmFill); fills != 4 {
		t.Errorf("%s counted %d ADDs, want 4", metrics.WarmFill, fills)
	}
	c.call("IpamDriver.ReleasePool", dipam.ReleasePoolRequest{PoolID: pool.PoolID}, nil)
	c.call("NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: nid}, nil)
	e.finish(t)
}

// TestWarmPoolRefused: a warm pool is refused, naming the cause, where an attachment made before its container
// is known would be wrong or the number makes no sense; nothing is recorded.
func TestWarmPoolRefused(t *testing.T) {
	e := newCNIEnv(t)
	for _, tc := range []struct {
		name, value, want string
	}{
		{"not a number", "many", `warm-pool="many": want a number of attachments from 0 to 64`},
		{"too many", "65", "from 0 to 64"},
		{"negative", "-1", "from 0 to 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantContains(t, "RequestPool", e.c.callErr("IpamDriver.RequestPool", dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace,
				Options: map[string]string{"cni": e.name, "warm-pool": tc.value}}), tc.want)
		})
	}
	if pools, _ := e.Store.Pools(); len(pools) != 0 {
		t.Errorf("refused pools recorded: %+v", pools)
	}
	e.finish(t)
}

// TestWarmPoolTotalCap: the warm attachments of all pools together stay under --warm-pool-max-total (default
// 64): a pool that would pass it is refused with the numbers and the flag, and records nothing.
func TestWarmPoolTotalCap(t *testing.T) {
	e := newCNIEnv(t)
	// A pool recorded with 60 warm attachments (not started: only its count matters here).
	big := &state.Pool{ID: "cniplug-" + naming.RandomID()[:24], CNIName: e.name, CIDR: "0.0.0.0/0", Warm: 60}
	testutil.Must(t, e.Store.PutPool(big))
	wantContains(t, "RequestPool", e.c.callErr("IpamDriver.RequestPool", dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace,
		Options: map[string]string{"cni": e.name, "warm-pool": "5"}}), "warm-pool=5 would bring the warm attachments of all of this plugin's pools to 65, over its limit of 64")
	if pools, _ := e.Store.Pools(); len(pools) != 1 {
		t.Errorf("a refused pool was recorded: %+v", pools)
	}
	var pool dipam.RequestPoolResponse
	e.c.call("IpamDriver.RequestPool", dipam.RequestPoolRequest{AddressSpace: state.LocalAddressSpace,
		Options: map[string]string{"cni": e.name, "warm-pool": "4"}}, &pool)
	e.WaitWarm(t, pool.PoolID, 4)
	e.c.call("IpamDriver.ReleasePool", dipam.ReleasePoolRequest{PoolID: pool.PoolID}, nil)
	testutil.Must(t, e.Store.DeletePool(big.ID))
	e.finish(t)
}
