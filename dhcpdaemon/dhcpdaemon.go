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
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cniplug/cniplug/internal/dirs"
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

func (s *Supervisor) findBinary() (string, error) {
	for _, dir := range s.cfg.BinDirs {
		p := filepath.Join(dir, binaryName)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("cannot start the DHCP daemon for %s: CNI plugin %q not found (searched %s); install the reference CNI plugins there",
		s.SocketPath(), binaryName, strings.Join(s.cfg.BinDirs, ", "))
}

// removeStaleSocket removes the socket file a killed daemon left: the daemon listens with net.Listen, which
// fails with "address already in use" on an existing file. Called only when nothing answers.
func (s *Supervisor) removeStaleSocket() error {
	path := s.SocketPath()
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil // nothing to remove; the daemon reports a path it cannot use
	}
	if err != nil {
		return fmt.Errorf("checking the DHCP daemon's socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("cannot start the DHCP daemon: %s exists and is not a socket (mode %s); move it away or choose another socket", path, fi.Mode())
	}
	if s.Answering() { // checked again right before removing: never pull the socket from under a live daemon
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the stale DHCP daemon socket %s: %w", path, err)
	}
	s.cfg.Logger.Info("removed stale dhcp daemon socket", "socket", path)
	return nil
}

func (s *Supervisor) args(bin string) []string {
	args := []string{bin, "daemon", "-socketpath", s.cfg.Socket}
	if s.cfg.HostPrefix != "" {
		args = append(args, "-hostprefix", s.cfg.HostPrefix)
	}
	if s.cfg.RequestTimeout > 0 {
		args = append(args, "-timeout", s.cfg.RequestTimeout.String())
	}
	return args
}

func (s *Supervisor) start(ctx context.Context, bin string) error {
	if s.Answering() { // a daemon appeared meanwhile (the stale-socket check saw it)
		return nil
	}
	if err := os.MkdirAll(s.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("creating the DHCP daemon's state dir %s: %w", s.cfg.StateDir, err)
	}
	// The daemon makes its socket's dir itself, but not through a dangling symlink (the managed plugin's /run/cni).
	if err := dirs.Make(filepath.Dir(s.SocketPath()), 0o755); err != nil {
		return fmt.Errorf("creating the DHCP daemon's socket dir for %s: %w", s.SocketPath(), err)
	}
	logf, err := os.OpenFile(s.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening the DHCP daemon's log %s: %w", s.logPath(), err)
	}
	defer logf.Close() // the child has its own copy
	args := s.args(bin)
	fmt.Fprintf(logf, "%s cniplug: starting %s\n", time.Now().UTC().Format(time.RFC3339), strings.Join(args, " "))

	// Not CommandContext: ctx bounds the wait for the socket, not the daemon's life.
	cmd := &exec.Cmd{
		Path:        bin,
		Args:        args,
		Dir:         "/",
		Env:         daemonEnv(),
		Stdout:      logf,
		Stderr:      logf,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the DHCP daemon %s for %s: %w", bin, s.SocketPath(), err)
	}
	pid := cmd.Process.Pid
	c := &child{proc: cmd.Process, exited: make(chan struct{})}
	s.child = c
	go func() {
		c.err = cmd.Wait() // reaps it: a daemon that dies while we run must not linger as a zombie
		close(c.exited)
	}()
	if err := writePid(s.pidPath(), pid); err != nil {
		_ = s.terminate(context.WithoutCancel(ctx), pid)
		return err
	}
	s.cfg.Logger.Info("started dhcp daemon", "pid", pid, "binary", bin, "socket", s.SocketPath(), "log", s.logPath())

	if err := s.waitAnswering(ctx, pid, c.exited); err != nil {
		select {
		case <-c.exited:
			err = fmt.Errorf("it exited (%v)", c.err)
		default:
			// Do not leave a daemon behind that nobody can reach; the next Ensure starts another.
			_ = s.terminate(context.WithoutCancel(ctx), pid)
		}
		_ = os.Remove(s.pidPath())
		return fmt.Errorf("DHCP daemon %s did not come up on %s: %w; last lines of %s:\n%s",
			bin, s.SocketPath(), err, s.logPath(), tail(s.logPath(), logTail))
	}
	return nil
}

// daemonEnv is cniplug's environment without systemd's socket-activation variables: the daemon would take
// an inherited LISTEN_FDS as its listener.
func daemonEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "LISTEN_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// waitAnswering polls the socket until it answers, ctx ends, or the process exits (exited, when it is our
// child; otherwise via /proc).
func (s *Supervisor) waitAnswering(ctx context.Context, pid int, exited <-chan struct{}) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		if s.Answering() {
			return nil
		}
		if exited == nil && !alive(pid) {
			return fmt.Errorf("process %d exited", pid)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("socket not answering: %w", ctx.Err())
		case <-exited:
			return errors.New("exited")
		case <-t.C:
		}
	}
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

