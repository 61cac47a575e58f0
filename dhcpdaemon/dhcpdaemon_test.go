package dhcpdaemon

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
	"golang.org/x/sys/unix"
)

// dhcpBinDir is the dir of the reference dhcp plugin (`make cni-plugins`); the test skips without it.
func dhcpBinDir(t *testing.T) string {
	t.Helper()
	dir := testutil.CNIBinDir(t)
	if _, err := os.Stat(filepath.Join(dir, "dhcp")); err != nil {
		t.Skipf("skipping: CNI dhcp plugin not found in %s (run `make cni-plugins`)", dir)
	}
	return dir
}

// newSupervisor returns a supervisor with a socket and state dir of the test's own, and a cleanup that
// kills whatever runs on that socket and then checks that no daemon started by the test remains.
func newSupervisor(t *testing.T, socket string) (*Supervisor, Config) {
	t.Helper()
	if socket == "" {
		socket = filepath.Join(t.TempDir(), "dhcp.sock")
	}
	cfg := Config{
		BinDirs:  []string{dhcpBinDir(t)},
		Socket:   socket,
		StateDir: filepath.Join(t.TempDir(), "state"),
		Logger:   slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	t.Cleanup(func() {
		if pids := testutil.PidsMatching(socket); len(pids) > 0 {
			t.Errorf("dhcp daemons on %s still running at the end of the test: %v", socket, pids)
		}
	})
	return New(cfg), cfg
}

// killAtEnd kills every daemon on the socket when the test ends (registered after newSupervisor, so it
// runs before its leak check).
func killAtEnd(t *testing.T, socket string) {
	t.Cleanup(func() { testutil.KillMatching(t, socket) })
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func recordedPid(t *testing.T, cfg Config) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cfg.StateDir, "dhcp-daemon.pid"))
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file %q: %v", b, err)
	}
	return pid
}

func onlyDaemon(t *testing.T, socket string) int {
	t.Helper()
	pids := testutil.PidsMatching(socket)
	if len(pids) != 1 {
		t.Fatalf("want exactly one dhcp daemon on %s, got %v", socket, pids)
	}
	return pids[0]
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); alive(pid); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive", pid)
		}
	}
}

func assertNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: want it gone, Lstat says %v", path, err)
	}
}

