package cnibridge

import (
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
)

// Leftovers are staging namespaces and parked host links of this cniplug instance that no recorded
// attachment accounts for (a crash between steps, or lost state).
type Leftovers struct {
	NetNS []string `json:"netns"`
	Links []string `json:"links"`
}

// Candidates lists this instance's staging namespaces and parked links. Call it before reading the recorded
// attachments, so that one recorded in between is never mistaken for a leftover. Namespaces are told apart
// by the owner prefix in their name, links by the owner alias MoveToHost sets: other cniplug instances on
// the host (another driver name) are never touched.
func (r *Runner) Candidates() (Leftovers, error) {
	var out Leftovers
	entries, err := os.ReadDir(r.netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return out, err
	}
	for _, e := range entries {
		if p := filepath.Join(r.netnsDir, e.Name()); r.ownNetNS(p) {
			out.NetNS = append(out.NetNS, p)
		}
	}
	host, err := netlink.NewHandleAt(r.hostNS)
	if err != nil {
		return out, err
	}
	defer host.Close()
	links, err := host.LinkList()
	if err != nil {
		return out, err
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Alias, r.linkAliasPrefix()) {
			out.Links = append(out.Links, l.Attrs().Name)
		}
	}
	return out, nil
}

// Without returns the candidates that none of the known attachments owns.
func (l Leftovers) Without(known []*Attachment) Leftovers {
	netnsOwned, linkOwned := map[string]bool{}, map[string]bool{}
	for _, a := range known {
		netnsOwned[a.NetNS] = true
		linkOwned[a.HostIfName] = true
	}
	var out Leftovers
	for _, p := range l.NetNS {
		if !netnsOwned[p] {
			out.NetNS = append(out.NetNS, p)
		}
	}
	for _, n := range l.Links {
		if !linkOwned[n] {
			out.Links = append(out.Links, n)
		}
	}
	return out
}

// RemoveLeftovers deletes leftovers. Removing a namespace destroys the links inside it.
func (r *Runner) RemoveLeftovers(l Leftovers) error {
	var errs []error
	for _, p := range l.NetNS {
		errs = append(errs, removeNetNS(p))
	}
	host, err := netlink.NewHandleAt(r.hostNS)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer host.Close()
	for _, name := range l.Links {
		if link, err := host.LinkByName(name); err == nil && strings.HasPrefix(link.Attrs().Alias, r.linkAliasPrefix()) {
			errs = append(errs, host.LinkDel(link))
		}
	}
	return errors.Join(errs...)
}

// ownNetNS reports whether path names one of this instance's staging namespaces (<netns dir>/<owner>-<id12>).
func (r *Runner) ownNetNS(path string) bool {
	name, ok := strings.CutPrefix(path, filepath.Clean(r.netnsDir)+"/"+r.owner+"-")
	return ok && len(name) == 12 && strings.Trim(name, "0123456789abcdef") == ""
}

// linkAliasPrefix marks links parked in the host by this instance (IFLA_IFALIAS survives netns moves).
func (r *Runner) linkAliasPrefix() string { return "cniplug:" + r.owner + ":" }

// linkAlias marks the attachment's link as this instance's, wherever the link goes (an alias survives moves
// and renames).
func (r *Runner) linkAlias(att *Attachment) string { return r.linkAliasPrefix() + att.ContainerID }

// isOwnLink reports whether l is the attachment's link (linkAlias).
func (r *Runner) isOwnLink(l netlink.Link, att *Attachment) bool {
	return l.Attrs().Alias == r.linkAlias(att)
}
