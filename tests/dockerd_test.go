package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// dockerdCmdline returns the running dockerd's pid and command line, or skips when dockerd is managed in a
// way these tests cannot restart (systemd).
func dockerdCmdline(t *testing.T) (int, []string) {
	t.Helper()
	pid, argv, _ := dockerdProcess(t)
	return pid, argv
}

// dockerdProcess returns the running dockerd's pid, command line and environment. The environment matters:
// the current engine finds its containerd, runc and docker-proxy through PATH (scripts/engine.sh).
func dockerdProcess(t *testing.T) (int, []string, []string) {
	t.Helper()
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		t.Skip("skipping: dockerd is managed by systemd here; these tests restart a dockerd started by scripts/setup.sh")
	}
	out, err := exec.Command("pidof", "dockerd").Output()
	if err != nil {
		t.Skip("skipping: no dockerd process found")
	}
	pids := strings.Fields(string(out))
	if len(pids) != 1 {
		t.Skipf("skipping: %d dockerd processes", len(pids))
	}
	raw, err := os.ReadFile("/proc/" + pids[0] + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(pids[0])
	if err != nil {
		t.Fatal(err)
	}
	environ, err := os.ReadFile("/proc/" + pids[0] + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	return pid, strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00"),
		strings.Split(strings.TrimRight(string(environ), "\x00"), "\x00")
}

// restartDockerd stops dockerd (SIGTERM, or SIGKILL to simulate a crash), runs between() while it is down,
// and starts it again with the same command line plus or minus --live-restore.
func restartDockerd(t *testing.T, sig syscall.Signal, liveRestore bool, between func()) {
	t.Helper()
	pid, argv, environ := dockerdProcess(t)
	var args []string
	for _, a := range argv[1:] {
		if a != "--live-restore" {
			args = append(args, a)
		}
	}
	if liveRestore {
		args = append(args, "--live-restore")
	}
	_ = syscall.Kill(pid, sig)
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			break
		}
	}
	if between != nil {
		between()
	}
	logf, err := os.OpenFile("/var/log/cniplug-dockerd.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	// dockerd outlives this test binary: it must not inherit descriptors such as the test-run lock.
	closeInheritedFDs()
	cmd := exec.Command(argv[0], args...)
	cmd.Env = environ
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlive the test binary
	if err := cmd.Start(); err != nil {
		t.Fatalf("restarting dockerd: %v", err)
	}
	go func() { _ = cmd.Wait() }()
	waitFor(t, 60*time.Second, "dockerd to answer", func() bool {
		return exec.Command("docker", "info").Run() == nil
	})
}

// restartDockerdAsIs restarts dockerd with the command line it runs with.
func restartDockerdAsIs(t *testing.T) {
	t.Helper()
	restartDockerd(t, syscall.SIGTERM, liveRestoring(t), nil)
}

// restoreDockerd puts dockerd back without --live-restore when a test switched it on.
func restoreDockerd(t *testing.T) {
	if liveRestoring(t) {
		restartDockerd(t, syscall.SIGTERM, false, nil)
	}
}

// liveRestoring reports whether the running dockerd was started with --live-restore.
func liveRestoring(t *testing.T) bool {
	_, argv := dockerdCmdline(t)
	return slices.Contains(argv, "--live-restore")
}

func reservations(cniName string) []string {
	m, _ := filepath.Glob(filepath.Join(testutil.CNIDataDir, "networks", cniName, "10.*"))
	return m
}

// TestDockerdRestartLiveRestore: with live-restore, containers keep running through a dockerd restart and
// keep their CNI networking; removing them afterwards still cleans up.
func TestDockerdRestartLiveRestore(t *testing.T) {
	requireSuite(t)
	dockerdCmdline(t)
	restartDockerd(t, syscall.SIGTERM, true, nil)
	t.Cleanup(func() { restoreDockerd(t) })
	n := bridgeNet(t)
	net := createNetwork(t, n, cniIPAM)
	c := runContainer(t, net)
	before := checkEndpoint(t, c, net, n)
	restartDockerd(t, syscall.SIGTERM, true, nil)
	after := checkEndpoint(t, c, net, n)
	if after.IPAddress != before.IPAddress || after.EndpointID != before.EndpointID {
		t.Errorf("endpoint changed across a live-restore restart: %+v -> %+v", before, after)
	}
	ping(t, c, n.Gateway)
	if r := reservations(n.Name); len(r) != 1 {
		t.Errorf("want 1 reservation, have %v", r)
	}
}

