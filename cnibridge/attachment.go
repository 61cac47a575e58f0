package cnibridge

import (
	"github.com/containernetworking/cni/libcni"

	"github.com/cniplug/cniplug/naming"
)

// Attachment is one CNI attachment and everything needed to find and delete it later. It is stored as JSON.
type Attachment struct {
	ContainerID string `json:"containerID"` // CNI_CONTAINERID
	IfName      string `json:"ifName"`      // CNI_IFNAME in the staging netns
	NetNS       string `json:"netns"`       // staging netns path
	HostIfName  string `json:"hostIfName"`  // link name while it waits in the host netns
	// Sandbox and SandboxIfName: the container's netns and the link's name there, when cniplug moved the link
	// into the container itself (JoinSandbox) instead of handing it to Docker.
	Sandbox       string `json:"sandbox,omitempty"`
	SandboxIfName string `json:"sandboxIfName,omitempty"`
	// ContainerNetNS: the container's netns Docker named at Join (SandboxKey), for a link handed over to Docker;
	// HeldInSandbox: at Leave the link stayed there under HostIfName, and that netns is pinned over NetNS
	// (HoldAtLeave).
	ContainerNetNS string `json:"containerNetns,omitempty"`
	HeldInSandbox  bool   `json:"heldInSandbox,omitempty"`
	// LeaseInSandbox: the DHCP leases were handed over to the container's netns (HandOverLease); teardown
	// releases them with that key.
	LeaseInSandbox bool           `json:"leaseInSandbox,omitempty"`
	Network        string         `json:"network"`  // CNI network name
	Conflist       []byte         `json:"conflist"` // exact bytes used for ADD, reused for DEL
	Args           [][2]string    `json:"args,omitempty"`
	CapabilityArgs map[string]any `json:"capabilityArgs,omitempty"`
	Interface      Interface      `json:"interface"`
}

// AddRequest asks for one attachment of a container to a CNI network.
type AddRequest struct {
	ContainerID    string
	Network        *Network
	Args           [][2]string
	CapabilityArgs map[string]any
}

// hostIfName is the name of the attachment's link while it waits in the host netns for Docker (15 characters,
// the interface name limit). Plan names new links with it and the cache reader finds leftovers by it.
func hostIfName(containerID string) string { return "cnp" + naming.ShortID(containerID) }

func (a *Attachment) runtimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID:    a.ContainerID,
		NetNS:          a.NetNS,
		IfName:         a.IfName,
		Args:           a.Args,
		CapabilityArgs: a.CapabilityArgs,
	}
}
