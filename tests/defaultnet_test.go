package tests

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// defaultCNINetwork is the bundled default network (packaging/cni/10-cniplug.conflist).
const defaultCNINetwork = "cniplug"

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

// TestDefaultNetwork: with the bundled default network configured (the managed plugin's default), networks
// need no --opt. With Docker's IPAM the bundled conflist takes the pool Docker chose, on a bridge of the
// network's own that goes with it; with cniplug's IPAM it uses its own range.
func TestDefaultNetwork(t *testing.T) {
	requireSuite(t)
	hadBridge := linkExists("cniplug0")
	t.Cleanup(func() {
		if !hadBridge {
			_ = exec.Command("ip", "link", "del", "cniplug0").Run()
		}
		testutil.RemoveHostLocalBookkeeping(defaultCNINetwork)
	})
	setPluginEnv(t, "CNIPLUG_DEFAULT_CNI_NETWORK", defaultCNINetwork)

	t.Run("no flags", func(t *testing.T) {
		name := testutil.UniqueName("dn")
		docker(t, "network", "create", "-d", driverName, name)
		removed := false
		t.Cleanup(func() {
			if !removed {
				_, _ = dockerErr("network", "rm", name)
			}
		})
		subnet := docker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", name)
		gateway := docker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", name)
		bridge := "cniplug" + docker(t, "network", "inspect", "-f", "{{.Id}}", name)[:8]
		_, pool, err := net.ParseCIDR(subnet)
		if err != nil {
			t.Fatalf("Docker's pool %q: %v", subnet, err)
		}
		a, b := runContainer(t, name), runContainer(t, name)
		epA, epB := inspectEndpoint(t, a, name), inspectEndpoint(t, b, name)
		for _, ep := range []endpoint{epA, epB} {
			if !pool.Contains(net.ParseIP(ep.IPAddress)) || ep.Gateway != gateway {
				t.Errorf("endpoint %s via %s, want an address of Docker's pool %s via %s", ep.IPAddress, ep.Gateway, subnet, gateway)
			}
			if !reservedByHostLocal(defaultCNINetwork, ep.IPAddress) {
				t.Errorf("%s is not reserved by host-local in CNI network %s", ep.IPAddress, defaultCNINetwork)
			}
		}
		if in := containerLink(t, a, epA.IPAddress); in.DefaultGateway != gateway {
			t.Errorf("container default route via %q, want %s", in.DefaultGateway, gateway)
		}
		ping(t, a, epB.IPAddress)
		ping(t, b, gateway)
		if !linkExists(bridge) {
			t.Errorf("no bridge %s for the network", bridge)
		}
		docker(t, "rm", "-f", a, b)
		docker(t, "network", "rm", name)
		removed = true
		if linkExists(bridge) {
			t.Errorf("bridge %s left after docker network rm", bridge)
			_ = exec.Command("ip", "link", "del", bridge).Run()
		}
	})

	t.Run("subnet and ip", func(t *testing.T) {
		name := testutil.UniqueName("dn")
		docker(t, "network", "create", "-d", driverName, "--subnet", "10.218.7.0/24", "--gateway", "10.218.7.254", name)
		t.Cleanup(func() { _, _ = dockerErr("network", "rm", name) })
		c := runContainer(t, name, "--ip", "10.218.7.50")
		if ep := inspectEndpoint(t, c, name); ep.IPAddress != "10.218.7.50" || ep.IPPrefixLen != 24 || ep.Gateway != "10.218.7.254" {
			t.Errorf("endpoint %s/%d via %s, want 10.218.7.50/24 via 10.218.7.254", ep.IPAddress, ep.IPPrefixLen, ep.Gateway)
		}
		ping(t, c, "10.218.7.254")
		docker(t, "rm", "-f", c)
	})

	t.Run("cniplug IPAM", func(t *testing.T) {
		name := testutil.UniqueName("dn")
		docker(t, "network", "create", "-d", driverName, "--ipam-driver", driverName, name)
		t.Cleanup(func() { _, _ = dockerErr("network", "rm", name) })
		if subnet := docker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", name); subnet != "0.0.0.0/0" {
			// Without --subnet cniplug reports 0.0.0.0/0 so libnetwork never checks
			// the CNI range against host routes (README, "CNI IPAM").
			t.Errorf("pool %s, want 0.0.0.0/0 (no --subnet given)", subnet)
		}
		c := runContainer(t, name)
		ep := inspectEndpoint(t, c, name)
		if !strings.HasPrefix(ep.IPAddress, "10.217.") || ep.Gateway != "10.217.0.1" {
			t.Errorf("endpoint %s via %s, want 10.217.0.0/16 via 10.217.0.1", ep.IPAddress, ep.Gateway)
		}
		ping(t, c, "10.217.0.1")
		docker(t, "rm", "-f", c)
	})
}
