package cli_test

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/admin"
	"github.com/cniplug/cniplug/cli"
	"github.com/cniplug/cniplug/internal/testing/teststack"
	"github.com/cniplug/cniplug/internal/testing/testutil"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = cli.Run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// The commands read a real plugin serving on a real socket: a network with a joined endpoint on a CNI
// bridge network, and a crash leftover for gc to find.
func TestCommandsAgainstRunningPlugin(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.CNIBinDir(t)
	before := testutil.TakeSnapshot(t)
	t.Cleanup(func() { testutil.AssertNoLeaks(t, before) })
	s := teststack.New(t, teststack.Options{BinDirs: []string{bin}, MinAge: time.Hour})
	sock := s.Serve(t)
	cni := s.BridgeNetwork(t)
	netID, epID := s.Endpoint(t, cni)

	code, out, errOut := run(t, "status", "--socket", sock)
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"networks: 1  pools: 0  attachments: 1 (joined 1)",
		"NETWORK ID", "CNI NETWORK", "MODE", "CONFLIST",
		netID[:12], cni, "null-ipam", filepath.Join(s.ConfDir, cni+".conflist"),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	code, out, errOut = run(t, "ls", "--socket", sock)
	if code != 0 {
		t.Fatalf("ls: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	header := lines[len(lines)-2]
	row := lines[len(lines)-1]
	if !regexp.MustCompile(`^ATTACHMENT +CONTAINER +ENDPOINT +NETWORK +CNI NETWORK +ADDRESS +MAC +STAGING NETNS +PHASE +AGE$`).MatchString(header) {
		t.Errorf("ls header %q", header)
	}
	fields := strings.Fields(row)
	if len(fields) != 10 || fields[2] != epID[:12] || fields[3] != netID[:12] || fields[4] != cni ||
		!strings.HasPrefix(fields[5], "10.252.") || !strings.HasPrefix(fields[7], s.NetNSDir) || fields[8] != "joined" {
		t.Errorf("ls row %q (fields %q)", row, fields)
	}
	// Columns line up: every field of the row starts where its header does.
	for _, col := range []string{"ENDPOINT", "CNI NETWORK", "PHASE"} {
		if i := strings.Index(header, col); i < 0 || i >= len(row) || row[i] == ' ' || row[i-1] != ' ' {
			t.Errorf("column %s is not aligned:\n%s\n%s", col, header, row)
		}
	}

	code, out, _ = run(t, "ls", "--json", "--socket", sock)
	var atts admin.Attachments
	if err := json.Unmarshal([]byte(out), &atts); code != 0 || err != nil || len(atts.Attachments) != 1 || atts.Attachments[0].EndpointID != epID {
		t.Errorf("ls --json: exit %d, %v: %s", code, err, out)
	}

	leftover := testutil.WriteFile(t, s.NetNSDir, "cniplug-0123456789ab", "")
	code, out, errOut = run(t, "gc", "--dry-run", "--socket", sock)
	if code != 0 || !strings.Contains(out, "dry run: nothing was changed") || !strings.Contains(out, "would remove leftover staging netns "+leftover) {
		t.Errorf("gc --dry-run: exit %d: %s%s", code, out, errOut)
	}
	if strings.Contains(out, epID[:12]) {
		t.Errorf("gc --dry-run would remove the young, joined attachment:\n%s", out)
	}
	code, out, _ = run(t, "gc", "--dry-run", "--json", "--socket", sock)
	var rep admin.GCReport
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || !rep.DryRun || len(rep.Leftovers.NetNS) != 1 {
		t.Errorf("gc --dry-run --json: exit %d, %v: %s", code, err, out)
	}
}

// A real gc removes what it reports; without the Docker API it says it only looked for crash leftovers.
func TestGCRemovesLeftovers(t *testing.T) {
	s := teststack.New(t, teststack.Options{})
	sock := s.Serve(t)
	code, out, errOut := run(t, "gc", "--dry-run", "--socket", sock)
	if code != 0 || !strings.Contains(out, "nothing to collect") || !strings.Contains(out, "only crash leftovers were considered") {
		t.Fatalf("gc --dry-run on a clean plugin: exit %d: %s%s", code, out, errOut)
	}
	leftover := testutil.WriteFile(t, s.NetNSDir, "cniplug-0123456789ab", "")
	var rep admin.GCReport
	code, out, _ = run(t, "gc", "--dry-run", "--json", "--socket", sock)
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil {
		t.Fatalf("gc --dry-run --json: exit %d, %v: %s", code, err, out)
	}
	if len(rep.Leftovers.Links) > 0 {
		t.Skipf("host has parked cniplug links %v (another cniplug is running): not running a real gc", rep.Leftovers.Links)
	}
	code, out, errOut = run(t, "gc", "--socket", sock)
	if code != 0 || !strings.Contains(out, "removed leftover staging netns "+leftover) || strings.Contains(out, "dry run") {
		t.Fatalf("gc: exit %d: %s%s", code, out, errOut)
	}
	code, out, _ = run(t, "gc", "--socket", sock)
	if code != 0 || !strings.Contains(out, "nothing to collect") {
		t.Errorf("second gc: exit %d: %s", code, out)
	}
}

func TestCommandErrors(t *testing.T) {
	if code, _, errOut := run(t, "status", "--socket", filepath.Join(t.TempDir(), "none.sock")); code != 1 || !strings.Contains(errOut, "cannot reach the plugin") {
		t.Errorf("no plugin: exit %d: %s", code, errOut)
	}
	old := teststack.New(t, teststack.Options{NoAdmin: true})
	if code, _, errOut := run(t, "ls", "--socket", old.Serve(t)); code != 1 || !strings.Contains(errOut, "does not serve admin requests") {
		t.Errorf("plugin without admin: exit %d: %s", code, errOut)
	}
	if code, _, errOut := run(t, "ls", "--bogus"); code != 2 || !strings.Contains(errOut, "flag provided but not defined") {
		t.Errorf("bad flag: exit %d: %s", code, errOut)
	}
	if code, _, errOut := run(t, "status", "extra"); code != 2 || !strings.Contains(errOut, "unexpected argument") {
		t.Errorf("extra argument: exit %d: %s", code, errOut)
	}
	if code, _, errOut := run(t, "status", "--dry-run"); code != 2 {
		t.Errorf("--dry-run on status: exit %d: %s", code, errOut)
	}
	if code, _, errOut := run(t, "help"); code != 0 || !strings.Contains(errOut, "gc") || !strings.Contains(errOut, "serve the plugin") {
		t.Errorf("help: exit %d: %s", code, errOut)
	}
	for arg, want := range map[string]bool{"status": true, "ls": true, "gc": true, "help": true, "--socket": false, "-h": false, "": false} {
		if cli.IsCommand(arg) != want {
			t.Errorf("IsCommand(%q) = %v", arg, !want)
		}
	}
}
