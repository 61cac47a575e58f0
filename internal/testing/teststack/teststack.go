// Package teststack builds the real cniplug stack for tests, as main.run does (state store, CNI runner,
// attachment manager, both drivers, the admin service and metrics, behind plugin.NewHandler), and serves it
// on a real unix socket.
package teststack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cniplug/cniplug/admin"
	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/cniconf"
	"github.com/cniplug/cniplug/driver"
	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/cniplug/cniplug/ipam"
	"github.com/cniplug/cniplug/metrics"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/plugin"
	"github.com/cniplug/cniplug/state"
	"github.com/docker/go-plugins-helpers/network"
)

// Stack is a running cniplug without Docker.
type Stack struct {
	Store   *state.Store
	Manager *attach.Manager
	Admin   *admin.Service
	Metrics *metrics.Metrics
	Handler http.Handler
	ConfDir string // where BridgeNetwork writes conflists
	// ConfDirs is the conf dir list cniplug searches: ConfDir, or with Options.HostConfDir a host dir and then
	// ConfDir, as the managed plugin's default /etc/cni/net.d:/opt/cniplug/cni/net.d.
	ConfDirs    string
	HostConfDir string // "" without Options.HostConfDir
	NetNSDir    string
	CacheDir    string // libcni's cache dir
	Socket      string // set by Serve
}

// Options configures New.
type Options struct {
	ConfDir string       // the conf dir to use; "" for a fresh temp dir
	Logger  *slog.Logger // the stack's log; nil discards it
	BinDirs []string     // CNI plugin dirs; may be empty for tests that run no CNI plugin
	MinAge  time.Duration
	NoAdmin bool // serve only the driver methods, as an older cniplug did
	CNIGC   bool // reconciliation runs CNI GC (--cni-gc)
	// MaxWarmTotal bounds the warm attachments of all pools (--warm-pool-max-total); 0 for the default.
	MaxWarmTotal int
	// HostConfDir puts an (empty) host conf dir before ConfDir in the list cniplug searches.
	HostConfDir bool
}

// New builds the stack over fresh temp dirs. Whatever a test leaves attached is torn down at cleanup through
// cniplug's own teardown path.
func New(t testing.TB, o Options) *Stack {
	t.Helper()
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	store, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	s := &Stack{Store: store, ConfDir: o.ConfDir, NetNSDir: t.TempDir(), CacheDir: t.TempDir()}
	if s.ConfDir == "" {
		s.ConfDir = t.TempDir()
	}
	s.ConfDirs = s.ConfDir
	if o.HostConfDir {
		s.HostConfDir = t.TempDir()
		s.ConfDirs = s.HostConfDir + string(filepath.ListSeparator) + s.ConfDir
	}
	s.Metrics = metrics.New(metrics.Options{})
	runner, err := cnibridge.NewRunner(cnibridge.Config{
		BinDirs: o.BinDirs, CacheDir: s.CacheDir, NetNSDir: s.NetNSDir, Timeout: 20 * time.Second, Logger: log,
		ExecObserver: s.Metrics,
	})
	if err != nil {
		t.Skipf("skipping: cannot build the CNI runner: %v", err)
	}
	t.Cleanup(func() { _ = runner.Close() })
	s.Manager = attach.NewManager(attach.Config{Store: store, Runner: runner, Logger: log, RemovalObserver: s.Metrics, WarmFillObserver: s.Metrics,
		CNIGC: o.CNIGC})
	// Safety net: whatever a test left attached is torn down through cniplug's own teardown path. Tests that
	// assert an empty store do so before this runs, so it cannot hide a leak.
	t.Cleanup(func() {
		atts, err := store.Attachments()
		if err != nil {
			t.Errorf("cleanup: listing attachments: %v", err)
		}
		for _, a := range atts {
			if err := s.Manager.Remove(context.Background(), a); err != nil {
				t.Errorf("cleanup: removing leftover attachment %s: %v", a.ID(), err)
			}
		}
	})
	// Runs before the safety net: no warm pool's filler adds one after it looked.
	t.Cleanup(func() {
		if err := s.Manager.StopWarmPools(context.Background()); err != nil {
			t.Errorf("cleanup: stopping warm pools: %v", err)
		}
	})
	s.Admin = admin.New(admin.Config{Driver: "cniplug", ConfDir: s.ConfDirs, Manager: s.Manager, MinAge: o.MinAge})
	var opts []plugin.Option
	if !o.NoAdmin {
		opts = append(opts, plugin.WithAdmin(s.Admin))
	}
	opts = append(opts, plugin.WithObserver(s.Metrics, s.Admin))
	chooser := cniconf.Chooser{ConfDirs: s.ConfDirs, Validator: runner}
	drv, ipd := driver.New("cniplug", chooser, s.Manager, log, ""), ipam.New("cniplug", chooser, s.Manager, log, o.maxWarmTotal())
	s.Handler = plugin.NewHandler(drv, ipd, log, opts...)
	return s
}

// Serve serves the stack with plugin.Listen and plugin.Serve on a socket in a temp dir until the test ends.
func (s *Stack) Serve(t testing.TB) string {
	t.Helper()
	s.Socket = filepath.Join(t.TempDir(), "cniplug.sock")
	l, err := plugin.Listen(s.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- plugin.Serve(ctx, l, s.Handler) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("plugin.Serve: %v", err)
		}
	})
	return s.Socket
}

