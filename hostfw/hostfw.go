// Package hostfw makes the iptables commands run by cniplug's CNI plugins (bridge/ptp ipMasq, portmap,
// firewall) use the same iptables backend as the host. A managed plugin carries its own iptables binaries;
// rules written through the other backend (legacy vs nf_tables) than the one Docker and the host use are
// invisible to them and evaluated in an order nobody intended. Like kube-proxy's iptables-wrapper, the backend
// is detected from where the host's rules are, and selected by putting a directory of symlinks first in PATH
// (CNI plugins inherit cniplug's PATH).
package hostfw

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Backend is an iptables backend.
type Backend string

const (
	Legacy Backend = "legacy"
	NFT    Backend = "nft"
)

// Setting values for --iptables-backend besides the backends themselves.
const (
	// System leaves PATH alone: whatever `iptables` resolves to is used (host mode's default).
	System = "system"
	// Auto detects the host's backend (the managed plugin's default).
	Auto = "auto"
)

// Commands are the names linked into the selected directory.
var Commands = []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}

// hintChains are chains whose presence says which backend the host's own firewall managers use.
var hintChains = []string{"DOCKER", "KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"}

// Rules is what `<cmd>-save` printed for one backend (IPv4 and IPv6 concatenated).
type Rules struct {
	Save []byte
	Err  error // the backend could not be read (e.g. no kernel support): it counts as empty
}

func (r Rules) stats() (rules int, hints []string) {
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(r.Save))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-A ") {
			rules++
		}
		for _, h := range hintChains {
			if !seen[h] && (strings.HasPrefix(line, ":"+h+" ") || strings.HasPrefix(line, "-A "+h+" ")) {
				seen[h] = true
				hints = append(hints, h)
			}
		}
	}
	return rules, hints
}

// Choose picks the backend the host uses: the one holding Docker's (or kubelet's) chains if only one does,
// else the one with more rules. With no rules anywhere, nothing can conflict and nf_tables wins (the
// default of current distributions). The reason says why, for the log.
func Choose(legacy, nft Rules) (Backend, string) {
	lr, lh := legacy.stats()
	nr, nh := nft.stats()
	counts := fmt.Sprintf("legacy: %d rules, nft: %d rules", lr, nr)
	for _, e := range []struct {
		name string
		err  error
	}{{"legacy", legacy.Err}, {"nft", nft.Err}} {
		if e.err != nil {
			counts += fmt.Sprintf("; %s unreadable: %v", e.name, e.err)
		}
	}
	switch {
	case len(lh) > 0 && len(nh) == 0:
		return Legacy, fmt.Sprintf("host chains %s are in iptables-legacy (%s)", strings.Join(lh, ","), counts)
	case len(nh) > 0 && len(lh) == 0:
		return NFT, fmt.Sprintf("host chains %s are in iptables-nft (%s)", strings.Join(nh, ","), counts)
	case lr > nr:
		return Legacy, "more rules in iptables-legacy (" + counts + ")"
	case nr > lr:
		return NFT, "more rules in iptables-nft (" + counts + ")"
	default:
		return NFT, "no backend holds more rules, using nf_tables (" + counts + ")"
	}
}

// Runner runs a command and returns its standard output.
type Runner func(ctx context.Context, name string, args ...string) ([]byte, error)

func execRunner(ctx context.Context, name string, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, name, args...).Output()
}

// Detect reads both backends' rules and chooses. Legacy tables are read only when the kernel has them
// loaded (/proc/net/ip{,6}_tables_names), so detection never loads the legacy modules on an nft host.
func Detect(ctx context.Context, run Runner, procNet string) (Backend, string) {
	if run == nil {
		run = execRunner
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	read := func(kernelTables []string, cmds ...string) Rules {
		var r Rules
		if kernelTables != nil {
			loaded := false
			for _, f := range kernelTables {
				if b, err := os.ReadFile(filepath.Join(procNet, f)); err == nil && len(bytes.TrimSpace(b)) > 0 {
					loaded = true
				}
			}
			if !loaded {
				return r
			}
		}
		var errs []error
		for _, c := range cmds {
			out, err := run(ctx, c)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", c, err))
				continue
			}
			r.Save = append(r.Save, out...)
		}
		r.Err = errors.Join(errs...)
		return r
	}
	legacy := read([]string{"ip_tables_names", "ip6_tables_names"}, "iptables-legacy-save", "ip6tables-legacy-save")
	nft := read(nil, "iptables-nft-save", "ip6tables-nft-save")
	return Choose(legacy, nft)
}

// Select makes the Commands resolve to backend b: dir gets symlinks such as iptables-save -> iptables-<b>-save
// (found in PATH) and is
// put first in this process's PATH, which CNI plugins inherit. The xtables multi-binaries pick their mode
// from argv[0]'s base name, so `iptables` linking to iptables-legacy runs legacy iptables.
func Select(b Backend, dir string) error {
	if b != Legacy && b != NFT {
		return fmt.Errorf("unknown iptables backend %q: want %s or %s", b, Legacy, NFT)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, c := range Commands {
		name := backendName(c, b)
		target, err := exec.LookPath(name)
		if err != nil {
			return fmt.Errorf("iptables backend %s selected but %s is not installed: %w", b, name, err)
		}
		if target, err = filepath.Abs(target); err != nil {
			return err
		}
		link := filepath.Join(dir, c)
		if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := os.Symlink(target, link); err != nil {
			return err
		}
	}
	path := os.Getenv("PATH")
	var keep []string
	for _, p := range filepath.SplitList(path) {
		if p != dir && p != "" {
			keep = append(keep, p)
		}
	}
	return os.Setenv("PATH", strings.Join(append([]string{dir}, keep...), string(os.PathListSeparator)))
}

// backendName is Debian's name for command c of backend b: iptables-save -> iptables-legacy-save.
func backendName(c string, b Backend) string {
	tool, suffix, _ := strings.Cut(c, "-")
	if suffix != "" {
		suffix = "-" + suffix
	}
	return tool + "-" + string(b) + suffix
}

// Setup applies a --iptables-backend setting: System does nothing, Auto detects, Legacy/NFT force. It
// returns the backend in use ("" for System) and why, for the log.
func Setup(ctx context.Context, setting, dir string) (Backend, string, error) {
	switch setting {
	case "", System:
		return "", "using the iptables found in PATH", nil
	case Auto:
		b, why := Detect(ctx, nil, "/proc/net")
		return b, why, Select(b, dir)
	case string(Legacy), string(NFT):
		return Backend(setting), "set by --iptables-backend", Select(Backend(setting), dir)
	default:
		return "", "", fmt.Errorf("invalid --iptables-backend %q: want %s, %s, %s or %s", setting, Auto, Legacy, NFT, System)
	}
}
