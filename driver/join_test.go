package driver

import (
	"strings"
	"testing"

	"github.com/cniplug/cniplug/cnibridge"
)

func TestInsideRoutes(t *testing.T) {
	addrs := []string{"10.1.0.5/24", "fd00:1::5/64"}
	routes := []cnibridge.Route{
		{Destination: "0.0.0.0/0", NextHop: "10.1.0.1"},
		{Destination: "10.1.0.0/25", NextHop: "10.1.0.1"},
		{Destination: "10.1.0.128/25", NextHop: "10.1.0.1"},
		{Destination: "10.1.0.1/32"},
		{Destination: "10.0.0.0/8", NextHop: "10.1.0.1"},
		{Destination: "192.168.0.0/16", NextHop: "10.1.0.1"},
		{Destination: "fd00:1::/64"},
		{Destination: "::/0", NextHop: "fd00:1::1"},
	}
	got := insideRoutes(routes, addrs)
	var dsts []string
	for _, r := range got {
		dsts = append(dsts, r.Destination)
	}
	if want := "10.1.0.0/25 10.1.0.128/25 10.1.0.1/32 fd00:1::/64"; strings.Join(dsts, " ") != want {
		t.Errorf("kept %v, want %s", dsts, want)
	}
}
