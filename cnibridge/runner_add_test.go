package cnibridge

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// TestAddChainFailureRollsBack: libcni does not DEL when a later plugin fails ADD; Add must, and the
// plugin's own message must reach the caller.
func TestAddChainFailureRollsBack(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CNIBinDir(t)
	startLeakCheck(t)
	r, nw, br := scriptNetwork(t, 0, "failer", `cat >/dev/null
case "$CNI_COMMAND" in
ADD) echo '{"cniVersion":"1.0.0","code":999,"msg":"failer says no"}'; exit 1 ;;
VERSION) echo '`+versionJSON+`' ;;
esac
exit 0
`)
	args, _ := RequestArgs(nw, nil, "")
	att, err := r.NewAttachment(AddRequest{ContainerID: containerID(t), Network: nw, Args: args})
	testutil.Must(t, err)
	err = r.Add(context.Background(), att)
	if err == nil {
		_ = r.Teardown(context.Background(), att)
		t.Fatal("Add succeeded through a failing plugin")
	}
	if !strings.Contains(err.Error(), "failer says no") {
		t.Errorf("error does not carry the plugin's message: %v", err)
	}
	if errors.Is(err, ErrRollback) {
		t.Errorf("rollback failed: %v", err)
	}
	failedAddLeftNothing(t, r, nw, att, br)
}

// TestAddTimeout: a plugin that hangs is killed at the deadline and the chain is rolled back. The hanger is
// a shell that waits on a child sleep (as a plugin running iptables or a helper would), not a lone process.
func TestAddTimeout(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CNIBinDir(t)
	for _, tc := range []struct{ name, sleep string }{
		{"exec", "exec sleep 60"}, // the plugin process itself hangs
		{"child", "sleep 60"},     // the plugin waits on a child that holds its stdout
	} {
		t.Run(tc.name, func(t *testing.T) {
			startLeakCheck(t)
			const timeout = 2 * time.Second
			r, nw, br := scriptNetwork(t, timeout, "hanger", `cat >/dev/null
case "$CNI_COMMAND" in
ADD) `+tc.sleep+` ;;
VERSION) echo '`+versionJSON+`' ;;
esac
exit 0
`)
			args, _ := RequestArgs(nw, nil, "")
			att, err := r.NewAttachment(AddRequest{ContainerID: containerID(t), Network: nw, Args: args})
			testutil.Must(t, err)
			start := time.Now()
			err = r.Add(context.Background(), att)
			elapsed := time.Since(start)
			if err == nil {
				_ = r.Teardown(context.Background(), att)
				t.Fatal("Add succeeded through a hanging plugin")
			}
			t.Logf("Add failed after %s: %v", elapsed.Round(time.Millisecond), err)
			if !strings.Contains(err.Error(), "did not finish within "+timeout.String()) {
				t.Errorf("error does not mention the deadline: %v", err)
			}
			// Sanity bound only (deadline + rollback + generous slack), not a performance assertion.
			if elapsed > 15*time.Second {
				t.Errorf("Add took %s with a %s deadline: the hanging plugin was not cut off", elapsed, timeout)
			}
			failedAddLeftNothing(t, r, nw, att, br)
		})
	}
}

// TestPlan: names are derived from the id and fit the kernel's limits; bad ids are refused.
func TestPlan(t *testing.T) {
	r, err := NewRunner(Config{NetNSDir: "/run/cniplug-test-netns"})
	testutil.Must(t, err)
	defer r.Close()
	nw, err := ParseNetwork([]byte(conflist("plan-test", `{"type":"bridge"}`)))
	testutil.Must(t, err)
	id := strings.Repeat("ab", 32)
	att, err := r.NewAttachment(AddRequest{ContainerID: id, Network: nw, Args: [][2]string{{"IgnoreUnknown", "1"}}})
	testutil.Must(t, err)
	want := &Attachment{
		ContainerID: id, IfName: "eth0", NetNS: "/run/cniplug-test-netns/cniplug-abababababab",
		HostIfName: "cnpabababababab", Network: "plan-test", Conflist: nw.Bytes, Args: [][2]string{{"IgnoreUnknown", "1"}},
	}
	if !reflect.DeepEqual(att, want) {
		t.Errorf("Plan = %+v, want %+v", att, want)
	}
	if exists(att.NetNS) {
		t.Errorf("Plan created %s", att.NetNS)
	}
	for _, bad := range []string{"", "short", "../../../../etc/x", "abcdefabcdef/x", "-abcdefabcdef"} {
		if _, err := r.NewAttachment(AddRequest{ContainerID: bad, Network: nw}); err == nil {
			t.Errorf("Plan accepted id %q", bad)
		}
	}
}
