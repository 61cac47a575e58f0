// Package iptcmd reads and writes the host's iptables rules with iptables-save and iptables-restore, each run
// bounded by a deadline: a hung command (a held xtables lock, a stuck nftables backend) is killed and fails
// the one request that ran it, and the caller's lock is released for the others.
//
// A change is one read of the whole ruleset and one all-or-nothing batch, where go-iptables would run a
// dozen commands (each check, chain and rule its own exec) with no way to bound them.
package iptcmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"
)

// DefaultTimeout bounds one command when the caller's context has no earlier deadline. Docker gives a plugin
// call 30 seconds or more; a request that waits for another's hung command still has time left for its own.
const DefaultTimeout = 10 * time.Second

// Command runs one family's save and restore binaries.
type Command struct {
	save, restore string
	// Timeout bounds each run.
	Timeout time.Duration
}

// New returns the Command for binary ("" is iptables, or ip6tables for v6), e.g. iptables-legacy: its save
// and restore binaries are binary-save and binary-restore, as every iptables package installs them.
func New(binary string, v6 bool) (*Command, error) {
	if binary == "" {
		binary = "iptables"
		if v6 {
			binary = "ip6tables"
		}
	}
	c := &Command{save: binary + "-save", restore: binary + "-restore", Timeout: DefaultTimeout}
	for _, b := range []string{c.save, c.restore} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("%s is needed: %w", b, err)
		}
	}
	return c, nil
}

// Read returns the rules of every table.
func (c *Command) Read(ctx context.Context) (Ruleset, error) {
	out, err := c.run(ctx, nil, c.save)
	if err != nil {
		return nil, err
	}
	return Parse(string(out)), nil
}

// Write applies a batch without flushing the tables' other rules. iptables-restore commits each table's part
// whole or not at all.
func (c *Command) Write(ctx context.Context, b *Batch) error {
	if b.Empty() {
		return nil
	}
	_, err := c.run(ctx, strings.NewReader(b.String()), c.restore, "--noflush", "--wait")
	return err
}

func (c *Command) run(ctx context.Context, stdin io.Reader, binary string, args ...string) ([]byte, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	// A killed command's children may hold its pipes open: stop waiting for them soon after.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	switch {
	case err == nil:
		return stdout.Bytes(), nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return nil, fmt.Errorf("%s did not finish in time and was stopped (is another process holding the xtables lock?): %w", binary, ctx.Err())
	case ctx.Err() != nil:
		return nil, fmt.Errorf("%s: %w", binary, ctx.Err())
	default:
		return nil, fmt.Errorf("%s: %w: %s", binary, err, strings.TrimSpace(stderr.String()))
	}
}
