// Package tests drives a real dockerd with the real docker CLI against a cniplug started by the suite.
package tests

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

const (
	image      = "cniplug-test/busybox:latest"
	cniTimeout = 5 * time.Second
	// pluginName is the suite's cniplug: the v1 socket's base name, or the managed plugin's name.
	pluginName = "cniplug-e2e"
)

// driverName is what `docker network create -d` and `--ipam-driver` take: the v1 plugin's name, or the
// managed plugin's name:latest (dockerd 20.10 registers managed drivers only under the tagged name).
var driverName = pluginName

// suite is the environment TestMain prepares; skipReason is set when it cannot run.
type suite struct {
	skipReason string
	confDir    string
	stateDir   string
	testBinDir string // scripted failing/hanging plugins
	cniBinDir  string
	socket     string
	logPath    string
	plugin     *exec.Cmd
	v1Env      []string // extra KEY=VALUE settings of the v1 plugin (see setPluginEnv)

	// managed: the suite drives a managed plugin built from this checkout (CNIPLUG_E2E_MODE=managed).
	managed      bool
	bundleDir    string // plugin bundle: config.json + rootfs/
	pluginID     string
	pluginBinDir string // a CNI bin dir as the plugin names it in errors
	brokenReason string // the plugin was built but does not come up: every test fails with this
}

var env suite

func TestMain(m *testing.M) {
	code := func() int {
		defer teardownPlugin() // also when prepare gave up half-way (a managed plugin may exist)
		if reason := prepare(); reason != "" {
			env.skipReason = reason
		}
		return m.Run()
	}()
	os.Exit(code)
}

func prepare() string {
	switch mode := os.Getenv("CNIPLUG_E2E_MODE"); mode {
	case "", "v1":
	case "managed":
		env.managed, driverName = true, pluginName+":latest"
	default:
		return fmt.Sprintf("unknown CNIPLUG_E2E_MODE=%q: want v1 (the default) or managed", mode)
	}
	if os.Geteuid() != 0 {
		return "needs root (drives dockerd and creates network namespaces)"
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		return fmt.Sprintf("needs a running dockerd reachable by the docker CLI (`docker info`: %v: %s); scripts/setup.sh starts one", err, strings.TrimSpace(string(out)))
	}
	root := testutil.RepoRoot()
	bin := filepath.Join(root, "bin", "cniplug")
	if _, err := os.Stat(bin); err != nil {
		return "bin/cniplug is not built (run `make build`)"
	}
	env.cniBinDir = filepath.Join(root, "bin", "cni")
	if _, err := os.Stat(filepath.Join(env.cniBinDir, "bridge")); err != nil {
		return "reference CNI plugins are not built in bin/cni (run `make cni-plugins`)"
	}
	if out, err := exec.Command(filepath.Join(root, "scripts", "busybox-image.sh"), image).CombinedOutput(); err != nil {
		return fmt.Sprintf("cannot build the test image: %v: %s", err, out)
	}
	tmp, err := os.MkdirTemp("", "cniplug-e2e-")
	if err != nil {
		return err.Error()
	}
	env.confDir = filepath.Join(tmp, "net.d")
	env.stateDir = filepath.Join(tmp, "state")
	env.testBinDir = filepath.Join(tmp, "bin")
	env.logPath = filepath.Join(tmp, "cniplug.log")
	env.socket = "/run/docker/plugins/" + driverName + ".sock"
	for _, d := range []string{env.confDir, env.testBinDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err.Error()
		}
	}
	if err := installMisbehaving(env.testBinDir, "e2e-failer", "e2e-slowdel", "e2e-hanger"); err != nil {
		return err.Error()
	}
	env.pluginBinDir = env.cniBinDir
	if env.managed {
		if reason := prepareManaged(tmp); reason != "" {
			return reason
		}
		// Built: a plugin that does not come up is a failure of the plugin, not a missing environment.
		if err := createManaged(); err != nil {
			env.brokenReason = err.Error()
			return ""
		}
	}
	if err := startPlugin(); err != nil {
		if env.managed {
			env.brokenReason = err.Error()
			return ""
		}
		return err.Error()
	}
	return ""
}

