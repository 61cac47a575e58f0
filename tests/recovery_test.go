package tests

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// TestParallelLifecycles: many `docker run -d` at once on one network all succeed with distinct addresses,
// then as many parallel `rm -f` leave nothing behind.
func TestParallelLifecycles(t *testing.T) {
	for _, tc := range []struct {
		mode addressing
		n    int
	}{{cniIPAM, 50}, {nullIPAM, 25}} {
		mode, n := tc.mode, tc.n
		t.Run(fmt.Sprintf("%s/%d", mode, n), func(t *testing.T) {
			requireSuite(t)
			cn := bridgeNet(t)
			net := createNetwork(t, cn, mode)
			names := make([]string, n)
			errs := make([]error, n)
			outs := make([]string, n)
			var wg sync.WaitGroup
			for i := range names {
				names[i] = testutil.UniqueName("dp")
				t.Cleanup(func() { _, _ = dockerErr("rm", "-f", names[i]) })
				wg.Add(1)
				go func() {
					defer wg.Done()
					outs[i], errs[i] = dockerErr("run", "-d", "--name", names[i], "--net", net, image, "sleep", "600")
				}()
			}
			wg.Wait()
			seen := map[string]string{}
			for i, name := range names {
				if errs[i] != nil {
					t.Errorf("docker run %s: %v: %s", name, errs[i], outs[i])
					continue
				}
				ip := inspectEndpoint(t, name, net).IPAddress
				if other, dup := seen[ip]; dup {
					t.Errorf("%s and %s both got %s", name, other, ip)
				}
				seen[ip] = name
				if !reservedByHostLocal(cn.Name, ip) {
					t.Errorf("%s: %s not reserved by host-local", name, ip)
				}
			}
			for i, name := range names {
				wg.Add(1)
				go func() {
					defer wg.Done()
					outs[i], errs[i] = dockerErr("rm", "-f", name)
				}()
			}
			wg.Wait()
			for i, name := range names {
				if errs[i] != nil {
					t.Errorf("docker rm -f %s: %v: %s", name, errs[i], outs[i])
				}
			}
		})
	}
}

// TestCrashDuringAdd: cniplug killed while a CNI ADD is in flight leaves a half-made attachment; the next
// start removes it (its bridge, masquerade chain, reservation and staging netns) before serving.
func TestCrashDuringAdd(t *testing.T) {
	requireSuite(t)
	n := bridgeNet(t, `{"type":"e2e-hanger"}`)
	net := createNetwork(t, n, nullIPAM)
	name := testutil.UniqueName("dc")
	t.Cleanup(func() { _, _ = dockerErr("rm", "-f", name) })
	done := make(chan string, 1)
	go func() {
		out, _ := dockerErr("run", "-d", "--name", name, "--net", net, image, "sleep", "60")
		done <- out
	}()
	// Wait until the chain's bridge step has run (the staging netns exists) and the hanger is in flight.
	waitFor(t, 10*time.Second, "a staging netns to appear", func() bool {
		m, _ := filepath.Glob("/run/netns/cniplug-*")
		return len(m) > 0 && reservedDir(n.Name)
	})
	stopPluginWith(syscall.SIGKILL)
	// The hanger is a child of the dead plugin's exec; it does not matter to cleanup, but do not leave it.
	_ = exec.Command("pkill", "-f", "e2e-hanger").Run()
	if err := startPlugin(); err != nil {
		t.Fatal(err)
	}
	t.Logf("docker run ended with: %s", <-done)
	if left, _ := filepath.Glob(filepath.Join(testutil.CNIDataDir, "networks", n.Name, "10.*")); len(left) > 0 {
		t.Errorf("reservations left after restart: %v", left)
	}
}

// TestForgottenEndpoint: a container removed while cniplug was down (Docker could not call DeleteEndpoint)
// is released by reconciliation against Docker's live endpoints.
func TestForgottenEndpoint(t *testing.T) {
	requireSuite(t)
	n := bridgeNet(t)
	net := createNetwork(t, n, cniIPAM)
	c := runContainer(t, net)
	ep := checkEndpoint(t, c, net, n)
	stopPluginWith(syscall.SIGKILL)
	// Docker retries the dead plugin, then force-removes the container without the driver.
	out, err := dockerErr("rm", "-f", c)
	if err != nil {
		t.Logf("docker rm -f with the plugin down: %v: %s", err, out)
		_, _ = dockerErr("rm", "-f", c)
	}
	if !reservedByHostLocal(n.Name, ep.IPAddress) {
		t.Log("note: Docker released the endpoint without the plugin; nothing left to reconcile")
	}
	if err := startPlugin(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "reconciliation to release "+ep.IPAddress, func() bool {
		return !reservedByHostLocal(n.Name, ep.IPAddress)
	})
	// The network still works for new containers.
	c2 := runContainer(t, net)
	checkEndpoint(t, c2, net, n)
}

