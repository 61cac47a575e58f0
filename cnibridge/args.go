package cnibridge

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
)

// RequestArgs builds the CNI_ARGS and capability args that ask the network for specific addresses (CIDRs)
// and a MAC: the "ips"/"mac" capabilities where the chain declares them, else IP=/MAC= in CNI_ARGS, which
// host-local, static, bridge, macvlan and tuning read. IgnoreUnknown=1 keeps plugins that do not know a key
// from failing.
func RequestArgs(n *Network, addresses []string, mac string) ([][2]string, map[string]any) {
	args := [][2]string{{"IgnoreUnknown", "1"}}
	caps := map[string]any{}
	declared := n.Capabilities()
	if len(addresses) > 0 {
		if declared["ips"] {
			caps["ips"] = addresses
		} else {
			// CNI_ARGS carries one IP; host-local takes it for its first range set.
			ip, _, err := net.ParseCIDR(addresses[0])
			if err == nil {
				args = append(args, [2]string{"IP", ip.String()})
			}
		}
	}
	if mac != "" {
		if declared["mac"] {
			caps["mac"] = mac
		} else {
			args = append(args, [2]string{"MAC", mac})
		}
	}
	if len(caps) == 0 {
		caps = nil
	}
	return args, caps
}

// ContainerNameArg is the CNI_ARGS key that carries the container's name, where Docker tells it (cniplug
// IPAM's RequestAddress, Docker 29+). Plugins can use it, e.g. the dhcp plugin to send it to the DHCP server
// as the host name: "provide": [{"option": "host-name", "fromArg": "DOCKER_CONTAINER_NAME"}].
const ContainerNameArg = "DOCKER_CONTAINER_NAME"

// WithContainerName adds the container's name to the CNI_ARGS when it is known and can be carried there
// (CNI_ARGS are "K=V;K=V"; the IPAM driver refuses names with ';' or '=' at the door).
func WithContainerName(args [][2]string, name string) [][2]string {
	if name == "" || strings.ContainsAny(name, ";=") {
		return args
	}
	return append(args, [2]string{ContainerNameArg, name})
}

// WithArgs returns a copy of the network in which every plugin's configuration carries the given keys under
// "args": {"cni": {...}} (the CNI convention for args in network configuration). It asks for several
// addresses at once ("ips"), which host-local honours across its range sets where CNI_ARGS IP= carries one.
// The returned network's Bytes are what ADD and DEL then use.
func (n *Network) WithArgs(cni map[string]any) (*Network, error) {
	var list map[string]json.RawMessage
	if err := json.Unmarshal(n.Bytes, &list); err != nil {
		return nil, fmt.Errorf("network %q: %w", n.Name, err)
	}
	var plugins []map[string]json.RawMessage
	if err := json.Unmarshal(list["plugins"], &plugins); err != nil {
		return nil, fmt.Errorf("network %q: plugins: %w", n.Name, err)
	}
	for i, p := range plugins {
		args := map[string]json.RawMessage{}
		if raw, ok := p["args"]; ok {
			if err := json.Unmarshal(raw, &args); err != nil {
				return nil, fmt.Errorf("network %q: plugin %d: args: %w", n.Name, i, err)
			}
		}
		inner := map[string]any{}
		if raw, ok := args["cni"]; ok {
			if err := json.Unmarshal(raw, &inner); err != nil {
				return nil, fmt.Errorf("network %q: plugin %d: args.cni: %w", n.Name, i, err)
			}
		}
		for k, v := range cni {
			inner[k] = v
		}
		b, err := json.Marshal(inner)
		if err != nil {
			return nil, err
		}
		args["cni"] = b
		if p["args"], err = json.Marshal(args); err != nil {
			return nil, err
		}
	}
	var err error
	if list["plugins"], err = json.Marshal(plugins); err != nil {
		return nil, err
	}
	data, err := json.Marshal(list)
	if err != nil {
		return nil, err
	}
	out, err := ParseNetwork(data)
	if err != nil {
		return nil, err
	}
	out.File = n.File
	return out, nil
}
