package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/admin"
	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// cniplugCLI runs `bin/cniplug <args> --socket <the suite's plugin>` and fails the test on a non-zero exit.
func cniplugCLI(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(testutil.RepoRoot(), "bin", "cniplug"), append(args, "--socket", env.socket)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cniplug %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The operator commands read the running plugin and name what Docker knows: the network's and container's
// names next to the plugin's own view of the attachment.
func TestOperatorCommands(t *testing.T) {
	requireSuite(t)
	if _, err := os.Stat(env.socket); err != nil {
		t.Skipf("reads a v1 plugin's socket (%v); a managed plugin's socket is inside Docker's plugin dir", err)
	}
	n := bridgeNet(t)
	nw := createNetwork(t, n, cniIPAM)
	c := runContainer(t, nw)
	ep := inspectEndpoint(t, c, nw)

	var atts admin.Attachments
	if err := json.Unmarshal([]byte(cniplugCLI(t, "ls", "--json")), &atts); err != nil {
		t.Fatal(err)
	}
	var found *admin.Attachment
	for i, a := range atts.Attachments {
		if a.EndpointID == ep.EndpointID {
			found = &atts.Attachments[i]
		}
	}
	if found == nil {
		t.Fatalf("cniplug ls has no attachment for endpoint %s: %+v", ep.EndpointID, atts)
	}
	if found.ContainerName != c || found.NetworkName != nw || found.CNINetwork != n.Name || found.Phase != "joined" ||
		!strings.HasPrefix(found.Address, ep.IPAddress+"/") || !strings.EqualFold(found.MAC, ep.MacAddress) || atts.DockerError != "" {
		t.Errorf("cniplug ls: %+v; docker inspect: %+v", found, ep)
	}
	if table := cniplugCLI(t, "ls"); !strings.Contains(table, c) || !strings.Contains(table, ep.IPAddress+"/") {
		t.Errorf("cniplug ls does not show container %s with %s:\n%s", c, ep.IPAddress, table)
	}
	if status := cniplugCLI(t, "status"); !strings.Contains(status, nw) || !strings.Contains(status, n.Name) || !strings.Contains(status, "cni-ipam") {
		t.Errorf("cniplug status does not show network %s on %s:\n%s", nw, n.Name, status)
	}
	// The container is live: gc would not touch it.
	if gc := cniplugCLI(t, "gc", "--dry-run"); !strings.Contains(gc, "dry run") || strings.Contains(gc, ep.EndpointID[:12]) {
		t.Errorf("cniplug gc --dry-run:\n%s", gc)
	}
}
