// Package dhcpdaemon supervises the reference CNI dhcp IPAM plugin's daemon (`dhcp daemon`). The plugin
// itself only forwards ADD/DEL over a unix socket to that daemon, which acquires the leases and renews them
// from its memory: it must run for as long as any DHCP lease lives, across cniplug restarts. The supervisor
// starts it on demand in a session of its own, records its pid in a pid file so that a later cniplug process
// can stop it, and uses (never stops) a daemon the operator runs on the same socket.
//
// A session of its own does not take the daemon out of cniplug's cgroup: under systemd (packaging's unit has
// KillMode=mixed) stopping or restarting cniplug.service SIGKILLs it with the rest of the unit's processes,
// and in the managed plugin it lives and dies with the plugin's container. The daemon sends no DHCPRELEASE
// when it stops; its leases are simply no longer renewed.
package dhcpdaemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"
)

// DefaultSocket is where the dhcp plugin dials its daemon when the ipam section has no daemonSocketPath.
const DefaultSocket = "/run/cni/dhcp.sock"

const (
	binaryName = "dhcp"
	pidFile    = "dhcp-daemon.pid"
	logFile    = "dhcp-daemon.log"

	pollInterval = 50 * time.Millisecond
	dialTimeout  = 500 * time.Millisecond
	// How long a recorded daemon that is alive but does not answer gets before it is replaced (it may be
	// between writing its pid and listening).
	startupGrace = 2 * time.Second
	// How long Stop waits after SIGTERM before SIGKILL, when ctx allows longer.
	termGrace = 5 * time.Second
	logTail   = 10
)

// Config says where the daemon's binary, socket and bookkeeping are.
type Config struct {
	// BinDirs are searched in order for the dhcp binary (like CNI's bin dirs).
	BinDirs []string
	// Socket is the daemon's -socketpath; DefaultSocket when empty.
	Socket string
	// StateDir holds the pid file (dhcp-daemon.pid) and the daemon's log (dhcp-daemon.log).
	StateDir string
	// HostPrefix is passed as -hostprefix when set: the daemon then reaches netns paths, and listens on its
	// socket, under this prefix (the socket is at HostPrefix+Socket in this process's view).
	HostPrefix string
	// RequestTimeout, when set, is passed as -timeout: how long the daemon's DHCP client waits for an answer
	// before it sends a request again (the daemon's default, 10 s, makes one lost DISCOVER on a link that
	// just came up outlast the whole CNI ADD).
	RequestTimeout time.Duration
	Logger         *slog.Logger
}

// Supervisor starts, finds and stops the dhcp daemon of one socket. Its methods are safe for concurrent use
// and serialized.
type Supervisor struct {
	cfg  Config
	lock chan struct{} // one token: held while a method runs, acquired with ctx

	child *child // the daemon this process started last, if any
}

// child is a daemon this process started; a goroutine reaps it.
type child struct {
	proc   *os.Process
	exited chan struct{} // closed once reaped
	err    error         // its Wait error, set before exited is closed
}

// New returns a supervisor for cfg; it starts nothing.
func New(cfg Config) *Supervisor {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Supervisor{cfg: cfg, lock: make(chan struct{}, 1)}
}

// SocketPath is the daemon's socket as this process sees it (HostPrefix+Socket).
func (s *Supervisor) SocketPath() string { return s.cfg.HostPrefix + s.cfg.Socket }

func (s *Supervisor) pidPath() string { return filepath.Join(s.cfg.StateDir, pidFile) }
func (s *Supervisor) logPath() string { return filepath.Join(s.cfg.StateDir, logFile) }

func (s *Supervisor) acquire(ctx context.Context) error {
	select {
	case s.lock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for another operation on the dhcp daemon of %s: %w", s.SocketPath(), ctx.Err())
	}
}

func (s *Supervisor) release() { <-s.lock }

// Answering reports whether something accepts connections on the socket (each probe is bounded by 500ms).
func (s *Supervisor) Answering() bool {
	c, err := net.DialTimeout("unix", s.SocketPath(), dialTimeout)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// Ensure makes sure a daemon answers on the socket. When none does it starts `<dhcp> daemon -socketpath
// <socket>` in a session of its own (it outlives cniplug: the leases live in its memory), appending its
// output to the log file and recording its pid, and waits, bounded by ctx, until the socket accepts
// connections. A daemon that answers is used whoever started it.
func (s *Supervisor) Ensure(ctx context.Context) error {
	if err := s.acquire(ctx); err != nil {
		return err
	}
	defer s.release()

	if s.Answering() {
		return nil
	}
	// A daemon we recorded that is alive but silent may be starting: give it a moment, then replace it.
	if pid, ok := s.recorded(); ok {
		wctx, cancel := context.WithTimeout(ctx, startupGrace)
		err := s.waitAnswering(wctx, pid, nil)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil { // the caller gave up; not a reason to kill a daemon that may hold leases
			return fmt.Errorf("waiting for the DHCP daemon (pid %d) to answer on %s: %w", pid, s.SocketPath(), ctx.Err())
		}
		s.cfg.Logger.Warn("dhcp daemon does not answer on its socket; replacing it", "pid", pid, "socket", s.SocketPath())
		if err := s.terminate(ctx, pid); err != nil {
			return err
		}
	}

	bin, err := s.findBinary()
	if err != nil {
		return err
	}
	if err := s.removeStaleSocket(); err != nil {
		return err
	}
	return s.start(ctx, bin)
}

// Stop stops the daemon this supervisor, or an earlier cniplug process (through the pid file), started, if
// that pid is still such a daemon, and removes its socket and the pid file. A daemon it did not start is left
// alone. Stopping loses the daemon's leases (they are no longer renewed): call it only once no DHCP network
// is in use.
func (s *Supervisor) Stop(ctx context.Context) error {
	if err := s.acquire(ctx); err != nil {
		return err
	}
	defer s.release()

	if _, err := os.Stat(s.pidPath()); errors.Is(err, fs.ErrNotExist) {
		return nil // nothing of ours: a daemon on the socket, if any, is someone else's
	}
	if pid, ok := s.recorded(); ok {
		if err := s.terminate(ctx, pid); err != nil {
			return err
		}
		s.cfg.Logger.Info("stopped dhcp daemon", "pid", pid, "socket", s.SocketPath())
	}
	// A SIGTERMed daemon removes its socket; a SIGKILLed or killed one leaves it. Another daemon may have
	// taken the socket over since: its socket stays.
	if fi, err := os.Lstat(s.SocketPath()); err == nil && fi.Mode().Type() == fs.ModeSocket && !s.Answering() {
		if err := os.Remove(s.SocketPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the DHCP daemon's socket %s: %w", s.SocketPath(), err)
		}
	}
	if err := os.Remove(s.pidPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the DHCP daemon's pid file %s: %w", s.pidPath(), err)
	}
	return nil
}
