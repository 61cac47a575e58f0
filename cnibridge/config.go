// Package cnibridge runs CNI networks for Docker endpoints: it resolves conflists, runs libcni ADD/DEL in
// per-attachment staging network namespaces, moves the resulting link to and from the host, and tears
// attachments down.
package cnibridge

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

// validName is the CNI spec's rule for network names; it also keeps a Docker user from naming a path.
var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// Network is a parsed CNI network configuration list together with the exact bytes it was parsed from.
type Network struct {
	Name  string
	Bytes []byte
	List  *libcni.NetworkConfigList
	// File is the conflist's path at resolve time (for messages only).
	File string
}

// Range is an address range a CNI network declares in its IPAM configuration.
type Range struct {
	Subnet  *net.IPNet
	Gateway net.IP // nil when the range declares none and the IPAM type has no default
	// Start and End bound the addresses the IPAM hands out when they are narrower than the subnet
	// (host-local's rangeStart/rangeEnd), as on one host's slice of a subnet shared by several hosts.
	Start, End net.IP
}

// Partial reports whether the IPAM hands out only part of the subnet (rangeStart or rangeEnd).
func (r Range) Partial() bool { return r.Start != nil || r.End != nil }

// Bounds describes the addresses handed out, e.g. "10.1.2.2-10.1.2.254 of 10.1.0.0/16".
func (r Range) Bounds() string {
	if !r.Partial() {
		return r.Subnet.String()
	}
	start, end := "", ""
	if r.Start != nil {
		start = r.Start.String()
	}
	if r.End != nil {
		end = r.End.String()
	}
	return fmt.Sprintf("%s-%s of %s", start, end, r.Subnet)
}

// ParseNetwork parses conflist bytes (a .conflist, or a single-plugin .conf which is wrapped into a list).
func ParseNetwork(data []byte) (*Network, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	var list *libcni.NetworkConfigList
	var err error
	if _, ok := probe["plugins"]; ok {
		list, err = libcni.NetworkConfFromBytes(data)
	} else {
		var conf *libcni.PluginConfig
		conf, err = libcni.NetworkPluginConfFromBytes(data)
		if err == nil {
			list, err = libcni.ConfListFromConf(conf)
		}
	}
	if err != nil {
		return nil, err
	}
	if !validName.MatchString(list.Name) {
		return nil, fmt.Errorf("invalid CNI network name %q: it must match %s", list.Name, validName)
	}
	if len(list.Plugins) == 0 {
		return nil, fmt.Errorf("network %q has no plugins", list.Name)
	}
	for i, p := range list.Plugins {
		if p.Network.Type == "" {
			return nil, fmt.Errorf("network %q: plugin %d has no type", list.Name, i)
		}
		if !validName.MatchString(p.Network.Type) {
			return nil, fmt.Errorf("network %q: plugin type %q is not a plain program name", list.Name, p.Network.Type)
		}
		if t := p.Network.IPAM.Type; t != "" && !validName.MatchString(t) {
			return nil, fmt.Errorf("network %q: ipam type %q is not a plain program name", list.Name, t)
		}
	}
	return &Network{Name: list.Name, Bytes: list.Bytes, List: list}, nil
}

// ResolveNetwork finds the CNI network called name (the "name" inside the file, not the file name) in
// confDirs, a colon-separated list of conf dirs searched in order (the first dir holding the name wins; the
// managed plugin searches the host's dir, then its bundled one). Within a dir files are read in lexical order
// and the first match wins, as libcni does. The error lists, per dir, the names that exist and any files that
// could not be parsed, so the operator can see what went wrong.
func ResolveNetwork(confDirs, name string) (*Network, error) {
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("invalid CNI network name %q: it must match %s", name, validName)
	}
	var msgs []string
	for _, dir := range filepath.SplitList(confDirs) {
		nw, err := resolveInDir(dir, name)
		if err == nil {
			return nw, nil
		}
		msgs = append(msgs, err.Error())
	}
	if len(msgs) == 0 {
		return nil, fmt.Errorf("no CNI network named %q: no CNI conf dir is configured", name)
	}
	return nil, errors.New(strings.Join(msgs, "; "))
}

// resolveInDir is ResolveNetwork for one conf dir.
func resolveInDir(confDir, name string) (*Network, error) {
	files, err := libcni.ConfFiles(confDir, []string{".conflist", ".conf", ".json"})
	if err != nil {
		return nil, fmt.Errorf("reading CNI conf dir %s: %w", confDir, err)
	}
	sort.Strings(files)
	var names, broken []string
	for _, f := range files {
		data, err := readConfFile(f)
		if err != nil {
			broken = append(broken, fmt.Sprintf("%s: %v", filepath.Base(f), err))
			continue
		}
		n, err := ParseNetwork(data)
		if err != nil {
			broken = append(broken, fmt.Sprintf("%s: %v", filepath.Base(f), err))
			continue
		}
		if n.Name == name {
			n.File = f
			return n, nil
		}
		names = append(names, n.Name)
	}
	msg := fmt.Sprintf("no CNI network named %q in %s", name, confDir)
	if len(names) > 0 {
		msg += fmt.Sprintf(" (networks found: %s)", strings.Join(names, ", "))
	} else {
		msg += " (no CNI networks found there)"
	}
	if len(broken) > 0 {
		msg += fmt.Sprintf("; unparsable files: %s", strings.Join(broken, "; "))
	}
	return nil, errors.New(msg)
}

