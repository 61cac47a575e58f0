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
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
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

// Snapshot is what a test could leak on the host: links, named netns, host-local reservations, libcni
// cache files and CNI iptables rules.
type Snapshot struct {
	Links        []string
	NetNS        []string
	Reservations []string
	CacheFiles   []string
	IPTables     []string
}

// CNIDataDir is libcni's cache and host-local's default data dir.
const CNIDataDir = "/var/lib/cni"

// TakeSnapshot records the current host state.
func TakeSnapshot(t testing.TB) Snapshot {
	t.Helper()
	return Snapshot{
		Links:        links(t),
		NetNS:        glob(t, "/run/netns/*"),
		Reservations: reservations(t),
		CacheFiles:   glob(t, filepath.Join(CNIDataDir, "results", "*")),
		IPTables:     cniRules(t),
	}
}

// AssertNoLeaks fails the test if anything exists now that did not exist at before. Teardown in the kernel
// (veth peers) is asynchronous, so it looks again for a few seconds before failing.
func AssertNoLeaks(t testing.TB, before Snapshot) {
	t.Helper()
	var leaks []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		after := TakeSnapshot(t)
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
		t.Errorf("leaked after test:\n  %s", strings.Join(leaks, "\n  "))
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

func links(t testing.TB) []string {
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip link: %v", err)
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
func reservations(t testing.TB) []string {
	var out []string
	for _, f := range glob(t, filepath.Join(CNIDataDir, "networks", "*", "*")) {
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
func cniRules(t testing.TB) []string {
	var out []string
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		if _, err := exec.LookPath(save); err != nil {
			continue
		}
		for _, table := range []string{"nat", "filter", "mangle"} {
			b, err := exec.Command(save, "-t", table).Output()
			if err != nil {
				if save == "ip6tables-save" {
					continue // no IPv6 netfilter in this kernel
				}
				t.Fatalf("%s -t %s: %v", save, table, err)
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
