// Package cluster is internal/cluster for tests: the same test-bed, with helpers that fail the test on
// error, leak snapshots of every node, and swarm set-ups.
package cluster

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/cluster"
	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// Options choose what `scripts/cluster.sh up` builds.
type Options = cluster.Options

// Cluster is a running test-bed; its Nodes carry the tests' helpers.
type Cluster struct {
	*cluster.Cluster
	Nodes []*Node
}

// Node is one Docker host of the cluster.
type Node struct{ *cluster.Node }

// Unavailable says why the test-bed cannot run here, or "" when it can.
func Unavailable() string { return cluster.Unavailable() }

// Up brings a cluster up (building what it needs), replacing a test cluster of the same name left behind by
// a killed test run.
func Up(opts Options) (*Cluster, error) {
	c, err := cluster.Up(opts)
	if err != nil {
		return nil, err
	}
	tc := &Cluster{Cluster: c}
	for _, n := range c.Nodes {
		tc.Nodes = append(tc.Nodes, &Node{n})
	}
	return tc, nil
}

// Script runs scripts/cluster.sh with args (stop, kill, start, isolate, rejoin NODE), failing the test on error.
func (c *Cluster) Script(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.RunScript(5*time.Minute, args...)
	if err != nil {
		t.Fatalf("cluster.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// Kill powers a node off; Start boots it again with its disks kept.
func (c *Cluster) Kill(t testing.TB, n *Node) { t.Helper(); c.Script(t, "kill", n.Name) }

func (c *Cluster) Start(t testing.TB, n *Node) { t.Helper(); c.Script(t, "start", n.Name) }

// Isolate cuts a node off the underlay; Rejoin reconnects it.
func (c *Cluster) Isolate(t testing.TB, n *Node) { t.Helper(); c.Script(t, "isolate", n.Name) }

func (c *Cluster) Rejoin(t testing.TB, n *Node) { t.Helper(); c.Script(t, "rejoin", n.Name) }

// Exec runs a command on the node and returns its output, failing the test on error.
func (n *Node) Exec(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %s %s: %v\n%s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// Docker runs the docker CLI against the node's dockerd, failing the test on error.
func (n *Node) Docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.DockerE(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Host is the node as a place for testutil's leak snapshots.
func (n *Node) Host() testutil.Host {
	return testutil.Host{Name: n.Name, Command: n.Command,
		CNIDataDir: filepath.Join(n.Dir, "cni"), NetNSDir: filepath.Join(n.Dir, "run", "netns")}
}

// Snapshots records every node's state for AssertNoLeaks.
func (c *Cluster) Snapshots(t testing.TB) map[string]testutil.Snapshot {
	t.Helper()
	snaps := map[string]testutil.Snapshot{}
	for _, n := range c.Nodes {
		snaps[n.Name] = testutil.TakeSnapshotOn(t, n.Host())
	}
	return snaps
}

// AssertNoLeaks fails the test if any node has links, netns, reservations, cache files or CNI rules it did
// not have at the snapshot, or attachments cniplug still records.
func (c *Cluster) AssertNoLeaks(t testing.TB, before map[string]testutil.Snapshot) {
	t.Helper()
	for _, n := range c.Nodes {
		testutil.AssertNoLeaks(t, before[n.Name])
	}
}

// Eventually polls cond every 200 ms until it holds or timeout passes, then fails the test with what.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
	}
}
