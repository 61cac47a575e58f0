package cnibridge

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// StagingIfName is CNI_IFNAME for every attachment: each attachment has a staging netns of its own, and Docker
// renames the link to eth<N> when it moves it into the container.
const StagingIfName = "eth0"

// Config configures a Runner.
type Config struct {
	BinDirs  []string
	CacheDir string // libcni cache dir (results/<net>-<cid>-<ifname>)
	NetNSDir string // where staging namespaces are pinned
	// Owner names this cniplug instance (its driver name; default "cniplug"). Staging namespaces are named
	// <Owner>-<id> and parked links carry it in their alias, so instances sharing a host never touch each
	// other's.
	Owner   string
	Timeout time.Duration
	Logger  *slog.Logger
	// ExecObserver, when set, is told the duration of every CNI plugin exec (metrics; cnibridge stays free of
	// any metrics library).
	ExecObserver ExecObserver
	// PluginPATH is the PATH CNI plugins run with (plugins such as portmap exec iptables); "" passes on
	// cniplug's own.
	PluginPATH string
}

// ExecObserver is told about each CNI plugin exec: the plugin's type (its binary's name), the CNI command
// (ADD, DEL, CHECK, VERSION, ...), how long it ran and whether it failed.
type ExecObserver interface {
	ObserveExec(plugin, command string, d time.Duration, err error)
}

// Runner performs CNI operations for attachments. It holds no per-attachment state: callers persist the
// Attachment it returns and serialize operations on one attachment.
type Runner struct {
	cni      *libcni.CNIConfig
	exec     *boundedExec // the one way CNI plugins are exec'd, also outside libcni (execDHCP)
	binDirs  []string
	netnsDir string
	cacheDir string
	owner    string
	timeout  time.Duration
	hostNS   netns.NsHandle
	log      *slog.Logger
}

// NewRunner opens a handle on the caller's (host) network namespace; Close releases it.
func NewRunner(cfg Config) (*Runner, error) {
	host, err := netns.Get() // this thread's netns: /proc/self is the main thread, which createNetNS may have left in a staging netns
	if err != nil {
		return nil, fmt.Errorf("opening host netns: %w", err)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = libcni.CacheDir
	}
	if cfg.Owner == "" {
		cfg.Owner = "cniplug"
	}
	if !validName.MatchString(cfg.Owner) {
		return nil, fmt.Errorf("invalid owner name %q", cfg.Owner)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	exec := &boundedExec{observer: cfg.ExecObserver, path: cfg.PluginPATH}
	return &Runner{
		cni:      libcni.NewCNIConfigWithCacheDir(cfg.BinDirs, cfg.CacheDir, exec),
		exec:     exec,
		binDirs:  cfg.BinDirs,
		netnsDir: cfg.NetNSDir,
		cacheDir: cfg.CacheDir,
		owner:    cfg.Owner,
		timeout:  cfg.Timeout,
		hostNS:   host,
		log:      cfg.Logger,
	}, nil
}

// Close releases the host netns handle.
func (r *Runner) Close() error { return r.hostNS.Close() }

// Timeout is the deadline applied to each CNI operation.
func (r *Runner) Timeout() time.Duration { return r.timeout }

func (r *Runner) inStaging(att *Attachment, fn func(*netlink.Handle) error) error {
	return withNetNS(att.NetNS, fn)
}

// Validate checks that every plugin of the network (including IPAM plugins) exists in the bin dirs and
// supports the network's CNI version.
func (r *Runner) Validate(ctx context.Context, nw *Network) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	for _, t := range nw.PluginTypes() {
		if _, err := invoke.FindInPath(t, r.binDirs); err != nil {
			return fmt.Errorf("CNI plugin %q not found in %s", t, strings.Join(r.binDirs, ":"))
		}
	}
	if _, err := r.cni.ValidateNetworkList(ctx, nw.List); err != nil {
		return fmt.Errorf("CNI network %q is not usable: %w", nw.Name, err)
	}
	return r.status(ctx, nw)
}

// status runs CNI STATUS (spec 1.1+; a no-op for older networks): a plugin that says it cannot serve ADD
// yet (e.g. its daemon is down) fails the Docker call with its own message instead of a half-made ADD.
func (r *Runner) status(ctx context.Context, nw *Network) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := r.cni.GetStatusNetworkList(ctx, nw.List); err != nil {
		return fmt.Errorf("CNI network %q is not ready (CNI STATUS): %w", nw.Name, err)
	}
	return nil
}
