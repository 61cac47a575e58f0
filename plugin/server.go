// Package plugin serves cniplug's NetworkDriver and IpamDriver on one unix socket, speaking Docker's plugin
// protocol (JSON POSTs to /<Interface>.<Method>).
package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cniplug/cniplug/internal/httpserve"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"time"

	"github.com/cniplug/cniplug/admin"
	"github.com/cniplug/cniplug/naming"
	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"
	"github.com/docker/go-plugins-helpers/sdk"
	"github.com/gorilla/mux"
)

// MaxRequestBytes bounds a request body; Docker's requests are a few KiB.
const MaxRequestBytes = 1 << 20

// readBody reads a request's body, at most MaxRequestBytes of it.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	if tooLarge := (*http.MaxBytesError)(nil); errors.As(err, &tooLarge) {
		return nil, fmt.Errorf("request body too large: over the limit of %d bytes (1 MiB); Docker's requests are a few KiB", tooLarge.Limit)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the request body: %w", err)
	}
	return data, nil
}

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

// Admin answers operators' requests (cniplug status, ls, gc) on the same root-only socket.
type Admin interface {
	Status(context.Context, *struct{}) (*admin.Status, error)
	Attachments(context.Context, *struct{}) (*admin.Attachments, error)
	GC(context.Context, *admin.GCRequest) (*admin.GCReport, error)
}

// RequestObserver is told about every request served (metrics). cniNetwork is "" when unknown.
type RequestObserver interface {
	ObserveRequest(method, cniNetwork string, d time.Duration, err error)
}

// NetworkNamer names the CNI network behind a Docker network ID or an IPAM pool ID ("" when unknown).
type NetworkNamer interface {
	CNINetwork(networkID, poolID string) string
}

// Option configures NewHandler.
type Option func(*server)

// WithAdmin serves the admin methods under /Cniplug.*.
func WithAdmin(a Admin) Option { return func(s *server) { s.admin = a } }

// WithObserver reports every request to o, labelled with the CNI network n names for it.
func WithObserver(o RequestObserver, n NetworkNamer) Option {
	return func(s *server) { s.observer, s.namer = o, n }
}

type server struct {
	log      *slog.Logger
	admin    Admin
	observer RequestObserver
	namer    NetworkNamer
}