// TestSupervisor runs the supervisor's life cycle against the real dhcp daemon.
func TestSupervisor(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, s *Supervisor, cfg Config)
	}{
		{"Ensure starts the daemon and the socket answers", func(t *testing.T, s *Supervisor, cfg Config) {
			if s.Answering() {
				t.Fatal("answering before Ensure")
			}
			testutil.Must(t, s.Ensure(ctxT(t)))
			if !s.Answering() {
				t.Fatal("not answering after Ensure")
			}
			pid := recordedPid(t, cfg)
			if got := onlyDaemon(t, cfg.Socket); got != pid {
				t.Errorf("daemon pid %d, pid file says %d", got, pid)
			}
			if sid, _ := unix.Getsid(pid); sid != pid {
				t.Errorf("daemon runs in session %d, want a session of its own (%d)", sid, pid)
			}
			log, _ := os.ReadFile(filepath.Join(cfg.StateDir, "dhcp-daemon.log"))
			if !strings.Contains(string(log), "cniplug: starting ") {
				t.Errorf("log has no start line:\n%s", log)
			}
			testutil.Must(t, s.Stop(ctxT(t)))
		}},
		{"Ensure again is a no-op", func(t *testing.T, s *Supervisor, cfg Config) {
			testutil.Must(t, s.Ensure(ctxT(t)))
			pid := recordedPid(t, cfg)
			testutil.Must(t, s.Ensure(ctxT(t)))
			if got := onlyDaemon(t, cfg.Socket); got != pid || recordedPid(t, cfg) != pid {
				t.Errorf("second Ensure: daemon %d, pid file %d, want both %d", got, recordedPid(t, cfg), pid)
			}
			testutil.Must(t, s.Stop(ctxT(t)))
		}},
		{"a killed daemon is restarted over its stale socket", func(t *testing.T, s *Supervisor, cfg Config) {
			testutil.Must(t, s.Ensure(ctxT(t)))
			pid := recordedPid(t, cfg)
			testutil.Must(t, syscall.Kill(pid, syscall.SIGKILL))
			waitGone(t, pid)
			if fi, err := os.Lstat(cfg.Socket); err != nil || fi.Mode().Type() != fs.ModeSocket {
				t.Fatalf("want the killed daemon's stale socket left behind: %v", err)
			}
			if s.Answering() {
				t.Fatal("stale socket answers")
			}
			testutil.Must(t, s.Ensure(ctxT(t)))
			if !s.Answering() {
				t.Fatal("not answering after restart")
			}
			if got := onlyDaemon(t, cfg.Socket); got == pid || got != recordedPid(t, cfg) {
				t.Errorf("after restart: daemon %d, pid file %d, killed %d", got, recordedPid(t, cfg), pid)
			}
			testutil.Must(t, s.Stop(ctxT(t)))
		}},
		{"Stop stops ours and removes socket and pid file", func(t *testing.T, s *Supervisor, cfg Config) {
			testutil.Must(t, s.Ensure(ctxT(t)))
			pid := recordedPid(t, cfg)
			testutil.Must(t, s.Stop(ctxT(t)))
			waitGone(t, pid)
			assertNotExist(t, cfg.Socket)
			assertNotExist(t, filepath.Join(cfg.StateDir, "dhcp-daemon.pid"))
			if s.Answering() {
				t.Error("answering after Stop")
			}
			testutil.Must(t, s.Stop(ctxT(t))) // again: nothing to do
		}},
		{"a fresh supervisor stops the daemon the previous one started", func(t *testing.T, s *Supervisor, cfg Config) {
			testutil.Must(t, s.Ensure(ctxT(t)))
			pid := recordedPid(t, cfg)
			restarted := New(cfg) // cniplug restarted: only the pid file links it to the daemon
			testutil.Must(t, restarted.Ensure(ctxT(t)))
			if got := onlyDaemon(t, cfg.Socket); got != pid {
				t.Errorf("fresh supervisor's Ensure started %d next to %d", got, pid)
			}
			testutil.Must(t, restarted.Stop(ctxT(t)))
			waitGone(t, pid)
			assertNotExist(t, cfg.Socket)
			assertNotExist(t, filepath.Join(cfg.StateDir, "dhcp-daemon.pid"))
		}},
		{"a stale socket and a dead pid are cleaned by Stop", func(t *testing.T, s *Supervisor, cfg Config) {
			testutil.Must(t, s.Ensure(ctxT(t)))
			pid := recordedPid(t, cfg)
			testutil.Must(t, syscall.Kill(pid, syscall.SIGKILL))
			waitGone(t, pid)
			testutil.Must(t, New(cfg).Stop(ctxT(t)))
			assertNotExist(t, cfg.Socket)
			assertNotExist(t, filepath.Join(cfg.StateDir, "dhcp-daemon.pid"))
		}},
		{"concurrent Ensure calls start one daemon", func(t *testing.T, s *Supervisor, cfg Config) {
			var wg sync.WaitGroup
			errs := make([]error, 8)
			for i := range errs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = s.Ensure(ctxT(t))
				}()
			}
			wg.Wait()
			for _, err := range errs {
				testutil.Must(t, err)
			}
			if got := onlyDaemon(t, cfg.Socket); got != recordedPid(t, cfg) {
				t.Errorf("daemon %d, pid file %d", got, recordedPid(t, cfg))
			}
			testutil.Must(t, s.Stop(ctxT(t)))
		}},
		{"a daemon of ours that stopped answering is replaced", func(t *testing.T, s *Supervisor, cfg Config) {
			testutil.Must(t, s.Ensure(ctxT(t)))
			pid := recordedPid(t, cfg)
			testutil.Must(t, os.Remove(cfg.Socket)) // it listens on, unreachable
			testutil.Must(t, s.Ensure(ctxT(t)))
			waitGone(t, pid)
			if got := onlyDaemon(t, cfg.Socket); got == pid || got != recordedPid(t, cfg) || !s.Answering() {
				t.Errorf("after replacing: daemon %d, pid file %d, old %d, answering %v", got, recordedPid(t, cfg), pid, s.Answering())
			}
			testutil.Must(t, s.Stop(ctxT(t)))
		}},
		{"Stop leaves a recycled pid alone", func(t *testing.T, s *Supervisor, cfg Config) {
			sleep := exec.Command("sleep", "60")
			testutil.Must(t, sleep.Start())
			defer func() { _ = sleep.Process.Kill(); _ = sleep.Wait() }()
			testutil.Must(t, os.MkdirAll(cfg.StateDir, 0o700))
			testutil.WriteFile(t, cfg.StateDir, "dhcp-daemon.pid", strconv.Itoa(sleep.Process.Pid)+"\n")
			testutil.Must(t, s.Stop(ctxT(t)))
			if !alive(sleep.Process.Pid) {
				t.Fatal("Stop killed a process that is not a dhcp daemon")
			}
			assertNotExist(t, filepath.Join(cfg.StateDir, "dhcp-daemon.pid"))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, cfg := newSupervisor(t, "")
			killAtEnd(t, cfg.Socket)
			tt.run(t, s, cfg)
		})
	}
}

