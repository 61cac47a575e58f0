package cnibridge

import (
	"net"
	"reflect"
	"testing"
)

// TestSubnetSafeRoutes: routes Docker can add on top of the kernel's on-link route for the address.
func TestSubnetSafeRoutes(t *testing.T) {
	cidr := func(s string) *net.IPNet {
		ip, n, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		n.IP = ip // an address, as AddrList returns it
		return n
	}
	dst := func(s string) *net.IPNet { _, n, _ := net.ParseCIDR(s); return n }
	v4 := []*net.IPNet{cidr("10.210.3.7/24")}
	v6 := []*net.IPNet{cidr("fd00:210:3::7/64")}
	for _, tc := range []struct {
		name  string
		dst   *net.IPNet
		gw    net.IP
		addrs []*net.IPNet
		want  []Route
	}{
		{"own subnet via gateway is split", dst("10.210.3.0/24"), net.ParseIP("10.210.3.1"), v4,
			[]Route{{"10.210.3.0/25", "10.210.3.1"}, {"10.210.3.128/25", "10.210.3.1"}}},
		{"own subnet on-link is dropped", dst("10.210.3.0/24"), nil, v4, nil},
		{"unrelated via gateway kept", dst("192.168.50.0/24"), net.ParseIP("10.210.3.1"), v4,
			[]Route{{"192.168.50.0/24", "10.210.3.1"}}},
		{"unrelated on-link kept", dst("10.210.3.1/32"), nil, v4, []Route{{Destination: "10.210.3.1/32"}}},
		{"wider route containing subnet kept", dst("10.210.0.0/16"), net.ParseIP("10.210.3.1"), v4,
			[]Route{{"10.210.0.0/16", "10.210.3.1"}}},
		{"no addresses", dst("10.210.3.0/24"), net.ParseIP("10.210.3.1"), nil,
			[]Route{{"10.210.3.0/24", "10.210.3.1"}}},
		{"odd prefix split", dst("10.210.0.0/23"), net.ParseIP("10.210.0.1"), []*net.IPNet{cidr("10.210.1.9/23")},
			[]Route{{"10.210.0.0/24", "10.210.0.1"}, {"10.210.1.0/24", "10.210.0.1"}}},
		{"IPv6 /64 via gateway is split into /65s", dst("fd00:210:3::/64"), net.ParseIP("fd00:210:3::1"), v6,
			[]Route{{"fd00:210:3::/65", "fd00:210:3::1"}, {"fd00:210:3:0:8000::/65", "fd00:210:3::1"}}},
		{"IPv6 own subnet on-link dropped", dst("fd00:210:3::/64"), nil, v6, nil},
		{"IPv4 route ignores IPv6 address", dst("10.210.3.0/24"), net.ParseIP("10.210.3.1"), v6,
			[]Route{{"10.210.3.0/24", "10.210.3.1"}}},
		{"host route equal to a /32 address with gateway kept", dst("10.210.3.7/32"), net.ParseIP("10.210.3.1"),
			[]*net.IPNet{cidr("10.210.3.7/32")}, []Route{{"10.210.3.7/32", "10.210.3.1"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := subnetSafeRoutes(tc.dst, tc.gw, tc.addrs)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("subnetSafeRoutes(%s, %v) = %+v, want %+v", tc.dst, tc.gw, got, tc.want)
			}
		})
	}
}