// NewHandler routes both drivers' methods and Plugin.Activate, and the admin methods when configured.
func NewHandler(nd NetworkDriver, id IPAMDriver, log *slog.Logger, opts ...Option) http.Handler {
	s := &server{log: log}
	for _, o := range opts {
		o(s)
	}
	r := mux.NewRouter()
	r.Methods(http.MethodPost).Path("/Plugin.Activate").HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string][]string{"Implements": {"NetworkDriver", "IpamDriver"}})
	})
	n := func(method string, h http.HandlerFunc) {
		r.Methods(http.MethodPost).Path("/NetworkDriver." + method).Handler(h)
	}
	n("GetCapabilities", handle(s, "NetworkDriver.GetCapabilities", decodeLenient, nd.GetCapabilities))
	n("CreateNetwork", handle(s, "NetworkDriver.CreateNetwork", decodeLenient, nd.CreateNetwork))
	n("AllocateNetwork", handle(s, "NetworkDriver.AllocateNetwork", decodeLenient, nd.AllocateNetwork))
	n("DeleteNetwork", handle(s, "NetworkDriver.DeleteNetwork", decodeLenient, nd.DeleteNetwork))
	n("FreeNetwork", handle(s, "NetworkDriver.FreeNetwork", decodeLenient, nd.FreeNetwork))
	n("CreateEndpoint", handle(s, "NetworkDriver.CreateEndpoint", decodeLenient, nd.CreateEndpoint))
	n("DeleteEndpoint", handle(s, "NetworkDriver.DeleteEndpoint", decodeLenient, nd.DeleteEndpoint))
	n("EndpointOperInfo", handle(s, "NetworkDriver.EndpointOperInfo", decodeLenient, nd.EndpointInfo))
	n("Join", handle(s, "NetworkDriver.Join", decodeLenient, nd.Join))
	n("Leave", handle(s, "NetworkDriver.Leave", decodeLenient, nd.Leave))
	n("DiscoverNew", handle(s, "NetworkDriver.DiscoverNew", decodeLenient, nd.DiscoverNew))
	n("DiscoverDelete", handle(s, "NetworkDriver.DiscoverDelete", decodeLenient, nd.DiscoverDelete))
	n("ProgramExternalConnectivity", handle(s, "NetworkDriver.ProgramExternalConnectivity", decodeLenient, nd.ProgramExternalConnectivity))
	n("RevokeExternalConnectivity", handle(s, "NetworkDriver.RevokeExternalConnectivity", decodeLenient, nd.RevokeExternalConnectivity))
	i := func(method string, h http.HandlerFunc) {
		r.Methods(http.MethodPost).Path("/IpamDriver." + method).Handler(h)
	}
	i("GetCapabilities", handle(s, "IpamDriver.GetCapabilities", decodeLenient, id.GetCapabilities))
	i("GetDefaultAddressSpaces", handle(s, "IpamDriver.GetDefaultAddressSpaces", decodeLenient, id.GetDefaultAddressSpaces))
	i("RequestPool", handle(s, "IpamDriver.RequestPool", decodeLenient, id.RequestPool))
	i("ReleasePool", handle(s, "IpamDriver.ReleasePool", decodeLenient, id.ReleasePool))
	i("RequestAddress", handle(s, "IpamDriver.RequestAddress", decodeLenient, id.RequestAddress))
	i("ReleaseAddress", handle(s, "IpamDriver.ReleaseAddress", decodeLenient, id.ReleaseAddress))
	if s.admin != nil {
		a := func(method string, h http.HandlerFunc) {
			r.Methods(http.MethodPost).Path("/Cniplug." + method).Handler(h)
		}
		// Operators' requests are decoded strictly: a misspelt field must not turn a dry run into a real GC.
		a("Status", handle(s, "Cniplug.Status", DecodeStrict, s.admin.Status))
		a("Attachments", handle(s, "Cniplug.Attachments", DecodeStrict, s.admin.Attachments))
		a("GC", handle(s, "Cniplug.GC", DecodeStrict, s.admin.GC))
	}
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeJSON(w, http.StatusNotFound, network.ErrorResponse{Err: fmt.Sprintf("cniplug does not implement %s", req.URL.Path)})
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeJSON(w, http.StatusMethodNotAllowed, network.ErrorResponse{Err: "plugin methods are called with POST"})
	})
	return r
}

// errEmptyBody: Docker's plugin client re-sends an already consumed body when it retries a call (e.g. across
// a plugin restart), so an empty body must not be read as a request with empty IDs.
var errEmptyBody = errors.New("empty request body")

// decodeLenient decodes Docker's requests as Docker's own plugin helpers do: unknown fields are ignored (newer
// Docker versions add some) and only the first JSON value is read.
func decodeLenient(data []byte, v any) error {
	err := json.NewDecoder(bytes.NewReader(data)).Decode(v)
	if errors.Is(err, io.EOF) {
		if reflect.TypeOf(v).Elem().NumField() > 0 {
			return errEmptyBody
		}
		return nil
	}
	return err
}

// DecodeStrict decodes an operator's request: exactly one JSON object (or an empty body for a request with
// no fields), no unknown fields, nothing after it.
func DecodeStrict(data []byte, v any) error {
	data = bytes.Trim(data, " \t\r\n") // JSON's whitespace, not Unicode's
	if len(data) == 0 {
		if reflect.TypeOf(v).Elem().NumField() > 0 {
			return errEmptyBody
		}
		return nil
	}
	if data[0] != '{' {
		return errors.New("the request must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if tok, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err == nil {
			err = fmt.Errorf("unexpected %v after the request", tok)
		}
		return err
	}
	return nil
}

