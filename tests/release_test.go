package tests

import (
	"context"
	"debug/elf"
	"encoding/json"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// maxRootfs is the slim rootfs's bound (issue: a managed plugin users install quickly, on small machines too).
const maxRootfs = 40 << 20

// releaseLine is what scripts/release.sh prints for one tag.
type releaseLine struct {
	ref, digest string
	size        int64
}

// release runs scripts/release.sh (what `make release` runs) and returns its lines by architecture; the
// bundles are kept in out/<arch>.
func release(t *testing.T, version, registry, out string, arches ...string) map[string]releaseLine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(testutil.RepoRoot(), "scripts", "release.sh"), append([]string{version, registry}, arches...)...)
	cmd.Env = append(os.Environ(), "OUT="+out)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/release.sh %s %s: %v\n%s", version, registry, err, lastLines(stderr.String(), 20))
	}
	lines := map[string]releaseLine{}
	for _, line := range strings.Split(strings.TrimSpace(string(stdout)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("release.sh printed %q, want: <ref> sha256:<digest> <size>", line)
		}
		size, err := strconv.ParseInt(f[2], 10, 64)
		testutil.Must(t, err)
		arch := f[0][strings.LastIndex(f[0], "-")+1:]
		lines[arch] = releaseLine{ref: f[0], digest: f[1], size: size}
	}
	for _, a := range arches {
		if _, ok := lines[a]; !ok {
			t.Fatalf("release.sh printed no tag for %s:\n%s", a, stdout)
		}
	}
	return lines
}

// TestRelease: `make release` pushes one tag per architecture to a registry, each rootfs within 40 MiB and
// reproducible; the arm64 binaries are arm64 and start (under qemu-user-static); the amd64 tag installs, serves,
// and upgrades to the next release while a container on its network keeps running.
func TestRelease(t *testing.T) {
	requireManaged(t)
	registry := startRegistry(t)
	out := t.TempDir()
	v1 := release(t, "e2e1", registry, out, "amd64", "arm64")

	resp, err := http.Get("http://" + registry + "/v2/cniplug/tags/list")
	testutil.Must(t, err)
	var tags struct{ Tags []string }
	testutil.Must(t, json.NewDecoder(resp.Body).Decode(&tags))
	resp.Body.Close()
	for _, want := range []string{"e2e1-amd64", "e2e1-arm64"} {
		if !slices.Contains(tags.Tags, want) {
			t.Errorf("the registry has tags %v, not %s", tags.Tags, want)
		}
	}
	for arch, l := range v1 {
		if l.size > maxRootfs {
			t.Errorf("%s rootfs is %d bytes (%.1f MiB), more than 40 MiB", arch, l.size, float64(l.size)/(1<<20))
		}
		t.Logf("%s: %s, %.1f MiB", l.ref, l.digest, float64(l.size)/(1<<20))
	}

	// A second build of the same commit and release gives the same rootfs.
	again := exec.Command(filepath.Join(testutil.RepoRoot(), "scripts", "build-rootfs.sh"), "-a", "arm64", "-r", "cniplug e2e1 (arm64)", filepath.Join(out, "again"))
	b, err := again.Output()
	testutil.Must(t, err)
	if got := strings.Fields(lastLines(string(b), 1)); len(got) != 3 || got[1] != v1["arm64"].digest {
		t.Errorf("a second build of the arm64 rootfs printed %q, the release %s: not reproducible", got, v1["arm64"].digest)
	}

	checkArm64Rootfs(t, filepath.Join(out, "arm64", "rootfs"))
	installAndUpgrade(t, registry, v1["amd64"].ref)
}

