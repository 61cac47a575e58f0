// Package cluster_test runs cniplug on several Docker hosts at once, on the cluster test-bed
// (scripts/cluster.sh): CNI networks that span hosts, per-host Docker networks on them, and swarm services.
package cluster_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil/cluster"
)

// testbed is the cluster every test of this package runs on, brought up once by TestMain (~10 s; the
// managed plugin's bundle is built first when CNIPLUG_E2E_MODE=managed). Its nodes run the engine the host
// runs (CNIPLUG_CLUSTER_ENGINE=current or 20.10 to choose).
var testbed *cluster.Cluster

// skipReason is why the test-bed is not there ("" when it is).
var skipReason string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv("CNIPLUG_CLUSTER_TESTS") == "0" {
		skipReason = "CNIPLUG_CLUSTER_TESTS=0"
		return m.Run()
	}
	if skipReason = cluster.Unavailable(); skipReason != "" {
		return m.Run()
	}
	opts := cluster.Options{Nodes: 3, Managed: os.Getenv("CNIPLUG_E2E_MODE") == "managed", Engine: os.Getenv("CNIPLUG_CLUSTER_ENGINE")}
	if opts.Engine == "" {
		// The engine the rest of the suite runs against (scripts/engine.sh): 20.10, or today's.
		opts.Engine = "current"
		if v, _ := exec.Command("docker", "version", "--format", "{{.Server.Version}}").Output(); strings.HasPrefix(string(v), "20.10.") {
			opts.Engine = "20.10"
		}
	}
	c, err := cluster.Up(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster test-bed: %v\n", err)
		return 1
	}
	testbed = c
	code := m.Run()
	if code != 0 {
		if dir, err := c.SaveLogs(); err == nil {
			fmt.Fprintf(os.Stderr, "cluster test-bed: the nodes' dockerd and cniplug logs are in %s\n", dir)
		}
	}
	if err := c.Down(); err != nil {
		fmt.Fprintf(os.Stderr, "cluster test-bed: %v\n", err)
		return 1
	}
	return code
}

// needCluster returns the test-bed or skips the test with the reason it is not there.
func needCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	if testbed == nil {
		t.Skipf("skipping: no cluster test-bed: %s", skipReason)
	}
	return testbed
}

// lines splits command output into its non-empty lines.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