// startPlugin runs bin/cniplug as a v1 plugin on the suite's socket; its log is appended to logPath. In
// managed mode it enables the plugin and waits until it serves (see startManaged).
func startPlugin() error {
	if !env.managed {
		if err := launchV1(); err != nil {
			return err
		}
	}
	return waitServing()
}

// launchV1 starts bin/cniplug as the suite's v1 plugin without waiting for it.
func launchV1() error {
	logf, err := os.OpenFile(env.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(testutil.RepoRoot(), "bin", "cniplug"),
		"--socket", env.socket,
		// The bundled conf dir, as in the managed plugin: the default network (TestDefaultNetwork).
		"--cni-conf-dir", env.confDir+":"+filepath.Join(testutil.RepoRoot(), "packaging", "cni"),
		"--cni-bin-dir", env.testBinDir+":"+env.cniBinDir,
		"--state-dir", env.stateDir,
		"--cni-timeout", cniTimeout.String(),
		"--log-level", "debug",
		// Reconcile quickly so recovery tests need not wait minutes.
		"--reconcile-interval", "2s", "--reconcile-min-age", "3s")
	cmd.Env = append(os.Environ(), env.v1Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting cniplug: %w", err)
	}
	env.plugin = cmd
	return nil
}

// waitServing waits until the suite's (re)started plugin answers. The socket accepts connections before the
// startup reconciliation is done (and a killed plugin's stays behind), so it waits for an answer.
func waitServing() error {
	if env.managed {
		return startManaged()
	}
	for i := 0; i < 200; i++ {
		if pluginServing() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("cniplug does not answer on %s; log: %s", env.socket, env.logPath)
}

// stopPlugin stops cniplug: SIGTERM lets in-flight requests finish, SIGKILL simulates a crash. In managed
// mode SIGTERM disables the plugin and SIGKILL kills its process, which dockerd restarts (see stopManaged).
func stopPluginWith(sig syscall.Signal) {
	if env.managed {
		stopManaged(sig)
		return
	}
	if env.plugin == nil {
		return
	}
	_ = env.plugin.Process.Signal(sig)
	_ = env.plugin.Wait()
	env.plugin = nil
}

func stopPlugin() { stopPluginWith(syscall.SIGTERM) }

// socketAccepts reports whether the plugin's socket takes connections (whether or not it answers yet).
func socketAccepts() bool {
	c, err := net.DialTimeout("unix", env.socket, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// setPluginEnv restarts the suite's plugin with one of its CNIPLUG_* settings changed until the test ends: in
// the v1 plugin's environment (flags default to their env), or as a managed plugin's setting.
func setPluginEnv(t *testing.T, key, value string) {
	t.Helper()
	apply := func(value string, restore bool) error {
		stopPlugin()
		if env.managed {
			if restore {
				value = ""
				for _, kv := range managedSettings() {
					if v, ok := strings.CutPrefix(kv, key+"="); ok {
						value = v
					}
				}
			}
			if out, err := dockerErr("plugin", "set", pluginName, key+"="+value); err != nil {
				t.Errorf("docker plugin set %s=%s: %v: %s", key, value, err, out)
			}
		} else if restore {
			env.v1Env = nil
		} else {
			env.v1Env = []string{key + "=" + value}
		}
		return startPlugin()
	}
	if err := apply(value, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := apply("", true); err != nil {
			t.Error(err)
		}
	})
}

// teardownPlugin ends the suite: stops the v1 plugin, or removes the managed one.
func teardownPlugin() {
	if env.managed {
		removeManaged()
		return
	}
	stopPlugin()
}

var (
	misbehaveOnce sync.Once
	misbehavePath string
	misbehaveErr  error
)

// installMisbehaving installs the CNI plugin that misbehaves on purpose (internal/testing/misbehave, built once
// per run into bin/) into dir under each name, which selects its behaviour. Copies, not links: a managed plugin
// sees dir under another path.
func installMisbehaving(dir string, names ...string) error {
	misbehaveOnce.Do(func() {
		misbehavePath = filepath.Join(testutil.RepoRoot(), "bin", "e2e-misbehave")
		cmd := exec.Command("go", "build", "-o", misbehavePath, "./internal/testing/misbehave")
		cmd.Dir = testutil.RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			misbehaveErr = fmt.Errorf("building the misbehaving CNI plugin: %v: %s", err, out)
		}
	})
	if misbehaveErr != nil {
		return misbehaveErr
	}
	b, err := os.ReadFile(misbehavePath)
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// requireSuite skips the test when the environment is missing and returns a leak-checked test context.
func requireSuite(t *testing.T) {
	t.Helper()
	if env.skipReason != "" {
		t.Skip("skipping end-to-end test: " + env.skipReason)
	}
	if env.brokenReason != "" {
		t.Fatal("the suite's plugin does not work: " + env.brokenReason)
	}
	before := testutil.TakeSnapshot(t)
	// Registered first, so it runs after every other cleanup of the test.
	t.Cleanup(func() {
		testutil.AssertNoLeaks(t, before)
		if t.Failed() {
			dumpLog(t)
		}
	})
}

// pluginSeesContainerNetns reports whether the plugin can open the container netns path Docker sends at Join:
// always in host mode; for the managed plugin only when the host's mounts propagate into it, since dockerd
// mounts each container's netns after the plugin started. A shared root mount (as systemd makes it) is needed
// but, with some engine and kernel combinations, not enough: the answer is probed once, by looking for a
// fresh container's netns mount in the plugin's own mount table.
func pluginSeesContainerNetns() bool {
	if !env.managed {
		return true
	}
	propagationOnce.Do(func() { propagationSeen = rootMountShared() && probePropagation() })
	return propagationSeen
}

var (
	propagationOnce sync.Once
	propagationSeen bool
)

func rootMountShared() bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 6 && f[4] == "/" {
			for _, opt := range f[6:] {
				if opt == "-" {
					break
				}
				if strings.HasPrefix(opt, "shared:") {
					return true
				}
			}
			return false
		}
	}
	return false
}

