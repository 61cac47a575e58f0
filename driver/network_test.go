package driver

import (
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
)

func TestCheckDockerPool(t *testing.T) {
	const (
		hostLocal = `{"cniVersion":"1.0.0","name":"hl","plugins":[{"type":"bridge","bridge":"br0",
			"ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.2.0/24"}]]}}]}`
		hostLocalGW = `{"cniVersion":"1.0.0","name":"hlgw","plugins":[{"type":"bridge","bridge":"br0",
			"ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.2.0/24","gateway":"10.1.2.254"}]]}}]}`
		legacySubnet = `{"cniVersion":"0.4.0","name":"legacy","type":"bridge","bridge":"br0",
			"ipam":{"type":"host-local","subnet":"10.3.0.0/16"}}`
		noGatewayIPAM = `{"cniVersion":"1.0.0","name":"custom","plugins":[{"type":"bridge",
			"ipam":{"type":"my-ipam","subnet":"10.4.0.0/24"}}]}`
		dualStack = `{"cniVersion":"1.0.0","name":"ds","plugins":[{"type":"bridge",
			"ipam":{"type":"host-local","ranges":[[{"subnet":"fd00:1::/64"}],[{"subnet":"10.5.0.0/24"}]]}}]}`
		dhcp   = `{"cniVersion":"1.0.0","name":"dh","plugins":[{"type":"macvlan","master":"eth0","ipam":{"type":"dhcp"}}]}`
		noIPAM = `{"cniVersion":"1.0.0","name":"bare","plugins":[{"type":"host-device","device":"eth1"}]}`
		// One host's slice of a subnet shared by several hosts (a vxlan or macvlan network across hosts).
		slice = `{"cniVersion":"1.0.0","name":"mh","plugins":[{"type":"bridge","bridge":"br0",
			"ipam":{"type":"host-local","ranges":[[{"subnet":"10.6.0.0/16","gateway":"10.6.2.1","rangeStart":"10.6.2.2","rangeEnd":"10.6.2.254"}]]}}]}`
		legacySlice = `{"cniVersion":"0.4.0","name":"mhl","type":"macvlan","master":"eth0",
			"ipam":{"type":"host-local","subnet":"10.7.0.0/24","rangeStart":"10.7.0.100"}}`
	)
	tests := []struct {
		name    string
		conf    string
		data    network.IPAMData
		v6      bool
		wantErr []string // substrings; nil = success
	}{
		{name: "match, host-local default gateway", conf: hostLocal,
			data: network.IPAMData{AddressSpace: "LocalDefault", Pool: "10.1.2.0/24", Gateway: "10.1.2.1/24"}},
		{name: "match, non-canonical pool", conf: hostLocal,
			data: network.IPAMData{Pool: "10.1.2.77/24", Gateway: "10.1.2.1/24"}},
		{name: "match, explicit conflist gateway", conf: hostLocalGW,
			data: network.IPAMData{Pool: "10.1.2.0/24", Gateway: "10.1.2.254/24"}},
		{name: "match, legacy subnet in a .conf", conf: legacySubnet,
			data: network.IPAMData{Pool: "10.3.0.0/16", Gateway: "10.3.0.1/16"}},
		{name: "match, IPAM without a gateway accepts any", conf: noGatewayIPAM,
			data: network.IPAMData{Pool: "10.4.0.0/24", Gateway: "10.4.0.99/24"}},
		{name: "match, IPv4 range after an IPv6 one", conf: dualStack,
			data: network.IPAMData{Pool: "10.5.0.0/24", Gateway: "10.5.0.1/24"}},
		{name: "match, IPv6", conf: dualStack, v6: true,
			data: network.IPAMData{Pool: "fd00:1::/64", Gateway: "fd00:1::1/64"}},

		{name: "wrong subnet", conf: hostLocal,
			data: network.IPAMData{Pool: "172.18.0.0/16", Gateway: "172.18.0.1/16"},
			wantErr: []string{`CNI network "hl" assigns IPv4 addresses from 10.1.2.0/24 (gateway 10.1.2.1)`,
				"Docker's IPAM chose 172.18.0.0/16 (gateway 172.18.0.1)",
				"create the network with --subnet 10.1.2.0/24 --gateway 10.1.2.1,",
				"--ipam-driver cniplug --ipam-opt cni=hl"}},
		{name: "right subnet, wrong gateway", conf: hostLocal,
			data:    network.IPAMData{Pool: "10.1.2.0/24", Gateway: "10.1.2.254/24"},
			wantErr: []string{"(gateway 10.1.2.254)", "--subnet 10.1.2.0/24 --gateway 10.1.2.1,"}},
		{name: "right subnet, Docker's default gateway vs the conflist's", conf: hostLocalGW,
			data:    network.IPAMData{Pool: "10.1.2.0/24", Gateway: "10.1.2.1/24"},
			wantErr: []string{"--subnet 10.1.2.0/24 --gateway 10.1.2.254,"}},
		{name: "right subnet, no gateway", conf: hostLocal,
			data:    network.IPAMData{Pool: "10.1.2.0/24"},
			wantErr: []string{"(gateway none)", "--subnet 10.1.2.0/24 --gateway 10.1.2.1,"}},
		{name: "wrong subnet, IPAM without a gateway: only --subnet", conf: noGatewayIPAM,
			data:    network.IPAMData{Pool: "10.9.0.0/24", Gateway: "10.9.0.1/24"},
			wantErr: []string{"(gateway none) but", "create the network with --subnet 10.4.0.0/24, or"}},
		{name: "wrong IPv6 subnet", conf: dualStack, v6: true,
			data:    network.IPAMData{Pool: "fd00:2::/64", Gateway: "fd00:2::1/64"},
			wantErr: []string{"assigns IPv6 addresses from fd00:1::/64", "--subnet fd00:1::/64 --gateway fd00:1::1"}},
		{name: "unparsable pool", conf: hostLocal,
			data:    network.IPAMData{Pool: "banana", Gateway: "10.1.2.1/24"},
			wantErr: []string{`unparsable IPv4 pool "banana"`}},
		{name: "no declared range (dhcp)", conf: dhcp,
			data: network.IPAMData{Pool: "172.18.0.0/16", Gateway: "172.18.0.1/16"},
			wantErr: []string{`CNI network "dh" declares no fixed IPv4 range (ipam type "dhcp")`,
				"--ipam-driver cniplug --ipam-opt cni=dh", "--ipam-driver null"}},
		{name: "no IPAM at all", conf: noIPAM,
			data:    network.IPAMData{Pool: "172.18.0.0/16", Gateway: "172.18.0.1/16"},
			wantErr: []string{`declares no fixed IPv4 range (ipam type "")`, "--ipam-driver cniplug --ipam-opt cni=bare"}},
		{name: "one host's slice of a shared subnet", conf: slice,
			data: network.IPAMData{Pool: "10.6.0.0/16", Gateway: "10.6.2.1/16"},
			wantErr: []string{`CNI network "mh" hands out only 10.6.2.2-10.6.2.254 of 10.6.0.0/16 on this host`,
				"the same on every host", "--ipam-driver cniplug --ipam-opt cni=mh", "--ipam-driver null"}},
		{name: "legacy subnet with rangeStart only", conf: legacySlice,
			data:    network.IPAMData{Pool: "10.7.0.0/24", Gateway: "10.7.0.1/24"},
			wantErr: []string{"hands out only 10.7.0.100- of 10.7.0.0/24"}},
		{name: "IPv4-only conflist asked for IPv6", conf: hostLocal, v6: true,
			data:    network.IPAMData{Pool: "fd00::/64", Gateway: "fd00::1/64"},
			wantErr: []string{"declares no fixed IPv6 range", "--ipam-driver cniplug --ipam-opt cni=hl"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nw := parseNet(t, tc.conf)
			data := tc.data
			err := checkDockerPool(nw, &data, tc.v6)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("checkDockerPool: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("checkDockerPool accepted pool %s gateway %s", tc.data.Pool, tc.data.Gateway)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\n does not contain %q", err, want)
				}
			}
		})
	}
}

func TestIsSwarmNetworkID(t *testing.T) {
	for id, want := range map[string]bool{
		"gs4tewlgb2cgenzkubclvng0r":                                        true, // swarmkit's identity.NewID
		"mtuhhcpqwd9orin9glza3ehbi":                                        true,
		"a9e9abed3df7016bddc0797f9d34bd303ac1ac99ada820c6248e1eba49a5a297": false, // a dockerd's own network
		"GS4TEWLGB2CGENZKUBCLVNG0R":                                        false,
		"gs4tewlgb2cgenzkubclvng0":                                         false,
		"":                                                                 false,
	} {
		if got := isSwarmNetworkID(id); got != want {
			t.Errorf("isSwarmNetworkID(%q) = %v, want %v", id, got, want)
		}
	}
}
