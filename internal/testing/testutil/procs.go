package testutil

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PidsMatching returns the live processes whose command line contains s (like `pgrep -f`, without a regexp).
// Zombies have an empty command line and are not returned.
func PidsMatching(s string) []int {
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []int
	self := os.Getpid()
	for _, p := range paths {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// KillMatching SIGKILLs the processes whose command line contains s and waits up to 5s for them to go; for
// cleanups of processes a test started (s must be unique to the test, such as a path under t.TempDir()).
func KillMatching(t testing.TB, s string) {
	t.Helper()
	pids := PidsMatching(s)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(5 * time.Second); len(PidsMatching(s)) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("processes matching %q survived SIGKILL: %v", s, PidsMatching(s))
			return
		}
	}
}
