package ipam

import (
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/ipam"
)

func TestCheckPoolID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{newPoolID(), true},
		{"cniplug-0123456789abcdef01234567", true},
		{"", false},
		{"cniplug-nope", false},
		{"cniplug-0123456789abcdef0123456", false},
		{"cniplug-0123456789abcdef012345678", false},
		{"cniplug-0123456789ABCDEF01234567", false},
		{"other-0123456789abcdef01234567", false},
		{"cniplug-../../../../tmp/xxxxxxxx", false},
	} {
		err := checkPoolID(tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("checkPoolID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "invalid PoolID ") {
			t.Errorf("checkPoolID(%q): %q does not name the field", tc.id, err)
		}
	}
}

func TestValidateRequests(t *testing.T) {
	pool := newPoolID()
	opts := func(mac, name string) map[string]string {
		return map[string]string{macAddressOption: mac, endpointNameOption: name}
	}
	for _, tc := range []struct {
		name string
		err  error
		want string // "" when the request is valid
	}{
		{"RequestPool", validateRequestPool(&ipam.RequestPoolRequest{Options: map[string]string{"cni": "x"}}), ""},
		{"RequestPool --subnet", validateRequestPool(&ipam.RequestPoolRequest{Pool: "10.1.0.0/24"}), ""},
		{"RequestPool bad --subnet", validateRequestPool(&ipam.RequestPoolRequest{Pool: "10.1.0.0"}), `invalid Pool (--subnet) "10.1.0.0"`},
		{"RequestPool bad --ip-range", validateRequestPool(&ipam.RequestPoolRequest{SubPool: "x"}), `invalid SubPool (--ip-range) "x"`},
		{"RequestAddress", validateRequestAddress(&ipam.RequestAddressRequest{PoolID: pool, Options: opts("02:42:ac:11:00:02", "web")}), ""},
		{"RequestAddress no options", validateRequestAddress(&ipam.RequestAddressRequest{PoolID: pool, Address: "10.1.0.5"}), ""},
		{"RequestAddress long name", validateRequestAddress(&ipam.RequestAddressRequest{PoolID: pool,
			Options: opts("", strings.Repeat("n", 300))}), ""},
		{"RequestAddress bad pool", validateRequestAddress(&ipam.RequestAddressRequest{PoolID: "../x"}), `invalid PoolID "../x"`},
		{"RequestAddress CIDR address", validateRequestAddress(&ipam.RequestAddressRequest{PoolID: pool, Address: "10.1.0.5/24"}),
			`invalid Address "10.1.0.5/24": want an IP address`},
		{"RequestAddress MAC with IP=", validateRequestAddress(&ipam.RequestAddressRequest{PoolID: pool,
			Options: opts("02:00:00:5b:00:77;IP=10.91.0.200", "")}),
			`invalid option com.docker.network.endpoint.macaddress "02:00:00:5b:00:77;IP=10.91.0.200": want six hex bytes`},
		{"RequestAddress name with CNI_ARGS separators", validateRequestAddress(&ipam.RequestAddressRequest{PoolID: pool,
			Options: opts("", "web;IP=10.0.0.9")}), `without ';' or '='`},
		{"RequestAddress name with a newline", validateRequestAddress(&ipam.RequestAddressRequest{PoolID: pool,
			Options: opts("", "web\nIP=10.0.0.9")}), `invalid option com.docker.network.endpoint.name`},
		{"RequestAddress name with NUL", validateRequestAddress(&ipam.RequestAddressRequest{PoolID: pool,
			Options: opts("", "web\x00")}), `want a container name of printable characters`},
		{"RequestAddress name not UTF-8", validateRequestAddress(&ipam.RequestAddressRequest{PoolID: pool,
			Options: opts("", "web\xff")}), `invalid option com.docker.network.endpoint.name`},
		{"ReleaseAddress", validateReleaseAddress(&ipam.ReleaseAddressRequest{PoolID: pool, Address: "fd00::5"}), ""},
		{"ReleaseAddress bad address", validateReleaseAddress(&ipam.ReleaseAddressRequest{PoolID: pool, Address: "x"}), `invalid Address "x"`},
		{"ReleasePool bad pool", checkPoolID("cniplug-nope"), `invalid PoolID "cniplug-nope"`},
	} {
		switch {
		case tc.want == "" && tc.err != nil:
			t.Errorf("%s: %v, want valid", tc.name, tc.err)
		case tc.want != "" && (tc.err == nil || !strings.Contains(tc.err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error containing %q", tc.name, tc.err, tc.want)
		}
	}
}

func FuzzValidateRequestAddress(f *testing.F) {
	f.Add("cniplug-0123456789abcdef01234567", "10.1.0.5", "02:42:ac:11:00:02", "web")
	f.Add("cniplug-nope", "10.1.0.5/24", "02:00:00:5b:00:77;IP=10.91.0.200", "a\nb")
	f.Fuzz(func(t *testing.T, pool, addr, mac, name string) {
		req := &ipam.RequestAddressRequest{PoolID: pool, Address: addr, Options: map[string]string{macAddressOption: mac, endpointNameOption: name}}
		if validateRequestAddress(req) != nil {
			return
		}
		// Nothing accepted can add a CNI_ARGS key or break the environment it is passed in.
		for _, v := range []string{pool, addr, mac} {
			if strings.ContainsAny(v, ";=/ \x00\n") {
				t.Fatalf("accepted %q", v)
			}
		}
		if strings.ContainsAny(name, "\x00\n\r") {
			t.Fatalf("accepted name %q", name)
		}
	})
}
