package cnibridge_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// execRecorder is an ExecObserver that keeps what it is told.
type execRecorder struct {
	mu    sync.Mutex
	execs []observedExec
}

type observedExec struct {
	plugin, command string
	d               time.Duration
	err             error
}

func (r *execRecorder) ObserveExec(plugin, command string, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.execs = append(r.execs, observedExec{plugin, command, d, err})
}

func (r *execRecorder) seen(plugin, command string) (n int, failed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.execs {
		if e.plugin == plugin && e.command == command {
			n++
			if e.err != nil {
				failed++
			}
			if e.d <= 0 {
				panic(fmt.Sprintf("exec %s %s observed with duration %v", plugin, command, e.d))
			}
		}
	}
	return n, failed
}

// bridgeConflist is a bridge + host-local network whose host-local data lives in dataDir.
func bridgeConflist(name, bridge, subnet, dataDir string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[
 {"type":"bridge","bridge":%q,"isGateway":true,"ipMasq":true,
  "ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"}]}}]}`,
		name, bridge, dataDir, subnet))
}

func newObservedRunner(t testing.TB, obs cnibridge.ExecObserver) *cnibridge.Runner {
	t.Helper()
	r, err := cnibridge.NewRunner(cnibridge.Config{
		BinDirs:      []string{testutil.CNIBinDir(t)},
		CacheDir:     t.TempDir(),
		NetNSDir:     t.TempDir(),
		Timeout:      20 * time.Second,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		ExecObserver: obs,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// Every plugin exec libcni makes (VERSION when validating, ADD and DEL of each plugin of the chain) reaches
// the observer with the plugin type and CNI command. IPAM plugins are exec'd by the main plugin itself
// (delegation), so their time is part of the main plugin's exec.
func TestExecObserverSeesEveryPluginExec(t *testing.T) {
	testutil.NewNS(t) // before the runner: its host netns is the fresh one
	rec := &execRecorder{}
	r := newObservedRunner(t, rec)
	name := testutil.UniqueName("obs")
	nw, err := cnibridge.ParseNetwork(bridgeConflist(name, testutil.UniqueName("obsbr"), "10.251.7.0/24", t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(context.Background(), nw); err != nil {
		t.Fatal(err)
	}
	if n, _ := rec.seen("bridge", "VERSION"); n == 0 {
		t.Errorf("no VERSION exec of bridge observed: %+v", rec.execs)
	}

	before := testutil.TakeSnapshot(t)
	t.Cleanup(func() { testutil.AssertNoLeaks(t, before) })
	bridge := testutil.UniqueName("obsbr")
	nw, err = cnibridge.ParseNetwork(bridgeConflist(name, bridge, "10.251.7.0/24", t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge).Run() })
	att, err := r.NewAttachment(cnibridge.AddRequest{ContainerID: "0123456789abcdef" + testutil.UniqueName("obs"), Network: nw})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Add(context.Background(), att); err != nil {
		t.Fatal(err)
	}
	if err := r.Teardown(context.Background(), att); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"ADD", "DEL"} {
		if n, failed := rec.seen("bridge", c); n != 1 || failed > 0 {
			t.Errorf("bridge %s: observed %d execs, %d failed; want one that succeeded", c, n, failed)
		}
	}
	if n, _ := rec.seen("host-local", "ADD"); n != 0 {
		t.Errorf("host-local ADD observed %d times: it is delegated to by bridge, not exec'd by libcni", n)
	}
}

// A failing exec is reported with its error.
func TestExecObserverSeesFailures(t *testing.T) {
	rec := &execRecorder{}
	dir := t.TempDir()
	testutil.WriteFile(t, dir, "obs-failer", "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"no\"}'\nexit 1\n")
	if err := os.Chmod(filepath.Join(dir, "obs-failer"), 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := cnibridge.NewRunner(cnibridge.Config{BinDirs: []string{dir}, CacheDir: t.TempDir(), NetNSDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ExecObserver: rec})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	nw, err := cnibridge.ParseNetwork([]byte(`{"cniVersion":"1.0.0","name":"obsbad","plugins":[{"type":"obs-failer"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(context.Background(), nw); err == nil {
		t.Fatal("Validate accepted a plugin whose VERSION fails")
	}
	if n, failed := rec.seen("obs-failer", "VERSION"); n == 0 || failed != n {
		t.Errorf("observed %d VERSION execs of obs-failer, %d failed; want all failed: %+v", n, failed, rec.execs)
	}
}
