package dhcpdaemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

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
