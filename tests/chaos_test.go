package tests

import (
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// TestPluginCrashDuringChurn: cniplug is killed (-9) at random points while containers are started and
// removed in parallel on three CNI networks (bridge with cniplug's IPAM, ptp with null IPAM, bridge with
// cniplug's IPAM and a warm pool, whose refills the kills also hit). Once it is back,
// every running container has working networking, new containers work, and once everything is removed
// nothing is left: not by Docker (the networks can be removed) and not on the host (the leak check).
func TestPluginCrashDuringChurn(t *testing.T) {
	requireSuite(t)
	seed := time.Now().UnixNano()
	t.Logf("random seed %d", seed)
	rng := rand.New(rand.NewSource(seed))

	type target struct {
		cni  cniNet
		net  string
		warm int // the network's warm pool: reservations it keeps while it exists
	}
	bridge, ptp, warm := bridgeNet(t), ptpNet(t), bridgeNet(t)
	targets := []target{{bridge, createNetwork(t, bridge, cniIPAM), 0}, {ptp, createNetwork(t, ptp, nullIPAM), 0},
		{warm, createNetwork(t, warm, cniIPAM, "--ipam-opt", "warm-pool=2"), 2}}

	var (
		mu       sync.Mutex
		onTarget = map[string]target{} // every container started, by name
		stop     atomic.Bool
		wg       sync.WaitGroup
		runs     atomic.Int32
		failed   atomic.Int32
	)
	const workers = 4
	for w := 0; w < workers; w++ {
		wrng := rand.New(rand.NewSource(rng.Int63()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				tg := targets[wrng.Intn(len(targets))]
				name := testutil.UniqueName("dx")
				mu.Lock()
				onTarget[name] = tg
				mu.Unlock()
				t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
				runs.Add(1)
				if _, err := dockerErr("run", "-d", "--name", name, "--net", tg.net, image, "sleep", "600"); err != nil {
					failed.Add(1) // expected while the plugin is down or was killed mid-call
				}
				// Half of them are removed at once (also while the plugin may be down); the rest stay running.
				if wrng.Intn(2) == 0 {
					_, _ = dockerErr("rm", "-f", name)
				}
			}
		}()
	}
	const kills = 4
	for i := 0; i < kills; i++ {
		// At least 1 s after it serves: dockerd disables a managed plugin that dies again before its post-start
		// dial (0.5 s after the start) succeeds; see run in main.go.
		time.Sleep(time.Duration(1000+rng.Intn(2500)) * time.Millisecond)
		stopPluginWith(syscall.SIGKILL)
		time.Sleep(time.Duration(rng.Intn(1000)) * time.Millisecond)
		if err := startPlugin(); err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("restart %d: %v", i+1, err)
		}
	}
	time.Sleep(2 * time.Second) // some churn with the plugin up again
	stop.Store(true)
	wg.Wait()
	t.Logf("%d docker run, %d failed across %d kills", runs.Load(), failed.Load(), kills)

	// Every running container has working networking on its network.
	var running int
	for name, tg := range onTarget {
		if out, _ := dockerErr("inspect", "-f", "{{.State.Running}}", name); out != "true" {
			continue
		}
		running++
		ep := checkEndpoint(t, name, tg.net, tg.cni)
		ping(t, name, tg.cni.Gateway)
		t.Logf("running: %s on %s with %s", name, tg.cni.Name, ep.IPAddress)
	}
	if running == 0 {
		t.Errorf("no container survived the churn running: nothing was checked")
	}
	// New containers work on both networks.
	for _, tg := range targets {
		c := runContainer(t, tg.net)
		checkEndpoint(t, c, tg.net, tg.cni)
		ping(t, c, tg.cni.Gateway)
		docker(t, "rm", "-f", c)
	}
	// Everything is removed with the plugin up; what Docker removed while it was down is released by
	// reconciliation.
	for name := range onTarget {
		if out, err := dockerErr("rm", "-f", name); err != nil && !strings.Contains(out, "No such container") {
			t.Errorf("docker rm -f %s: %v: %s", name, err, out)
		}
	}
	waitFor(t, 60*time.Second, "every reservation but the warm pool's to be released", func() bool {
		for _, tg := range targets {
			if len(reservations(tg.cni.Name)) != tg.warm {
				return false
			}
		}
		return true
	})
}
