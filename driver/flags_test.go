package driver

import (
	"strings"
	"testing"

	"github.com/cniplug/cniplug/cnibridge"
)

// TestDockerFlags: Docker's own CreateNetwork flags are either honoured (internal) or refused (--ipv4=false),
// never accepted and ignored; the values arrive as JSON booleans (strings from some API clients).
func TestDockerFlags(t *testing.T) {
	for _, tc := range []struct {
		name         string
		options      map[string]any
		wantInternal bool
		wantErr      string
	}{
		{"none", map[string]any{}, false, ""},
		{"internal", map[string]any{internalOption: true}, true, ""},
		{"internal as string", map[string]any{internalOption: "true"}, true, ""},
		{"not internal", map[string]any{internalOption: false, enableIPv4Option: true}, false, ""},
		{"ipv4 off", map[string]any{enableIPv4Option: false}, false, "--ipv4=false is not supported"},
		{"garbage", map[string]any{internalOption: "maybe"}, false, "want true or false"},
		{"wrong type", map[string]any{internalOption: 1.0}, false, "want a boolean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			internal, err := dockerFlags(tc.options)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || internal != tc.wantInternal {
				t.Fatalf("got internal=%v err=%v, want internal=%v", internal, err, tc.wantInternal)
			}
		})
	}
}

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
