package cnibridge

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/cniplug/cniplug/naming"
)

// CachedAttachment is an attachment as libcni's cache records it: every attachment whose ADD succeeded and
// that was not DELeted since, by any runtime that shares the cache dir.
type CachedAttachment struct {
	Attachment
	// Own: the attachment is this instance's (its netns is one of our staging namespaces). Only then are
	// HostIfName and the addresses (from the cached result, for the stand-in link of Teardown) filled in.
	Own bool
}

// CachedAttachments lists libcni's cache entries. Call it before reading the recorded attachments, so that
// an attachment recorded in between is never mistaken for one without a record (records are written before
// ADD creates the cache entry and deleted after DEL removes it).
func (r *Runner) CachedAttachments() ([]CachedAttachment, error) {
	cached, err := r.cni.GetCachedAttachments("")
	if err != nil {
		return nil, fmt.Errorf("reading libcni cache %s: %w", r.cacheDir, err)
	}
	out := make([]CachedAttachment, 0, len(cached))
	for _, c := range cached {
		ca := CachedAttachment{Attachment: Attachment{
			ContainerID: c.ContainerID, IfName: c.IfName, NetNS: c.NetNS, Network: c.Network,
			Conflist: c.Config, Args: c.CniArgs, CapabilityArgs: c.CapabilityArgs,
		}}
		if r.ownNetNS(c.NetNS) && len(c.ContainerID) >= naming.ShortIDLen {
			ca.Own = true
			ca.HostIfName = hostIfName(c.ContainerID)
			ca.Interface = r.cachedAddresses(&ca.Attachment)
		}
		out = append(out, ca)
	}
	return out, nil
}

// cachedAddresses reads the addresses of the cached ADD result (best effort: none when it is unreadable).
func (r *Runner) cachedAddresses(att *Attachment) Interface {
	var iface Interface
	nw, err := ParseNetwork(att.Conflist)
	if err != nil {
		return iface
	}
	res, err := r.cni.GetNetworkListCachedResult(nw.List, att.runtimeConf())
	if err != nil || res == nil {
		return iface
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return iface
	}
	for _, ipc := range cur.IPs {
		a := ipc.Address.String()
		switch {
		case ipc.Address.IP.To4() != nil && iface.IPv4 == "":
			iface.IPv4 = a
		case ipc.Address.IP.To4() == nil && iface.IPv6 == "":
			iface.IPv6 = a
		default:
			iface.Extra = append(iface.Extra, a)
		}
	}
	return iface
}

// Cached reports whether libcni's cache still holds the attachment (DEL removes the entry).
func (r *Runner) Cached(att *Attachment) bool {
	_, err := os.Stat(filepath.Join(r.cacheDir, "results", att.Network+"-"+att.ContainerID+"-"+att.IfName))
	return err == nil
}

// ErrNoValidAttachments: CNI GC was not run, because it would have been given an empty list of valid
// attachments, which tells every plugin of the network to release everything it holds.
var ErrNoValidAttachments = errors.New("no valid attachment to name")

// GC runs CNI GC (spec 1.1; a no-op for older networks) on the network: its plugins release whatever belongs
// to none of the valid attachments. valid must name every attachment anyone holds on the network; libcni DELs
// cached attachments missing from it, so callers tear their own garbage down first and name every other
// cache entry. An empty list is refused with ErrNoValidAttachments.
func (r *Runner) GC(ctx context.Context, nw *Network, valid []types.GCAttachment) error {
	if !nw.SupportsGC() {
		return nil
	}
	if len(valid) == 0 {
		return ErrNoValidAttachments
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := r.cni.GCNetworkList(ctx, nw.List, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		return fmt.Errorf("CNI GC on network %q: %w", nw.Name, err)
	}
	return nil
}

// SupportsGC reports whether the network's CNI version has GC (1.1.0 and later).
func (nw *Network) SupportsGC() bool {
	ok, _ := version.GreaterThanOrEqualTo(nw.List.CNIVersion, "1.1.0")
	return ok
}
