package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// freeSubnet returns the first candidate /16 that no host route or address overlaps.
func freeSubnet(candidates ...string) (string, error) {
	out, err := run("ip", "-4", "route", "show", "table", "all")
	if err != nil {
		return "", err
	}
	addrs, err := run("ip", "-4", "-o", "addr", "show")
	if err != nil {
		return "", err
	}
	var used []*net.IPNet
	for _, f := range strings.Fields(out + " " + addrs) {
		if _, n, err := net.ParseCIDR(f); err == nil && !n.IP.IsUnspecified() {
			used = append(used, n)
		}
	}
	for _, c := range candidates {
		_, cn, _ := net.ParseCIDR(c)
		clash := false
		for _, u := range used {
			if u.Contains(cn.IP) || cn.Contains(u.IP) {
				clash = true
			}
		}
		if !clash {
			return c, nil
		}
	}
	return "", fmt.Errorf("none of %v is free on this host", candidates)
}

// writeConflist writes the bridge + host-local conflist every contender uses, and the same chain on a bridge
// and subnet of its own (dockerIPAMSubnet) for the Docker-IPAM kind; host-local keeps its reservations in the
// benchmark's temp dir. Docker's IPAM gets a range of its own because host-local continues after the last
// address anyone reserved in its range, Docker's requested ones included: on one shared range the two
// allocators soon hand out the same address.
func (e *env) writeConflist(subnet, dockerIPAMSubnet string, ipMasq bool) error {
	e.confDir = filepath.Join(e.tmp, "net.d")
	if err := os.MkdirAll(e.confDir, 0o755); err != nil {
		return err
	}
	masq := fmt.Sprintf("%q:%t", "ipMasq", ipMasq)
	var err error
	if e.conflist, err = e.writeChain(e.cniName, e.bridge, subnet, masq); err != nil {
		return err
	}
	_, err = e.writeChain(e.cniName+"d", e.bridge+"d", dockerIPAMSubnet, masq)
	return err
}

// writeChain writes a bridge + host-local conflist named name on its own bridge device into the conf dir,
// with masq the bridge plugin's masquerade keys, and returns its path.
func (e *env) writeChain(name, bridge, subnet, masq string) (string, error) {
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[
  {"type":"bridge","bridge":%q,"isGateway":true,%s,
   "ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"}]}}]}