// checkArm64Rootfs: every ELF file is an arm64 one; cniplug and iptables start where qemu-user-static can run
// them.
func checkArm64Rootfs(t *testing.T, rootfs string) {
	t.Helper()
	var elves int
	testutil.Must(t, filepath.WalkDir(rootfs, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := elf.Open(path)
		if err != nil {
			return nil // not an ELF file
		}
		defer f.Close()
		elves++
		if f.Machine != elf.EM_AARCH64 {
			t.Errorf("%s is for %s, not arm64", strings.TrimPrefix(path, rootfs), f.Machine)
		}
		return nil
	}))
	if elves < 10 {
		t.Errorf("only %d ELF files in the arm64 rootfs", elves)
	}
	qemu, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		t.Logf("qemu-aarch64-static is not installed: the arm64 binaries were not started")
		return
	}
	for _, c := range []struct {
		args []string
		want []string // any of these
	}{
		{[]string{filepath.Join(rootfs, "usr/local/bin/cniplug"), "-h"}, []string{"Usage of cniplug"}},
		// iptables links its libraries: qemu's -L points the loader at the rootfs. qemu-user emulates no
		// netfilter netlink, so iptables-nft gets as far as opening it: loaded, linked and running.
		{[]string{"-L", rootfs, filepath.Join(rootfs, "usr/sbin/xtables-nft-multi"), "iptables", "--version"},
			[]string{"(nf_tables)", "Failed to initialize nft: Protocol not supported"}},
		{[]string{"-L", rootfs, filepath.Join(rootfs, "usr/sbin/xtables-legacy-multi"), "iptables", "--version"}, []string{"(legacy)"}},
		{[]string{filepath.Join(rootfs, "opt/cniplug/cni/bin/bridge"), "--version"}, []string{"CNI bridge plugin"}},
	} {
		b, _ := exec.Command(qemu, c.args...).CombinedOutput()
		if !slices.ContainsFunc(c.want, func(w string) bool { return strings.Contains(string(b), w) }) {
			t.Errorf("qemu-aarch64-static %s: %q, want one of %q", strings.Join(c.args, " "), b, c.want)
		}
	}
}

// installAndUpgrade installs the released tag under another name, serves a container with it, upgrades it to
// a next release with the container running, and checks the container's network and a new one.
func installAndUpgrade(t *testing.T, registry, ref string) {
	t.Helper()
	alias := pluginName + "-rel"
	state := t.TempDir()
	t.Cleanup(func() { removePlugin(alias) })
	settings := []string{"cni-conf-dir.source=" + env.confDir, "cni-bin-dir.source=" + env.testBinDir,
		"state-dir.source=" + state}
	docker(t, "plugin", "install", "--grant-all-permissions", "--disable", "--alias", alias, ref)
	docker(t, append(append([]string{"plugin", "set", alias}, settings...), "CNIPLUG_DRIVER_NAME="+alias)...)
	docker(t, "plugin", "enable", alias)
	n := bridgeNet(t)
	net := testutil.UniqueName("dn")
	docker(t, "network", "create", "-d", alias+":latest", "--opt", "cni="+n.Name,
		"--ipam-driver", alias+":latest", "--ipam-opt", "cni="+n.Name, net)
	t.Cleanup(func() { removeNetwork(t, net) })
	before := runContainer(t, net)
	checkEndpoint(t, before, net, n)

	v2 := release(t, "e2e2", registry, t.TempDir(), "amd64")["amd64"]
	docker(t, "plugin", "disable", "-f", alias)
	docker(t, "plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", alias, v2.ref)
	// The mount sources come from the new config (docs/managed-plugin.md says to set them again).
	docker(t, append([]string{"plugin", "set", alias}, settings...)...)
	docker(t, "plugin", "enable", alias)
	if got := docker(t, "plugin", "inspect", "-f", "{{.PluginReference}}", alias); got != v2.ref {
		t.Errorf("after the upgrade the plugin comes from %q, want %q", got, v2.ref)
	}
	ping(t, before, n.Gateway)
	after := runContainer(t, net)
	checkEndpoint(t, after, net, n)
	ping(t, after, inspectEndpoint(t, before, net).IPAddress)
	docker(t, "rm", "-f", before, after)
}
