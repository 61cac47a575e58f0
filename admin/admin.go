// Package admin answers operators' questions about the running plugin: which networks and attachments it
// holds and what garbage collection (reconciliation) would do. The plugin serves it on its root-only socket
// (POST /Cniplug.Status, /Cniplug.Attachments, /Cniplug.GC); `cniplug status|ls|gc` are its clients.
package admin

import (
	"bytes"
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/cniplug/cniplug/attach"
	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/dockerapi"
	"github.com/cniplug/cniplug/state"
)

// Status is the answer to /Cniplug.Status.
type Status struct {
	Driver   string          `json:"driver"`
	ConfDir  string          `json:"cniConfDir"`
	Started  time.Time       `json:"started"`
	Networks []NetworkStatus `json:"networks"`
	Counts   Counts          `json:"counts"`
	// DockerError says why Docker could not be asked for network names ("" when it answered or is not used).
	DockerError string `json:"dockerError,omitempty"`
}

// Counts summarises the state.
type Counts struct {
	Networks    int            `json:"networks"`
	Pools       int            `json:"pools"`
	Attachments int            `json:"attachments"`
	ByPhase     map[string]int `json:"byPhase"`
}

// NetworkStatus is one Docker network bound to a CNI network.
type NetworkStatus struct {
	ID      string `json:"id"`             // Docker network ID
	Name    string `json:"name,omitempty"` // Docker network name, when Docker could be asked
	CNIName string `json:"cniNetwork"`
	Mode    string `json:"mode"`
	// File is the conflist that now defines the CNI network in the conf dir; the recorded bytes are what
	// cniplug uses. FileState is "same", "edited" (the file differs from the recorded conflist) or "missing".
	File        string    `json:"file,omitempty"`
	FileState   string    `json:"fileState"`
	Attachments int       `json:"attachments"`
	Created     time.Time `json:"created"`
}

// Attachments is the answer to /Cniplug.Attachments.
type Attachments struct {
	Attachments []Attachment `json:"attachments"`
	DockerError string       `json:"dockerError,omitempty"`
}

// Attachment is one CNI attachment as an operator sees it.
type Attachment struct {
	ID            string    `json:"id"` // CNI container ID
	CNINetwork    string    `json:"cniNetwork"`
	NetworkID     string    `json:"networkID,omitempty"`
	NetworkName   string    `json:"networkName,omitempty"`
	EndpointID    string    `json:"endpointID,omitempty"`
	ContainerID   string    `json:"containerID,omitempty"` // from Docker, for live endpoints
	ContainerName string    `json:"containerName,omitempty"`
	PoolID        string    `json:"poolID,omitempty"`
	Address       string    `json:"address,omitempty"`
	AddressIPv6   string    `json:"addressIPv6,omitempty"`
	MAC           string    `json:"mac,omitempty"`
	StagingNetNS  string    `json:"stagingNetns"`
	HostIfName    string    `json:"hostIfName"`
	Phase         string    `json:"phase"`
	Created       time.Time `json:"created"`
}

// GCRequest is the body of /Cniplug.GC. DryRun must be given explicitly ({"DryRun": false} for a real
// collection): a request without it is refused, so a malformed request can never run a real collection.
type GCRequest struct {
	DryRun *bool
}

// Validate refuses a request that does not say whether it is a dry run.
func (r *GCRequest) Validate() error {
	if r.DryRun == nil {
		return ErrDryRunMissing
	}
	return nil
}

// ErrDryRunMissing is the answer to a GC request that does not say whether it is a dry run.
var ErrDryRunMissing = errors.New(`say whether this is a dry run: {"DryRun": true} or {"DryRun": false}`)

// GCReport is the answer to /Cniplug.GC: what reconciliation removed (or, in a dry run, would remove).
type GCReport struct {
	attach.Report
	// MinAge is the age under which attachments count as in flight and are left alone.
	MinAge string `json:"minAge"`
	// DockerError says why Docker could not be asked for live endpoints: only crash leftovers were considered.
	DockerError string `json:"dockerError,omitempty"`
	// Error lists what could not be removed.
	Error string `json:"error,omitempty"`
}

// Config configures a Service.
type Config struct {
	Driver  string // the driver name Docker knows the plugin by
	ConfDir string // colon-separated conf dirs, searched in order as the drivers do
	Manager *attach.Manager
	// Docker is asked for live endpoints and names; nil when cniplug runs without the Docker API.
	Docker *dockerapi.Client
	// MinAge protects in-flight work from GC, as for the periodic reconciliation.
	MinAge  time.Duration
	Started time.Time
}

// Service implements the admin methods over the state store, the attachment manager and Docker's API.
type Service struct {
	cfg   Config
	store *state.Store

	mu    sync.Mutex
	names map[string]string // "n/<network ID>" or "p/<pool ID>" -> CNI network name (IDs are never reused)
}

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Started.IsZero() {
		cfg.Started = time.Now()
	}
	return &Service{cfg: cfg, store: cfg.Manager.Store(), names: map[string]string{}}
}

// inventory asks Docker about the networks cniplug holds records for; nil with the reason when it cannot.
func (s *Service) inventory(ctx context.Context) (dockerapi.Inventory, string) {
	if s.cfg.Docker == nil {
		return nil, "cniplug runs without the Docker API (--docker-socket is empty)"
	}
	ids, err := s.cfg.Manager.NetworkIDs()
	if err != nil {
		return nil, err.Error()
	}
	inv, err := s.cfg.Docker.Inventory(ctx, ids)
	if err != nil {
		return nil, err.Error()
	}
	return inv, ""
}

