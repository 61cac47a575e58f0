package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"

	"github.com/cniplug/cniplug/admin"
	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/dockerapi"
	"github.com/cniplug/cniplug/metrics"
	"github.com/cniplug/cniplug/state"
)

func envBool(key string) bool {
	b, _ := strconv.ParseBool(os.Getenv(key))
	return b
}

// newMetrics creates cniplug's metrics; the live attachments gauge is read from the state store at scrape.
func newMetrics(store *state.Store) *metrics.Metrics {
	return metrics.New(metrics.Options{Attachments: func() (map[metrics.AttachmentKey]int, error) {
		atts, err := store.Attachments()
		if err != nil {
			return nil, err
		}
		out := map[metrics.AttachmentKey]int{}
		for _, a := range atts {
			out[metrics.AttachmentKey{Phase: string(a.Phase), CNINetwork: a.Network}]++
		}
		return out, nil
	}})
}

// newAdmin answers `cniplug status|ls|gc`, asking Docker (when its socket is configured) for names and live
// endpoints.
func newAdmin(c *config, name string, mgr *attach.Manager) *admin.Service {
	var docker *dockerapi.Client
	if c.dockerSocket != "" {
		docker = dockerapi.New(c.dockerSocket)
	}
	return admin.New(admin.Config{Driver: name, ConfDir: c.confDir, Manager: mgr, Docker: docker, MinAge: reconcileMinAge(c)})
}

// serveMetrics serves /metrics, /healthz (and /debug/pprof/ with --pprof) on --metrics-listen, if set.
func serveMetrics(ctx context.Context, c *config, m *metrics.Metrics, store *state.Store, log *slog.Logger) error {
	if c.metricsListen == "" {
		return nil
	}
	l, err := metrics.Listen(c.metricsListen)
	if err != nil {
		return err
	}
	h := m.Handler(metrics.HandlerOptions{Pprof: c.pprof, Health: func(ctx context.Context) error {
		return healthy(ctx, c.socket, store)
	}})
	go func() {
		if err := metrics.Serve(ctx, l, h); err != nil {
			log.Error("metrics listener stopped", "listen", c.metricsListen, "error", err)
		}
	}()
	log.Info("serving metrics", "listen", l.Addr().String(), "pprof", c.pprof)
	return nil
}

// healthy checks what Docker's calls need: the state store is readable and the plugin socket answers.
func healthy(ctx context.Context, socket string, store *state.Store) error {
	if _, err := store.Networks(); err != nil {
		return fmt.Errorf("state store: %w", err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://cniplug/Plugin.Activate", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("plugin socket %s: %w", socket, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("plugin socket %s: Plugin.Activate answered %s", socket, resp.Status)
	}
	return nil
}