// requestIDs are the Docker object IDs a request names, read generically from its body for logs and metrics.
type requestIDs struct {
	NetworkID  string
	EndpointID string
	PoolID     string
}

func (ids requestIDs) logAttrs() []any {
	var attrs []any
	if ids.NetworkID != "" {
		attrs = append(attrs, "network", logID(ids.NetworkID))
	}
	if ids.EndpointID != "" {
		attrs = append(attrs, "endpoint", logID(ids.EndpointID))
	}
	if ids.PoolID != "" {
		attrs = append(attrs, "pool", logID(ids.PoolID))
	}
	return attrs
}

// maxLoggedID bounds an ID in a log line: the IDs are checked only after they are logged, and a request may
// carry an "ID" of a megabyte.
const maxLoggedID = 80

func logID(id string) string {
	if len(id) > maxLoggedID {
		return id[:maxLoggedID] + "..."
	}
	return id
}

// handle decodes the request into Req (and validates it, if Req has a Validate method), calls fn, and encodes
// its answer. The drivers check each request's fields first thing; a field they refuse (naming.FieldError) is
// answered 400, like a body that does not decode. Failures are answered with a non-200 status and {"Err": ...}: libnetwork's IPAM client reads a 200 with "Err" as success, so only the status is a
// reliable failure signal for both driver types. A panic becomes an error response, never a dead plugin.
// Every log line carries the network, endpoint and pool IDs the request names.
func handle[Req, Resp any](s *server, method string, decode func([]byte, any) error, fn func(context.Context, *Req) (*Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		log := s.log
		var ids requestIDs
		cniNetwork := ""
		var failure error
		defer func() {
			if p := recover(); p != nil {
				log.Error("panic serving request", "method", method, "panic", p, "stack", string(debug.Stack()))
				failure = fmt.Errorf("panic: %v", p)
				writeJSON(w, http.StatusInternalServerError, network.ErrorResponse{Err: fmt.Sprintf("cniplug: internal error in %s: %v", method, p)})
			}
			if s.observer != nil {
				if cniNetwork == "" && s.namer != nil {
					cniNetwork = s.namer.CNINetwork(ids.NetworkID, ids.PoolID) // e.g. CreateNetwork: known only now
				}
				s.observer.ObserveRequest(method, cniNetwork, time.Since(start), failure)
			}
		}()
		data, err := readBody(w, r)
		if err == nil {
			_ = json.Unmarshal(data, &ids) // best effort: a body that is not an object names no IDs
			if attrs := ids.logAttrs(); len(attrs) > 0 {
				log = log.With(attrs...)
			}
			if s.observer != nil && s.namer != nil {
				cniNetwork = s.namer.CNINetwork(ids.NetworkID, ids.PoolID) // e.g. DeleteNetwork: unknown afterwards
			}
		}
		req := new(Req)
		if err == nil {
			err = decode(data, req)
		}
		if v, ok := any(req).(interface{ Validate() error }); ok && err == nil {
			err = v.Validate()
		}
		if err != nil {
			failure = err
			log.Warn("bad request", "method", method, "error", err)
			writeJSON(w, http.StatusBadRequest, network.ErrorResponse{Err: fmt.Sprintf("cniplug: malformed %s request: %v", method, err)})
			return
		}
		resp, err := fn(r.Context(), req)
		if err != nil {
			failure = err
			status := http.StatusInternalServerError
			if fe := (*naming.FieldError)(nil); errors.As(err, &fe) {
				status = http.StatusBadRequest // a field the driver's checks refused (driver/validate.go, ipam/validate.go)
			}
			log.Warn("request failed", "method", method, "duration", time.Since(start), "error", err)
			writeJSON(w, status, network.ErrorResponse{Err: err.Error()})
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
	return httpserve.Serve(ctx, l, h, 60*time.Second)
}
