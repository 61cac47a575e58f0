package attach_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/dockerapi"
	"github.com/cniplug/cniplug/internal/testing/teststack"
	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/state"
)

// gcRecorder is a CNI plugin that answers ADD with an empty result, and writes what it gets for GC into a
// file of dir: the valid attachments a runtime names are what the test checks.
const gcRecorder = `#!/bin/sh
case "$CNI_COMMAND" in
ADD) cat >/dev/null; echo '{"cniVersion":"1.1.0"}';;
GC) cat > "%s/gc.$$";;
VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}';;
esac
exit 0
`

// gcCalls returns the valid attachments of every GC the recorder saw, as sorted "id/ifname" lists.
func gcCalls(t *testing.T, dir string) [][]string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "gc.*"))
	var out [][]string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var conf struct {
			Valid []struct {
				ContainerID string `json:"containerID"`
				IfName      string `json:"ifname"`
			} `json:"cni.dev/valid-attachments"`
		}
		if err := json.Unmarshal(data, &conf); err != nil {
			t.Fatalf("GC config %s: %v", data, err)
		}
		var ids []string
		for _, v := range conf.Valid {
			ids = append(ids, v.ContainerID+"/"+v.IfName)
		}
		sort.Strings(ids)
		out = append(out, ids)
		_ = os.Remove(f)
	}
	return out
}

// TestReconcileCollectsGarbage: reconciliation tears down this instance's attachments that only libcni's
// cache still knows (lost state) through the one teardown path, then runs CNI GC on spec 1.1 networks naming
// every attachment anyone holds (its own records and other runtimes' cache entries), and never runs GC with
// an empty list.
func TestReconcileCollectsGarbage(t *testing.T) {
	s, nw, recordDir := gcStack(t, true)
	name := nw.Name
	ctx := context.Background()

	// A live attachment, recorded.
	live, err := s.Manager.Add(ctx, cnibridge.AddRequest{ContainerID: naming.RandomID(), Network: nw},
		state.Attachment{Phase: state.PhaseJoined, NetworkID: "net1", EndpointID: "ep1"})
	testutil.Must(t, err)
	// An attachment of this instance that only the cache knows: ADD ran, the record is gone.
	orphan, err := s.Manager.Runner().NewAttachment(cnibridge.AddRequest{ContainerID: naming.RandomID(), Network: nw})
	testutil.Must(t, err)
	testutil.Must(t, s.Manager.Runner().Add(ctx, orphan))
	// Another runtime's attachment on the same CNI network, sharing the cache.
	foreign := naming.RandomID()
	foreignCache := testutil.WriteFile(t, filepath.Join(s.CacheDir, "results"), name+"-"+foreign+"-eth0",
		fmt.Sprintf(`{"kind":"cniCacheV1","containerId":%q,"ifName":"eth0","networkName":%q,"netns":"/run/netns/other-runtime"}`, foreign, name))

	rep, err := s.Manager.Reconcile(ctx, attach.ReconcileOptions{Live: dockerapi.Live{"net1": {"ep1": true}}})
	testutil.Must(t, err)
	var removed []string
	for _, a := range rep.Attachments {
		removed = append(removed, a.Attachment)
	}
	if len(removed) != 1 || removed[0] != orphan.ContainerID {
		t.Errorf("reconcile removed %v, want only the cache-only attachment %s", removed, orphan.ContainerID)
	}
	if s.Manager.Runner().Cached(orphan) {
		t.Errorf("cache-only attachment %s still in libcni's cache", orphan.ContainerID)
	}
	if _, err := os.Stat(orphan.NetNS); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging netns %s of the cache-only attachment left: %v", orphan.NetNS, err)
	}
	want := []string{foreign + "/eth0", live.ContainerID + "/eth0"}
	sort.Strings(want)
	if calls := gcCalls(t, recordDir); len(calls) != 1 || strings.Join(calls[0], ",") != strings.Join(want, ",") {
		t.Errorf("GC calls with valid attachments %v, want one with %v", calls, want)
	}
	if len(rep.GC) != 1 || rep.GC[0].Network != name || rep.GC[0].Valid != 2 || rep.GC[0].Error != "" {
		t.Errorf("GC report %+v, want one GC on %s with 2 valid attachments", rep.GC, name)
	}
	if !s.Manager.Runner().Cached(&live.Attachment) {
		t.Errorf("live attachment %s lost its cache entry", live.ContainerID)
	}

	// An empty list of valid attachments would release everything: GC refuses to run.
	if err := s.Manager.Runner().GC(ctx, nw, nil); !errors.Is(err, cnibridge.ErrNoValidAttachments) {
		t.Errorf("GC with no valid attachment: %v, want ErrNoValidAttachments", err)
	}
	// Without records on the network there is no GC at all, even with other runtimes' cache entries there.
	testutil.Must(t, s.Manager.Remove(ctx, live))
	rep, err = s.Manager.Reconcile(ctx, attach.ReconcileOptions{Live: dockerapi.Live{}})
	testutil.Must(t, err)
	if calls := gcCalls(t, recordDir); len(calls) != 0 || len(rep.GC) != 0 || len(rep.Attachments) != 0 {
		t.Errorf("with no attachment of its own: GC calls %v, report %+v", calls, rep)
	}
	if _, err := os.Stat(foreignCache); err != nil {
		t.Errorf("another runtime's cache entry was touched: %v", err)
	}
}

