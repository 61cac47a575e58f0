// Package hostfw makes the iptables commands run by cniplug's CNI plugins (bridge/ptp ipMasq, portmap,
// firewall) use the same iptables backend as the host. A managed plugin carries its own iptables binaries;
// rules written through the other backend (legacy vs nf_tables) than the one Docker and the host use are
// invisible to them and evaluated in an order nobody intended. Like kube-proxy's iptables-wrapper, the backend
// is detected from where the host's rules are, and selected through a directory of symlinks that the CNI
// plugins find first in the PATH they are run with. cniplug's own environment is left alone.
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
	// System uses whatever `iptables` resolves to in PATH (host mode's default).
	System = "system"
	// Auto detects the host's backend (the managed plugin's default).
	Auto = "auto"
)

// commands are the names linked into the selected directory.
func commands() []string {
	return []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}
}

// Selection is the iptables backend cniplug and its CNI plugins use.
type Selection struct {
	Backend Backend // "" for System: whatever PATH holds
	Reason  string  // why, for the log
	Dir     string  // the links to the backend's commands; "" for System
}

// PATH returns path (a PATH value) with the selection's link dir first: the PATH to run CNI plugins with, so
// that the iptables they exec is the selected backend's.
func (s Selection) PATH(path string) string {
	if s.Dir == "" {
		return path
	}
	keep := []string{s.Dir}
	for _, p := range filepath.SplitList(path) {
		if p != s.Dir && p != "" {
			keep = append(keep, p)
		}
	}
	return strings.Join(keep, string(os.PathListSeparator))
}

// IPTables returns the iptables and ip6tables commands cniplug itself runs ("" to look them up in PATH).
func (s Selection) IPTables() (v4, v6 string) {
	if s.Dir == "" {
		return "", ""
	}
	return filepath.Join(s.Dir, "iptables"), filepath.Join(s.Dir, "ip6tables")
}

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

// Select points the iptables commands in dir at backend b: dir gets symlinks such as iptables-save ->
// iptables-<b>-save (found in PATH). The xtables multi-binaries pick their mode from argv[0]'s base name, so
// `iptables` linking to iptables-legacy runs legacy iptables. Select changes no environment: see Selection.
func Select(b Backend, dir string) (Selection, error) {
	if b != Legacy && b != NFT {
		return Selection{}, fmt.Errorf("unknown iptables backend %q: want %s or %s", b, Legacy, NFT)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Selection{}, fmt.Errorf("creating the iptables link dir: %w", err)
	}
	for _, c := range commands() {
		if err := link(c, b, dir); err != nil {
			return Selection{}, err
		}
	}
	return Selection{Backend: b, Dir: dir}, nil
}

// link makes dir/c run command c of backend b.
func link(c string, b Backend, dir string) error {
	name := backendName(c, b)
	target, err := exec.LookPath(name)
	if err != nil {
		return fmt.Errorf("iptables backend %s selected but %s is not installed: %w", b, name, err)
	}
	if target, err = filepath.Abs(target); err != nil {
		return err
	}
	path := filepath.Join(dir, c)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	if err := os.Symlink(target, path); err != nil {
		return fmt.Errorf("linking %s to %s: %w", path, target, err)
	}
	return nil
}

// backendName is Debian's name for command c of backend b: iptables-save -> iptables-legacy-save.
func backendName(c string, b Backend) string {
	tool, suffix, _ := strings.Cut(c, "-")
	if suffix != "" {
		suffix = "-" + suffix
	}
	return tool + "-" + string(b) + suffix
}

// Setup applies a --iptables-backend setting: System selects nothing (PATH decides), Auto detects,
// Legacy/NFT force. Links for a selected backend are made in dir.
func Setup(ctx context.Context, setting, dir string) (Selection, error) {
	var b Backend
	var why string
	switch setting {
	case "", System:
		return Selection{Reason: "using the iptables found in PATH"}, nil
	case Auto:
		b, why = Detect(ctx, nil, "/proc/net")
	case string(Legacy), string(NFT):
		b, why = Backend(setting), "set by --iptables-backend"
	default:
		return Selection{}, fmt.Errorf("invalid --iptables-backend %q: want %s, %s, %s or %s", setting, Auto, Legacy, NFT, System)
	}
	sel, err := Select(b, dir)
	sel.Reason = why
	return sel, err
}
