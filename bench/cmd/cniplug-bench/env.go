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
	// dockerDirectNet: on the same chain with a bridge and subnet of its own, with Docker's IPAM (--subnet) and
	// --opt direct-join=true: ADD at Join, in place
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