// probePropagation starts a container without a network and looks for its netns mount in the mount table of
// every cniplug process in another mount namespace (the managed plugin's).
func probePropagation() bool {
	name := testutil.UniqueName("probe")
	if out, err := exec.Command("docker", "run", "-d", "--name", name, "--net", "none", image, "sleep", "30").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "propagation probe: %v: %s\n", err, out)
		return false
	}
	defer exec.Command("docker", "rm", "-f", name).Run()
	out, err := exec.Command("docker", "inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name).Output()
	if err != nil {
		return false
	}
	netnsName := filepath.Base(strings.TrimSpace(string(out)))
	self, _ := os.Readlink("/proc/self/ns/mnt")
	for _, pid := range testutil.PidsMatching("cniplug") {
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); ns == "" || ns == self {
			continue
		}
		mounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		if err == nil && strings.Contains(string(mounts), "/docker/netns/"+netnsName+" ") {
			return true
		}
	}
	return false
}

// pluginLogHas reports whether one line of the plugin's log so far contains every one of parts.
func pluginLogHas(parts ...string) bool {
	var lines []string
	if env.managed {
		lines = managedLog(5000)
	} else if data, err := os.ReadFile(env.logPath); err == nil {
		lines = strings.Split(string(data), "\n")
	}
	for _, l := range lines {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return true
		}
	}
	return false
}

func dumpLog(t *testing.T) {
	if env.managed {
		t.Logf("cniplug log (last lines, from dockerd's log):\n%s", strings.Join(managedLog(40), "\n"))
		return
	}
	data, err := os.ReadFile(env.logPath)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	t.Logf("cniplug log (last lines):\n%s", strings.Join(lines, "\n"))
}

var subnetSeq atomic.Int32

// nextSubnet returns a /24 no other test of this run uses.
func nextSubnet() (subnet, gateway, prefix string) {
	n := 10 + subnetSeq.Add(1)
	prefix = fmt.Sprintf("10.213.%d.", n)
	return prefix + "0/24", prefix + "1", prefix
}

// cniNet is a CNI network written into the suite's conf dir for one test.
type cniNet struct {
	Name    string
	Subnet  string
	Gateway string
	Prefix  string
}

