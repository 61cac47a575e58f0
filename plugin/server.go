// Package plugin serves cniplug's NetworkDriver and IpamDriver on one unix socket, speaking Docker's plugin
// protocol (JSON POSTs to /<Interface>.<Method>).
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"time"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"
	"github.com/docker/go-plugins-helpers/sdk"
	"github.com/gorilla/mux"
)

// MaxRequestBytes bounds a request body; Docker's requests are a few KiB.
const MaxRequestBytes = 1 << 20

// NetworkDriver is what cniplug's network driver implements (the helper's interface, with contexts).
type NetworkDriver interface {
	GetCapabilities(context.Context, *struct{}) (*network.CapabilitiesResponse, error)
	CreateNetwork(context.Context, *network.CreateNetworkRequest) (*struct{}, error)
	AllocateNetwork(context.Context, *network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error)
	DeleteNetwork(context.Context, *network.DeleteNetworkRequest) (*struct{}, error)
	FreeNetwork(context.Context, *network.FreeNetworkRequest) (*struct{}, error)
	CreateEndpoint(context.Context, *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error)
	DeleteEndpoint(context.Context, *network.DeleteEndpointRequest) (*struct{}, error)
	EndpointInfo(context.Context, *network.InfoRequest) (*network.InfoResponse, error)
	Join(context.Context, *network.JoinRequest) (*network.JoinResponse, error)
	Leave(context.Context, *network.LeaveRequest) (*struct{}, error)
	DiscoverNew(context.Context, *network.DiscoveryNotification) (*struct{}, error)
	DiscoverDelete(context.Context, *network.DiscoveryNotification) (*struct{}, error)
	ProgramExternalConnectivity(context.Context, *network.ProgramExternalConnectivityRequest) (*struct{}, error)
	RevokeExternalConnectivity(context.Context, *network.RevokeExternalConnectivityRequest) (*struct{}, error)
}

// IPAMDriver is what cniplug's IPAM driver implements.
type IPAMDriver interface {
	GetCapabilities(context.Context, *struct{}) (*ipam.CapabilitiesResponse, error)
	GetDefaultAddressSpaces(context.Context, *struct{}) (*ipam.AddressSpacesResponse, error)
	RequestPool(context.Context, *ipam.RequestPoolRequest) (*ipam.RequestPoolResponse, error)
	ReleasePool(context.Context, *ipam.ReleasePoolRequest) (*struct{}, error)
	RequestAddress(context.Context, *ipam.RequestAddressRequest) (*ipam.RequestAddressResponse, error)
	ReleaseAddress(context.Context, *ipam.ReleaseAddressRequest) (*struct{}, error)
}