`, name, bridge, masq, filepath.Join(e.tmp, "host-local"), subnet)
	path := filepath.Join(e.confDir, name+".conflist")
	e.onCleanup("removing bridge "+bridge, func() error {
		if _, err := run("ip", "link", "show", bridge); err != nil {
			return nil
		}
		_, err := run("ip", "link", "del", bridge)
		return err
	})
	return path, os.WriteFile(path, []byte(conf), 0o644)
}

// createNetworks creates the Docker network on cniplug (CNI IPAM, as the README recommends, default options),
// a second one without the default background DEL (--opt async-delete=false), a third with the speed-up
// option (--opt direct-join=true), a fourth with Docker's IPAM and direct join on the same chain with a
// subnet of its own (dockerIPAMSubnet, see writeConflist), a fifth with a warm pool and direct join, and
// Docker's own user-defined bridge network.
func (e *env) createNetworks(bridgeSubnet, dockerIPAMSubnet string) error {
	e.cniplugNet = "cnibench-" + e.runID
	e.syncNet = "cnibenchsync-" + e.runID
	e.directNet = "cnibenchdirect-" + e.runID
	e.dockerDirectNet = "cnibenchdd-" + e.runID
	e.warmNet = "cnibenchwarm-" + e.runID
	dockerIPAM, err := dockerIPAMArgs(dockerIPAMSubnet)
	if err != nil {
		return err
	}
	cniIPAM := []string{"--ipam-driver", e.driver, "--ipam-opt", "cni=" + e.cniName}
	for _, n := range []struct {
		name, cni string
		extra     []string
	}{{e.cniplugNet, e.cniName, cniIPAM}, {e.syncNet, e.cniName, append([]string{"--opt", "async-delete=false"}, cniIPAM...)},
		{e.directNet, e.cniName, append([]string{"--opt", "direct-join=true"}, cniIPAM...)},
		{e.dockerDirectNet, e.cniName + "d", append([]string{"--opt", "direct-join=true"}, dockerIPAM...)},
		{e.warmNet, e.cniName, append([]string{"--opt", "direct-join=true", "--ipam-opt", fmt.Sprintf("warm-pool=%d", warmPoolSize)}, cniIPAM...)}} {
		args := append([]string{"network", "create", "-d", e.driver, "--opt", "cni=" + n.cni}, n.extra...)
		args = append(args, n.name)
		if _, err := docker(args...); err != nil {
			return err
		}
		name := n.name
		e.onCleanup("removing Docker network "+name, func() error {
			_, err := docker("network", "rm", name)
			return err
		})
	}
	e.dockerBridge = "brbench-" + e.runID
	if _, err := docker("network", "create", "--subnet", bridgeSubnet, e.dockerBridge); err != nil {
		return err
	}
	e.onCleanup("removing Docker network "+e.dockerBridge, func() error {
		_, err := docker("network", "rm", e.dockerBridge)
		return err
	})
	// Whatever a failed run left running is removed before the networks.
	e.onCleanup("removing benchmark containers", func() error {
		ids, err := docker("ps", "-aq", "--filter", "label=cniplug-bench="+e.runID)
		if err != nil || ids == "" {
			return err
		}
		_, err = docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
		return err
	})
	return nil
}

// dockerIPAMArgs are the docker network create flags of Docker's IPAM on the subnet of its conflist: the
// bridge plugin's gateway (the first address).
func dockerIPAMArgs(subnet string) ([]string, error) {
	_, sub, err := net.ParseCIDR(subnet)
	if err != nil {
		return nil, err
	}
	gateway := append(net.IP(nil), sub.IP.To4()...)
	gateway[3]++
	return []string{"--subnet", subnet, "--gateway", gateway.String()}, nil
}

// writeMasqConflists writes the two conflists of the masquerade comparison next to the main one: without
// ipMasq (for cniplug's network-level --opt masquerade=true), and with ipMasq on the bridge plugin's nftables
// backend. Before the plugin starts, which reads the conf dir.
func (e *env) writeMasqConflists(masqSubnet, nftSubnet string) error {
	var err error
	if e.masqConflist, err = e.writeChain(e.cniName+"m", e.bridge+"m", masqSubnet, `"ipMasq":false`); err != nil {
		return err
	}
	e.nftConflist, err = e.writeChain(e.cniName+"n", e.bridge+"n", nftSubnet, `"ipMasq":true,"ipMasqBackend":"nftables"`)
	return err
}

// createMasqNetworks creates the Docker networks of the masquerade comparison, both like the direct-join kind
// (cniplug's IPAM and --opt direct-join=true, so that they compare with it one to one): on the conflist
// without ipMasq with
// --opt masquerade=true, and on the nftables-ipMasq one.
func (e *env) createMasqNetworks() error {
	e.masqNet = "cnibenchmasq-" + e.runID
	e.nftNet = "cnibenchnft-" + e.runID
	for _, n := range []struct{ name, cni, masq string }{{e.masqNet, e.cniName + "m", "true"}, {e.nftNet, e.cniName + "n", "false"}} {
		args := []string{"network", "create", "-d", e.driver, "--opt", "cni=" + n.cni, "--opt", "direct-join=true", "--opt", "masquerade=" + n.masq,
			"--ipam-driver", e.driver, "--ipam-opt", "cni=" + n.cni}
		if _, err := docker(append(args, n.name)...); err != nil {
			return err
		}
		name := n.name
		e.onCleanup("removing Docker network "+name, func() error {
			_, err := docker("network", "rm", name)
			return err
		})
	}
	return nil
}

// createFloorNetwork serves the veth-only floor driver and creates a Docker network on it (Docker's IPAM).
func (e *env) createFloorNetwork(subnet string) error {
	driver := "cnibench-vethfloor-" + e.runID
	if err := e.startVethFloor(driver); err != nil {
		return err
	}
	e.floorNet = "vethfloor-" + e.runID
	if _, err := docker("network", "create", "-d", driver, "--subnet", subnet, e.floorNet); err != nil {
		return err
	}
	e.onCleanup("removing Docker network "+e.floorNet, func() error {
		_, err := docker("network", "rm", e.floorNet)
		return err
	})
	return nil
}