// Status reports the networks and counts.
func (s *Service) Status(ctx context.Context, _ *struct{}) (*Status, error) {
	nets, err := s.store.Networks()
	if err != nil {
		return nil, err
	}
	pools, err := s.store.Pools()
	if err != nil {
		return nil, err
	}
	atts, err := s.store.Attachments()
	if err != nil {
		return nil, err
	}
	inv, dockerErr := s.inventory(ctx)
	st := &Status{Driver: s.cfg.Driver, ConfDir: s.cfg.ConfDir, Started: s.cfg.Started, DockerError: dockerErr,
		Counts: Counts{Networks: len(nets), Pools: len(pools), Attachments: len(atts), ByPhase: map[string]int{}}}
	perNet := map[string]int{}
	for _, a := range atts {
		st.Counts.ByPhase[string(a.Phase)]++
		if a.NetworkID != "" {
			perNet[a.NetworkID]++
		}
	}
	for _, n := range nets {
		ns := NetworkStatus{ID: n.ID, CNIName: n.CNIName, Mode: string(n.Mode), Attachments: perNet[n.ID], Created: n.Created}
		if d := inv[n.ID]; d != nil {
			ns.Name = d.Name
		}
		ns.File, ns.FileState = s.conflistFile(n)
		st.Networks = append(st.Networks, ns)
	}
	sort.Slice(st.Networks, func(i, j int) bool { return st.Networks[i].Created.Before(st.Networks[j].Created) })
	return st, nil
}

// conflistFile finds the file now defining the network's CNI network and compares it with the recorded bytes.
func (s *Service) conflistFile(n *state.Network) (file, fileState string) {
	nw, err := cnibridge.ResolveNetwork(s.cfg.ConfDir, n.CNIName)
	if err != nil {
		return "", "missing"
	}
	if !bytes.Equal(bytes.TrimSpace(nw.Bytes), bytes.TrimSpace(n.Conflist)) {
		return nw.File, "edited"
	}
	return nw.File, "same"
}

// Attachments lists every attachment, with the container that owns it when Docker knows.
func (s *Service) Attachments(ctx context.Context, _ *struct{}) (*Attachments, error) {
	atts, err := s.store.Attachments()
	if err != nil {
		return nil, err
	}
	inv, dockerErr := s.inventory(ctx)
	out := &Attachments{Attachments: []Attachment{}, DockerError: dockerErr}
	for _, a := range atts {
		row := Attachment{
			ID: a.ID(), CNINetwork: a.Network, NetworkID: a.NetworkID, EndpointID: a.EndpointID, PoolID: a.PoolID,
			Address: a.Interface.IPv4, AddressIPv6: a.Interface.IPv6, MAC: a.Interface.MAC,
			StagingNetNS: a.NetNS, HostIfName: a.HostIfName, Phase: string(a.Phase), Created: a.Created,
		}
		if n := inv[a.NetworkID]; n != nil {
			row.NetworkName = n.Name
			if c, ok := n.Endpoints[a.EndpointID]; ok {
				row.ContainerID, row.ContainerName = c.ID, c.Name
			}
		}
		out.Attachments = append(out.Attachments, row)
	}
	sort.Slice(out.Attachments, func(i, j int) bool { return out.Attachments[i].Created.Before(out.Attachments[j].Created) })
	return out, nil
}

// GC runs reconciliation with Docker's live endpoints, or only reports what it would do when DryRun is set.
// It is the same reconciliation the plugin runs periodically: one teardown path, the same in-flight guard.
func (s *Service) GC(ctx context.Context, req *GCRequest) (*GCReport, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	asked := time.Now()
	inv, dockerErr := s.inventory(ctx)
	var live dockerapi.Live
	if inv != nil {
		live = inv.Live()
	}
	rep, err := s.cfg.Manager.Reconcile(ctx, attach.ReconcileOptions{Live: live, MinAge: s.cfg.MinAge, DryRun: *req.DryRun, Now: asked})
	out := &GCReport{Report: rep, MinAge: s.cfg.MinAge.String(), DockerError: dockerErr}
	if err != nil {
		out.Error = err.Error()
	}
	if out.Attachments == nil {
		out.Attachments = []attach.Action{}
	}
	return out, nil
}

// CNINetwork names the CNI network behind a Docker network ID or an IPAM pool ID ("" when unknown), for
// labelling metrics. Answers are cached: IDs are random and never reused, so a name never goes stale.
func (s *Service) CNINetwork(networkID, poolID string) string {
	key, id := "n/"+networkID, networkID
	if networkID == "" {
		key, id = "p/"+poolID, poolID
	}
	if id == "" {
		return ""
	}
	s.mu.Lock()
	name, ok := s.names[key]
	s.mu.Unlock()
	if ok {
		return name
	}
	if networkID != "" {
		if n, err := s.store.Network(id); err == nil {
			name = n.CNIName
		}
	} else if p, err := s.store.Pool(id); err == nil {
		name = p.CNIName
	}
	if name == "" {
		return ""
	}
	s.mu.Lock()
	if len(s.names) >= 4096 { // bound the cache; it refills from the store
		clear(s.names)
	}
	s.names[key] = name
	s.mu.Unlock()
	return name
}
