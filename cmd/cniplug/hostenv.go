package main

import (
	"context"
	"log/slog"

	"github.com/cniplug/cniplug/hostfw"
	"github.com/cniplug/cniplug/procsys"
)

// iptablesLinkDir holds the iptables links of the selected backend (hostfw.Select); root-only like /run.
const iptablesLinkDir = "/run/cniplug/iptables"

// prepareHost makes the environment cniplug runs in fit for CNI plugins. On a host it changes nothing by
// default; in the managed plugin (a container) /proc/sys is read-only and iptables must match the host's
// backend. It returns the iptables selection for the CNI runner and the port publisher, and logs what it did.
func prepareHost(ctx context.Context, c *config, log *slog.Logger) (hostfw.Selection, error) {
	changed, err := procsys.EnsureWritable()
	if err != nil {
		return hostfw.Selection{}, err
	}
	if changed {
		log.Info("remounted /proc/sys read-write: CNI plugins set sysctls")
	}
	sel, err := hostfw.Setup(ctx, c.iptablesBackend, iptablesLinkDir)
	if err != nil {
		return hostfw.Selection{}, err
	}
	if sel.Backend == "" {
		log.Info("iptables backend: the iptables in PATH", "setting", c.iptablesBackend)
	} else {
		log.Info("iptables backend selected", "backend", sel.Backend, "reason", sel.Reason, "setting", c.iptablesBackend)
	}
	return sel, nil
}
