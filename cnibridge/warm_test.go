package cnibridge

import (
	"strings"
	"testing"
)

func TestCheckWarmPool(t *testing.T) {
	const hostLocal = `"ipam":{"type":"host-local","ranges":[[{"subnet":"10.9.0.0/24"}]]}`
	conflist := func(plugins ...string) string {
		return `{"cniVersion":"1.0.0","name":"n","plugins":[` + strings.Join(plugins, ",") + `]}`
	}
	for _, tc := range []struct {
		name, conf, want string // want: "" when the pool is allowed, else part of the error
	}{
		{"bridge with host-local", conflist(`{"type":"bridge",` + hostLocal + `}`), ""},
		{"ptp with portmap, firewall, bandwidth, tuning", conflist(`{"type":"ptp",`+hostLocal+`}`, `{"type":"portmap","capabilities":{"portMappings":true}}`,
			`{"type":"firewall"}`, `{"type":"bandwidth"}`, `{"type":"tuning","sysctl":{"net.core.somaxconn":"500"}}`), ""},
		{"macvlan", conflist(`{"type":"macvlan","master":"eth0",` + hostLocal + `}`), `runs plugin "macvlan"`},
		{"calico", conflist(`{"type":"calico","ipam":{"type":"calico-ipam"}}`), `runs plugin "calico"`},
		{"bridge with dhcp", conflist(`{"type":"bridge","ipam":{"type":"dhcp"}}`), `with "dhcp" IPAM`},
		{"bridge with static", conflist(`{"type":"bridge","ipam":{"type":"static","addresses":[{"address":"10.9.0.5/24"}]}}`), `with "static" IPAM`},
		{"bridge without IPAM", conflist(`{"type":"bridge"}`), "has no IPAM plugin"},
		{"tuning sets the MAC", conflist(`{"type":"bridge",`+hostLocal+`}`, `{"type":"tuning","mac":"02:00:00:00:00:01"}`), "sets the MAC with tuning"},
		{"mac capability", conflist(`{"type":"bridge",`+hostLocal+`}`, `{"type":"tuning","capabilities":{"mac":true}}`), `("mac")`},
		{"an unknown chained plugin", conflist(`{"type":"bridge",`+hostLocal+`}`, `{"type":"sbr"}`), `runs plugin "sbr"`},
		{"bridge chained after the main plugin", conflist(`{"type":"ptp",`+hostLocal+`}`, `{"type":"bridge"}`), `runs plugin "bridge"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw, err := ParseNetwork([]byte(tc.conf))
			if err != nil {
				t.Fatal(err)
			}
			err = nw.CheckWarmPool()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
