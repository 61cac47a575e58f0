package dhcpdaemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cniplug/cniplug/internal/dirs"
)

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
