package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cniplug/cniplug/admin"
	"github.com/cniplug/cniplug/naming"
)

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

func printStatus(w io.Writer, st *admin.Status, now time.Time) {
	fmt.Fprintf(w, "driver %s, serving for %s, CNI conf dir %s\n", st.Driver, age(st.Started, now), st.ConfDir)
	fmt.Fprintf(w, "networks: %d  pools: %d  attachments: %d%s\n", st.Counts.Networks, st.Counts.Pools, st.Counts.Attachments, phases(st.Counts.ByPhase))
	if st.DockerError != "" {
		fmt.Fprintf(w, "Docker network names unavailable: %s\n", st.DockerError)
	}
	if len(st.Networks) == 0 {
		return
	}
	fmt.Fprintln(w)
	t := newTable(w)
	fmt.Fprintln(t, "NETWORK ID\tNAME\tCNI NETWORK\tMODE\tCONFLIST\tATTACHMENTS\tAGE")
	for _, n := range st.Networks {
		file := orDash(n.File)
		switch n.FileState {
		case "edited":
			file += " (edited since create; recorded copy in use)"
		case "missing":
			file = "(no file defines it now; recorded copy in use)"
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", naming.ShortID(n.ID), orDash(n.Name), n.CNIName, n.Mode, file, n.Attachments, age(n.Created, now))
	}
	t.Flush()
}

func phases(by map[string]int) string {
	if len(by) == 0 {
		return ""
	}
	order := map[string]int{"joined": 0, "endpoint": 1, "pending": 2, "warm": 3, "adding": 4}
	names := make([]string, 0, len(by))
	for p := range by {
		names = append(names, p)
	}
	sort.Slice(names, func(i, j int) bool {
		oi, iok := order[names[i]]
		oj, jok := order[names[j]]
		if iok != jok {
			return iok
		}
		if oi != oj {
			return oi < oj
		}
		return names[i] < names[j]
	})
	parts := make([]string, 0, len(names))
	for _, p := range names {
		parts = append(parts, fmt.Sprintf("%s %d", p, by[p]))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func printAttachments(w io.Writer, atts *admin.Attachments, now time.Time) {
	if atts.DockerError != "" {
		fmt.Fprintf(w, "container names unavailable: %s\n", atts.DockerError)
	}
	t := newTable(w)
	fmt.Fprintln(t, "ATTACHMENT\tCONTAINER\tENDPOINT\tNETWORK\tCNI NETWORK\tADDRESS\tMAC\tSTAGING NETNS\tPHASE\tAGE")
	for _, a := range atts.Attachments {
		container := a.ContainerName
		if container == "" {
			container = naming.ShortID(a.ContainerID)
		}
		nw := a.NetworkName
		if nw == "" {
			nw = naming.ShortID(a.NetworkID)
		}
		addrs := strings.Trim(a.Address+","+a.AddressIPv6, ",")
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", naming.ShortID(a.ID), orDash(container), orDash(naming.ShortID(a.EndpointID)),
			orDash(nw), a.CNINetwork, orDash(addrs), orDash(a.MAC), a.StagingNetNS, a.Phase, age(a.Created, now))
	}
	t.Flush()
}

func printGC(w io.Writer, rep *admin.GCReport) {
	verb := "removed"
	if rep.DryRun {
		verb = "would remove"
		fmt.Fprintln(w, "dry run: nothing was changed")
	}
	if rep.DockerError != "" {
		fmt.Fprintf(w, "Docker could not be asked for live endpoints (%s): only crash leftovers were considered\n", rep.DockerError)
	}
	nothing := len(rep.Attachments) == 0 && len(rep.Leftovers.NetNS) == 0 && len(rep.Leftovers.Links) == 0 && len(rep.ForgottenNetworks) == 0 &&
		len(rep.UnusedWarmPools) == 0
	if nothing {
		fmt.Fprintf(w, "nothing to collect (attachments younger than %s are in flight and left alone)\n", rep.MinAge)
	}
	if len(rep.Attachments) > 0 {
		fmt.Fprintf(w, "%s %d attachment(s):\n", verb, len(rep.Attachments))
		t := newTable(w)
		fmt.Fprintln(t, "ATTACHMENT\tNETWORK\tCNI NETWORK\tENDPOINT\tADDRESS\tREASON\tERROR")
		for _, a := range rep.Attachments {
			fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", naming.ShortID(a.Attachment), orDash(naming.ShortID(a.NetworkID)), a.Network,
				orDash(naming.ShortID(a.Endpoint)), orDash(a.Address), a.Reason, orDash(a.Error))
		}
		t.Flush()
	}
	for _, l := range []struct {
		what  string
		items []string
	}{
		{"leftover staging netns", rep.Leftovers.NetNS},
		{"leftover host link", rep.Leftovers.Links},
		{"record of deleted Docker network", rep.ForgottenNetworks},
		{"the warm attachments of pool (no live Docker network uses its CNI network)", rep.UnusedWarmPools},
	} {
		for _, item := range l.items {
			fmt.Fprintf(w, "%s %s %s\n", verb, l.what, item)
		}
	}
	for _, g := range rep.GC {
		switch {
		case g.Error != "":
			fmt.Fprintf(w, "CNI GC on %s failed: %s\n", g.Network, g.Error)
		case g.Skipped != "":
			fmt.Fprintf(w, "CNI GC on %s skipped: %s\n", g.Network, g.Skipped)
		default:
			fmt.Fprintf(w, "CNI GC on %s ran with %d valid attachment(s)\n", g.Network, g.Valid)
		}
	}
	if rep.Error != "" {
		fmt.Fprintf(w, "errors: %s\n", rep.Error)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// age is a compact duration since t, like docker ps shows.
func age(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}