func reservedDir(cniName string) bool {
	m, _ := filepath.Glob(filepath.Join(testutil.CNIDataDir, "networks", cniName, "10.*"))
	return len(m) > 0
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out after %s waiting for %s", limit, what)
}

// TestReconcileUnderAnotherName: reconciliation finds Docker's networks by ID, so a plugin that does not know
// the name Docker registered it under (a managed plugin installed with --alias and no CNIPLUG_DRIVER_NAME)
// never takes live endpoints for forgotten ones and tears down running containers.
func TestReconcileUnderAnotherName(t *testing.T) {
	requireSuite(t)
	setPluginEnv(t, "CNIPLUG_DRIVER_NAME", "cniplug-e2e-unknown-name")
	n := bridgeNet(t)
	net := createNetwork(t, n, cniIPAM)
	c := runContainer(t, net)
	ep := checkEndpoint(t, c, net, n)
	// The suite reconciles every 2s, 5s after start, leaving attachments younger than 3s alone: by now
	// several reconciliations have looked at this one.
	time.Sleep(10 * time.Second)
	if !reservedByHostLocal(n.Name, ep.IPAddress) {
		t.Errorf("reconciliation released %s of running container %s", ep.IPAddress, c)
	}
	ping(t, c, n.Gateway)
	docker(t, "rm", "-f", c)
	if !releasedByHostLocal(n.Name, ep.IPAddress) {
		t.Errorf("%s still reserved after docker rm -f", ep.IPAddress)
	}
}

// TestAsyncDelete: on a network created with --opt async-delete=true, `docker rm -f` does not wait for CNI
// DEL (the chain's DEL takes 3 s). The DEL still completes: in the background; before cniplug exits when it
// is stopped in the middle of it; or at the next start when it is killed in the middle of it (the socket
// takes connections meanwhile). Completion is seen in libcni's cache entry, which only a completed DEL
// removes; nothing is left (leak check).
func TestAsyncDelete(t *testing.T) {
	for _, interrupt := range []string{"none", "stop", "kill"} {
		t.Run(interrupt, func(t *testing.T) {
			requireSuite(t)
			br := testutil.UniqueName("e2ebr")
			t.Cleanup(func() { _ = exec.Command("ip", "link", "del", br).Run() })
			n := writeConflist(t, "slow", func(ipam string) string {
				return fmt.Sprintf(`{"type":"e2e-slowdel"},{"type":"bridge","bridge":"%s","isGateway":true,"ipMasq":true,"ipam":%s}`, br, ipam)
			})
			net := createNetwork(t, n, cniIPAM, "--opt", "async-delete=true")
			c := runContainer(t, net)
			ep := checkEndpoint(t, c, net, n)
			ping(t, c, n.Gateway)
			start := time.Now()
			docker(t, "rm", "-f", c)
			if took := time.Since(start); took > 2500*time.Millisecond {
				t.Errorf("docker rm -f took %s: it waited for the 3 s CNI DEL", took)
			}
			cache := filepath.Join(testutil.CNIDataDir, "results", n.Name+"-*")
			delDone := func() bool {
				left, _ := filepath.Glob(cache)
				return len(left) == 0 && !reservedByHostLocal(n.Name, ep.IPAddress)
			}
			switch interrupt {
			case "stop":
				stopPlugin() // SIGTERM: it waits for its background removals before exiting
				if !delDone() {
					t.Errorf("cniplug exited before its background DEL of %s completed", ep.IPAddress)
				}
				testutil.Must(t, startPlugin())
			case "kill":
				time.Sleep(time.Second) // the DEL is under way
				stopPluginWith(syscall.SIGKILL)
				if !env.managed {
					testutil.Must(t, launchV1()) // dockerd restarts a managed plugin by itself
				}
				// The startup reconciliation finishes the 3 s DEL before serving; the socket must accept
				// connections meanwhile (dockerd disables a restarted managed plugin it cannot dial).
				waitFor(t, 20*time.Second, "the restarted plugin's socket to accept connections", socketAccepts)
				accepted := time.Now()
				testutil.Must(t, waitServing())
				if gap := time.Since(accepted); gap < 1500*time.Millisecond {
					t.Errorf("the socket took connections only %s before the plugin answered: it was not listening during the startup reconciliation", gap)
				}
			}
			waitFor(t, 30*time.Second, "the DEL to finish (libcni cache entry gone, "+ep.IPAddress+" released)", delDone)
			c2 := runContainer(t, net)
			checkEndpoint(t, c2, net, n)
		})
	}
}