// recorded returns the pid in the pid file when that process is alive and is a dhcp daemon on our socket.
func (s *Supervisor) recorded() (int, bool) {
	b, err := os.ReadFile(s.pidPath())
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		s.cfg.Logger.Warn("ignoring unreadable dhcp daemon pid file", "path", s.pidPath())
		return 0, false
	}
	if !alive(pid) || !s.isOurDaemon(pid) {
		return 0, false
	}
	return pid, true
}

// isOurDaemon checks /proc/<pid>/cmdline: a pid recorded long ago may since belong to another process.
func (s *Supervisor) isOurDaemon(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if len(argv) < 4 || filepath.Base(argv[0]) != binaryName || argv[1] != "daemon" {
		return false
	}
	for i := 2; i+1 < len(argv); i++ {
		if (argv[i] == "-socketpath" || argv[i] == "--socketpath") && argv[i+1] == s.cfg.Socket {
			return true
		}
	}
	return false
}

// terminate sends SIGTERM, then SIGKILL once ctx ends or termGrace passed, and waits for pid to exit.
func (s *Supervisor) terminate(ctx context.Context, pid int) error {
	var exited <-chan struct{}
	var proc *os.Process
	if s.child != nil && s.child.proc.Pid == pid {
		proc, exited = s.child.proc, s.child.exited
	} else {
		proc, _ = os.FindProcess(pid) // never fails on Unix
	}
	if err := proc.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping the DHCP daemon (pid %d) on %s: %w", pid, s.SocketPath(), err)
	}
	gctx, cancel := context.WithTimeout(ctx, termGrace)
	defer cancel()
	if waitExit(gctx, pid, exited) {
		return nil
	}
	s.cfg.Logger.Warn("dhcp daemon did not stop on SIGTERM; killing it", "pid", pid)
	_ = proc.Signal(syscall.SIGKILL)
	kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), termGrace)
	defer kcancel()
	if !waitExit(kctx, pid, exited) {
		return fmt.Errorf("the DHCP daemon (pid %d) on %s survived SIGKILL", pid, s.SocketPath())
	}
	return nil
}

func waitExit(ctx context.Context, pid int, exited <-chan struct{}) bool {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		if exited == nil && !alive(pid) {
			return true
		}
		select {
		case <-exited:
			return true
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// alive reports whether pid exists and is not a zombie (a daemon whose parent did not reap it yet). A
// multi-threaded process being killed shows its leader as a zombie while other threads still hold its files
// (the socket answers): it counts as alive until only the leader is left.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	if st := b[i+2]; st != 'Z' && st != 'X' {
		return true
	}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	return len(tasks) > 1
}

func writePid(path string, pid int) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("recording the DHCP daemon's pid in %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("recording the DHCP daemon's pid in %s: %w", path, err)
	}
	return nil
}

// tail returns the last n lines of the file at path, or why it cannot.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
