package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// env is everything the benchmark creates on the host; cleanup removes all of it.
type env struct {
	repo    string
	tmp     string
	runID   string
	image   string
	verbose bool

	cniName  string // CNI network name (also Podman's network name)
	bridge   string // bridge device the CNI bridge plugin creates
	conflist string // path of the conflist file
	confDir  string

	driver      string // cniplug's driver name
	socket      string
	metricsAddr string
	plugin      *exec.Cmd
	pluginLog   string
	exits       *exitListener // taskstats exit records for the CPU split by process group (nil: not available)
	roots       roots         // dockerd, containerd, cniplug and the bench, for the CPU split

	cniplugNet string // Docker network on cniplug
	syncNet    string // the same on cniplug with --opt async-delete=false (CNI DEL inside DeleteEndpoint)
	directNet  string // the same with the speed-up option --opt direct-join=true
	// dockerDirectNet: on the same CNI network with Docker's IPAM (--subnet, --ip-range the upper half, clear
	// of host-local's allocations for the other networks) and --opt direct-join=true: ADD at Join, in place
	dockerDirectNet string
	warmNet         string // cniplug's IPAM with --ipam-opt warm-pool and --opt direct-join=true
	// masqNet: a conflist without ipMasq (masqConflist), cniplug's IPAM, --opt masquerade=true and direct join
	masqNet, masqConflist string
	// nftNet: a conflist with ipMasq and "ipMasqBackend": "nftables" (nftConflist), cniplug's IPAM and direct join
	nftNet, nftConflist string
	floorNet            string // Docker network on the veth-only floor driver (vethfloor.go)
	dockerBridge        string // Docker's own user-defined bridge network
	podman              *podman

	cleanups []func() error
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// onCleanup registers fn to run at cleanup, in reverse order of registration.
func (e *env) onCleanup(what string, fn func() error) {
	e.cleanups = append(e.cleanups, func() error {
		if err := fn(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
}

func (e *env) cleanup() error {
	var errs []error
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		if err := e.cleanups[i](); err != nil {
			errs = append(errs, err)
		}
	}
	e.cleanups = nil
	return errors.Join(errs...)
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// run runs a command and returns its trimmed combined output.
func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return strings.TrimSpace(string(out)), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return strings.TrimSpace(string(out)), nil
}

func docker(args ...string) (string, error) { return run("docker", args...) }

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

// writeConflist writes the bridge + host-local conflist every contender uses; host-local keeps its
// reservations in the benchmark's temp dir.
func (e *env) writeConflist(subnet string, ipMasq bool) error {
	e.confDir = filepath.Join(e.tmp, "net.d")
	if err := os.MkdirAll(e.confDir, 0o755); err != nil {
		return err
	}
	var err error
	e.conflist, err = e.writeChain(e.cniName, e.bridge, subnet, fmt.Sprintf("%q:%t", "ipMasq", ipMasq))
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

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startPlugin runs bin/cniplug as a v1 plugin with its metrics (and pprof) on a loopback port.
func (e *env) startPlugin() error {
	var err error
	if e.metricsAddr, err = freePort(); err != nil {
		return err
	}
	e.socket = "/run/docker/plugins/" + e.driver + ".sock"
	e.pluginLog = filepath.Join(e.tmp, "cniplug.log")
	logf, err := os.Create(e.pluginLog)
	if err != nil {
		return err
	}
	e.plugin = exec.Command(filepath.Join(e.repo, "bin", "cniplug"),
		"--socket", e.socket,
		"--cni-conf-dir", e.confDir,
		"--cni-bin-dir", filepath.Join(e.repo, "bin", "cni"),
		"--state-dir", filepath.Join(e.tmp, "state"),
		"--cni-cache-dir", filepath.Join(e.tmp, "cni-cache"),
		"--metrics-listen", e.metricsAddr, "--pprof",
		"--reconcile-interval", "0", // nothing periodic competing with the measurements
		"--log-level", "info")
	e.plugin.Stdout, e.plugin.Stderr = logf, logf
	e.plugin.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := e.plugin.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting cniplug: %w", err)
	}
	logf.Close()
	e.onCleanup("stopping cniplug", func() error {
		_ = e.plugin.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- e.plugin.Wait() }()
		select {
		case <-done:
		case <-time.After(90 * time.Second):
			_ = e.plugin.Process.Kill()
			<-done
		}
		_ = os.Remove(e.socket)
		return nil
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + e.metricsAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(e.pluginLog)
			return fmt.Errorf("cniplug did not become healthy; log:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// createNetworks creates the Docker network on cniplug (CNI IPAM, as the README recommends, default options),
// a second one without the default background DEL (--opt async-delete=false), a third with the speed-up
// option (--opt direct-join=true) and a fourth with Docker's IPAM and direct join on the same CNI network
// (cniSubnet), a fifth with a warm pool and direct join, and Docker's own user-defined bridge network.
func (e *env) createNetworks(bridgeSubnet, cniSubnet string) error {
	e.cniplugNet = "cnibench-" + e.runID
	e.syncNet = "cnibenchsync-" + e.runID
	e.directNet = "cnibenchdirect-" + e.runID
	e.dockerDirectNet = "cnibenchdd-" + e.runID
	e.warmNet = "cnibenchwarm-" + e.runID
	dockerIPAM, err := dockerIPAMArgs(cniSubnet)
	if err != nil {
		return err
	}
	cniIPAM := []string{"--ipam-driver", e.driver, "--ipam-opt", "cni=" + e.cniName}
	for _, n := range []struct {
		name  string
		extra []string
	}{{e.cniplugNet, cniIPAM}, {e.syncNet, append([]string{"--opt", "async-delete=false"}, cniIPAM...)},
		{e.directNet, append([]string{"--opt", "direct-join=true"}, cniIPAM...)},
		{e.dockerDirectNet, append([]string{"--opt", "direct-join=true"}, dockerIPAM...)},
		{e.warmNet, append([]string{"--opt", "direct-join=true", "--ipam-opt", fmt.Sprintf("warm-pool=%d", warmPoolSize)}, cniIPAM...)}} {
		args := append([]string{"network", "create", "-d", e.driver, "--opt", "cni=" + e.cniName}, n.extra...)
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

// dockerIPAMArgs are the docker network create flags of Docker's IPAM on the conflist's subnet: the bridge
// plugin's gateway (the first address), and addresses from the upper half, clear of host-local's allocations
// (for the other Docker networks on the conflist, and raw libcni) from the bottom.
func dockerIPAMArgs(subnet string) ([]string, error) {
	_, sub, err := net.ParseCIDR(subnet)
	if err != nil {
		return nil, err
	}
	ones, _ := sub.Mask.Size()
	upper := &net.IPNet{IP: append(net.IP(nil), sub.IP.To4()...), Mask: net.CIDRMask(ones+1, 32)}
	upper.IP[ones/8] |= 0x80 >> (ones % 8)
	gateway := append(net.IP(nil), sub.IP.To4()...)
	gateway[3]++
	return []string{"--subnet", subnet, "--gateway", gateway.String(), "--ip-range", upper.String()}, nil
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
// (cniplug's IPAM and --opt direct-join=true, so that they compare with it one to one; Docker's IPAM with
// direct join, cheaper in sequence, fails under parallel lifecycles): on the conflist without ipMasq with
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

// rss is the plugin's resident set size in bytes (VmRSS).
func (e *env) rss() (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.plugin.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS in /proc/<pid>/status")
}

// cpuTimes is CPU time in seconds, read from /proc: the whole machine's busy time, and the plugin's own with
// that of the processes it ran and waited for (the CNI plugins and the iptables commands they run).
type cpuTimes struct {
	machine, plugin float64
}

// clockTicks is USER_HZ, the unit of /proc's CPU times (100 on every Linux architecture Go builds for here).
const clockTicks = 100

func (e *env) cpuTimes() (cpuTimes, error) {
	var c cpuTimes
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return c, err
	}
	// cpu  user nice system idle iowait irq softirq steal ...: all but idle and iowait is busy.
	f := strings.Fields(strings.SplitN(string(stat), "\n", 2)[0])
	if len(f) < 9 || f[0] != "cpu" {
		return c, errors.New("unexpected /proc/stat")
	}
	for i, v := range f[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return c, fmt.Errorf("/proc/stat: %w", err)
		}
		c.machine += n / clockTicks
	}
	ps, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", e.plugin.Process.Pid))
	if err != nil {
		return c, err
	}
	// After "(comm) ": state is the first field; utime, stime, cutime and cstime the 12th to 15th.
	rest := string(ps)
	rest = rest[strings.LastIndexByte(rest, ')')+1:]
	pf := strings.Fields(rest)
	if len(pf) < 15 {
		return c, errors.New("unexpected /proc/<pid>/stat")
	}
	for _, v := range pf[11:15] {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return c, fmt.Errorf("/proc/<pid>/stat: %w", err)
		}
		c.plugin += n / clockTicks
	}
	return c, nil
}

// cpuProfile takes a CPU profile of the plugin for d (pprof on the metrics listener) into path.
func (e *env) cpuProfile(ctx context.Context, d time.Duration, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", e.metricsAddr, int(d.Seconds())), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.ReadFrom(resp.Body)
	return err
}
