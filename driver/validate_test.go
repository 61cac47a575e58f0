package driver

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/naming"
	"github.com/docker/go-plugins-helpers/network"
)

func TestCheckNetworkID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{naming.RandomID(), true},
		{"qx0mvl1znq2a3hyrvqhcwdl6c", true}, // swarm
		{"", false},
		{"../../../../tmp/x", false},
		{"0123456789abcdef", false},
		{strings.ToUpper(naming.RandomID()), false},
		{"QX0MVL1ZNQ2A3HYRVQHCWDL6C", false},
		{"qx0mvl1znq2a3hyrvqhcwdl6/", false},
		{strings.Repeat("a", 200<<10), false},
	} {
		err := checkNetworkID(tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("checkNetworkID(%.30q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "invalid NetworkID ") {
			t.Errorf("checkNetworkID(%.30q): %q does not name the field", tc.id, err)
		}
	}
}

func TestCheckSandboxKey(t *testing.T) {
	// A symlink in Docker's netns dir pointing elsewhere is refused; the test makes one where dockerd made
	// the dir (and it may write).
	var link string
	if fi, err := os.Stat("/var/run/docker/netns"); err == nil && fi.IsDir() {
		link = filepath.Join("/var/run/docker/netns", "cniplug-test-"+naming.RandomID()[:8])
		if err := os.Symlink("/proc/1/ns/net", link); err == nil {
			t.Cleanup(func() { os.Remove(link) })
		} else {
			link = ""
		}
	}
	for _, tc := range []struct {
		key string
		ok  bool
	}{
		{"/var/run/docker/netns/0123456789ab", true},
		{"/run/docker/netns/0123456789ab", true},
		{"/var/run/docker/netns/ingress_sbox", true},
		{"/var/run/docker/netns/lb_qx0mvl1zn", true},
		{"/var/run/docker/netns/1-qx0mvl1znq", true},
		{"", false},
		{"/proc/1/ns/net", false},
		{"/run/netns/x", false},
		{"/var/run/docker/netns/", false},
		{"/var/run/docker/netns", false},
		{"/var/run/docker/netns/..", false},
		{"/var/run/docker/netns/../../../proc/1/ns/net", false},
		{"/var/run/docker/netns/./abc", false},
		{"/var/run/docker/netns//abc", false},
		{"/var/run/docker/netns/a/b", false},
		{"/var/run/docker/netns/.hidden", false},
		{"/var/run/docker/netns/a b", false},
		{"/var/run/docker/netns/a;IP=1", false},
		{"var/run/docker/netns/abc", false},
		{"/var/run/docker/netns/" + strings.Repeat("a", 200), false},
	} {
		err := checkSandboxKey(tc.key, sandboxDirs(DefaultDockerExecRoot))
		if (err == nil) != tc.ok {
			t.Errorf("checkSandboxKey(%.60q) = %v, want ok=%v", tc.key, err, tc.ok)
		}
		var fe *naming.FieldError
		if err != nil && (!errors.As(err, &fe) || fe.Field != "SandboxKey") {
			t.Errorf("checkSandboxKey(%.60q) = %v: not a SandboxKey field error", tc.key, err)
		}
	}
	if link != "" {
		if err := checkSandboxKey(link, sandboxDirs(DefaultDockerExecRoot)); err == nil || !strings.Contains(err.Error(), "not a symlink") {
			t.Errorf("checkSandboxKey(a symlink to /proc/1/ns/net) = %v, want refused", err)
		}
	}
}

