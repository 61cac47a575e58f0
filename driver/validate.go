package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/cniplug/cniplug/naming"
	"github.com/docker/go-plugins-helpers/network"
)

// Every request is checked here before the driver acts on it: its IDs become state keys, link and netns
// names and CNI_CONTAINERID, its addresses and MAC go into CNI_ARGS, and its SandboxKey is the netns the
// container's link is moved to. Docker's own requests always pass; anything else on the socket is refused
// with an error that names the field and its rule.

// DefaultDockerExecRoot is dockerd's --exec-root unless set otherwise. Docker pins each container's network
// namespace at <exec-root>/netns/<key>. /var/run is a link to /run on the host, and in the managed plugin's
// image /run/docker/netns is a link to the host's, mounted at /host/run (see scripts/build-rootfs.sh), so the paths
// Docker sends work in both.
const DefaultDockerExecRoot = "/var/run/docker"

// sandboxDirs are the directories a SandboxKey may be in: <exec-root>/netns, under both the /var/run and the
// /run spelling of the path.
func sandboxDirs(execRoot string) []string {
	dir := filepath.Join(filepath.Clean(execRoot), "netns")
	dirs := []string{dir}
	if rest, ok := strings.CutPrefix(dir, "/var/run/"); ok {
		dirs = append(dirs, "/run/"+rest)
	} else if rest, ok := strings.CutPrefix(dir, "/run/"); ok {
		dirs = append(dirs, "/var/run/"+rest)
	}
	return dirs
}

// sandboxName is the base name of a sandbox key: a container ID's first 12 hex digits, or libnetwork's
// names for its own sandboxes (ingress_sbox, lb_<id>, 1-<id>).
var sandboxName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// checkNetworkID accepts the network IDs Docker makes: a dockerd's (64 lowercase hex digits) or swarm's.
func checkNetworkID(id string) error {
	if naming.IsDockerID(id) || isSwarmNetworkID(id) {
		return nil
	}
	return &naming.FieldError{Field: "NetworkID", Value: id,
		Rule: "a Docker network ID of 64 lowercase hex digits, or a swarm network ID of 25 characters of 0-9 and a-z"}
}

// checkIDs checks a request's network and endpoint IDs.
func checkIDs(networkID, endpointID string) error {
	if err := checkNetworkID(networkID); err != nil {
		return err
	}
	return naming.CheckDockerID("EndpointID", endpointID)
}

// checkSandboxKey accepts only a network namespace Docker pinned: a clean path directly in one of Docker's
// netns directories (sandboxDirs) whose base name is a plain name, and which, if it exists already, is no
// symlink (Docker's are bind mounts of the namespace).
func checkSandboxKey(key string, dirs []string) error {
	bad := func(rule string) error { return &naming.FieldError{Field: "SandboxKey", Value: key, Rule: rule} }
	rule := "the path of a network namespace in Docker's " + strings.Join(dirs, " or ") + ", like " + dirs[0] +
		"/0123456789ab (a dockerd with another --exec-root needs cniplug's --docker-exec-root)"
	dir, base := filepath.Split(key)
	if filepath.Clean(key) != key || !slices.Contains(dirs, filepath.Clean(dir)) || !sandboxName.MatchString(base) {
		return bad(rule)
	}
	fi, err := os.Lstat(key)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil // Docker before 28 creates it after Join
	case err != nil:
		return fmt.Errorf("SandboxKey %s: %w", naming.Quote(key), err)
	case fi.Mode()&os.ModeSymlink != 0:
		return bad("a network namespace Docker pinned, not a symlink")
	}
	return nil
}

// checkIPAMData checks the pools and gateways Docker's IPAM chose for a network.
func checkIPAMData(family string, data []*network.IPAMData) error {
	for _, d := range data {
		if d == nil {
			continue
		}
		if err := naming.CheckCIDR(family+"Data.Pool", d.Pool); err != nil {
			return err
		}
		if d.Gateway != "" {
			if err := naming.CheckCIDR(family+"Data.Gateway", d.Gateway); err != nil {
				return err
			}
		}
	}
	return nil
}

func validateCreateNetwork(req *network.CreateNetworkRequest) error {
	if err := checkNetworkID(req.NetworkID); err != nil {
		return err
	}
	if err := checkIPAMData("IPv4", req.IPv4Data); err != nil {
		return err
	}
	return checkIPAMData("IPv6", req.IPv6Data)
}

func validateCreateEndpoint(req *network.CreateEndpointRequest) error {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return err
	}
	if req.Interface == nil {
		return nil
	}
	if a := req.Interface.Address; a != "" {
		if err := naming.CheckCIDR("Interface.Address", a); err != nil {
			return err
		}
	}
	if a := req.Interface.AddressIPv6; a != "" {
		if err := naming.CheckCIDR("Interface.AddressIPv6", a); err != nil {
			return err
		}
	}
	if m := req.Interface.MacAddress; m != "" {
		return naming.CheckMAC("MacAddress", m)
	}
	return nil
}

func validateJoin(req *network.JoinRequest, sandboxDirs []string) error {
	if err := checkIDs(req.NetworkID, req.EndpointID); err != nil {
		return err
	}
	return checkSandboxKey(req.SandboxKey, sandboxDirs)
}

// invalid is the driver's answer to a request that failed its checks.
func (d *Driver) invalid(err error) error {
	return fmt.Errorf("%s: %w", d.name, err)
}