// TestNoCNIGCByDefault: without --cni-gc, reconciliation runs no CNI GC at all, so another runtime's
// attachment on the same CNI network (its cache entry and the addresses its plugins hold) is never released,
// whatever that runtime does meanwhile. cniplug's own cache-only attachments are still torn down.
func TestNoCNIGCByDefault(t *testing.T) {
	s, nw, recordDir := gcStack(t, false)
	name := nw.Name
	ctx := context.Background()
	live, err := s.Manager.Add(ctx, cnibridge.AddRequest{ContainerID: naming.RandomID(), Network: nw},
		state.Attachment{Phase: state.PhaseJoined, NetworkID: "net1", EndpointID: "ep1"})
	testutil.Must(t, err)
	foreign := naming.RandomID()
	foreignCache := testutil.WriteFile(t, filepath.Join(s.CacheDir, "results"), name+"-"+foreign+"-eth0",
		fmt.Sprintf(`{"kind":"cniCacheV1","containerId":%q,"ifName":"eth0","networkName":%q,"netns":"/run/netns/other-runtime"}`, foreign, name))

	_, err = s.Manager.Reconcile(ctx, attach.ReconcileOptions{Live: dockerapi.Live{"net1": {"ep1": true}}})
	testutil.Must(t, err)
	if calls := gcCalls(t, recordDir); len(calls) != 0 {
		t.Errorf("CNI GC ran without --cni-gc: %v", calls)
	}
	if _, err := os.Stat(foreignCache); err != nil {
		t.Errorf("another runtime's cache entry went: %v", err)
	}
	testutil.Must(t, os.Remove(foreignCache))
	testutil.Must(t, s.Manager.Remove(ctx, live))
}

// gcStack is a stack (with or without --cni-gc) and a spec 1.1 CNI network whose chain starts with the GC
// recorder, which writes what GC names into the returned dir; it ends with a leak check.
func gcStack(t *testing.T, cniGC bool) (*teststack.Stack, *cnibridge.Network, string) {
	t.Helper()
	recordDir := t.TempDir()
	s, nw := scriptedChainStack(t, "gc-recorder", fmt.Sprintf(gcRecorder, recordDir), teststack.Options{CNIGC: cniGC})
	return s, nw, recordDir
}

// scriptedChainStack is a stack and a spec 1.1 CNI network whose chain runs the shell script (a CNI plugin
// installed as name) before a masquerading bridge with host-local; it ends with a leak check.
func scriptedChainStack(t *testing.T, name, script string, o teststack.Options) (*teststack.Stack, *cnibridge.Network) {
	t.Helper()
	testutil.RequireRoot(t)
	bins := testutil.CNIBinDir(t)
	before := testutil.TakeSnapshot(t)
	t.Cleanup(func() { testutil.AssertNoLeaks(t, before) })
	pluginDir := t.TempDir()
	testutil.WriteFile(t, pluginDir, name, script)
	testutil.Must(t, os.Chmod(filepath.Join(pluginDir, name), 0o755))
	o.BinDirs = []string{pluginDir, bins}
	s := teststack.New(t, o)
	netName, bridge := testutil.UniqueName("scnet"), testutil.UniqueName("scbr")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge).Run() })
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":%q},`+
		`{"type":"bridge","bridge":%q,"isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.251.%d.0/24"}]]}}]}`,
		netName, name, bridge, t.TempDir(), 1+mrand.IntN(250))
	nw, err := cnibridge.ParseNetwork([]byte(conf))
	testutil.Must(t, err)
	return s, nw
}