// maxConfSize bounds what is read from the conf dir; real conflists are a few KiB.
const maxConfSize = 1 << 20

func readConfFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Size() > maxConfSize {
		return nil, fmt.Errorf("file is larger than %d bytes", maxConfSize)
	}
	return os.ReadFile(path)
}

// ipamSection is the part of a plugin's configuration that declares addresses.
type ipamSection struct {
	Type       string `json:"type"`
	Subnet     string `json:"subnet"`
	Gateway    string `json:"gateway"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Ranges     [][]struct {
		Subnet     string `json:"subnet"`
		Gateway    string `json:"gateway"`
		RangeStart string `json:"rangeStart"`
		RangeEnd   string `json:"rangeEnd"`
	} `json:"ranges"`
}

// DeclaredRanges returns the address ranges the network's IPAM declares (host-local style "ranges" or the
// legacy "subnet"), and the IPAM type. Networks whose addresses come from elsewhere (dhcp, calico-ipam,
// whereabouts) declare none. For host-local the default gateway is the subnet's first address.
func (n *Network) DeclaredRanges() (ranges []Range, ipamType string) {
	for _, p := range n.List.Plugins {
		var conf struct {
			IPAM ipamSection `json:"ipam"`
		}
		if err := json.Unmarshal(p.Bytes, &conf); err != nil || conf.IPAM.Type == "" {
			continue
		}
		ipamType = conf.IPAM.Type
		add := func(subnet, gw, start, end string) {
			_, sn, err := net.ParseCIDR(subnet)
			if err != nil {
				return
			}
			r := Range{Subnet: sn, Start: net.ParseIP(start), End: net.ParseIP(end)}
			if g := net.ParseIP(gw); g != nil {
				r.Gateway = g
			} else if ipamType == "host-local" {
				r.Gateway = nextIP(sn.IP)
			}
			ranges = append(ranges, r)
		}
		if conf.IPAM.Subnet != "" {
			add(conf.IPAM.Subnet, conf.IPAM.Gateway, conf.IPAM.RangeStart, conf.IPAM.RangeEnd)
		}
		for _, set := range conf.IPAM.Ranges {
			for _, r := range set {
				add(r.Subnet, r.Gateway, r.RangeStart, r.RangeEnd)
			}
		}
		return ranges, ipamType
	}
	return nil, ""
}

// FirstRange returns the first declared range of the given family, or nil.
func (n *Network) FirstRange(v6 bool) *Range {
	ranges, _ := n.DeclaredRanges()
	for i := range ranges {
		if (ranges[i].Subnet.IP.To4() == nil) == v6 {
			return &ranges[i]
		}
	}
	return nil
}

// Capabilities returns the capabilities any plugin in the chain declares.
func (n *Network) Capabilities() map[string]bool {
	caps := map[string]bool{}
	for _, p := range n.List.Plugins {
		for c, on := range p.Network.Capabilities {
			if on {
				caps[c] = true
			}
		}
	}
	return caps
}

// PluginTypes lists the plugin programs the chain runs, including IPAM plugins.
func (n *Network) PluginTypes() []string {
	var types []string
	for _, p := range n.List.Plugins {
		types = append(types, p.Network.Type)
		if p.Network.IPAM.Type != "" {
			types = append(types, p.Network.IPAM.Type)
		}
	}
	return types
}

// masqueradesByLinkAddress reports whether DEL of this chain finds what to clean up by reading the addresses
// of CNI_IFNAME: bridge and ptp with ipMasq remove their CNI-xxx chain using those addresses, so DEL needs a
// link carrying them even when the real one is gone.
func (n *Network) masqueradesByLinkAddress() bool {
	for _, p := range n.List.Plugins {
		if p.Network.Type != "bridge" && p.Network.Type != "ptp" {
			continue
		}
		var conf struct {
			IPMasq bool `json:"ipMasq"`
		}
		if json.Unmarshal(p.Bytes, &conf) == nil && conf.IPMasq {
			return true
		}
	}
	return false
}

func nextIP(ip net.IP) net.IP {
	out := make(net.IP, len(ip))
	copy(out, ip)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			break
		}
	}
	return out
}

// Bridges names the Linux bridges the chain attaches its containers to: the bridge plugin's ("cni0" when
// the conflist names none, the plugin's default).
func (n *Network) Bridges() []string {
	var out []string
	for _, p := range n.List.Plugins {
		if p.Network.Type != "bridge" {
			continue
		}
		var conf struct {
			Bridge string `json:"bridge"`
		}
		if err := json.Unmarshal(p.Bytes, &conf); err != nil {
			continue
		}
		if conf.Bridge == "" {
			conf.Bridge = "cni0"
		}
		out = append(out, conf.Bridge)
	}
	return out
}
