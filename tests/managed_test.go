package tests

// Managed mode (CNIPLUG_E2E_MODE=managed): the suite's cniplug is a managed Docker plugin, cniplug-e2e,
// created from a bundle that scripts/build-plugin.sh builds from this checkout; `docker plugin set` points
// its mounts at the suite's dirs. The tests in this file exercise what only a managed plugin has: disable
// and enable, upgrade, and push/install through a registry.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// mountSettings point the suite's plugin at the suite's dirs.
func mountSettings() []string {
	return []string{
		"cni-conf-dir.source=" + env.confDir,
		"cni-bin-dir.source=" + env.testBinDir,
		"state-dir.source=" + env.stateDir,
	}
}

// managedSettings are the suite plugin's settings: its dirs, and the v1 suite's flags.
func managedSettings() []string {
	return append(mountSettings(),
		"CNIPLUG_CNI_TIMEOUT="+cniTimeout.String(),
		"CNIPLUG_LOG_LEVEL=debug",
		"CNIPLUG_DEFAULT_CNI_NETWORK=", // as in v1 mode: every network names its CNI network
		"CNIPLUG_DRIVER_NAME="+pluginName,
		"CNIPLUG_RECONCILE_INTERVAL=2s",
		"args=--reconcile-min-age 3s",
	)
}

// prepareManaged builds the plugin bundle; "" when built, else why managed mode cannot run here.
func prepareManaged(tmp string) string {
	if out, err := exec.Command("docker", "plugin", "ls").CombinedOutput(); err != nil {
		return fmt.Sprintf("managed mode: `docker plugin ls` failed: %v: %s", err, out)
	}
	env.bundleDir = filepath.Join(tmp, "bundle")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, filepath.Join(testutil.RepoRoot(), "scripts", "build-plugin.sh"), "-o", env.bundleDir, "--no-create")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Sprintf("managed mode: cannot build the plugin with scripts/build-plugin.sh: %v: %s", err, lastLines(string(out), 15))
	}
	return ""
}

// createManaged creates the suite's plugin (disabled) from the bundle, pointed at the suite's dirs.
// scripts/build-plugin.sh has made /run/netns and /run/docker/netns shared mounts of their own.
func createManaged() error {
	// The plugin sees only its mounts: its bin dir gets the reference plugins next to the scripted ones.
	refs, _ := filepath.Glob(filepath.Join(env.cniBinDir, "*"))
	for _, f := range refs {
		data, err := os.ReadFile(f)
		if err == nil {
			err = os.WriteFile(filepath.Join(env.testBinDir, filepath.Base(f)), data, 0o755)
		}
		if err != nil {
			return fmt.Errorf("copying CNI plugins: %w", err)
		}
	}
	env.pluginBinDir = "/opt/cni/bin"
	if err := os.MkdirAll(env.stateDir, 0o700); err != nil {
		return err
	}
	removePlugin(pluginName) // left by an aborted run
	if err := createPlugin(pluginName, managedSettings()...); err != nil {
		return err
	}
	out, err := exec.Command("docker", "plugin", "inspect", "-f", "{{.Id}}", pluginName).Output()
	if err != nil {
		return fmt.Errorf("docker plugin inspect: %w", err)
	}
	env.pluginID = strings.TrimSpace(string(out))
	env.socket = filepath.Join("/run/docker/plugins", env.pluginID, "cniplug.sock") // its host side
	return nil
}

var createSeq int

// createPlugin runs `docker plugin create` for name from the suite's bundle and applies settings. Each
// plugin gets a rootfs differing in one file: dockerd 20.10 refuses to create a plugin whose rootfs is
// identical to an installed one's ("content ... already exists").
func createPlugin(name string, settings ...string) error {
	createSeq++
	mark := fmt.Sprintf("e2e %s %d %d\n", name, os.Getpid(), createSeq)
	if err := os.WriteFile(filepath.Join(env.bundleDir, "rootfs", "etc", "cniplug-e2e"), []byte(mark), 0o644); err != nil {
		return err
	}
	if out, err := exec.Command("docker", "plugin", "create", name, env.bundleDir).CombinedOutput(); err != nil {
		return fmt.Errorf("docker plugin create %s: %v: %s", name, err, out)
	}
	if len(settings) > 0 {
		if out, err := exec.Command("docker", append([]string{"plugin", "set", name}, settings...)...).CombinedOutput(); err != nil {
			removePlugin(name)
			return fmt.Errorf("docker plugin set %s: %v: %s", name, err, out)
		}
	}
	return nil
}