// writeConflist writes a conflist whose main plugin is given by pluginJSON (with %s for the ipam section)
// and which ends with the firewall plugin: Docker sets the FORWARD policy to DROP, and the firewall plugin
// is what lets routed container traffic through.
func writeConflist(t *testing.T, kind string, mainPlugin func(ipam string) string, extra ...string) cniNet {
	t.Helper()
	return writeConflistWith(t, kind, true, mainPlugin, extra...)
}

// writeConflistWith writes the conflist with or without the firewall plugin at its end.
func writeConflistWith(t *testing.T, kind string, firewallPlugin bool, mainPlugin func(ipam string) string, extra ...string) cniNet {
	t.Helper()
	subnet, gw, prefix := nextSubnet()
	n := cniNet{Name: testutil.UniqueName("e2e" + kind), Subnet: subnet, Gateway: gw, Prefix: prefix}
	ipam := fmt.Sprintf(`{"type":"host-local","ranges":[[{"subnet":"%s"}]],"routes":[{"dst":"0.0.0.0/0"}]}`, subnet)
	plugins := append([]string{mainPlugin(ipam)}, extra...)
	if firewallPlugin {
		plugins = append(plugins, `{"type":"firewall"}`)
	}
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"%s","plugins":[%s]}`, n.Name, strings.Join(plugins, ","))
	path := testutil.WriteFile(t, env.confDir, n.Name+".conflist", conf)
	t.Cleanup(func() {
		os.Remove(path)
		testutil.RemoveHostLocalBookkeeping(n.Name)
	})
	return n
}

func bridgeNet(t *testing.T, extra ...string) cniNet {
	br := testutil.UniqueName("e2ebr")
	n := writeConflist(t, "br", func(ipam string) string {
		return fmt.Sprintf(`{"type":"bridge","bridge":"%s","isGateway":true,"ipMasq":true,"ipam":%s}`, br, ipam)
	}, extra...)
	// The bridge device outlives its last port by design of the bridge plugin; remove it with the test.
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", br).Run() })
	return n
}

func ptpNet(t *testing.T) cniNet {
	return writeConflist(t, "ptp", func(ipam string) string {
		return fmt.Sprintf(`{"type":"ptp","ipMasq":true,"ipam":%s}`, ipam)
	})
}

// docker runs the docker CLI and fails the test on error.
func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := dockerErr(args...)
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func dockerErr(args ...string) (string, error) {
	out, err := exec.Command("docker", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// addressing is one of the three ways a cniplug network gets its addresses.
type addressing string

const (
	cniIPAM    addressing = "cni-ipam"
	nullIPAM   addressing = "null-ipam"
	dockerIPAM addressing = "docker-ipam"
)

func (a addressing) flags(n cniNet) []string {
	switch a {
	case cniIPAM:
		return []string{"--ipam-driver", driverName, "--ipam-opt", "cni=" + n.Name}
	case nullIPAM:
		return []string{"--ipam-driver", "null"}
	default:
		return []string{"--subnet", n.Subnet, "--gateway", n.Gateway}
	}
}

// createNetwork creates a Docker network on CNI network n and removes it when the test ends.
func createNetwork(t *testing.T, n cniNet, mode addressing, extra ...string) string {
	t.Helper()
	name := testutil.UniqueName("dn")
	args := append([]string{"network", "create", "-d", driverName, "--opt", "cni=" + n.Name}, mode.flags(n)...)
	args = append(append(args, extra...), name)
	docker(t, args...)
	t.Cleanup(func() { removeNetwork(t, name) })
	return name
}

// removeNetwork removes a Docker network at the end of a test. Docker 20.10 may release a force-removed
// container's endpoint a moment after `docker rm -f` returned (in the container's exit handling): "has active
// endpoints" until then. It also miscounts a network's endpoints under parallel load, with any driver: the
// refusal then lasts until dockerd restarts and recounts (dockerMiscounted), so the test restarts it, as an
// operator would, once Docker's own store shows no endpoint left. Engines from 28.1 decide by the endpoints
// themselves, and keep their store open and locked: only 20.10's is read.
func removeNetwork(t *testing.T, name string) {
	out, err := dockerErr("network", "rm", name)
	var miscountedSince time.Time
	restarted, readStore := false, engineIs2010(t)
	for deadline := time.Now().Add(45 * time.Second); err != nil && strings.Contains(out, "has active endpoints") && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		miscounted, why := false, ""
		if readStore {
			miscounted, why = dockerMiscounted(name)
		}
		// Docker deletes an endpoint from its store before it decrements the count: wait out that moment.
		switch {
		case !miscounted:
			miscountedSince = time.Time{}
		case miscountedSince.IsZero():
			miscountedSince = time.Now()
		case time.Since(miscountedSince) > 3*time.Second && !restarted:
			t.Logf("%s; restarting dockerd, which recounts", why)
			restartDockerdAsIs(t)
			restarted = true
		}
		out, err = dockerErr("network", "rm", name)
	}
	if err != nil {
		held, _ := dockerErr("network", "inspect", "-f", "{{json .Containers}}", name)
		t.Errorf("docker network rm %s: %v: %s (Docker's endpoints on it: %s)", name, err, out, strings.TrimSpace(held))
	}
}

// runContainer starts a long-running container and force-removes it when the test ends.
func runContainer(t *testing.T, network string, extra ...string) string {
	t.Helper()
	name := testutil.UniqueName("dc")
	args := []string{"run", "-d", "--name", name}
	if network != "" {
		args = append(args, "--net", network)
	}
	args = append(append(args, extra...), image, "sleep", "600")
	t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
	docker(t, args...)
	return name
}

// endpoint is what `docker inspect` says about a container on one network.
type endpoint struct {
	IPAddress   string
	IPPrefixLen int
	Gateway     string
	MacAddress  string
	EndpointID  string
}

func inspectEndpoint(t *testing.T, container, network string) endpoint {
	t.Helper()
	out := docker(t, "inspect", "-f", fmt.Sprintf(`{{json (index .NetworkSettings.Networks %q)}}`, network), container)
	var ep endpoint
	if err := json.Unmarshal([]byte(out), &ep); err != nil {
		t.Fatalf("inspect %s on %s: %v: %s", container, network, err, out)
	}
	return ep
}

// linkFacts is what the container itself sees on the interface that carries ip.
type linkFacts struct {
	Name, CIDR, MAC, DefaultGateway string
}

func containerLink(t *testing.T, container, ip string) linkFacts {
	t.Helper()
	addrs := docker(t, "exec", container, "ip", "-o", "addr", "show")
	var f linkFacts
	for _, line := range strings.Split(addrs, "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 4 && fields[2] == "inet" && strings.HasPrefix(fields[3], ip+"/") {
			f.Name, f.CIDR = strings.TrimSuffix(fields[1], ":"), fields[3]
		}
	}
	if f.Name == "" {
		t.Fatalf("container %s has no interface with %s:\n%s", container, ip, addrs)
	}
	link := docker(t, "exec", container, "ip", "-o", "link", "show", f.Name)
	if i := strings.Index(link, "link/ether "); i >= 0 {
		f.MAC = strings.Fields(link[i+len("link/ether "):])[0]
	}
	routes := docker(t, "exec", container, "ip", "route", "show", "default")
	for _, line := range strings.Split(routes, "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 5 && fields[0] == "default" && fields[4] == f.Name {
			f.DefaultGateway = fields[2]
		}
	}
	return f
}

func ping(t *testing.T, container, ip string) {
	t.Helper()
	if out, err := dockerErr("exec", container, "ping", "-c", "1", "-W", "2", ip); err != nil {
		t.Errorf("%s cannot ping %s: %v\n%s", container, ip, err, out)
	}
}

// releasedByHostLocal waits for host-local to release ip of CNI network name, which happens in the background
// after Docker deletes the endpoint on networks with async-delete (the default with CNI or null IPAM).
func releasedByHostLocal(name, ip string) bool {
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if !reservedByHostLocal(name, ip) {
			return true
		}
	}
	return false
}

// reservedByHostLocal reports whether host-local holds ip for CNI network name.
func reservedByHostLocal(name, ip string) bool {
	_, err := os.Stat(filepath.Join(testutil.CNIDataDir, "networks", name, ip))
	return err == nil
}
