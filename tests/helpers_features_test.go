package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// remoteHost is a client in its own network namespace, linked to the test host by a veth pair: traffic from
// it reaches the host like traffic from another machine (PREROUTING, FORWARD), unlike traffic from the host.
type remoteHost struct {
	NetNS  string // name under /run/netns
	HostIP string // the test host's address on the link
	IP     string // the client's address
	// The same over IPv6.
	HostIP6, IP6 string
}

var remoteSeq atomic.Int32

func newRemoteHost(t *testing.T) remoteHost {
	t.Helper()
	n := 10 + remoteSeq.Add(1)
	r := remoteHost{NetNS: testutil.UniqueName("e2erh"), HostIP: fmt.Sprintf("10.214.%d.1", n), IP: fmt.Sprintf("10.214.%d.2", n),
		HostIP6: fmt.Sprintf("fd00:214:%d::1", n), IP6: fmt.Sprintf("fd00:214:%d::2", n)}
	hostIf, peerIf := testutil.UniqueName("rhh"), testutil.UniqueName("rhp")
	testutil.Run(t, "ip", "netns", "add", r.NetNS)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", r.NetNS).Run() })
	testutil.Run(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", peerIf)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostIf).Run() })
	testutil.Run(t, "ip", "link", "set", peerIf, "netns", r.NetNS)
	testutil.Run(t, "ip", "addr", "add", r.HostIP+"/24", "dev", hostIf)
	testutil.Run(t, "ip", "addr", "add", r.HostIP6+"/64", "dev", hostIf, "nodad")
	testutil.Run(t, "ip", "link", "set", hostIf, "up")
	in := func(args ...string) { testutil.Run(t, "ip", append([]string{"netns", "exec", r.NetNS}, args...)...) }
	in("ip", "link", "set", "lo", "up")
	in("ip", "addr", "add", r.IP+"/24", "dev", peerIf)
	in("ip", "link", "set", peerIf, "up")
	in("ip", "addr", "add", r.IP6+"/64", "dev", peerIf, "nodad")
	in("ip", "route", "add", "default", "via", r.HostIP)
	in("ip", "-6", "route", "add", "default", "via", r.HostIP6)
	return r
}

// run runs a command in the remote host's namespace.
func (r remoteHost) run(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", r.NetNS}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// httpGet fetches url from the remote host (or from the test host when r is nil) with the net helper
// (Debian's static busybox wget crashes on the host).
func httpGet(r *remoteHost, url string) (string, error) {
	args := []string{netHelperPath, "get", url}
	if netHelperPath == "" {
		return "", fmt.Errorf("net helper not built")
	}
	if r != nil {
		return r.run(args...)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// httpContainer starts a container serving its own name over HTTP on port 80 (and a UDP echo on 9999 when
// udp is set), with the extra docker run flags (e.g. -p).
func httpContainer(t *testing.T, network string, udp bool, extra ...string) string {
	t.Helper()
	netHelper(t)
	name := testutil.UniqueName("dc")
	args := []string{"run", "-d", "--name", name}
	if network != "" {
		args = append(args, "--net", network)
	}
	script := "mkdir -p /www && echo hello-from-" + name + " > /www/index.html && "
	if udp {
		args = append(args, "-v", netHelper(t)+":/nethelper:ro")
		script += "(/nethelper serve :9999 &) && "
	}
	script += "exec httpd -f -p 80 -h /www"
	args = append(append(args, extra...), image, "sh", "-c", script)
	t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
	docker(t, args...)
	return name
}

// waitHTTP retries a fetch for a few seconds (the server inside the container may still be starting).
func waitHTTP(r *remoteHost, url, want string) (string, error) {
	var out string
	var err error
	for deadline := time.Now().Add(8 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		out, err = httpGet(r, url)
		if err == nil && strings.Contains(out, want) {
			return out, nil
		}
	}
	if err == nil {
		err = fmt.Errorf("got %q, want %q", out, want)
	}
	return out, err
}

var (
	netHelperOnce sync.Once
	netHelperPath string
	netHelperErr  error
)

// netHelperSrc is a static UDP echo server and client and an HTTP client: busybox has no UDP tools.
const netHelperSrc = `package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	switch os.Args[1] {
	case "serve":
		c, err := net.ListenPacket("udp", os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				continue
			}
			c.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	case "get":
		c := &http.Client{Timeout: 3 * time.Second}
		resp, err := c.Get(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		io.Copy(os.Stdout, resp.Body)
		resp.Body.Close()
	case "ask":
		c, err := net.Dial("udp", os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		buf := make([]byte, 1500)
		for i := 0; i < 10; i++ {
			c.Write([]byte(os.Args[3]))
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if n, err := c.Read(buf); err == nil {
				fmt.Println(string(buf[:n]))
				return
			}
		}
		fmt.Fprintln(os.Stderr, "no UDP answer from", os.Args[2])
		os.Exit(1)
	}
}
`

// netHelper builds the static net helper once per run into bin/ (build output, like bin/cniplug: `make clean`
// removes it) and returns its path. Its source is written to a temporary dir removed right after the build.
func netHelper(t *testing.T) string {
	t.Helper()
	netHelperOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cniplug-nethelper-")
		if netHelperErr = err; err != nil {
			return
		}
		defer os.RemoveAll(dir)
		if netHelperErr = os.WriteFile(filepath.Join(dir, "main.go"), []byte(netHelperSrc), 0o644); netHelperErr != nil {
			return
		}
		if netHelperErr = os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module nethelper\n\ngo 1.21\n"), 0o644); netHelperErr != nil {
			return
		}
		netHelperPath = filepath.Join(testutil.RepoRoot(), "bin", "e2e-nethelper")
		cmd := exec.Command("go", "build", "-o", netHelperPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOTOOLCHAIN=local")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			netHelperErr = fmt.Errorf("building the net helper: %v: %s", err, out)
		}
	})
	if netHelperErr != nil {
		t.Skipf("skipping: %v", netHelperErr)
	}
	return netHelperPath
}

// udpAsk sends msg to addr from the remote host (or the test host when r is nil) and returns the answer.
func udpAsk(t *testing.T, r *remoteHost, addr, msg string) (string, error) {
	args := []string{netHelper(t), "ask", addr, msg}
	if r != nil {
		return r.run(args...)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// iptablesMentions returns the lines of iptables-save (v4 and v6, all tables) that contain s.
func iptablesMentions(t *testing.T, s string) []string {
	t.Helper()
	var out []string
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		b, err := exec.Command(cmd).Output()
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, s) {
				out = append(out, cmd+": "+line)
			}
		}
	}
	return out
}

// freePort returns a TCP/UDP port number unlikely to be used by anything else in this run.
var portSeq atomic.Int32

func freePort() int { return 41000 + int(portSeq.Add(1))*7 + os.Getpid()%500 }