// TestForeignDaemon: a daemon cniplug did not start (the operator's) is used, and Stop leaves it running.
func TestForeignDaemon(t *testing.T) {
	s, cfg := newSupervisor(t, "")
	killAtEnd(t, cfg.Socket)
	foreign := exec.Command(filepath.Join(cfg.BinDirs[0], "dhcp"), "daemon", "-socketpath", cfg.Socket)
	testutil.Must(t, foreign.Start())
	reaped := make(chan struct{})
	go func() { _ = foreign.Wait(); close(reaped) }()
	t.Cleanup(func() { _ = foreign.Process.Kill(); <-reaped })
	for deadline := time.Now().Add(10 * time.Second); !s.Answering(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("foreign daemon did not answer")
		}
	}

	testutil.Must(t, s.Ensure(ctxT(t)))
	if got := onlyDaemon(t, cfg.Socket); got != foreign.Process.Pid {
		t.Fatalf("Ensure started %d next to the foreign daemon %d", got, foreign.Process.Pid)
	}
	assertNotExist(t, filepath.Join(cfg.StateDir, "dhcp-daemon.pid"))
	testutil.Must(t, s.Stop(ctxT(t)))
	if !s.Answering() || !alive(foreign.Process.Pid) {
		t.Fatal("Stop stopped the foreign daemon")
	}
}

// TestHostPrefix: with -hostprefix the daemon listens on HostPrefix+Socket, and the supervisor looks there.
func TestHostPrefix(t *testing.T) {
	prefix := t.TempDir()
	s, cfg := newSupervisor(t, "/run/"+filepath.Base(prefix)+"/dhcp.sock")
	cfg.HostPrefix = prefix
	s = New(cfg)
	killAtEnd(t, cfg.Socket)
	testutil.Must(t, s.Ensure(ctxT(t)))
	if fi, err := os.Lstat(prefix + cfg.Socket); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("no socket at %s: %v", prefix+cfg.Socket, err)
	}
	assertNotExist(t, cfg.Socket)
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(recordedPid(t, cfg)) + "/cmdline")
	if !strings.Contains(string(cmdline), "-hostprefix\x00"+prefix) {
		t.Errorf("daemon command line %q lacks -hostprefix %s", cmdline, prefix)
	}
	testutil.Must(t, s.Stop(ctxT(t)))
	assertNotExist(t, prefix+cfg.Socket)
}

// TestEnsureErrors: what an operator reads when the daemon cannot be started.
func TestEnsureErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, cfg *Config)
		want  []string // substrings of the error; "$SOCKET", "$BIN0", "$BIN1" are replaced
	}{
		{"missing binary", func(t *testing.T, cfg *Config) {
			cfg.BinDirs = []string{t.TempDir(), t.TempDir()}
		}, []string{`"dhcp" not found`, "$BIN0", "$BIN1", "$SOCKET"}},
		{"socket path taken by a regular file", func(t *testing.T, cfg *Config) {
			testutil.WriteFile(t, filepath.Dir(cfg.Socket), filepath.Base(cfg.Socket), "not a socket")
		}, []string{"$SOCKET", "not a socket"}},
		{"socket dir cannot be created", func(t *testing.T, cfg *Config) {
			f := testutil.WriteFile(t, filepath.Dir(cfg.Socket), "file", "")
			cfg.Socket = filepath.Join(f, "dhcp.sock")
		}, []string{"$SOCKET", "socket dir", "not a directory"}},
		{"daemon exits at once", func(t *testing.T, cfg *Config) {
			// It cannot listen: the socket's path is longer than a unix socket address holds (108 bytes).
			cfg.Socket = filepath.Join(filepath.Dir(cfg.Socket), strings.Repeat("s", 110)+".sock")
		}, []string{"$BIN0/dhcp", "$SOCKET", "exited", "dhcp-daemon.log", "Error getting listener"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, cfg := newSupervisor(t, "")
			tt.setup(t, &cfg)
			killAtEnd(t, cfg.Socket)
			s := New(cfg)
			err := s.Ensure(ctxT(t))
			if err == nil {
				t.Fatal("Ensure succeeded")
			}
			t.Logf("error: %v", err)
			for _, w := range tt.want {
				w = strings.NewReplacer("$SOCKET", cfg.Socket, "$BIN0", cfg.BinDirs[0], "$BIN1", cfg.BinDirs[len(cfg.BinDirs)-1]).Replace(w)
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q", w)
				}
			}
			if pids := testutil.PidsMatching(cfg.Socket); len(pids) > 0 {
				t.Errorf("daemons left after a failed Ensure: %v", pids)
			}
		})
	}
}

// TestStaleSocketNotFromDaemon: a socket file nobody listens on (e.g. left by an older daemon) is replaced.
func TestStaleSocketNotFromDaemon(t *testing.T) {
	s, cfg := newSupervisor(t, "")
	killAtEnd(t, cfg.Socket)
	l, err := net.Listen("unix", cfg.Socket)
	testutil.Must(t, err)
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	testutil.Must(t, l.Close())
	testutil.Must(t, s.Ensure(ctxT(t)))
	if !s.Answering() {
		t.Fatal("not answering")
	}
	testutil.Must(t, s.Stop(ctxT(t)))
}