func removePlugin(name string) {
	_, _ = dockerErr("plugin", "disable", "-f", name)
	_, _ = dockerErr("plugin", "rm", "-f", name)
}

func dockerUp() bool { return exec.Command("docker", "info").Run() == nil }

// startManaged enables the suite's plugin (when dockerd is down: dockerd enables it itself when it starts)
// and waits until a fresh plugin process serves on the socket.
func startManaged() error {
	if !dockerUp() {
		return nil
	}
	if out, _ := dockerErr("plugin", "inspect", "-f", "{{.Enabled}}", pluginName); out != "true" {
		if out, err := dockerErr("plugin", "enable", pluginName); err != nil {
			return fmt.Errorf("docker plugin enable %s: %v: %s\n%s", pluginName, err, out, strings.Join(managedLog(20), "\n"))
		}
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if pid := managedPID(); pid != 0 && pid != killedPID && pluginServing() {
			waitReregistered()
			return nil
		}
	}
	return fmt.Errorf("plugin %s does not serve on its socket\n%s", pluginName, strings.Join(managedLog(20), "\n"))
}

// waitReregistered waits, after dockerd restarted a killed plugin, until dockerd has registered its network
// driver again (GetCapabilities to the new process). dockerd's remote driver keeps endpoints in memory and
// loses them when it re-registers: a container started before that can fail with dockerd's own "remote
// network driver: endpoint ... not found" between Join and ProgramExternalConnectivity.
func waitReregistered() {
	if killedAt.IsZero() {
		return
	}
	since := killedAt
	killedAt = time.Time{}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		for _, line := range managedLog(400) {
			if strings.Contains(line, "method=NetworkDriver.GetCapabilities") && pluginLineTime(line).After(since) {
				return
			}
		}
	}
}

// pluginLineTime is the plugin's own time= stamp in a line of its log as dockerd relays it.
func pluginLineTime(line string) time.Time {
	for _, f := range strings.Fields(line) {
		f = strings.Trim(f, `"\`)
		for _, prefix := range []string{`msg=time=`, `time=`} {
			if v, ok := strings.CutPrefix(f, prefix); ok {
				if t, err := time.Parse(time.RFC3339Nano, strings.Trim(v, `"\`)); err == nil && strings.Contains(v, ".") {
					return t
				}
			}
		}
	}
	return time.Time{}
}

// killedPID is the plugin process stopManaged killed: startManaged waits for another one, and for dockerd to
// register it (killedAt).
var (
	killedPID int
	killedAt  time.Time
)

// stopManaged: SIGKILL kills the plugin's process, which dockerd then restarts (a crash of a managed
// plugin); anything else disables the plugin (`docker plugin disable -f`: SIGTERM, and it stays down).
func stopManaged(sig syscall.Signal) {
	if sig != syscall.SIGKILL {
		if dockerUp() {
			_, _ = dockerErr("plugin", "disable", "-f", pluginName)
		}
		return
	}
	pid := managedPID()
	if pid == 0 {
		return
	}
	killedAt = time.Now()
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			break
		}
	}
	killedPID = pid
}

// removeManaged removes the suite's plugin and the big files of the run (the bundle, the plugin copies);
// the state dir stays, like the v1 suite's, for a look after a failure.
func removeManaged() {
	removePlugin(pluginName)
	if env.bundleDir != "" {
		_ = os.RemoveAll(env.bundleDir)
	}
	refs, _ := filepath.Glob(filepath.Join(env.cniBinDir, "*"))
	for _, f := range refs {
		_ = os.Remove(filepath.Join(env.testBinDir, filepath.Base(f)))
	}
}

// managedPID finds the suite plugin's cniplug process: the one whose root mount is the plugin's rootfs
// (<docker root>/plugins/<id>/rootfs; /proc/<pid>/root reads as "/" from another mount namespace).
func managedPID() int {
	suffix := "/plugins/" + env.pluginID + "/rootfs"
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		if comm, _ := os.ReadFile(p + "/comm"); strings.TrimSpace(string(comm)) != "cniplug" {
			continue
		}
		mounts, err := os.ReadFile(p + "/mountinfo")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(mounts), "\n") {
			if f := strings.Fields(line); len(f) > 4 && f[4] == "/" && strings.HasSuffix(f[3], suffix) {
				pid, _ := strconv.Atoi(filepath.Base(p))
				return pid
			}
		}
	}
	return 0
}

