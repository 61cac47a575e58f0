package plugin_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/admin"
	"github.com/cniplug/cniplug/internal/testing/teststack"
	"github.com/cniplug/cniplug/internal/testing/testutil"
	"github.com/cniplug/cniplug/metrics"
	"github.com/cniplug/cniplug/plugin"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// gather renders the stack's metrics in the text exposition format.
func gather(t *testing.T, s *teststack.Stack) string {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Metrics.Handler(metrics.HandlerOptions{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d: %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// The admin routes report the real state: a network bound to a CNI network and an endpoint joined to it.
// The metrics of the same requests carry the CNI network's name, and CNI exec durations are recorded.
func TestAdminStatusAttachmentsAndMetrics(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.CNIBinDir(t)
	before := testutil.TakeSnapshot(t)
	t.Cleanup(func() { testutil.AssertNoLeaks(t, before) })
	s := teststack.New(t, teststack.Options{BinDirs: []string{bin}, MinAge: time.Hour})
	s.Serve(t)
	cni := s.BridgeNetwork(t)
	netID, epID := s.Endpoint(t, cni)

	var st admin.Status
	s.Call(t, "/Cniplug.Status", struct{}{}, &st)
	if len(st.Networks) != 1 || st.Counts.Networks != 1 || st.Counts.Attachments != 1 || st.Counts.ByPhase["joined"] != 1 {
		t.Fatalf("status: %+v", st)
	}
	n := st.Networks[0]
	if n.ID != netID || n.CNIName != cni || n.Mode != "null-ipam" || n.Attachments != 1 || n.FileState != "same" ||
		n.File != filepath.Join(s.ConfDir, cni+".conflist") {
		t.Errorf("status network: %+v", n)
	}
	if st.DockerError == "" {
		t.Errorf("status without the Docker API should say names are unavailable")
	}
	// Editing the conflist shows, since the recorded copy is what cniplug keeps using.
	conf, err := os.ReadFile(n.File)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WriteFile(t, s.ConfDir, cni+".conflist", strings.Replace(string(conf), `"ipMasq":true`, `"ipMasq":false`, 1))
	s.Call(t, "/Cniplug.Status", struct{}{}, &st)
	if st.Networks[0].FileState != "edited" {
		t.Errorf("edited conflist: fileState %q", st.Networks[0].FileState)
	}

	var atts admin.Attachments
	s.Call(t, "/Cniplug.Attachments", struct{}{}, &atts)
	if len(atts.Attachments) != 1 {
		t.Fatalf("attachments: %+v", atts)
	}
	a := atts.Attachments[0]
	if a.NetworkID != netID || a.EndpointID != epID || a.CNINetwork != cni || a.Phase != "joined" ||
		!strings.HasPrefix(a.Address, "10.252.") || a.MAC == "" || !strings.HasPrefix(a.StagingNetNS, s.NetNSDir) ||
		time.Since(a.Created) > time.Minute {
		t.Errorf("attachment: %+v", a)
	}

	// The attachment is young (MinAge 1h) and Docker cannot be asked: GC leaves it alone.
	var gc admin.GCReport
	s.Call(t, "/Cniplug.GC", admin.GCRequest{DryRun: ptr(false)}, &gc)
	if len(gc.Attachments) != 0 || gc.DryRun || gc.DockerError == "" || gc.MinAge != "1h0m0s" {
		t.Errorf("gc: %+v", gc)
	}

	body := gather(t, s)
	for _, want := range []string{
		`cniplug_requests_total{cni_network="` + cni + `",method="NetworkDriver.CreateEndpoint"} 1`,
		`cniplug_requests_total{cni_network="` + cni + `",method="NetworkDriver.CreateNetwork"} 1`, // named only after the call
		`cniplug_requests_total{cni_network="` + cni + `",method="NetworkDriver.Join"} 1`,
		`cniplug_requests_total{cni_network="",method="Cniplug.Status"} 2`,
		`cniplug_cni_exec_duration_seconds_count{command="ADD",plugin="bridge"} 1`,
		`cniplug_cni_exec_duration_seconds_count{command="VERSION",plugin="bridge"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if problems, err := promlint.New(strings.NewReader(body)).Lint(); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %+v", err, problems)
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

// With a conf dir list (the managed plugin's default is /etc/cni/net.d:/opt/cniplug/cni/net.d), status finds
// the conflist where the drivers do: the first dir that defines the CNI network.
func TestAdminStatusSearchesConfDirList(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.CNIBinDir(t)
	s := teststack.New(t, teststack.Options{BinDirs: []string{bin}, HostConfDir: true})
	s.Serve(t)
	cni := s.BridgeNetwork(t)
	netID := s.Network(t, cni)
	bundled := filepath.Join(s.ConfDir, cni+".conflist")
	host := filepath.Join(s.HostConfDir, cni+".conflist")
	conf, err := os.ReadFile(bundled)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name      string
		change    func()
		wantFile  string
		wantState string
	}{
		{"defined in the second dir", func() {}, bundled, "same"},
		{"an edited copy in the first dir wins", func() {
			testutil.WriteFile(t, s.HostConfDir, cni+".conflist", strings.Replace(string(conf), `"ipMasq":true`, `"ipMasq":false`, 1))
		}, host, "edited"},
		{"an identical copy in the first dir", func() { testutil.WriteFile(t, s.HostConfDir, cni+".conflist", string(conf)) }, host, "same"},
		{"no dir defines it", func() {
			for _, f := range []string{host, bundled} {
				if err := os.Remove(f); err != nil {
					t.Fatal(err)
				}
			}
		}, "", "missing"},
	} {
		step.change()
		var st admin.Status
		s.Call(t, "/Cniplug.Status", struct{}{}, &st)
		if len(st.Networks) != 1 || st.Networks[0].ID != netID {
			t.Fatalf("%s: status: %+v", step.name, st)
		}
		if n := st.Networks[0]; n.File != step.wantFile || n.FileState != step.wantState {
			t.Errorf("%s: file %q (%s), want %q (%s)", step.name, n.File, n.FileState, step.wantFile, step.wantState)
		}
	}
}

// GC finds and (unless a dry run) removes crash leftovers: a staging netns no attachment owns.
func TestAdminGC(t *testing.T) {
	s := teststack.New(t, teststack.Options{})
	s.Serve(t)
	leftover := testutil.WriteFile(t, s.NetNSDir, "cniplug-0123456789ab", "")

	var gc admin.GCReport
	s.Call(t, "/Cniplug.GC", admin.GCRequest{DryRun: ptr(true)}, &gc)
	if !gc.DryRun || len(gc.Leftovers.NetNS) != 1 || gc.Leftovers.NetNS[0] != leftover || gc.Error != "" {
		t.Fatalf("dry run: %+v", gc)
	}
	if _, err := os.Stat(leftover); err != nil {
		t.Fatalf("a dry run removed %s: %v", leftover, err)
	}
	if len(gc.Leftovers.Links) > 0 {
		// A real GC would delete these host links; they are not this test's to delete.
		t.Skipf("host has parked cniplug links %v (another cniplug is running): not running a real GC", gc.Leftovers.Links)
	}
	gc = admin.GCReport{}
	s.Call(t, "/Cniplug.GC", admin.GCRequest{DryRun: ptr(false)}, &gc)
	if gc.DryRun || len(gc.Leftovers.NetNS) != 1 || gc.Error != "" {
		t.Fatalf("gc: %+v", gc)
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Fatalf("gc left %s: %v", leftover, err)
	}
	body := gather(t, s)
	if !strings.Contains(body, `cniplug_requests_total{cni_network="",method="Cniplug.GC"} 2`) {
		t.Errorf("/metrics does not count the GC requests:\n%s", body)
	}
}

// Operators' requests are decoded strictly: a misspelt or extra field, a wrong type, trailing data or an
// empty GC body must never run a collection.
func TestAdminRejectsMalformedRequests(t *testing.T) {
	s := teststack.New(t, teststack.Options{})
	s.Serve(t)
	leftover := testutil.WriteFile(t, s.NetNSDir, "cniplug-0123456789ab", "")
	for _, c := range []struct{ path, body string }{
		{"/Cniplug.GC", ``},
		{"/Cniplug.GC", `{}x`},
		{"/Cniplug.GC", `{"Dry":true}`},
		{"/Cniplug.GC", `{"DryRun":true,"Force":true}`},
		{"/Cniplug.GC", `{"DryRun":"yes"}`},
		{"/Cniplug.GC", `{"DryRun":false} {"DryRun":false}`},
		{"/Cniplug.GC", `[{"DryRun":false}]`},
		{"/Cniplug.GC", `null`},
		{"/Cniplug.GC", `{}`},
		{"/Cniplug.GC", `{"DryRun":null}`},
		{"/Cniplug.Status", `{"Verbose":true}`},
		{"/Cniplug.Attachments", `{"a":1}`},
	} {
		status, out := s.Post(t, c.path, []byte(c.body))
		var e struct{ Err string }
		if err := json.Unmarshal(out, &e); err != nil || status != http.StatusBadRequest || e.Err == "" {
			t.Errorf("%s %q: status %d %s; want 400 with an Err", c.path, c.body, status, out)
		}
	}
	if _, err := os.Stat(leftover); err != nil {
		t.Fatalf("a malformed request ran a GC: %v", err)
	}
	for _, body := range []string{``, `{}`, ` {} `} {
		if status, out := s.Post(t, "/Cniplug.Status", []byte(body)); status != http.StatusOK {
			t.Errorf("Status %q: %d %s", body, status, out)
		}
	}
}

// A plugin built without the admin service answers the admin routes like any unknown method.
func TestAdminRoutesAbsentWithoutAdmin(t *testing.T) {
	s := teststack.New(t, teststack.Options{NoAdmin: true})
	s.Serve(t)
	status, out := s.Post(t, "/Cniplug.Status", []byte(`{}`))
	if status != http.StatusNotFound || !bytes.Contains(out, []byte("does not implement")) {
		t.Errorf("status %d %s", status, out)
	}
}

func ptr[T any](v T) *T { return &v }

// FuzzDecodeStrict: the admin decoder never panics, and whatever it accepts is exactly a GCRequest.
func FuzzDecodeStrict(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"DryRun":true}`, `{"DryRun":false}`, `{"dryrun":true}`, `{"DryRun":true}x`,
		`{"DryRun":true,"x":1}`, `null`, `[]`, `{"DryRun":null}`, " \n{\"DryRun\":true}\n "} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req admin.GCRequest
		if err := plugin.DecodeStrict(data, &req); err != nil {
			return
		}
		// Accepted: it is one JSON object whose only key (in any case, as encoding/json matches) is DryRun.
		var m map[string]json.RawMessage
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("accepted %q, which is not one JSON object: %v", data, err)
		}
		for k := range m {
			if !strings.EqualFold(k, "DryRun") {
				t.Fatalf("accepted %q with unknown field %q", data, k)
			}
		}
		if m == nil {
			t.Fatalf("accepted %q, which is not a JSON object", data)
		}
		if req.DryRun != nil && len(m) == 0 {
			t.Fatalf("accepted %q as saying DryRun without a DryRun field", data)
		}
	})
}

