package cnibridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cniplug/cniplug/naming"
)

// dhcpIPAM is the reference IPAM plugin that leases addresses from the LAN's DHCP server through its daemon.
const dhcpIPAM = "dhcp"

// dhcpSections returns the ipam sections of the chain's plugins that use the dhcp IPAM plugin.
func (n *Network) dhcpSections() []json.RawMessage {
	var out []json.RawMessage
	for _, p := range n.List.Plugins {
		var conf struct {
			IPAM json.RawMessage `json:"ipam"`
		}
		if json.Unmarshal(p.Bytes, &conf) != nil || len(conf.IPAM) == 0 {
			continue
		}
		var ipam struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(conf.IPAM, &ipam) == nil && ipam.Type == dhcpIPAM {
			out = append(out, conf.IPAM)
		}
	}
	return out
}

// UsesDHCP reports whether a plugin of the chain leases its address by DHCP (ipam type "dhcp"). The dhcp
// daemon renews a lease from the network namespace the lease was acquired in, so such an attachment's lease
// must be handed over to the container's netns once the link is there (HandOverLease).
func (n *Network) UsesDHCP() bool { return len(n.dhcpSections()) > 0 }

// UsesDefaultDHCPDaemon reports whether a plugin of the chain leases by DHCP through the daemon on its
// default socket (no daemonSocketPath in its ipam section), the one cniplug supervises.
func (n *Network) UsesDefaultDHCPDaemon() bool {
	for _, ipam := range n.dhcpSections() {
		var conf struct {
			Socket string `json:"daemonSocketPath"`
		}
		if json.Unmarshal(ipam, &conf) == nil && conf.Socket == "" {
			return true
		}
	}
	return false
}

// HandOverLease moves the attachment's DHCP leases from its staging netns to the container's, where the link
// is now (JoinSandbox): the dhcp daemon keys a lease by container ID, network and interface name only, and
// keeps renewing it from the netns it was acquired in, so once the link has left staging it silently stops
// renewing (docs/dhcp-findings.md). For each dhcp IPAM section it runs the dhcp plugin alone: DEL with the
// staging key (the daemon forgets the lease; its release cannot reach the server, as the link is gone from
// staging, so the server keeps the address), then ADD in the container's netns under the link's name there,
// which acquires the same address again (same client ID, so the link must have its ADD-time name) and
// renews it from there for the container's life. An address that changed fails the hand-over.
func (r *Runner) HandOverLease(ctx context.Context, att *Attachment) error {
	nw, err := ParseNetwork(att.Conflist)
	if err != nil {
		return fmt.Errorf("conflist of CNI network %q: %w", att.Network, err)
	}
	if att.Sandbox == "" {
		return fmt.Errorf("CNI network %q leases its address by DHCP, but the link is not in the container's netns", att.Network)
	}
	if att.SandboxIfName != att.IfName {
		return fmt.Errorf("CNI network %q leases its address by DHCP, which only works on the container's first interface (%s), not %s: the DHCP client ID includes the interface name",
			att.Network, att.IfName, att.SandboxIfName)
	}
	if err := r.endLeases(ctx, nw, att, att.NetNS, att.IfName); err != nil {
		return fmt.Errorf("handing the DHCP lease over to the container: %w", err)
	}
	return r.TakeUpLease(ctx, att)
}

// TakeUpLease has the dhcp daemon acquire the attachment's leases from the container's netns, where the link
// is, under the link's name there: the second step of HandOverLease, and what gives a new daemon (after the
// old one died) the leases of running containers again. The client ID is the one of the ADD, so the server
// confirms the address the container has; an address that changed is an error.
func (r *Runner) TakeUpLease(ctx context.Context, att *Attachment) error {
	nw, err := ParseNetwork(att.Conflist)
	if err != nil {
		return fmt.Errorf("conflist of CNI network %q: %w", att.Network, err)
	}
	for _, ipam := range nw.dhcpSections() {
		var res current.Result
		if err := r.execDHCP(ctx, "ADD", nw, ipam, att, att.Sandbox, att.SandboxIfName, &res); err != nil {
			return fmt.Errorf("acquiring the DHCP lease from the container's netns: %w", err)
		}
		if !leaseKeeps(res, att.Interface) {
			return fmt.Errorf("the DHCP server gave the container another address (%s) than the one it has (%s)", leaseAddresses(res), att.Interface.IPv4)
		}
	}
	return nil
}

