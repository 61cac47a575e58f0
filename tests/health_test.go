package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// TestPluginHealth: a CNI plugin that reports itself not ready (CNI STATUS, spec 1.1) or that has gone away
// gives a clear error on `docker network create` and on `docker run`, naming the plugin, and leaves nothing.
func TestPluginHealth(t *testing.T) {
	requireSuite(t)
	plugin := testutil.UniqueName("e2e-st")
	flag := filepath.Join(env.testBinDir, plugin+".notready")
	// The misbehaving plugin under an e2e-st* name: STATUS fails while the flag exists next to it (a managed
	// plugin sees the bin dir under another path).
	if err := installMisbehaving(env.testBinDir, plugin); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(env.testBinDir, plugin)
	t.Cleanup(func() { os.Remove(path); os.Remove(flag) })

	subnet, gw, prefix := nextSubnet()
	n := cniNet{Name: testutil.UniqueName("e2est"), Subnet: subnet, Gateway: gw, Prefix: prefix}
	br := testutil.UniqueName("e2ebr")
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"%s","plugins":[
	  {"type":"bridge","bridge":"%s","isGateway":true,"ipMasq":true,
	   "ipam":{"type":"host-local","ranges":[[{"subnet":"%s"}]],"routes":[{"dst":"0.0.0.0/0"}]}},
	  {"type":"%s"}]}`, n.Name, br, subnet, plugin)
	confPath := testutil.WriteFile(t, env.confDir, n.Name+".conflist", conf)
	t.Cleanup(func() {
		os.Remove(confPath)
		_ = testutil.RunQuiet("ip", "link", "del", br)
		testutil.RemoveHostLocalBookkeeping(n.Name)
	})

	// Not ready at create time.
	testutil.WriteFile(t, env.testBinDir, plugin+".notready", "")
	name := testutil.UniqueName("dn")
	out, err := dockerErr("network", "create", "-d", driverName, "--opt", "cni="+n.Name, "--ipam-driver", "null", name)
	if err == nil {
		_, _ = dockerErr("network", "rm", name)
		t.Fatal("network create succeeded while the CNI plugin reports not ready")
	}
	if !strings.Contains(out, "backing daemon is down") || !strings.Contains(out, "CNI STATUS") {
		t.Errorf("create error does not carry the STATUS message:\n%s", out)
	}

	// Ready at create, not ready at run.
	os.Remove(flag)
	net := createNetwork(t, n, nullIPAM)
	c := runContainer(t, net)
	ping(t, c, n.Gateway)
	testutil.WriteFile(t, env.testBinDir, plugin+".notready", "")
	name = testutil.UniqueName("dc")
	t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
	if out, err := dockerErr("run", "-d", "--name", name, "--net", net, image, "sleep", "60"); err == nil {
		t.Error("docker run succeeded while the CNI plugin reports not ready")
	} else if !strings.Contains(out, "backing daemon is down") {
		t.Errorf("run error does not carry the STATUS message:\n%s", out)
	}
	_, _ = dockerErr("rm", "-f", name)

	// Plugin binary gone: the error names it and where it was looked for.
	os.Remove(flag)
	os.Remove(path)
	if out, err := dockerErr("run", "-d", "--name", name, "--net", net, image, "sleep", "60"); err == nil {
		t.Error("docker run succeeded with the CNI plugin binary removed")
	} else if !strings.Contains(out, plugin) {
		t.Errorf("run error does not name the missing plugin %s:\n%s", plugin, out)
	}
	_, _ = dockerErr("rm", "-f", name)
	// Removing the running container still works without the plugin binary? DEL runs the whole chain, so put
	// it back first: a missing plugin at DEL time is reported, not ignored.
	if err := installMisbehaving(env.testBinDir, plugin); err != nil {
		t.Fatal(err)
	}
}
