package attach_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/cniconf"
	"github.com/cniplug/cniplug/dockerapi"
	"github.com/cniplug/cniplug/internal/testing/teststack"
	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/cniplug/cniplug/naming"
	"github.com/cniplug/cniplug/state"
)

// Apply checks the CNI result against what Docker chose; a result that differs is removed again through the
// one teardown path, leaving no record, staging netns or address behind. A result that matches is kept.
func TestAttachChecksResult(t *testing.T) {
	s, nw := teststack.NewBridge(t)
	subnet := nw.FirstRange(false).Subnet
	other := subnet.IP.To4()
	other = []byte{other[0], other[1], other[2], 200}

	for _, tc := range []struct {
		name    string
		want    attach.Want
		wantErr string
	}{
		{"nothing chosen", attach.Want{}, ""},
		{"IPv4 required and assigned", attach.Want{NeedIPv4: true}, ""},
		{"another address", attach.Want{Address: other.String() + "/24"}, "Docker asked for " + other.String() + "/24 but CNI assigned"},
		{"another MAC", attach.Want{MAC: "02:42:ac:11:00:99"}, "Docker asked for MAC 02:42:ac:11:00:99 but CNI set"},
		{"an IPv6 address CNI does not assign", attach.Want{AddressIPv6: "fd00::2/64"}, "but CNI assigned none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := s.Manager.Apply(context.Background(), attach.Plan{
				Add:   cnibridge.AddRequest{ContainerID: naming.RandomID(), Network: nw},
				Owner: state.Attachment{Phase: state.PhaseEndpoint, NetworkID: "net", EndpointID: naming.RandomID()},
				Want:  tc.want,
			})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				testutil.Must(t, s.Manager.Remove(context.Background(), a))
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
			if atts, _ := s.Store.Attachments(); len(atts) != 0 {
				t.Errorf("a rejected result stays recorded: %+v", atts)
			}
			if ents, _ := os.ReadDir(s.NetNSDir); len(ents) != 0 {
				t.Errorf("a rejected result leaves staging netns %v", ents)
			}
		})
	}
}

// RemoveNetwork removes every attachment of one Docker network and no other's.
func TestRemoveNetwork(t *testing.T) {
	s, nw := teststack.NewBridge(t)
	ctx := context.Background()
	for _, netID := range []string{"gone", "gone", "kept"} {
		_, err := s.Manager.Add(ctx, cnibridge.AddRequest{ContainerID: naming.RandomID(), Network: nw},
			state.Attachment{Phase: state.PhaseEndpoint, NetworkID: netID, EndpointID: naming.RandomID()})
		testutil.Must(t, err)
	}
	testutil.Must(t, s.Manager.RemoveNetwork(ctx, "gone"))
	atts, err := s.Store.Attachments()
	testutil.Must(t, err)
	if len(atts) != 1 || atts[0].NetworkID != "kept" {
		t.Errorf("left %d attachments, want only the one of network kept: %+v", len(atts), atts)
	}
}

// An ADD that asks for an address a background removal still holds (a container re-created with its --ip
// right after `docker rm` on an async-delete network) first finishes that removal, instead of failing in the
// CNI IPAM with "already allocated".
func TestAttachFinishesRemovalHoldingRequestedAddress(t *testing.T) {
	s, nw := teststack.NewBridge(t)
	ctx := context.Background()

	old, err := s.Manager.Add(ctx, cnibridge.AddRequest{ContainerID: naming.RandomID(), Network: nw},
		state.Attachment{Phase: state.PhaseEndpoint, NetworkID: "net", EndpointID: naming.RandomID()})
	testutil.Must(t, err)
	// Recorded as deleting, its DEL not yet run: what DeleteEndpoint leaves for the background removal.
	old.Phase = state.PhaseDeleting
	testutil.Must(t, s.Store.PutAttachment(old))

	addr := old.Interface.IPv4
	req := cnibridge.AddRequest{ContainerID: naming.RandomID(), Network: nw}
	req.Args, req.CapabilityArgs = cnibridge.RequestArgs(nw, []string{addr}, "")
	a, err := s.Manager.Apply(ctx, attach.Plan{
		Add:   req,
		Owner: state.Attachment{Phase: state.PhaseEndpoint, NetworkID: "net", EndpointID: naming.RandomID()},
		Want:  attach.Want{Address: addr, NeedIPv4: true},
	})
	if err != nil {
		t.Fatalf("re-requesting %s held by a deleting attachment: %v", addr, err)
	}
	if _, err := s.Store.Attachment(old.ID()); err == nil {
		t.Errorf("the deleting attachment that held %s is still recorded", addr)
	}
	testutil.Must(t, s.Manager.Remove(ctx, a))
}

// Two CreateEndpoint requests for one endpoint at once (dockerd retries; a client can too) run one ADD and get
// the same answer; RemoveEndpoint then leaves nothing, and a second one is a no-op.
func TestAttachSameEndpointTwiceAtOnce(t *testing.T) {
	s, nw := teststack.NewBridge(t)
	ctx := context.Background()
	endpoint := naming.RandomID()
	plan := attach.Plan{
		Add:   cnibridge.AddRequest{ContainerID: endpoint, Network: nw},
		Owner: state.Attachment{Phase: state.PhaseEndpoint, NetworkID: "net", EndpointID: endpoint},
	}
	type answer struct {
		a   *state.Attachment
		err error
	}
	answers := make(chan answer, 2)
	for range 2 {
		go func() {
			a, err := s.Manager.Apply(ctx, plan)
			answers <- answer{a, err}
		}()
	}
	first, second := <-answers, <-answers
	testutil.Must(t, first.err)
	testutil.Must(t, second.err)
	if first.a.Interface.IPv4 == "" || first.a.Interface.IPv4 != second.a.Interface.IPv4 || first.a.Interface.MAC != second.a.Interface.MAC {
		t.Errorf("the two answers differ: %+v and %+v", first.a.Interface, second.a.Interface)
	}
	atts, err := s.Store.Attachments()
	testutil.Must(t, err)
	if len(atts) != 1 {
		t.Errorf("%d attachments recorded for one endpoint, want 1", len(atts))
	}
	for range 2 {
		testutil.Must(t, s.Manager.RemoveEndpoint(ctx, endpoint, false))
	}
	if atts, _ := s.Store.Attachments(); len(atts) != 0 {
		t.Errorf("attachments left after RemoveEndpoint: %+v", atts)
	}
	if ents, _ := os.ReadDir(s.NetNSDir); len(ents) != 0 {
		t.Errorf("staging netns left after RemoveEndpoint: %v", ents)
	}
}