// FuzzAdminHandler sends arbitrary bodies to the admin routes of the real handler. Every answer is JSON,
// a failure carries an Err, and nothing panics. Inputs that would run a real GC are left out: it could touch
// links of the host.
func FuzzAdminHandler(f *testing.F) {
	paths := []string{"/Cniplug.Status", "/Cniplug.Attachments", "/Cniplug.GC"}
	for i := range paths {
		for _, s := range []string{``, `{}`, `{"DryRun":true}`, `{"DryRun":"x"}`, `{"DryRun":true}{}`, `{"a":1}`} {
			f.Add(append([]byte{byte(i)}, s...))
		}
	}
	s := teststack.New(f, teststack.Options{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		path, body := paths[int(data[0])%len(paths)], data[1:]
		if path == "/Cniplug.GC" {
			var req admin.GCRequest
			if plugin.DecodeStrict(body, &req) == nil && req.DryRun != nil && !*req.DryRun {
				t.Skip("would run a real GC")
			}
		}
		rec := httptest.NewRecorder()
		s.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
		out := rec.Body.Bytes()
		var e struct{ Err *string }
		if err := json.Unmarshal(out, &e); err != nil {
			t.Fatalf("%s %q: status %d, answer is not a JSON object: %q", path, body, rec.Code, out)
		}
		switch {
		case rec.Code == http.StatusOK && e.Err != nil:
			t.Fatalf("%s %q: 200 carrying Err %q", path, body, *e.Err)
		case rec.Code != http.StatusOK && (e.Err == nil || *e.Err == ""):
			t.Fatalf("%s %q: status %d without an Err: %q", path, body, rec.Code, out)
		case e.Err != nil && strings.Contains(*e.Err, "internal error"):
			t.Fatalf("%s %q: handler panicked: %s", path, body, *e.Err)
		case rec.Code != http.StatusOK && rec.Code != http.StatusBadRequest:
			t.Fatalf("%s %q: status %d: %s", path, body, rec.Code, out)
		}
	})
}
