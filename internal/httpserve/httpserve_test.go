package httpserve

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serveTest serves h on a unix socket with the given timeouts until the test ends and returns the socket.
func serveTest(t *testing.T, h http.Handler, to timeouts) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, l, h, 5*time.Second, to) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return sock
}

// closedWithin reports whether the server closes conn within d.
func closedWithin(conn net.Conn, d time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

func TestSlowClientsAreCutOff(t *testing.T) {
	to := timeouts{readHeader: 200 * time.Millisecond, read: 400 * time.Millisecond, idle: 300 * time.Millisecond}
	sock := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}), to)
	for _, tc := range []struct {
		name string
		send string
	}{
		{"headers never end", "POST /x HTTP/1.1\r\nHost: x\r\n"},
		{"body never ends", "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"},
		{"idle after a request", "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, tc.send); err != nil {
				t.Fatal(err)
			}
			if !closedWithin(conn, 3*time.Second) {
				t.Fatal("the server still holds the connection")
			}
		})
	}
}

// A request whose body is read may take longer than the read timeout (a CNI ADD up to --cni-timeout): it is
// neither cancelled nor cut off.
func TestLongRequestOutlivesReadTimeout(t *testing.T) {
	to := timeouts{readHeader: 100 * time.Millisecond, read: 200 * time.Millisecond, idle: time.Second}
	sock := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-time.After(600 * time.Millisecond):
			_, _ = io.WriteString(w, "done")
		case <-r.Context().Done():
			http.Error(w, "cancelled", http.StatusServiceUnavailable)
		}
	}), to)
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "done") {
		t.Fatalf("status %d: %s; want 200 done", resp.StatusCode, body)
	}
}