// pluginServing asks the plugin's socket (the host side of /run/docker/plugins) for its capabilities.
func pluginServing() bool {
	sock := env.socket
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	resp, err := c.Post("http://plugin/NetworkDriver.GetCapabilities", "application/json", strings.NewReader("{}"))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// managedLog returns the plugin's last n log lines: dockerd logs a managed plugin's output as its own
// lines tagged plugin=<id>, so they are read from dockerd's log file (its stderr), when it has one.
func managedLog(n int) []string {
	out, err := exec.Command("pidof", "dockerd").Output()
	if err != nil || env.pluginID == "" {
		return []string{"(no dockerd log to read)"}
	}
	path, err := os.Readlink("/proc/" + strings.Fields(string(out))[0] + "/fd/2")
	if err != nil {
		return []string{"(dockerd's stderr is not readable)"}
	}
	f, err := os.Open(path)
	if err != nil {
		return []string{fmt.Sprintf("(dockerd logs to %s: %v)", path, err)}
	}
	defer f.Close()
	const tail = 4 << 20
	if st, err := f.Stat(); err == nil && st.Size() > tail {
		_, _ = f.Seek(st.Size()-tail, io.SeekStart)
	}
	data, _ := io.ReadAll(f)
	var lines []string
	for _, l := range bytes.Split(data, []byte("\n")) {
		if bytes.Contains(l, []byte("plugin="+env.pluginID)) {
			lines = append(lines, string(l))
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// requireManaged skips tests of managed-plugin operations in v1 mode.
func requireManaged(t *testing.T) {
	t.Helper()
	if env.skipReason == "" && !env.managed {
		t.Skip("skipping managed-plugin test: the suite runs cniplug as a v1 plugin; CNIPLUG_E2E_MODE=managed runs it as a managed plugin (`make test` runs both)")
	}
	requireSuite(t)
}

// pluginChangeKeepsContainers runs two containers a and b, lets change stop the suite's plugin and alter it,
// starts it again and checks that the containers kept their network, that new ones join, and that all of them are torn
// down completely by the plugin as it is now.
func pluginChangeKeepsContainers(t *testing.T, change func(a string, epB endpoint)) {
	t.Helper()
	n := bridgeNet(t)
	net := createNetwork(t, n, cniIPAM)
	a, b := runContainer(t, net), runContainer(t, net)
	epA, epB := checkEndpoint(t, a, net, n), checkEndpoint(t, b, net, n)
	change(a, epB)
	if err := startPlugin(); err != nil {
		t.Fatal(err)
	}
	ping(t, a, epB.IPAddress)
	ping(t, b, n.Gateway)
	c := runContainer(t, net)
	checkEndpoint(t, c, net, n)
	ping(t, c, epA.IPAddress)
	docker(t, "rm", "-f", a, b, c)
	for _, ip := range []string{epA.IPAddress, epB.IPAddress} {
		if !releasedByHostLocal(n.Name, ip) {
			t.Errorf("%s still reserved after rm -f", ip)
		}
	}
}

// TestManagedDisableEnable: `docker plugin disable -f` leaves running containers connected (the data path
// needs no plugin), and after `enable` the same state serves: new containers join and the old ones are
// torn down completely.
func TestManagedDisableEnable(t *testing.T) {
	requireManaged(t)
	pluginChangeKeepsContainers(t, func(a string, epB endpoint) {
		docker(t, "plugin", "disable", "-f", pluginName)
		ping(t, a, epB.IPAddress)
	})
}

// TestManagedUpgrade: `docker plugin upgrade` to a second version (pushed to a local registry: upgrade only
// pulls) keeps the plugin's settings and state; containers started before keep their network and are torn
// down completely by the new version.
func TestManagedUpgrade(t *testing.T) {
	requireManaged(t)
	ref := startRegistry(t) + "/cniplug-e2e:v2"
	pushPlugin(t, ref)
	pluginChangeKeepsContainers(t, func(string, endpoint) {
		docker(t, "plugin", "disable", "-f", pluginName)
		docker(t, "plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", pluginName, ref)
		if got := docker(t, "plugin", "inspect", "-f", "{{.PluginReference}}", pluginName); got != ref {
			t.Errorf("after the upgrade the plugin comes from %q, want %q", got, ref)
		}
		// dockerd (20.10, 29.x) keeps env settings across an upgrade but takes mount sources from the new config (the
		// README says to set them again before enabling). The mounts that take effect are in .Config.Mounts.
		if mounts := docker(t, "plugin", "inspect", "-f", "{{json .Config.Mounts}}", pluginName); !strings.Contains(mounts, env.stateDir) {
			t.Logf("the upgrade reset the mount sources (setting them again): %s", mounts)
			docker(t, append([]string{"plugin", "set", pluginName}, mountSettings()...)...)
		}
		if envs := docker(t, "plugin", "inspect", "-f", "{{json .Settings.Env}}", pluginName); !strings.Contains(envs, "CNIPLUG_DRIVER_NAME="+pluginName) {
			t.Errorf("the upgrade lost the env settings: %s", envs)
		}
	})
}

// TestManagedRegistryInstall: the plugin pushed to a registry installs with `docker plugin install
// --grant-all-permissions` (a registry on 127.0.0.1 is insecure-allowed by default) and works, next to the
// suite's plugin, under another name.
func TestManagedRegistryInstall(t *testing.T) {
	requireManaged(t)
	ref := startRegistry(t) + "/cniplug:e2e"
	pushPlugin(t, ref)
	alias := pluginName + "-reg"
	state := t.TempDir()
	t.Cleanup(func() { removePlugin(alias) })
	docker(t, "plugin", "install", "--grant-all-permissions", "--disable", "--alias", alias, ref)
	docker(t, "plugin", "set", alias, "cni-conf-dir.source="+env.confDir, "cni-bin-dir.source="+env.testBinDir,
		"state-dir.source="+state, "CNIPLUG_DRIVER_NAME="+alias)
	docker(t, "plugin", "enable", alias)
	n := bridgeNet(t)
	net := testutil.UniqueName("dn")
	docker(t, "network", "create", "-d", alias+":latest", "--opt", "cni="+n.Name,
		"--ipam-driver", alias+":latest", "--ipam-opt", "cni="+n.Name, net)
	t.Cleanup(func() {
		if out, err := dockerErr("network", "rm", net); err != nil {
			t.Errorf("docker network rm %s: %v: %s", net, err, out)
		}
	})
	c := runContainer(t, net)
	checkEndpoint(t, c, net, n)
	ping(t, c, n.Gateway)
	docker(t, "rm", "-f", c)
}

// startRegistry runs Debian's docker-registry on a free 127.0.0.1 port with storage in a temp dir, for the
// test's duration, and returns its host:port.
func startRegistry(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Skip("skipping: docker-registry is not installed (apt-get install docker-registry; scripts/setup.sh does)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr)
	cfgPath := testutil.WriteFile(t, dir, "config.yml", cfg)
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting docker-registry: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("docker-registry on %s does not answer: %v\n%s", addr, err, log)
		}
	}
}

// pushPlugin creates a plugin named ref from the suite's bundle, pushes it and removes the local copy.
func pushPlugin(t *testing.T, ref string) {
	t.Helper()
	if err := createPlugin(ref); err != nil {
		t.Fatal(err)
	}
	defer removePlugin(ref)
	start := time.Now()
	docker(t, "plugin", "push", ref)
	t.Logf("pushed %s in %s", ref, time.Since(start).Round(time.Millisecond))
}

// TestManagedDriverName: dockerd registers a managed plugin's drivers only under its full name (name:tag), on
// every engine the suite runs on; the README tells users to write `-d cniplug:latest` for that reason.
func TestManagedDriverName(t *testing.T) {
	requireManaged(t)
	n := bridgeNet(t)
	name := testutil.UniqueName("dn")
	for _, args := range [][]string{
		{"-d", pluginName, "--opt", "cni=" + n.Name},
		{"-d", driverName, "--opt", "cni=" + n.Name, "--ipam-driver", pluginName, "--ipam-opt", "cni=" + n.Name},
	} {
		out, err := dockerErr(append(append([]string{"network", "create"}, args...), name)...)
		if err == nil {
			_, _ = dockerErr("network", "rm", name)
			t.Errorf("docker network create %v with the bare plugin name worked: update the README's driver-name advice", args)
			continue
		}
		t.Logf("bare name %v: %s", args, out)
	}
	net := createNetwork(t, n, cniIPAM) // driverName is pluginName:latest
	ping(t, runContainer(t, net), n.Gateway)
}