// Post POSTs body to path on the stack's socket and returns the status and answer.
func (s *Stack) Post(t testing.TB, path string, body []byte) (int, []byte) {
	t.Helper()
	c := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", s.Socket)
	}}}
	defer c.CloseIdleConnections()
	resp, err := c.Post("http://cniplug"+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

// Call POSTs req as JSON and decodes a 200 answer into resp; anything else fails the test.
func (s *Stack) Call(t testing.TB, path string, req, resp any) {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	status, out := s.Post(t, path, b)
	if status != http.StatusOK {
		t.Fatalf("POST %s: status %d: %s", path, status, out)
	}
	if resp != nil {
		if err := json.Unmarshal(out, resp); err != nil {
			t.Fatalf("POST %s: decoding %s: %v", path, out, err)
		}
	}
}

// BridgeNetwork writes a bridge + host-local CNI network into the stack's conf dir (host-local keeps its
// data in a temp dir) and removes the bridge device when the test ends. It returns the CNI network's name.
func (s *Stack) BridgeNetwork(t testing.TB) string {
	t.Helper()
	name, bridge := testutil.UniqueName("tsnet"), testutil.UniqueName("tsbr")
	subnet := fmt.Sprintf("10.252.%d.0/24", 1+mrand.IntN(250))
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[{"type":"bridge","bridge":%q,"isGateway":true,"ipMasq":true,`+
		`"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"}]}}]}`,
		name, bridge, t.TempDir(), subnet)
	testutil.WriteFile(t, s.ConfDir, name+".conflist", conf)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge).Run() })
	return name
}

// Network creates a Docker network (null IPAM) on CNI network cniName, deleted again when the test ends.
func (s *Stack) Network(t testing.TB, cniName string) (networkID string) {
	t.Helper()
	networkID = naming.RandomID()
	s.Call(t, "/NetworkDriver.CreateNetwork", network.CreateNetworkRequest{
		NetworkID: networkID,
		Options:   map[string]any{"com.docker.network.generic": map[string]any{"cni": cniName}},
		IPv4Data:  []*network.IPAMData{{AddressSpace: "null", Pool: "0.0.0.0/0"}},
	}, nil)
	t.Cleanup(func() {
		s.Call(t, "/NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: networkID}, nil)
	})
	return networkID
}

// Endpoint creates a Docker network (null IPAM) on CNI network cniName and an endpoint joined to it, as Docker
// does for `docker run`; the endpoint and network are deleted again when the test ends.
func (s *Stack) Endpoint(t testing.TB, cniName string) (networkID, endpointID string) {
	t.Helper()
	networkID, endpointID = s.Network(t, cniName), naming.RandomID()
	s.Call(t, "/NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: networkID, EndpointID: endpointID,
		Interface: &network.EndpointInterface{}}, nil)
	t.Cleanup(func() {
		s.Call(t, "/NetworkDriver.DeleteEndpoint", network.DeleteEndpointRequest{NetworkID: networkID, EndpointID: endpointID}, nil)
	})
	s.Call(t, "/NetworkDriver.Join", network.JoinRequest{NetworkID: networkID, EndpointID: endpointID, SandboxKey: "/var/run/docker/netns/test"}, nil)
	t.Cleanup(func() {
		s.Call(t, "/NetworkDriver.Leave", network.LeaveRequest{NetworkID: networkID, EndpointID: endpointID}, nil)
	})
	return networkID, endpointID
}

// WaitWarm waits until the pool holds n warm attachments (its filler runs in the background) and returns
// them.
func (s *Stack) WaitWarm(t testing.TB, poolID string, n int) []*state.Attachment {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var warm []*state.Attachment
		atts, err := s.Store.Attachments()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range atts {
			if a.PoolID == poolID && a.Phase == state.PhaseWarm {
				warm = append(warm, a)
			}
		}
		if len(warm) == n {
			return warm
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool %s holds %d warm attachments after 30 s, want %d", poolID, len(warm), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// NewBridge builds a stack with the reference plugins and a bridge + host-local CNI network (BridgeNetwork)
// for tests of the attachment lifecycle, and checks that nothing is left on the host when the test ends. It
// skips without root or the plugins.
func NewBridge(t testing.TB) (*Stack, *cnibridge.Network) {
	t.Helper()
	testutil.RequireRoot(t)
	bin := testutil.CNIBinDir(t)
	before := testutil.TakeSnapshot(t)
	// Registered first, so it runs after every other cleanup of the stack.
	t.Cleanup(func() { testutil.AssertNoLeaks(t, before) })
	s := New(t, Options{BinDirs: []string{bin}})
	nw, err := cnibridge.ResolveNetwork(s.ConfDir, s.BridgeNetwork(t))
	if err != nil {
		t.Fatal(err)
	}
	return s, nw
}

func (o Options) maxWarmTotal() int {
	if o.MaxWarmTotal == 0 {
		return ipam.DefaultMaxWarmTotal
	}
	return o.MaxWarmTotal
}
