package testutil

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// DHCPDaemon is the CNI dhcp plugin's daemon (`dhcp daemon`), listening on a socket of its own so that tests
// never meet a daemon of the host's (/run/cni/dhcp.sock). Networks reach it with
// "ipam": {"type": "dhcp", "daemonSocketPath": Socket}.
type DHCPDaemon struct {
	Socket string
	out    *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// StartDHCPDaemon starts binDir/dhcp as a daemon and stops it (SIGTERM) at the end of the test. extraArgs
// are added to its command line (e.g. "-resendtimeout", "20s").
func StartDHCPDaemon(t testing.TB, binDir string, extraArgs ...string) *DHCPDaemon {
	t.Helper()
	bin := filepath.Join(binDir, "dhcp")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("skipping: CNI dhcp plugin not found in %s (run `make cni-plugins`)", binDir)
	}
	d := &DHCPDaemon{Socket: filepath.Join(t.TempDir(), "dhcp.sock"), out: &syncBuffer{}}
	cmd := exec.Command(bin, append([]string{"daemon", "-socketpath", d.Socket}, extraArgs...)...)
	cmd.Stdout, cmd.Stderr = d.out, d.out
	Must(t, cmd.Start())
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() {
		stopProcess(t, "dhcp daemon", cmd, waited, d.out)
		_ = os.Remove(d.Socket)
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("unix", d.Socket); err == nil {
			c.Close()
			return d
		}
		select {
		case err := <-waited:
			waited <- err
			t.Fatalf("dhcp daemon exited: %v\n%s", err, d.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dhcp daemon did not listen on %s within 10s:\n%s", d.Socket, d.out)
		}
	}
}

// Log returns what the daemon logged so far.
func (d *DHCPDaemon) Log() string { return d.out.String() }

// LogLines returns the daemon's log lines that match re.
func (d *DHCPDaemon) LogLines(re *regexp.Regexp) []string {
	var out []string
	for _, line := range strings.Split(d.Log(), "\n") {
		if re.MatchString(line) {
			out = append(out, line)
		}
	}
	return out
}
