// Package cniconf chooses the conflist a Docker network gets: it reads the options of a create call, resolves
// the CNI network they name in the conf dirs (Chooser), and instantiates conflists that opt in to taking
// Docker's IPAM pool (the managed plugin's bundled default network), so that `docker network create -d
// cniplug NAME` works with no flags.
package cniconf

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"

	"github.com/cniplug/cniplug/cnibridge"
	"github.com/vishvananda/netlink"
)

// Marker is the top-level conflist key through which a CNI network opts in to cniplug-specific behaviour.
const Marker = "cniplug"

// marker is the value under Marker.
type marker struct {
	// AdoptDockerPool: when the network is used with Docker's IPAM and Docker's pool is not the declared
	// range, the Docker network gets a copy of the conflist whose host-local range is Docker's pool and
	// whose bridge is its own (see BridgeName).
	AdoptDockerPool bool `json:"adoptDockerPool,omitempty"`
	// AdoptedBy is set in such a copy: the Docker network it was made for.
	AdoptedBy string `json:"adoptedBy,omitempty"`
	// Bridge is the bridge device the copy uses, removed with the Docker network.
	Bridge string `json:"bridge,omitempty"`
}

// BridgeName is the bridge device of a Docker network that adopted Docker's pool: "cniplug" and the first 8
// characters of the network ID (15 characters, the interface name limit).
func BridgeName(networkID string) string {
	id := networkID
	if len(id) > 8 {
		id = id[:8]
	}
	return "cniplug" + id
}

// AdoptDockerPool returns the conflist a Docker network using Docker's IPAM gets: nw itself, unless nw opts
// in with {"cniplug": {"adoptDockerPool": true}} and Docker's pool differs from its first host-local range.
// Then the copy's host-local ranges become Docker's pool and gateway, and a bridge plugin's bridge becomes
// BridgeName(networkID), so that Docker networks never share a bridge and the bridge can be removed with
// its network (RemoveAdopted). pool is a CIDR; gateway an address or CIDR ("" for none).
func AdoptDockerPool(nw *cnibridge.Network, networkID, pool, gateway string) (*cnibridge.Network, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(nw.Bytes, &doc); err != nil {
		return nil, err
	}
	var m marker
	if raw, ok := doc[Marker]; !ok || json.Unmarshal(raw, &m) != nil || !m.AdoptDockerPool {
		return nw, nil
	}
	_, subnet, err := net.ParseCIDR(pool)
	if err != nil {
		return nil, fmt.Errorf("docker sent an unparsable pool %q: %w", pool, err)
	}
	if r := nw.FirstRange(subnet.IP.To4() == nil); r != nil && r.Subnet.String() == subnet.String() {
		return nw, nil
	}
	gw := ""
	if gateway != "" {
		if ip, _, err := net.ParseCIDR(gateway); err == nil {
			gw = ip.String()
		} else if ip := net.ParseIP(gateway); ip != nil {
			gw = ip.String()
		}
	}
	var plugins []map[string]any
	if err := json.Unmarshal(doc["plugins"], &plugins); err != nil {
		return nil, fmt.Errorf("CNI network %q: adoptDockerPool needs a conflist with \"plugins\": %w", nw.Name, err)
	}
	bridge, adopted := BridgeName(networkID), false
	for _, p := range plugins {
		if ipamConf, ok := p["ipam"].(map[string]any); ok && ipamConf["type"] == "host-local" {
			r := map[string]any{"subnet": subnet.String()}
			if gw != "" {
				r["gateway"] = gw
			}
			delete(ipamConf, "subnet")
			delete(ipamConf, "gateway")
			delete(ipamConf, "rangeStart")
			delete(ipamConf, "rangeEnd")
			ipamConf["ranges"] = [][]map[string]any{{r}}
			adopted = true
		}
		if p["type"] == "bridge" {
			p["bridge"] = bridge
		}
	}
	if !adopted {
		return nil, fmt.Errorf("CNI network %q asks to adopt Docker's pool but has no host-local IPAM", nw.Name)
	}
	if doc["plugins"], err = json.Marshal(plugins); err != nil {
		return nil, err
	}
	if doc[Marker], err = json.Marshal(marker{AdoptedBy: networkID, Bridge: bridge}); err != nil {
		return nil, err
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	out, err := cnibridge.ParseNetwork(data)
	if err != nil {
		return nil, fmt.Errorf("CNI network %q adopted for pool %s: %w", nw.Name, pool, err)
	}
	out.File = nw.File
	return out, nil
}

// RemoveAdopted removes the bridge device of a conflist AdoptDockerPool made (nothing for other conflists):
// the bridge plugin never deletes its bridge, and a leftover bridge would keep Docker's pool routed to it
// after Docker hands the pool to another network.
func RemoveAdopted(conflist []byte) error {
	var doc struct {
		Marker marker `json:"cniplug"`
	}
	if err := json.Unmarshal(conflist, &doc); err != nil || doc.Marker.AdoptedBy == "" || doc.Marker.Bridge == "" {
		return nil
	}
	link, err := netlink.LinkByName(doc.Marker.Bridge)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("looking up bridge %s: %w", doc.Marker.Bridge, err)
	}
	if link.Type() != "bridge" {
		return nil
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("removing bridge %s: %w", doc.Marker.Bridge, err)
	}
	return nil
}