func TestValidateRequests(t *testing.T) {
	nid, eid := naming.RandomID(), naming.RandomID()
	iface := func(addr, addr6, mac string) *network.EndpointInterface {
		return &network.EndpointInterface{Address: addr, AddressIPv6: addr6, MacAddress: mac}
	}
	for _, tc := range []struct {
		name string
		err  error
		want string // "" when the request is valid
	}{
		{"CreateNetwork", validateCreateNetwork(&network.CreateNetworkRequest{NetworkID: nid,
			IPv4Data: []*network.IPAMData{{AddressSpace: "null", Pool: "0.0.0.0/0"}}}), ""},
		{"CreateNetwork with gateway", validateCreateNetwork(&network.CreateNetworkRequest{NetworkID: nid,
			IPv4Data: []*network.IPAMData{{Pool: "10.1.0.0/24", Gateway: "10.1.0.1/24"}}, IPv6Data: []*network.IPAMData{{Pool: "fd00::/64"}}}), ""},
		{"CreateNetwork path ID", validateCreateNetwork(&network.CreateNetworkRequest{NetworkID: "../../../../tmp/x"}), `invalid NetworkID "../../../../tmp/x"`},
		{"CreateNetwork bad pool", validateCreateNetwork(&network.CreateNetworkRequest{NetworkID: nid,
			IPv4Data: []*network.IPAMData{{Pool: "10.1.0.0"}}}), `invalid IPv4Data.Pool "10.1.0.0"`},
		{"CreateNetwork bad gateway", validateCreateNetwork(&network.CreateNetworkRequest{NetworkID: nid,
			IPv6Data: []*network.IPAMData{{Pool: "fd00::/64", Gateway: "x"}}}), `invalid IPv6Data.Gateway "x"`},
		{"CreateEndpoint", validateCreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
			Interface: iface("10.1.0.2/24", "fd00::2/64", "02:42:ac:11:00:02")}), ""},
		{"CreateEndpoint no interface", validateCreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid}), ""},
		{"CreateEndpoint bad endpoint", validateCreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: "x"}), `invalid EndpointID "x"`},
		{"CreateEndpoint MAC with IP=", validateCreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
			Interface: iface("", "", "02:00:00:5b:00:77;IP=10.91.0.200")}),
			`invalid MacAddress "02:00:00:5b:00:77;IP=10.91.0.200": want six hex bytes like 02:42:ac:11:00:02`},
		{"CreateEndpoint bare address", validateCreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
			Interface: iface("10.1.0.2", "", "")}), `invalid Interface.Address "10.1.0.2"`},
		{"CreateEndpoint bad IPv6", validateCreateEndpoint(&network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
			Interface: iface("", "fd00::2/64;x", "")}), `invalid Interface.AddressIPv6`},
		{"Join", validateJoin(&network.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/var/run/docker/netns/0123456789ab"}, sandboxDirs(DefaultDockerExecRoot)), ""},
		{"Join host netns", validateJoin(&network.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/proc/1/ns/net"}, sandboxDirs(DefaultDockerExecRoot)), `invalid SandboxKey "/proc/1/ns/net"`},
		{"Join another exec-root", validateJoin(&network.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/run/docker2/netns/0123456789ab"},
			sandboxDirs("/var/run/docker2")), ""},
		{"Join default exec-root when another is set", validateJoin(&network.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/var/run/docker/netns/0123456789ab"},
			sandboxDirs("/srv/docker-exec")), `--docker-exec-root`},
		{"Leave", checkIDs(nid, eid), ""},
		{"Leave swarm network", checkIDs("qx0mvl1znq2a3hyrvqhcwdl6c", eid), ""},
		{"Leave swarm-like endpoint", checkIDs(nid, "qx0mvl1znq2a3hyrvqhcwdl6c"), `invalid EndpointID`},
	} {
		switch {
		case tc.want == "" && tc.err != nil:
			t.Errorf("%s: %v, want valid", tc.name, tc.err)
		case tc.want != "" && (tc.err == nil || !strings.Contains(tc.err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error containing %q", tc.name, tc.err, tc.want)
		}
	}
}

func FuzzCheckNetworkID(f *testing.F) {
	for _, s := range []string{naming.RandomID(), "qx0mvl1znq2a3hyrvqhcwdl6c", "../../../../tmp/x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if checkNetworkID(id) != nil {
			return
		}
		// Accepted IDs become state keys, link names and file names: no separators, no dots, bounded.
		if len(id) != 64 && len(id) != 25 || strings.Trim(id, "0123456789abcdefghijklmnopqrstuvwxyz") != "" {
			t.Fatalf("checkNetworkID accepted %q", id)
		}
	})
}

func FuzzCheckSandboxKey(f *testing.F) {
	for _, s := range []string{"/var/run/docker/netns/0123456789ab", "/run/docker/netns/ingress_sbox", "/proc/1/ns/net",
		"/run/netns/x", "/var/run/docker/netns/../../../proc/1/ns/net", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if checkSandboxKey(key, sandboxDirs(DefaultDockerExecRoot)) != nil {
			return
		}
		// Accepted keys are directly in Docker's netns dir, clean, with a plain base name.
		dir, base := filepath.Split(key)
		if dir != "/var/run/docker/netns/" && dir != "/run/docker/netns/" || base == "" || base[0] == '.' ||
			strings.ContainsAny(base, "/\x00 ;=") || filepath.Clean(key) != key || len(base) > 128 {
			t.Fatalf("checkSandboxKey accepted %q", key)
		}
	})
}