// NewHandler routes both drivers' methods and Plugin.Activate.
func NewHandler(nd NetworkDriver, id IPAMDriver, log *slog.Logger) http.Handler {
	r := mux.NewRouter()
	r.Methods(http.MethodPost).Path("/Plugin.Activate").HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string][]string{"Implements": {"NetworkDriver", "IpamDriver"}})
	})
	n := func(method string, h http.HandlerFunc) {
		r.Methods(http.MethodPost).Path("/NetworkDriver." + method).Handler(h)
	}
	n("GetCapabilities", handle(log, "NetworkDriver.GetCapabilities", nd.GetCapabilities))
	n("CreateNetwork", handle(log, "NetworkDriver.CreateNetwork", nd.CreateNetwork))
	n("AllocateNetwork", handle(log, "NetworkDriver.AllocateNetwork", nd.AllocateNetwork))
	n("DeleteNetwork", handle(log, "NetworkDriver.DeleteNetwork", nd.DeleteNetwork))
	n("FreeNetwork", handle(log, "NetworkDriver.FreeNetwork", nd.FreeNetwork))
	n("CreateEndpoint", handle(log, "NetworkDriver.CreateEndpoint", nd.CreateEndpoint))
	n("DeleteEndpoint", handle(log, "NetworkDriver.DeleteEndpoint", nd.DeleteEndpoint))
	n("EndpointOperInfo", handle(log, "NetworkDriver.EndpointOperInfo", nd.EndpointInfo))
	n("Join", handle(log, "NetworkDriver.Join", nd.Join))
	n("Leave", handle(log, "NetworkDriver.Leave", nd.Leave))
	n("DiscoverNew", handle(log, "NetworkDriver.DiscoverNew", nd.DiscoverNew))
	n("DiscoverDelete", handle(log, "NetworkDriver.DiscoverDelete", nd.DiscoverDelete))
	n("ProgramExternalConnectivity", handle(log, "NetworkDriver.ProgramExternalConnectivity", nd.ProgramExternalConnectivity))
	n("RevokeExternalConnectivity", handle(log, "NetworkDriver.RevokeExternalConnectivity", nd.RevokeExternalConnectivity))
	i := func(method string, h http.HandlerFunc) {
		r.Methods(http.MethodPost).Path("/IpamDriver." + method).Handler(h)
	}
	i("GetCapabilities", handle(log, "IpamDriver.GetCapabilities", id.GetCapabilities))
	i("GetDefaultAddressSpaces", handle(log, "IpamDriver.GetDefaultAddressSpaces", id.GetDefaultAddressSpaces))
	i("RequestPool", handle(log, "IpamDriver.RequestPool", id.RequestPool))
	i("ReleasePool", handle(log, "IpamDriver.ReleasePool", id.ReleasePool))
	i("RequestAddress", handle(log, "IpamDriver.RequestAddress", id.RequestAddress))
	i("ReleaseAddress", handle(log, "IpamDriver.ReleaseAddress", id.ReleaseAddress))
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeJSON(w, http.StatusNotFound, network.ErrorResponse{Err: fmt.Sprintf("cniplug does not implement %s", req.URL.Path)})
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeJSON(w, http.StatusMethodNotAllowed, network.ErrorResponse{Err: "plugin methods are called with POST"})
	})
	return r
}

// handle decodes the request into Req, calls fn, and encodes its answer. Failures are answered with a non-200
// status and {"Err": ...}: libnetwork's IPAM client reads a 200 with "Err" as success, so only the status is a
// reliable failure signal for both driver types. A panic becomes an error response, never a dead plugin.
func handle[Req, Resp any](log *slog.Logger, method string, fn func(context.Context, *Req) (*Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		defer func() {
			if p := recover(); p != nil {
				log.Error("panic serving request", "method", method, "panic", p, "stack", string(debug.Stack()))
				writeJSON(w, http.StatusInternalServerError, network.ErrorResponse{Err: fmt.Sprintf("cniplug: internal error in %s: %v", method, p)})
			}
		}()
		req := new(Req)
		body := http.MaxBytesReader(w, r.Body, MaxRequestBytes)
		err := json.NewDecoder(body).Decode(req)
		if errors.Is(err, io.EOF) && reflect.TypeOf(req).Elem().NumField() > 0 {
			// Docker's plugin client re-sends an already consumed body when it retries a call (e.g. across a
			// plugin restart), so an empty body must not be read as a request with empty IDs.
			err = errors.New("empty request body")
		} else if errors.Is(err, io.EOF) {
			err = nil
		}
		if err != nil {
			log.Warn("bad request", "method", method, "error", err)
			writeJSON(w, http.StatusBadRequest, network.ErrorResponse{Err: fmt.Sprintf("cniplug: malformed %s request: %v", method, err)})
			return
		}
		resp, err := fn(r.Context(), req)
		if err != nil {
			log.Warn("request failed", "method", method, "duration", time.Since(start), "error", err)
			writeJSON(w, http.StatusInternalServerError, network.ErrorResponse{Err: err.Error()})
			return
		}
		log.Debug("request served", "method", method, "duration", time.Since(start))
		if resp == nil {
			writeJSON(w, http.StatusOK, struct{}{})
			return
		}
		writeJSON(w, http.StatusOK, resp)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", sdk.DefaultContentTypeV1_1)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Listen creates the plugin socket, readable and writable by root only, replacing a stale one.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restricting socket %s: %w", path, err)
	}
	return l, nil
}

// Serve serves h on l until ctx is cancelled, then lets in-flight requests (CNI operations) finish.
func Serve(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(l) }()
	select {
	case err := <-errCh:
		return err
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		return srv.Shutdown(shutdownCtx)
	}
}
