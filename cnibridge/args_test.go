package cnibridge

import (
	"reflect"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

func TestRequestArgs(t *testing.T) {
	const (
		noCaps = `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"host-local","subnet":"10.210.1.0/24"}}]}`
		ipsCap = `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"static"}, "capabilities":{"ips":true}}]}`
		macCap = `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"host-local","subnet":"10.210.1.0/24"}},{"type":"tuning","capabilities":{"mac":true}}]}`
		both   = `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"macvlan","capabilities":{"ips":true,"mac":true}}]}`
		off    = `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"macvlan","capabilities":{"ips":false,"mac":false}}]}`
		mac    = "02:42:0a:d2:01:05"
	)
	ignore := [2]string{"IgnoreUnknown", "1"}
	for _, tc := range []struct {
		name     string
		conf     string
		addrs    []string
		mac      string
		wantArgs [][2]string
		wantCaps map[string]any
	}{
		{"nothing requested", noCaps, nil, "", [][2]string{ignore}, nil},
		{"ip and mac as CNI_ARGS", noCaps, []string{"10.210.1.5/24"}, mac, [][2]string{ignore, {"IP", "10.210.1.5"}, {"MAC", mac}}, nil},
		{"only the first address fits CNI_ARGS", noCaps, []string{"fd00::5/64", "10.210.1.5/24"}, "", [][2]string{ignore, {"IP", "fd00::5"}}, nil},
		{"unparsable address dropped", noCaps, []string{"10.210.1.5"}, "", [][2]string{ignore}, nil},
		{"ips capability", ipsCap, []string{"10.210.1.5/24", "fd00::5/64"}, mac, [][2]string{ignore, {"MAC", mac}},
			map[string]any{"ips": []string{"10.210.1.5/24", "fd00::5/64"}}},
		{"mac capability", macCap, []string{"10.210.1.5/24"}, mac, [][2]string{ignore, {"IP", "10.210.1.5"}},
			map[string]any{"mac": mac}},
		{"both capabilities", both, []string{"10.210.1.5/24"}, mac, [][2]string{ignore},
			map[string]any{"ips": []string{"10.210.1.5/24"}, "mac": mac}},
		{"capabilities declared false", off, []string{"10.210.1.5/24"}, mac, [][2]string{ignore, {"IP", "10.210.1.5"}, {"MAC", mac}}, nil},
		{"capability but nothing requested", both, nil, "", [][2]string{ignore}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw, err := ParseNetwork([]byte(tc.conf))
			testutil.Must(t, err)
			args, caps := RequestArgs(nw, tc.addrs, tc.mac)
			if !reflect.DeepEqual(args, tc.wantArgs) {
				t.Errorf("args = %v, want %v", args, tc.wantArgs)
			}
			if !reflect.DeepEqual(caps, tc.wantCaps) {
				t.Errorf("caps = %#v, want %#v", caps, tc.wantCaps)
			}
		})
	}
}

func TestWithContainerName(t *testing.T) {
	base := [][2]string{{"IgnoreUnknown", "1"}}
	for _, tc := range []struct {
		name string
		want [][2]string
	}{
		{"", base},
		{"web-1", append(append([][2]string{}, base...), [2]string{ContainerNameArg, "web-1"})},
		{"a;b", base}, // cannot be carried in CNI_ARGS
		{"a=b", base},
	} {
		got := WithContainerName(append([][2]string{}, base...), tc.name)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("WithContainerName(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
