package metrics

import (
	"context"
	"fmt"
	"github.com/cniplug/cniplug/internal/httpserve"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// HealthTimeout bounds one health check.
const HealthTimeout = 5 * time.Second

// HandlerOptions says what the metrics listener serves besides /metrics.
type HandlerOptions struct {
	// Health answers /healthz: nil error is healthy (200 "ok"), anything else is 503 with the error's text.
	// nil: /healthz only says the process is up.
	Health func(context.Context) error
	// Pprof adds net/http/pprof under /debug/pprof/. Profiles expose internals and cost CPU while taken, so
	// it is opt-in.
	Pprof bool
}

// Handler routes GET /metrics, GET /healthz and, with o.Pprof, /debug/pprof/.
func (m *Metrics) Handler(o HandlerOptions) http.Handler {
	r := mux.NewRouter()
	r.Methods(http.MethodGet, http.MethodHead).Path("/metrics").Handler(
		promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, ErrorHandling: promhttp.ContinueOnError}))
	r.Methods(http.MethodGet, http.MethodHead).Path("/healthz").HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if o.Health != nil {
			ctx, cancel := context.WithTimeout(req.Context(), HealthTimeout)
			defer cancel()
			if err := o.Health(ctx); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "unhealthy: %v\n", err)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	if o.Pprof {
		r.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		r.HandleFunc("/debug/pprof/profile", pprof.Profile)
		r.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		r.HandleFunc("/debug/pprof/trace", pprof.Trace)
		r.PathPrefix("/debug/pprof/").HandlerFunc(pprof.Index) // heap, goroutine, allocs, block, mutex, ...
	}
	return r
}

// Listen opens the metrics listener on a TCP address such as 127.0.0.1:9580. It is separate from Serve so
// that a bad address stops cniplug at start-up rather than later in the background.
func Listen(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener %s: %w", addr, err)
	}
	return l, nil
}

// Serve serves h on l until ctx is cancelled.
func Serve(ctx context.Context, l net.Listener, h http.Handler) error {
	return httpserve.Serve(ctx, l, h, 5*time.Second)
}
