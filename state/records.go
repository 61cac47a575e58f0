package state

import (
	"time"

	"github.com/cniplug/cniplug/cniargs"
	"github.com/cniplug/cniplug/cnibridge"
	"github.com/cniplug/cniplug/hostports"
	"github.com/cniplug/cniplug/netrules"
)

// AddressMode is how a Docker network gets its container addresses.
type AddressMode string

const (
	// ModeCNIIPAM: --ipam-driver cniplug; RequestAddress runs the CNI ADD and returns its address.
	ModeCNIIPAM AddressMode = "cni-ipam"
	// ModeNull: --ipam-driver null; CreateEndpoint runs the ADD and tells Docker the address.
	ModeNull AddressMode = "null-ipam"
	// ModeDocker: Docker's default IPAM picks the address; CreateEndpoint asks CNI for exactly that one.
	ModeDocker AddressMode = "docker-ipam"
)

// The address spaces cniplug's IPAM driver reports; the network driver recognises its own pools by them.
const (
	LocalAddressSpace  = "CniplugLocal"
	GlobalAddressSpace = "CniplugGlobal"
)

// ModeOf is the address mode of a Docker network whose IPv4 pool is in addressSpace.
func ModeOf(addressSpace string) AddressMode {
	switch addressSpace {
	case LocalAddressSpace, GlobalAddressSpace:
		return ModeCNIIPAM
	case "null":
		return ModeNull
	default:
		return ModeDocker
	}
}

// Network is a Docker network bound to a CNI network.
type Network struct {
	ID          string      `json:"id"`
	CNIName     string      `json:"cniName"`
	Conflist    []byte      `json:"conflist"`
	Mode        AddressMode `json:"mode"`
	IPv4Pool    string      `json:"ipv4Pool,omitempty"`
	IPv4Gateway string      `json:"ipv4Gateway,omitempty"`
	IPv6Pool    string      `json:"ipv6Pool,omitempty"`
	Created     time.Time   `json:"created"`
	// Extra is the allow-listed CNI_ARGS / capability args given with --opt cni.<...>.
	Extra cniargs.Extra `json:"extra,omitempty"`
	// AsyncDelete: DeleteEndpoint records the removal and returns; the CNI DEL runs in the background.
	AsyncDelete bool `json:"asyncDelete,omitempty"`
	// DirectJoin: at Join cniplug moves the link into the container's netns itself when the engine made it
	// already (Docker 28+), instead of handing it to Docker through the host netns.
	DirectJoin bool `json:"directJoin,omitempty"`
	// Internal (`docker network create --internal`): containers get no route out of the network's subnets, and
	// FORWARD rules drop whatever would leave them.
	Internal bool `json:"internal,omitempty"`
	// NoHostFirewall (--opt host-firewall=false): cniplug adds no FORWARD rules for the network's containers;
	// the CNI network manages its own (Calico's Felix, flannel).
	NoHostFirewall bool `json:"noHostFirewall,omitempty"`
	// Masquerade (--opt masquerade=true): cniplug masquerades what leaves the network's prefixes, once for the
	// network, as Docker does for its bridge networks; a chain needs no per-container ipMasq then.
	Masquerade bool `json:"masquerade,omitempty"`
}

// Pool is an address pool handed to Docker by cniplug's IPAM driver.
type Pool struct {
	ID       string `json:"id"`
	CNIName  string `json:"cniName"`
	Conflist []byte `json:"conflist"`
	CIDR     string `json:"cidr"`
	V6       bool   `json:"v6"`
	// Extra is the allow-listed CNI_ARGS / capability args given with --ipam-opt cni.<...>.
	Extra cniargs.Extra `json:"extra,omitempty"`
	// Warm (--ipam-opt warm-pool=N) is how many attachments cniplug keeps added ahead of RequestAddress.
	Warm int `json:"warm,omitempty"`
	// Created is when RequestPool made it (zero for pools recorded before it was kept).
	Created time.Time `json:"created,omitempty"`
}

// Phase is where an attachment is in Docker's lifecycle.
type Phase string

const (
	// PhaseAdding: recorded before CNI ADD runs; a crash leaves this for reconciliation to tear down.
	PhaseAdding Phase = "adding"
	// PhaseWarm: added ahead of any request for a pool's warm pool; RequestAddress claims it (as pending).
	PhaseWarm Phase = "warm"
	// PhasePending: added by IPAM RequestAddress, not yet claimed by an endpoint.
	PhasePending Phase = "pending"
	// PhaseEndpoint: owned by a Docker endpoint; the link waits in the staging netns.
	PhaseEndpoint Phase = "endpoint"
	// PhaseJoined: the link was handed to Docker for a container.
	PhaseJoined Phase = "joined"
	// PhaseDeleting: Docker deleted the endpoint of an async-delete network; the teardown runs in the
	// background (or, after a stop or crash, in reconciliation).
	PhaseDeleting Phase = "deleting"
)

// Attachment is a CNI attachment and the Docker objects that own it.
type Attachment struct {
	cnibridge.Attachment
	Phase      Phase     `json:"phase"`
	NetworkID  string    `json:"networkID,omitempty"`
	EndpointID string    `json:"endpointID,omitempty"`
	PoolID     string    `json:"poolID,omitempty"`
	Created    time.Time `json:"created"`
	// Updated is when the record was last written (the store sets it). Reconciliation measures an
	// attachment's age from its last change: one an operation has just written may belong to a Docker object
	// that Docker has not recorded yet.
	Updated time.Time `json:"updated,omitempty"`
	// HostPorts are the ports published for the endpoint (`docker run -p`), recorded before their rules are
	// programmed so that teardown removes them even after a crash.
	HostPorts *hostports.Record `json:"hostPorts,omitempty"`
	// Forward is what the container adds to its network's firewall rule set (netrules), recorded before it is
	// programmed, like HostPorts. Records of versions that kept one chain per container decode into it too.
	Forward *netrules.Member `json:"forward,omitempty"`
	// RequestMAC is the MAC Docker generated (or the user asked for) and passed to cniplug IPAM's
	// RequestAddress: it pairs the endpoint's IPv6 request with the attachment its IPv4 request created. For
	// an ADD at Join, it is the MAC CreateEndpoint answered.
	RequestMAC string `json:"requestMAC,omitempty"`
	// TeardownReason says why an attachment is being removed when it is not Docker's DeleteEndpoint (phase
	// deleting after a failed ADD whose rollback failed too), for reconciliation's report and `cniplug ls`.
	TeardownReason string `json:"teardownReason,omitempty"`
	// AddAtJoin: the CNI ADD has not run yet; Join runs it, into the container's netns when that exists. The
	// Interface holds the addresses Docker chose, which the ADD asks for.
	AddAtJoin bool `json:"addAtJoin,omitempty"`
	// V6Taken: Docker's IPv6 RequestAddress already received this pending attachment's IPv6 address.
	V6Taken bool `json:"v6Taken,omitempty"`
}

// ID is the attachment's key (its CNI container ID).
func (a *Attachment) ID() string { return a.ContainerID }

// LastChanged is when the record was last written (its creation, for records of versions that kept no Updated).
func (a *Attachment) LastChanged() time.Time {
	if a.Updated.After(a.Created) {
		return a.Updated
	}
	return a.Created
}
