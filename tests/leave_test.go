package tests

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// TestLeaveKeepsLink: when the network is a container's only one, its link stays in the container's netns at
// Leave and is deleted there: it never passes through the host on the way out (Docker's move back and
// cniplug's move into staging saved), at stop as at disconnect, and the address is released. Disconnected
// while Docker's bridge stays in the container, the link is moved back to the host by Docker as before. A network connected again
// after a disconnect gets eth1 (libnetwork still counts eth0) and works.
func TestLeaveKeepsLink(t *testing.T) {
	requireSuite(t)
	if !pluginSeesContainerNetns() {
		t.Skip("the managed plugin does not see the container's netns here (the root mount does not propagate)")
	}
	n := bridgeNet(t)
	net := createNetwork(t, n, cniIPAM)
	dbr := testutil.UniqueName("dbr")
	docker(t, "network", "create", dbr)
	t.Cleanup(func() { _, _ = dockerErr("network", "rm", dbr) })
	cases := []struct {
		name       string
		alsoBridge bool // Docker's bridge in the container too
		leave      func(c string) []string
		wantHeld   bool
	}{
		{"stop", false, func(c string) []string { return []string{"stop", "-t", "0", c} }, true},
		{"disconnect", false, func(c string) []string { return []string{"network", "disconnect", net, c} }, true},
		{"disconnect with a second network", true, func(c string) []string { return []string{"network", "disconnect", net, c} }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := runContainer(t, net)
			if tc.alsoBridge {
				docker(t, "network", "connect", dbr, c)
			}
			ep := checkEndpoint(t, c, net, n)
			moved := hostLinksDuring(t, func() { docker(t, tc.leave(c)...) })
			if held := len(moved) == 0; held != tc.wantHeld {
				t.Errorf("link kept in the container at Leave: %v, want %v (links that came to the host: %v)", held, tc.wantHeld, moved)
			}
			if !releasedByHostLocal(n.Name, ep.IPAddress) {
				t.Errorf("%s still reserved after %s", ep.IPAddress, tc.name)
			}
			if tc.name != "disconnect" { // reconnect once
				return
			}
			docker(t, "network", "connect", net, c)
			again := checkEndpoint(t, c, net, n)
			if link := containerLink(t, c, again.IPAddress); link.Name != "eth1" {
				t.Errorf("reconnected as %s; libnetwork was expected to count eth0 as taken and name it eth1", link.Name)
			}
			ping(t, c, n.Gateway)
		})
	}
}

// hostLinksDuring runs fn and returns the cniplug links (named cnp...) that appeared in the host netns
// meanwhile, as `ip monitor` reports them.
func hostLinksDuring(t *testing.T, fn func()) []string {
	t.Helper()
	var out bytes.Buffer
	mon := exec.Command("ip", "-o", "monitor", "link")
	mon.Stdout = &out
	testutil.Must(t, mon.Start())
	time.Sleep(300 * time.Millisecond) // subscribed before fn acts
	fn()
	time.Sleep(500 * time.Millisecond) // libnetwork moves the link after Leave has answered
	_ = mon.Process.Kill()
	_ = mon.Wait()
	var links []string
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] != "Deleted" && strings.HasPrefix(f[1], "cnp") {
			links = append(links, strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"))
		}
	}
	return links
}
