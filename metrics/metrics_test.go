package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/metrics"
)

// serve serves m's handler on a real TCP listener on loopback, as cniplug does, until the test ends.
func serve(t *testing.T, m *metrics.Metrics, o metrics.HandlerOptions) string {
	t.Helper()
	l, err := metrics.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- metrics.Serve(ctx, l, m.Handler(o)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve returned %v after cancel", err)
		}
	})
	return "http://" + l.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestMetricsExposition(t *testing.T) {
	counts := map[metrics.AttachmentKey]int{{Phase: "joined", CNINetwork: "net-a"}: 3, {Phase: "pending", CNINetwork: "net-b"}: 1}
	m := metrics.New(metrics.Options{Attachments: func() (map[metrics.AttachmentKey]int, error) { return counts, nil }})
	m.ObserveRequest("NetworkDriver.Join", "net-a", 3*time.Millisecond, nil)
	m.ObserveRequest("NetworkDriver.Join", "net-a", 5*time.Millisecond, errors.New("boom"))
	m.ObserveRequest("NetworkDriver.GetCapabilities", "", time.Millisecond, nil)
	m.ObserveExec("bridge", "ADD", 30*time.Millisecond, nil)
	m.ObserveExec("bridge", "DEL", 40*time.Millisecond, errors.New("killed"))
	base := serve(t, m, metrics.HandlerOptions{})

	status, body := get(t, base+"/metrics")
	if status != http.StatusOK {
		t.Fatalf("/metrics: %d: %s", status, body)
	}
	for _, want := range []string{
		`cniplug_requests_total{cni_network="net-a",method="NetworkDriver.Join"} 2`,
		`cniplug_request_errors_total{cni_network="net-a",method="NetworkDriver.Join"} 1`,
		`cniplug_requests_total{cni_network="",method="NetworkDriver.GetCapabilities"} 1`,
		`cniplug_request_duration_seconds_count{cni_network="net-a",method="NetworkDriver.Join"} 2`,
		`cniplug_request_duration_seconds_sum{cni_network="net-a",method="NetworkDriver.Join"} 0.008`,
		`cniplug_cni_exec_duration_seconds_count{command="ADD",plugin="bridge"} 1`,
		`cniplug_cni_exec_duration_seconds_bucket{command="DEL",plugin="bridge",le="0.064"} 1`,
		`cniplug_cni_exec_errors_total{command="DEL",plugin="bridge"} 1`,
		`cniplug_attachments{cni_network="net-a",phase="joined"} 3`,
		`cniplug_attachments{cni_network="net-b",phase="pending"} 1`,
		`cniplug_attachments_scrape_errors_total 0`,
		`process_resident_memory_bytes `,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
	if status, _ := get(t, base+"/debug/pprof/"); status != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without Pprof: status %d, want 404", status)
	}
	if status, body := get(t, base+"/healthz"); status != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz without a check: %d %q", status, body)
	}
}

func TestAttachmentCountFailureKeepsScrapeUseful(t *testing.T) {
	m := metrics.New(metrics.Options{Attachments: func() (map[metrics.AttachmentKey]int, error) {
		return nil, errors.New("store closed")
	}})
	m.ObserveExec("ptp", "ADD", time.Millisecond, nil)
	base := serve(t, m, metrics.HandlerOptions{})
	status, body := get(t, base+"/metrics")
	if status != http.StatusOK {
		t.Fatalf("/metrics: %d: %s", status, body)
	}
	for _, want := range []string{`cniplug_attachments_scrape_errors_total 1`, `cniplug_cni_exec_duration_seconds_count{command="ADD",plugin="ptp"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
}

func TestHealthAndPprof(t *testing.T) {
	var healthErr error
	m := metrics.New(metrics.Options{})
	base := serve(t, m, metrics.HandlerOptions{Pprof: true, Health: func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			return errors.New("health check called without a deadline")
		}
		return healthErr
	}})
	if status, body := get(t, base+"/healthz"); status != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz healthy: %d %q", status, body)
	}
	healthErr = errors.New("plugin socket gone")
	if status, body := get(t, base+"/healthz"); status != http.StatusServiceUnavailable || !strings.Contains(body, "plugin socket gone") {
		t.Errorf("/healthz unhealthy: %d %q, want 503 naming the cause", status, body)
	}
	if status, body := get(t, base+"/debug/pprof/"); status != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/ with Pprof: %d", status)
	}
	if status, _ := get(t, base+"/debug/pprof/heap?debug=1"); status != http.StatusOK {
		t.Errorf("/debug/pprof/heap: %d", status)
	}
	if status, _ := get(t, base+"/nope"); status != http.StatusNotFound {
		t.Errorf("/nope: %d", status)
	}
}

// Two Metrics in one process never share series: no package-level registry.
func TestMetricsAreIndependent(t *testing.T) {
	a, b := metrics.New(metrics.Options{}), metrics.New(metrics.Options{})
	a.ObserveRequest("NetworkDriver.Join", "x", time.Millisecond, nil)
	fams, err := b.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == metrics.RequestsTotal && len(f.GetMetric()) > 0 {
			t.Fatalf("b sees a's requests: %v", f)
		}
	}
}
