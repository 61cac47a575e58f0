package cnibridge

import (
	"encoding/json"
	"fmt"
)

// warmMainPlugins and warmChainedPlugins are the plugins whose attachment is the same whichever container
// gets it, as long as the container's MAC is set on the link afterwards: they keep the MAC nowhere but on the
// link (bridge and ptp give the link a random one unless asked; host-local records addresses by container ID
// only). Left out: macvlan (its gratuitous ARP at ADD teaches the LAN the MAC the link had then), dhcp (the
// lease belongs to the client that asked), static (one fixed address), and plugins that record the MAC or the
// container elsewhere (Calico's workload endpoint, flannel's delegate).
var (
	warmMainPlugins    = map[string]bool{"bridge": true, "ptp": true}
	warmChainedPlugins = map[string]bool{"portmap": true, "firewall": true, "bandwidth": true, "tuning": true}
	warmIPAMPlugins    = map[string]bool{"host-local": true}
)

// CheckWarmPool reports why attachments of this network cannot be added before the container that gets them
// is known (a warm pool), or nil when they can: every plugin of the chain must be one that keeps the MAC
// nowhere but on the link, since the MAC Docker chooses for the container is set only when one is taken.
func (n *Network) CheckWarmPool() error {
	if caps := n.Capabilities(); caps["mac"] {
		return fmt.Errorf("a plugin of CNI network %q takes the MAC as a capability (\"mac\"), so the MAC Docker chooses must be known at ADD", n.Name)
	}
	for i, p := range n.List.Plugins {
		t := p.Network.Type
		allowed := warmChainedPlugins
		if i == 0 {
			allowed = warmMainPlugins
		}
		if !allowed[t] {
			return fmt.Errorf("CNI network %q runs plugin %q, which cniplug does not know to keep the MAC only on the link; a warm pool takes a main plugin of bridge or ptp, chained portmap, firewall, bandwidth or tuning, and host-local IPAM", n.Name, t)
		}
		if ipamType := p.Network.IPAM.Type; ipamType != "" && !warmIPAMPlugins[ipamType] {
			return fmt.Errorf("CNI network %q allocates addresses with %q IPAM; a warm pool takes host-local IPAM only, whose addresses belong to no particular container", n.Name, ipamType)
		}
		if t == "tuning" {
			var conf struct {
				MAC string `json:"mac"`
			}
			if json.Unmarshal(p.Bytes, &conf) == nil && conf.MAC != "" {
				return fmt.Errorf("CNI network %q sets the MAC with tuning (\"mac\": %q), which a warm pool would replace with the container's", n.Name, conf.MAC)
			}
		}
	}
	if _, ipamType := n.DeclaredRanges(); ipamType == "" {
		return fmt.Errorf("CNI network %q has no IPAM plugin, so its attachments carry no address to hand out", n.Name)
	}
	return nil
}
