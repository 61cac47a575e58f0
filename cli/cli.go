// Package cli is cniplug's operator commands: `cniplug status`, `cniplug ls` and `cniplug gc [--dry-run]`.
// They ask the running plugin over its (root-only) socket, so they show what the plugin itself holds.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cniplug/cniplug/admin"
	"github.com/cniplug/cniplug/naming"
)

// DefaultSocket is the plugin's default socket.
const DefaultSocket = "/run/docker/plugins/cniplug.sock"

var commands = map[string]string{
	"status": "show the plugin's networks (Docker network, CNI network, addressing mode, conflist) and counts",
	"ls":     "list attachments (container, endpoint, CNI network, address, MAC, staging netns, phase, age)",
	"gc":     "remove what no live Docker endpoint owns (as periodic reconciliation does); --dry-run only shows it",
	"help":   "show this help",
}

// IsCommand reports whether arg names an operator command (anything else starts the plugin).
func IsCommand(arg string) bool {
	_, ok := commands[arg]
	return ok
}

// Run runs the operator command args[0] with its flags and returns the exit status: 0 success, 1 failure,
// 2 bad usage.
func Run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || !IsCommand(args[0]) || args[0] == "help" {
		usage(stderr)
		if len(args) > 0 && args[0] == "help" {
			return 0
		}
		return 2
	}
	cmd := args[0]
	fs := flag.NewFlagSet("cniplug "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", envOr("CNIPLUG_SOCKET", DefaultSocket), "the running plugin's socket (env CNIPLUG_SOCKET)")
	asJSON := fs.Bool("json", false, "print the plugin's answer as JSON, for scripts")
	timeout := fs.Duration("timeout", 0, "give up after this long (default 30s; 10m for gc, which may run CNI DELs)")
	dryRun := false
	if cmd == "gc" {
		fs.BoolVar(&dryRun, "dry-run", false, "only show what would be removed")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cniplug %s: unexpected argument %q\n", cmd, fs.Arg(0))
		return 2
	}
	if *timeout <= 0 {
		*timeout = 30 * time.Second
		if cmd == "gc" {
			*timeout = 10 * time.Minute
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	c := NewClient(*socket, *timeout)
	var raw []byte
	var err error
	failed := false
	switch cmd {
	case "status":
		var st *admin.Status
		if st, raw, err = c.Status(ctx); err == nil && !*asJSON {
			printStatus(stdout, st, time.Now())
		}
	case "ls":
		var atts *admin.Attachments
		if atts, raw, err = c.Attachments(ctx); err == nil && !*asJSON {
			printAttachments(stdout, atts, time.Now())
		}
	case "gc":
		var rep *admin.GCReport
		if rep, raw, err = c.GC(ctx, dryRun); err == nil {
			failed = rep.Error != ""
			if !*asJSON {
				printGC(stdout, rep)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "cniplug %s: %v\n", cmd, err)
		return 1
	}
	if *asJSON {
		var buf bytes.Buffer
		if json.Indent(&buf, raw, "", "  ") != nil {
			buf.Reset()
			buf.Write(raw)
		}
		buf.WriteByte('\n')
		_, _ = stdout.Write(buf.Bytes())
	}
	if failed {
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: cniplug [flags]                 serve the plugin (see cniplug -h)")
	fmt.Fprintln(w, "       cniplug <command> [--socket S] [--json]")
	fmt.Fprintln(w, "\ncommands (they ask the running plugin, over its root-only socket):")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-7s %s\n", n, commands[n])
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

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
