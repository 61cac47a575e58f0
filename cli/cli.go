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
	"syscall"
	"time"

	"github.com/cniplug/cniplug/admin"
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
