// Command cniplug is a Docker network and IPAM plugin that makes CNI networks usable as Docker networks.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/cli"
	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/cniconf"
	"github.com/cniplug/cniplug/dhcpdaemon"
	"github.com/cniplug/cniplug/dockerapi"
	"github.com/cniplug/cniplug/driver"
	"github.com/cniplug/cniplug/hostfw"
	"github.com/cniplug/cniplug/ipam"
	"github.com/cniplug/cniplug/metrics"
	"github.com/cniplug/cniplug/netrules"
	"github.com/cniplug/cniplug/plugin"
	"github.com/cniplug/cniplug/state"
)

type config struct {
	socket     string
	confDir    string
	binDirs    string
	stateDir   string
	cacheDir   string
	netnsDir   string
	logLevel   string
	cniTimeout time.Duration

	defaultNetwork  string // CNI network of Docker networks created without --opt cni / --ipam-opt cni
	driverName      string // "" = the socket's base name
	iptablesBackend string // hostfw setting: system, auto, legacy or nft

	dockerSocket      string
	dockerExecRoot    string
	reconcileInterval time.Duration
	reconcileMinAge   time.Duration

	metricsListen string
	pprof         bool
	cniGC         bool
	maxWarmTotal  int
}

// envOr returns the environment variable's value (how the managed plugin is configured) or def.
func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

func envDuration(key string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(key)); err == nil {
		return d
	}
	return def
}

