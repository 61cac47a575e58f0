package cniconf

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const defaultConflist = `{"cniVersion":"1.0.0","name":"cniplug","cniplug":{"adoptDockerPool":true},"plugins":[
 {"type":"bridge","bridge":"cniplug0","isGateway":true,"ipMasq":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.217.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}]}},
 {"type":"portmap","capabilities":{"portMappings":true}},
 {"type":"firewall"}]}`

func conf(name, subnet string) string {
	return `{"cniVersion":"1.0.0","name":"` + name + `","plugins":[{"type":"bridge","ipam":{"type":"host-local","subnet":"` + subnet + `"}}]}`
}

func parse(t *testing.T, s string) *cnibridge.Network {
	t.Helper()
	nw, err := cnibridge.ParseNetwork([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return nw
}

func TestAdoptDockerPool(t *testing.T) {
	const netID = "0123456789abcdef0123"
	def := parse(t, defaultConflist)

	got, err := AdoptDockerPool(def, netID, "172.18.0.0/16", "172.18.0.1/16")
	if err != nil {
		t.Fatal(err)
	}
	r := got.FirstRange(false)
	if r == nil || r.Subnet.String() != "172.18.0.0/16" || r.Gateway.String() != "172.18.0.1" {
		t.Fatalf("adopted range %+v, want 172.18.0.0/16 via 172.18.0.1", r)
	}
	var doc struct {
		Name    string
		Cniplug marker
		Plugins []map[string]any
	}
	if err := json.Unmarshal(got.Bytes, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Name != "cniplug" || doc.Plugins[0]["bridge"] != "cniplug01234567" || len(doc.Plugins) != 3 {
		t.Errorf("adopted conflist: %s", got.Bytes)
	}
	if doc.Cniplug.AdoptedBy != netID || doc.Cniplug.Bridge != "cniplug01234567" || doc.Cniplug.AdoptDockerPool {
		t.Errorf("adopted marker %+v", doc.Cniplug)
	}
	if len(BridgeName(netID)) > 15 {
		t.Errorf("bridge name %q longer than an interface name may be", BridgeName(netID))
	}
	// The copy must not adopt again (it is recorded, and recorded conflists are re-parsed).
	if again, err := AdoptDockerPool(got, "other", "172.19.0.0/16", "172.19.0.1"); err != nil || again != got {
		t.Errorf("an adopted copy was adopted again: %v", err)
	}

	// Docker's pool equal to the declared range: the conflist as it is (its own bridge, cniplug0).
	if same, err := AdoptDockerPool(def, netID, "10.217.0.0/16", "10.217.0.1/16"); err != nil || same != def {
		t.Errorf("matching pool changed the conflist: %v", err)
	}
	// Conflists that do not opt in are never changed.
	plain := parse(t, conf("plain", "10.9.0.0/24"))
	if same, err := AdoptDockerPool(plain, netID, "172.18.0.0/16", "172.18.0.1"); err != nil || same != plain {
		t.Errorf("a conflist without the marker was changed: %v", err)
	}
	// Opting in without host-local IPAM is a configuration error, said so.
	dhcp := parse(t, `{"cniVersion":"1.0.0","name":"d","cniplug":{"adoptDockerPool":true},"plugins":[{"type":"bridge","ipam":{"type":"dhcp"}}]}`)
	if _, err := AdoptDockerPool(dhcp, netID, "172.18.0.0/16", ""); err == nil || !strings.Contains(err.Error(), "no host-local") {
		t.Errorf("dhcp: %v", err)
	}
}

// TestRemoveAdopted runs in a network namespace of its own: it creates and removes a bridge.
func TestRemoveAdopted(t *testing.T) {
	testutil.RequireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = netns.Set(orig)
		ns.Close()
	}()

	const netID = "feedfacecafe0000"
	adopted, err := AdoptDockerPool(parse(t, defaultConflist), netID, "172.30.0.0/16", "172.30.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := RemoveAdopted(adopted.Bytes); err != nil {
		t.Errorf("no bridge yet: %v", err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName(netID)}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := RemoveAdopted([]byte(defaultConflist)); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(BridgeName(netID)); err != nil {
		t.Fatalf("a conflist that adopted nothing removed the bridge: %v", err)
	}
	if err := RemoveAdopted(adopted.Bytes); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(BridgeName(netID)); err == nil {
		t.Errorf("bridge %s still exists", BridgeName(netID))
	}
}