// TestDockerdRestartRestartPolicy: a clean dockerd stop/start brings --restart=always containers back with
// working CNI networking and no stale attachment.
func TestDockerdRestartRestartPolicy(t *testing.T) {
	requireSuite(t)
	dockerdCmdline(t)
	n := bridgeNet(t)
	net := createNetwork(t, n, cniIPAM)
	c := runContainer(t, net, "--restart=always")
	checkEndpoint(t, c, net, n)
	restartDockerd(t, syscall.SIGTERM, false, nil)
	waitFor(t, 30*time.Second, "the container to be restarted", func() bool {
		out, _ := dockerErr("inspect", "-f", "{{.State.Running}}", c)
		return out == "true"
	})
	checkEndpoint(t, c, net, n)
	ping(t, c, n.Gateway)
	if r := reservations(n.Name); len(r) != 1 {
		t.Errorf("want 1 reservation after restart, have %v", r)
	}
}

// TestSimulatedReboot: dockerd, the container and cniplug die and every namespace and CNI link is lost, but
// the disks (cniplug state, host-local reservations, libcni cache) stay. After both start again the
// restart-policy container is networked and everything from before the "reboot" is released.
func TestSimulatedReboot(t *testing.T) {
	requireSuite(t)
	dockerdCmdline(t)
	n := bridgeNet(t)
	net := createNetwork(t, n, cniIPAM)
	c := runContainer(t, net, "--restart=always")
	old := checkEndpoint(t, c, net, n)
	pid := docker(t, "inspect", "-f", "{{.State.Pid}}", c)
	sandbox := docker(t, "inspect", "-f", "{{.NetworkSettings.SandboxKey}}", c)
	bridge := ""
	if m, _ := filepath.Glob("/sys/class/net/e2ebr*"); len(m) > 0 {
		for _, p := range m {
			bridge = filepath.Base(p)
		}
	}
	restartDockerd(t, syscall.SIGKILL, false, func() {
		// A reboot kills every process: the container, its shim, containerd and cniplug.
		_ = exec.Command("kill", "-9", pid).Run()
		stopPluginWith(syscall.SIGKILL)
		_ = exec.Command("pkill", "-9", "-f", "containerd-shim").Run()
		_ = exec.Command("pkill", "-9", "-x", "containerd").Run()
		waitFor(t, 20*time.Second, "containerd to exit", func() bool { return exec.Command("pidof", "containerd").Run() != nil })
		// A reboot empties /run: a stale containerd.pid whose number a new process reused (pid_max can be
		// 32768) makes dockerd wait for that "containerd" and give up instead of starting its own.
		_ = os.Remove("/var/run/docker/containerd/containerd.pid")
		// And every network namespace with the links in it, and the CNI bridge.
		_ = syscall.Unmount(sandbox, syscall.MNT_DETACH)
		_ = os.Remove(sandbox)
		staging, _ := filepath.Glob("/run/netns/cniplug-*")
		for _, s := range staging {
			_ = syscall.Unmount(s, syscall.MNT_DETACH)
			_ = os.Remove(s)
		}
		if bridge != "" {
			_ = exec.Command("ip", "link", "del", bridge).Run()
		}
		if err := startPlugin(); err != nil {
			t.Error(err)
		}
	})
	waitFor(t, 60*time.Second, "the container to be restarted", func() bool {
		out, _ := dockerErr("inspect", "-f", "{{.State.Running}}", c)
		return out == "true"
	})
	checkEndpoint(t, c, net, n)
	ping(t, c, n.Gateway)
	waitFor(t, 30*time.Second, "the pre-reboot address "+old.IPAddress+" to be released", func() bool {
		return len(reservations(n.Name)) == 1
	})
}

// closeInheritedFDs marks every descriptor above stderr close-on-exec. Go does so for files it opens, but not
// for descriptors the test binary inherited (e.g. from flock).
func closeInheritedFDs() {
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, e := range entries {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