// releaseLease ends the DHCP leases handed over to the container (HandOverLease), with the key it used: the
// daemon sends DHCPRELEASE from the container's netns, which its lease keeps alive (the renewal goroutine
// runs in it) even when Docker has removed the container's, and forgets the lease (so no renewal outlives
// the attachment). Part of Teardown, before the link is taken back.
func (r *Runner) releaseLease(ctx context.Context, nw *Network, att *Attachment) error {
	if !att.LeaseInSandbox {
		return nil
	}
	return r.endLeases(ctx, nw, att, att.Sandbox, att.SandboxIfName)
}

// releaseStagingLease ends a DHCP lease still held with the staging key (never handed over: Join failed or
// never came), while the link is back in the staging netns with its address: the daemon's DHCPRELEASE is sent
// from that address. The chain's own DEL cannot always do it: the bridge plugin deletes the link before it
// calls its IPAM plugin. For a lease handed over to the container the daemon holds nothing under this key,
// and the call does nothing. Part of Teardown, before the chain's DEL.
func (r *Runner) releaseStagingLease(ctx context.Context, nw *Network, att *Attachment) error {
	return r.endLeases(ctx, nw, att, att.NetNS, att.IfName)
}

// endLeases runs the dhcp plugin's DEL for each of the chain's dhcp IPAM sections with the key (netns,
// ifname): the daemon sends DHCPRELEASE from that netns and forgets the lease. Every section is tried.
func (r *Runner) endLeases(ctx context.Context, nw *Network, att *Attachment, netnsPath, ifName string) error {
	var errs []error
	for _, ipam := range nw.dhcpSections() {
		errs = append(errs, r.execDHCP(ctx, "DEL", nw, ipam, att, netnsPath, ifName, nil))
	}
	return errors.Join(errs...)
}

// execDHCP runs the dhcp IPAM plugin on its own, through the runner's exec (deadline, observer, PATH) but not
// through libcni: libcni would overwrite the attachment's cached result for the same container and interface.
// The attachment's CNI_ARGS go along: the dhcp plugin reads options from them ("provide" ... "fromArg").
func (r *Runner) execDHCP(ctx context.Context, command string, nw *Network, ipam json.RawMessage, att *Attachment, netnsPath, ifName string, result *current.Result) error {
	conf, err := json.Marshal(map[string]any{"cniVersion": nw.List.CNIVersion, "name": nw.Name, "type": dhcpIPAM, "ipam": ipam})
	if err != nil {
		return err
	}
	plugin, err := invoke.FindInPath(dhcpIPAM, r.binDirs)
	if err != nil {
		return fmt.Errorf("CNI plugin %q not found in %s", dhcpIPAM, strings.Join(r.binDirs, ":"))
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	args := &invoke.Args{Command: command, ContainerID: att.ContainerID, NetNS: netnsPath, IfName: ifName, PluginArgs: att.Args,
		Path: strings.Join(r.binDirs, ":")}
	if command == "DEL" {
		err = invoke.ExecPluginWithoutResult(ctx, plugin, conf, args, r.exec)
	} else {
		var res types.Result
		if res, err = invoke.ExecPluginWithResult(ctx, plugin, conf, args, r.exec); err == nil && result != nil {
			var conv *current.Result
			if conv, err = current.NewResultFromResult(res); err == nil {
				*result = *conv
			}
		}
	}
	if err != nil {
		return fmt.Errorf("dhcp %s for %s on CNI network %q: %w", command, naming.ShortID(att.ContainerID), nw.Name, err)
	}
	return nil
}

// leaseKeeps reports whether the lease acquired again carries the IPv4 address the link has.
func leaseKeeps(res current.Result, iface Interface) bool {
	for _, ip := range res.IPs {
		if ip.Address.IP.To4() != nil && naming.Address(ip.Address.String()) == naming.Address(iface.IPv4) {
			return true
		}
	}
	return false
}

func leaseAddresses(res current.Result) string {
	var out []string
	for _, ip := range res.IPs {
		out = append(out, ip.Address.String())
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}