func envInt(key string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(key)); err == nil {
		return n
	}
	return def
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("cniplug", flag.ContinueOnError)
	fs.StringVar(&c.socket, "socket", envOr("CNIPLUG_SOCKET", "/run/docker/plugins/cniplug.sock"), "plugin socket; the driver name is its base name without .sock (env CNIPLUG_SOCKET)")
	fs.StringVar(&c.driverName, "driver-name", envOr("CNIPLUG_DRIVER_NAME", ""), "the name Docker knows this driver by, for messages and for telling instances apart (staging netns names); default the socket's base name (a managed plugin's socket is always cniplug.sock: set it when the plugin is installed under another name) (env CNIPLUG_DRIVER_NAME)")
	fs.StringVar(&c.confDir, "cni-conf-dir", envOr("CNIPLUG_CNI_CONF_DIR", "/etc/cni/net.d"), "colon-separated CNI network configuration dirs, searched in order (env CNIPLUG_CNI_CONF_DIR)")
	fs.StringVar(&c.binDirs, "cni-bin-dir", envOr("CNIPLUG_CNI_BIN_DIR", "/opt/cni/bin"), "colon-separated CNI plugin dirs (env CNIPLUG_CNI_BIN_DIR)")
	fs.StringVar(&c.stateDir, "state-dir", envOr("CNIPLUG_STATE_DIR", "/var/lib/cniplug"), "cniplug state dir (env CNIPLUG_STATE_DIR)")
	fs.StringVar(&c.cacheDir, "cni-cache-dir", envOr("CNIPLUG_CNI_CACHE_DIR", "/var/lib/cni"), "libcni cache dir (env CNIPLUG_CNI_CACHE_DIR)")
	fs.StringVar(&c.netnsDir, "netns-dir", envOr("CNIPLUG_NETNS_DIR", "/run/netns"), "where staging network namespaces are pinned (env CNIPLUG_NETNS_DIR)")
	fs.StringVar(&c.defaultNetwork, "default-cni-network", envOr("CNIPLUG_DEFAULT_CNI_NETWORK", ""), "CNI network of Docker networks created without --opt cni (and pools without --ipam-opt cni); empty requires the option (env CNIPLUG_DEFAULT_CNI_NETWORK)")
	fs.StringVar(&c.iptablesBackend, "iptables-backend", envOr("CNIPLUG_IPTABLES_BACKEND", "system"), "iptables backend for CNI plugins: system (the iptables in PATH), auto (the host's: legacy or nft), legacy or nft (env CNIPLUG_IPTABLES_BACKEND)")
	fs.StringVar(&c.logLevel, "log-level", envOr("CNIPLUG_LOG_LEVEL", "info"), "debug, info, warn or error (env CNIPLUG_LOG_LEVEL)")
	fs.StringVar(&c.dockerSocket, "docker-socket", envOr("CNIPLUG_DOCKER_SOCKET", "/var/run/docker.sock"), "Docker Engine API socket, used to find attachments whose endpoints Docker forgot; empty disables (env CNIPLUG_DOCKER_SOCKET)")
	fs.StringVar(&c.dockerExecRoot, "docker-exec-root", envOr("CNIPLUG_DOCKER_EXEC_ROOT", driver.DefaultDockerExecRoot), "dockerd's --exec-root: Join accepts only network namespaces Docker pinned in its netns directory (env CNIPLUG_DOCKER_EXEC_ROOT)")
	fs.DurationVar(&c.reconcileInterval, "reconcile-interval", envDuration("CNIPLUG_RECONCILE_INTERVAL", time.Minute), "how often to release attachments no live Docker endpoint owns; 0 disables (env CNIPLUG_RECONCILE_INTERVAL)")
	fs.DurationVar(&c.reconcileMinAge, "reconcile-min-age", envDuration("CNIPLUG_RECONCILE_MIN_AGE", 0), "attachments changed more recently than this may be in flight and are never reconciled (default 2 x --cni-timeout + 30s) (env CNIPLUG_RECONCILE_MIN_AGE)")
	fs.StringVar(&c.metricsListen, "metrics-listen", envOr("CNIPLUG_METRICS_LISTEN", ""), "serve Prometheus /metrics and /healthz on this TCP address, e.g. 127.0.0.1:9580; empty disables (env CNIPLUG_METRICS_LISTEN)")
	fs.IntVar(&c.maxWarmTotal, "warm-pool-max-total", envInt("CNIPLUG_WARM_POOL_MAX_TOTAL", ipam.DefaultMaxWarmTotal), "the most warm attachments (--ipam-opt warm-pool=N) all pools may keep together; a pool beyond it is refused (env CNIPLUG_WARM_POOL_MAX_TOTAL)")
	fs.BoolVar(&c.cniGC, "cni-gc", envBool("CNIPLUG_CNI_GC"), "also run CNI GC (spec 1.1) on the CNI networks cniplug uses, at every reconciliation; only where no other runtime adds attachments to them, as GC releases whatever is not listed at the moment it runs (env CNIPLUG_CNI_GC=1)")
	fs.BoolVar(&c.pprof, "pprof", envBool("CNIPLUG_PPROF"), "also serve /debug/pprof/ on the metrics listener (env CNIPLUG_PPROF=1)")
	timeout := envOr("CNIPLUG_CNI_TIMEOUT", "10s")
	fs.Func("cni-timeout", "deadline for each CNI ADD or DEL, below Docker's 30s plugin timeout (env CNIPLUG_CNI_TIMEOUT, default 10s)", func(s string) error {
		timeout = s
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	d, err := time.ParseDuration(timeout)
	if err != nil || d <= 0 {
		return nil, fmt.Errorf("invalid --cni-timeout %q: want a positive duration such as 10s", timeout)
	}
	c.cniTimeout = d
	if c.maxWarmTotal < 0 {
		return nil, fmt.Errorf("invalid --warm-pool-max-total %d: want 0 or more", c.maxWarmTotal)
	}
	return c, nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func run(ctx context.Context, c *config, log *slog.Logger) error {
	name := strings.TrimSuffix(filepath.Base(c.socket), ".sock")
	if c.driverName != "" {
		name = strings.TrimSuffix(c.driverName, ":latest")
	}
	store, err := state.Open(c.stateDir) // first: it fails while another cniplug holds the state
	if err != nil {
		return err
	}
	defer store.Close()
	// Listen before the startup work, serve after it: dockerd dials a (re)started managed plugin's socket
	// 0.5 s after starting it and then every 3 s, and disables for good a plugin that dies before one dial
	// succeeds (moby's pluginPostStart), so a second crash soon after a restart would leave it down.
	// Connections made meanwhile wait in the listen backlog until the startup reconciliation is done.
	l, err := plugin.Listen(c.socket)
	if err != nil {
		return err
	}
	defer os.Remove(c.socket)
	iptables, err := prepareHost(ctx, c, log)
	if err != nil {
		return err
	}
	m := newMetrics(store)
	runner, err := newRunner(c, name, iptables, m, log)
	if err != nil {
		return err
	}
	defer runner.Close()
	mgr, err := newManager(c, store, runner, iptables, m, log)
	if err != nil {
		return err
	}
	// Before serving: whatever a crash left half-done (staging namespaces, parked links, unfinished ADDs).
	rep, err := mgr.Reconcile(ctx, attach.ReconcileOptions{Startup: true, MinAge: reconcileMinAge(c)})
	logReconcile(log, "startup", rep, err)
	// After it: a warm attachment the reboot or crash took was removed and is added again.
	if err := mgr.StartWarmPools(); err != nil {
		log.Error("warm pools not started; RequestAddress runs its own ADD", "error", err)
	}
	svc := newAdmin(c, name, mgr)
	chooser := cniconf.Chooser{ConfDirs: c.confDir, DefaultNetwork: c.defaultNetwork, Validator: runner}
	drv, ipd := driver.New(name, chooser, mgr, log, c.dockerExecRoot), ipam.New(name, chooser, mgr, log, c.maxWarmTotal)
	h := plugin.NewHandler(drv, ipd, log,
		plugin.WithAdmin(svc), plugin.WithObserver(m, svc))
	if err := serveMetrics(ctx, c, m, store, log); err != nil {
		return err
	}
	log.Info("cniplug serving", "driver", name, "socket", c.socket, "cni_conf_dir", c.confDir, "cni_bin_dir", c.binDirs,
		"state_dir", c.stateDir, "cni_timeout", c.cniTimeout, "default_cni_network", c.defaultNetwork)
	if c.dockerSocket != "" && c.reconcileInterval > 0 {
		go reconcileLoop(ctx, c, mgr, log)
	}
	err = plugin.Serve(ctx, l, h)
	// Background removals (async-delete networks) get the time of one more DEL; what is left stays recorded
	// as deleting and the next start finishes it.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*c.cniTimeout)
	defer cancel()
	if werr := mgr.WaitRemovals(wctx); werr != nil {
		log.Warn("stopping with removals unfinished; the next start finishes them", "error", werr)
	}
	if werr := mgr.StopWarmPools(wctx); werr != nil {
		log.Warn("stopping with a warm pool's ADD unfinished; the next start removes it", "error", werr)
	}
	return err
}

// newRunner is the CNI runner: the plugins of the bin dirs, run with the PATH of the iptables chosen.
func newRunner(c *config, name string, iptables hostfw.Selection, m *metrics.Metrics, log *slog.Logger) (*cnibridge.Runner, error) {
	return cnibridge.NewRunner(cnibridge.Config{
		BinDirs:  filepath.SplitList(c.binDirs),
		CacheDir: c.cacheDir,
		NetNSDir: c.netnsDir,
		Owner:    name,
		Timeout:  c.cniTimeout,
		Logger:   log,

		ExecObserver: m,
		PluginPATH:   iptables.PATH(os.Getenv("PATH")),
	})
}

// newManager is the attachment manager, with the host's firewall and the dhcp daemon's supervisor.
func newManager(c *config, store *state.Store, runner *cnibridge.Runner, iptables hostfw.Selection, m *metrics.Metrics, log *slog.Logger) (*attach.Manager, error) {
	v4, v6 := iptables.IPTables()
	instance, err := store.Instance(netrules.Instance(c.stateDir))
	if err != nil {
		return nil, err
	}
	// The dhcp IPAM plugin's daemon on its default socket, started when a DHCP network first needs it.
	// Its DHCP client retransmits after a quarter of the CNI deadline, so a lost first DISCOVER (a link that
	// just came up) is sent again well within the ADD.
	leases := dhcpdaemon.New(dhcpdaemon.Config{BinDirs: filepath.SplitList(c.binDirs), StateDir: c.stateDir, Logger: log,
		RequestTimeout: max(c.cniTimeout/4, time.Second)})
	return attach.NewManager(attach.Config{Store: store, Runner: runner, Logger: log, IPTables: v4, IP6Tables: v6,
		FirewallInstance: instance, CNIGC: c.cniGC,
		RemovalObserver: m, WarmFillObserver: m, LeaseDaemon: leases}), nil
}

// reconcileMinAge leaves alone anything young enough to belong to a Docker call still in flight.
func reconcileMinAge(c *config) time.Duration {
	if c.reconcileMinAge > 0 {
		return c.reconcileMinAge
	}
	return 2*c.cniTimeout + 30*time.Second
}

// reconcileLoop periodically releases attachments whose endpoints Docker no longer has: a v1 plugin gets no
// DeleteEndpoint for containers that died with a dockerd crash or a reboot.
func reconcileLoop(ctx context.Context, c *config, mgr *attach.Manager, log *slog.Logger) {
	docker := dockerapi.New(c.dockerSocket)
	for first := true; ; first = false {
		wait := c.reconcileInterval
		if first {
			wait = 5 * time.Second // let dockerd finish starting and restoring
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		ids, err := mgr.NetworkIDs()
		if err != nil {
			log.Error("reconcile: cannot read the state store", "error", err)
			continue
		}
		asked := time.Now()
		live, err := docker.LiveEndpoints(ctx, ids)
		if err != nil {
			log.Debug("reconcile: cannot ask Docker for live endpoints", "error", err)
			continue
		}
		rep, err := mgr.Reconcile(ctx, attach.ReconcileOptions{Live: live, MinAge: reconcileMinAge(c), Now: asked})
		logReconcile(log, "periodic", rep, err)
	}
}

func logReconcile(log *slog.Logger, kind string, rep attach.Report, err error) {
	if err != nil {
		log.Error("reconcile failed", "kind", kind, "error", err)
	}
	for _, g := range rep.GC {
		log.Debug("CNI GC", "kind", kind, "cni_network", g.Network, "valid_attachments", g.Valid, "skipped", g.Skipped, "error", g.Error)
	}
	if n := len(rep.Leftovers.NetNS) + len(rep.Leftovers.Links) + len(rep.Attachments) + len(rep.ForgottenNetworks); n == 0 {
		return
	}
	log.Info("reconciled", "kind", kind, "leftover_netns", rep.Leftovers.NetNS, "leftover_links", rep.Leftovers.Links,
		"forgotten_networks", rep.ForgottenNetworks)
	for _, a := range rep.Attachments {
		log.Info("reconcile removed attachment", "attachment", a.Attachment, "cni_network", a.Network,
			"network", a.NetworkID, "endpoint", a.Endpoint, "address", a.Address, "reason", a.Reason, "error", a.Error)
	}
}

func main() {
	if len(os.Args) > 1 && cli.IsCommand(os.Args[1]) {
		os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr))
	}
	c, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "cniplug:", err)
		os.Exit(2)
	}
	log, err := newLogger(c.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cniplug:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c, log); err != nil {
		log.Error("cniplug stopped", "error", err)
		os.Exit(1)
	}
}
