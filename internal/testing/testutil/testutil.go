// Package testutil holds the helpers shared by cniplug's unit and end-to-end tests: environment checks that
// skip with a reason, unique names, and the leak check every test ends with.
package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// RepoRoot is the repository root (where go.mod is).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// RequireRoot skips tests that create namespaces, links or iptables rules.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (creates network namespaces, links and iptables rules)")
	}
}

// CNIBinDir returns the dir of the reference CNI plugins built from the version pinned in go.mod
// (`make cni-plugins` puts them in bin/cni), or CNIPLUG_TEST_CNI_BIN. It skips when they are absent.
func CNIBinDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("CNIPLUG_TEST_CNI_BIN")
	if dir == "" {
		dir = filepath.Join(RepoRoot(), "bin", "cni")
	}
	for _, p := range []string{"bridge", "ptp", "macvlan", "host-local", "static", "portmap", "firewall", "tuning", "bandwidth"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Skipf("skipping: reference CNI plugin %q not found in %s (run `make cni-plugins`)", p, dir)
		}
	}
	return dir
}

// UniqueName returns prefix plus a short random suffix; names stay within interface-name limits when the
// prefix is at most 8 characters.
func UniqueName(prefix string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// WriteFile writes content to dir/name, failing the test on error.
func WriteFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Snapshot is what a test could leak on a host: links, named netns, host-local reservations, libcni
// cache files and CNI iptables rules.
type Snapshot struct {
	Links        []string
	NetNS        []string
	Reservations []string
	CacheFiles   []string
	IPTables     []string
	host         Host
}

// CNIDataDir is libcni's cache and host-local's default data dir.
const CNIDataDir = "/var/lib/cni"

// Host is where a snapshot looks: this machine, or a node of the cluster test-bed, whose commands run in its
// namespaces and whose directories are seen from here under other paths.
type Host struct {
	Name       string
	Command    func(name string, args ...string) *exec.Cmd
	CNIDataDir string // the host's /var/lib/cni as seen from here
	NetNSDir   string // the host's /run/netns as seen from here
}

// LocalHost is this machine.
var LocalHost = Host{Name: "this host", Command: exec.Command, CNIDataDir: CNIDataDir, NetNSDir: "/run/netns"}

// TakeSnapshot records the current state of this machine.
func TakeSnapshot(t testing.TB) Snapshot {
	t.Helper()
	return TakeSnapshotOn(t, LocalHost)
}

// TakeSnapshotOn records the current state of h.
func TakeSnapshotOn(t testing.TB, h Host) Snapshot {
	t.Helper()
	return Snapshot{
		Links:        links(t, h),
		NetNS:        glob(t, filepath.Join(h.NetNSDir, "*")),
		Reservations: reservations(t, h.CNIDataDir),
		CacheFiles:   glob(t, filepath.Join(h.CNIDataDir, "results", "*")),
		IPTables:     cniRules(t, h),
		host:         h,
	}
}

// AssertNoLeaks fails the test if anything exists now on the snapshot's host that did not exist at before.
// Teardown in the kernel (veth peers) is asynchronous, so it looks again for a few seconds before failing.
func AssertNoLeaks(t testing.TB, before Snapshot) {
	t.Helper()
	h := before.host
	if h.Command == nil {
		h = LocalHost
	}
	var leaks []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		after := TakeSnapshotOn(t, h)
		leaks = nil
		leaks = append(leaks, added("link", before.Links, after.Links)...)
		leaks = append(leaks, added("netns", before.NetNS, after.NetNS)...)
		leaks = append(leaks, added("host-local reservation", before.Reservations, after.Reservations)...)
		leaks = append(leaks, added("libcni cache file", before.CacheFiles, after.CacheFiles)...)
		leaks = append(leaks, added("iptables rule", before.IPTables, after.IPTables)...)
		if len(leaks) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(leaks) > 0 {
		t.Errorf("leaked on %s after test:\n  %s", h.Name, strings.Join(leaks, "\n  "))
	}
}

func added(kind string, before, after []string) []string {
	seen := map[string]bool{}
	for _, b := range before {
		seen[b] = true
	}
	var out []string
	for _, a := range after {
		if !seen[a] {
			out = append(out, kind+": "+a)
		}
	}
	return out
}

func glob(t testing.TB, pattern string) []string {
	m, err := filepath.Glob(pattern)
	if err != nil && t != nil {
		t.Fatal(err)
	}
	sort.Strings(m)
	return m
}

func links(t testing.TB, h Host) []string {
	out, err := h.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip link on %s: %v", h.Name, err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(f[1], ":")
		if i := strings.IndexByte(name, '@'); i >= 0 {
			name = name[:i]
		}
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// reservations lists host-local's per-address files (not its lock and last_reserved_ip bookkeeping).
func reservations(t testing.TB, dataDir string) []string {
	var out []string
	for _, f := range glob(t, filepath.Join(dataDir, "networks", "*", "*")) {
		base := filepath.Base(f)
		if base == "lock" || strings.HasPrefix(base, "last_reserved_ip") {
			continue
		}
		out = append(out, f)
	}
	return out
}

// staticCNIRule matches rules that CNI plugins create once per host and keep by design (the firewall
// plugin's CNI-FORWARD/CNI-ADMIN, portmap's top-level hostport chains, cniplug's top-level CNIPLUG chains).
var staticCNIRule = regexp.MustCompile(`^(:CNIPLUG-(HOSTPORTS|POSTROUTING|FORWARD) |-A (PREROUTING|OUTPUT|POSTROUTING|FORWARD) .*-j CNIPLUG-(HOSTPORTS|POSTROUTING|FORWARD)$|:CNI-(FORWARD|ADMIN|HOSTPORT-[A-Z]+) |-A (FORWARD|CNI-FORWARD|PREROUTING|OUTPUT|POSTROUTING|CNI-HOSTPORT-[A-Z]+) .*-j CNI-(FORWARD|ADMIN|HOSTPORT-[A-Z]+)$|-A CNI-HOSTPORT-[A-Z]+ .*-j (MASQUERADE|MARK)|-A CNI-HOSTPORT-SETMARK)`)

// cniRules lists iptables rules and chains mentioning CNI in the nat and filter tables.
func cniRules(t testing.TB, h Host) []string {
	var out []string
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		if _, err := exec.LookPath(save); err != nil {
			continue
		}
		for _, table := range []string{"nat", "filter", "mangle"} {
			b, err := h.Command(save, "-t", table).Output()
			if err != nil {
				if save == "ip6tables-save" {
					continue // no IPv6 netfilter in this kernel
				}
				t.Fatalf("%s -t %s on %s: %v", save, table, h.Name, err)
			}
			for _, line := range strings.Split(string(b), "\n") {
				if !strings.Contains(line, "CNI") || staticCNIRule.MatchString(line) {
					continue
				}
				if strings.HasPrefix(line, ":") { // chain declaration: drop packet counters
					line = strings.Fields(line)[0]
				}
				out = append(out, save+" "+table+" "+line)
			}
		}
	}
	sort.Strings(out)
	return out
}

// Run runs a command and returns its combined output, failing the test on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// Must fails the test on err.
func Must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// RemoveHostLocalBookkeeping removes host-local's per-network lock and last_reserved_ip files and then the
// network's dir, if no reservation is left in it (a leftover reservation stays for the leak check to report).
func RemoveHostLocalBookkeeping(network string) {
	dir := filepath.Join(CNIDataDir, "networks", network)
	for _, f := range append(glob(nil, filepath.Join(dir, "last_reserved_ip*")), filepath.Join(dir, "lock")) {
		_ = os.Remove(f)
	}
	_ = os.Remove(dir)
}

// RunQuiet runs a command for its side effect, ignoring its output.
func RunQuiet(name string, args ...string) error {
	return exec.Command(name, args...).Run()
}