// An ADD that fails and whose rollback DEL fails too (a plugin that fails DEL once) is kept, as being removed,
// instead of forgotten with its staging netns, link and address; reconciliation then finishes its teardown.
func TestFailedRollbackIsKeptAndHealed(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.CNIBinDir(t)
	before := testutil.TakeSnapshot(t)
	t.Cleanup(func() { testutil.AssertNoLeaks(t, before) })
	scripts, marker := t.TempDir(), filepath.Join(t.TempDir(), "del-failed-once")
	testutil.Must(t, os.WriteFile(filepath.Join(scripts, "delfail"), []byte(fmt.Sprintf(`#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
ADD) echo '{"cniVersion":"1.0.0","code":999,"msg":"delfail says no"}'; exit 1 ;;
DEL) if [ ! -e %[1]s ]; then touch %[1]s; echo '{"cniVersion":"1.0.0","code":999,"msg":"delfail fails its first DEL"}'; exit 1; fi ;;
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}' ;;
esac
exit 0
`, marker)), 0o755))
	s := teststack.New(t, teststack.Options{BinDirs: []string{bin, scripts}})
	name, bridge := testutil.UniqueName("rbnet"), testutil.UniqueName("rbbr")
	testutil.WriteFile(t, s.ConfDir, name+".conflist", fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[`+
		`{"type":"bridge","bridge":%q,"isGateway":true,"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.251.77.0/24"}]]}},`+
		`{"type":"delfail"}]}`, name, bridge, t.TempDir()))
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge).Run() })
	nw, err := cnibridge.ResolveNetwork(s.ConfDir, name)
	testutil.Must(t, err)

	ctx := context.Background()
	_, err = s.Manager.Add(ctx, cnibridge.AddRequest{ContainerID: naming.RandomID(), Network: nw},
		state.Attachment{Phase: state.PhaseEndpoint, NetworkID: "net", EndpointID: naming.RandomID()})
	if err == nil || !errors.Is(err, cnibridge.ErrRollback) || !strings.Contains(err.Error(), "delfail says no") {
		t.Fatalf("want the ADD's and the rollback's failure, got %v", err)
	}
	atts, err := s.Store.Attachments()
	testutil.Must(t, err)
	if len(atts) != 1 || atts[0].Phase != state.PhaseDeleting {
		t.Fatalf("want the attachment kept as being removed, have %+v", atts)
	}
	rep, err := s.Manager.Reconcile(ctx, attach.ReconcileOptions{})
	testutil.Must(t, err)
	if len(rep.Attachments) != 1 || rep.Attachments[0].Reason != "its CNI ADD failed and so did the rollback DEL" || rep.Attachments[0].Error != "" {
		t.Errorf("reconciliation report: %+v", rep.Attachments)
	}
	if atts, _ := s.Store.Attachments(); len(atts) != 0 {
		t.Errorf("attachments left after reconciliation: %+v", atts)
	}
}

// A network whose conflist adopted Docker's pool has a bridge of its own; when Docker removed the network
// while cniplug was down, reconciliation forgets it and removes that bridge too (as DeleteNetwork does).
func TestReconcileRemovesAdoptedBridge(t *testing.T) {
	s, nw := teststack.NewBridge(t)
	ctx := context.Background()
	networkID := naming.RandomID()
	var doc map[string]any
	testutil.Must(t, json.Unmarshal(nw.Bytes, &doc))
	doc["cniplug"] = map[string]any{"adoptDockerPool": true}
	base, err := json.Marshal(doc)
	testutil.Must(t, err)
	baseNet, err := cnibridge.ParseNetwork(base)
	testutil.Must(t, err)
	adopted, err := cniconf.AdoptDockerPool(baseNet, networkID, "10.250.33.0/24", "10.250.33.1/24")
	testutil.Must(t, err)
	bridges := adopted.Bridges()
	if len(bridges) != 1 {
		t.Fatalf("adopted conflist names bridges %v", bridges)
	}
	testutil.Run(t, "ip", "link", "add", bridges[0], "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridges[0]).Run() })
	testutil.Must(t, s.Store.PutNetwork(&state.Network{ID: networkID, CNIName: nw.Name, Conflist: adopted.Bytes, Mode: state.ModeDocker,
		NoHostFirewall: true, Created: time.Now().UTC().Add(-time.Hour)}))

	rep, err := s.Manager.Reconcile(ctx, attach.ReconcileOptions{Live: dockerapi.Live{}, MinAge: time.Minute})
	testutil.Must(t, err)
	if len(rep.ForgottenNetworks) != 1 || rep.ForgottenNetworks[0] != networkID {
		t.Errorf("forgotten networks %v, want %s", rep.ForgottenNetworks, networkID)
	}
	if err := exec.Command("ip", "link", "show", bridges[0]).Run(); err == nil {
		t.Errorf("bridge %s of the forgotten network is still there", bridges[0])
	}
}
