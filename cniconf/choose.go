package cniconf

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/cniplug/cniplug/cniargs"
	"github.com/cniplug/cniplug/cnibridge"
)

// OptCNI is the option naming a Docker network's CNI network: `docker network create --opt cni=NAME` for the
// network driver, `--ipam-opt cni=NAME` for the IPAM driver.
const OptCNI = "cni"

// Validator checks that a CNI network can run here (its plugins are present and speak its version).
type Validator interface {
	Validate(ctx context.Context, nw *cnibridge.Network) error
}

// Chooser picks the CNI network a Docker network (network driver) or pool (IPAM driver) is bound to. Both
// drivers open their create calls with it, so they read options the same way.
type Chooser struct {
	ConfDirs       string // colon-separated conf dirs, searched in order
	DefaultNetwork string // the CNI network when the options name none ("" requires the option)
	Validator      Validator
}

// Options are the options of one create call.
type Options struct {
	Flag    string            // the flag that carries them, for messages: "--opt" or "--ipam-opt"
	Values  map[string]string // the options as given
	Known   []string          // options the caller reads itself, besides cni and cni.*
	Purpose string            // what the CNI network is for, completing "say which CNI network ..."
}

// Choose checks the options (no unknown keys, valid cni.* arguments), resolves the CNI network they name
// (or the default) in the conf dirs, validates it, and checks that its chain can take the cni.* arguments.
func (c Chooser) Choose(ctx context.Context, o Options) (*cnibridge.Network, cniargs.Extra, error) {
	if err := o.checkKnown(); err != nil {
		return nil, cniargs.Extra{}, err
	}
	extra, err := cniargs.Parse(o.Values)
	if err != nil {
		return nil, cniargs.Extra{}, fmt.Errorf("%s: %w", o.Flag, err)
	}
	name := o.Values[OptCNI]
	if name == "" {
		name = c.DefaultNetwork
	}
	if name == "" {
		return nil, cniargs.Extra{}, fmt.Errorf("missing %s %s=<name>: say which CNI network (the \"name\" in a conflist in %s) %s",
			o.Flag, OptCNI, c.ConfDirs, o.Purpose)
	}
	nw, err := cnibridge.ResolveNetwork(c.ConfDirs, name)
	if err != nil {
		return nil, cniargs.Extra{}, err
	}
	if err := c.Validator.Validate(ctx, nw); err != nil {
		return nil, cniargs.Extra{}, err
	}
	if err := extra.Check(nw.Name, nw.Capabilities()); err != nil {
		return nil, cniargs.Extra{}, fmt.Errorf("%s: %w", o.Flag, err)
	}
	return nw, extra, nil
}

func (o Options) checkKnown() error {
	var unknown []string
	for k := range o.Values {
		if k != OptCNI && !slices.Contains(o.Known, k) && !cniargs.IsOption(k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	accepted := append(append([]string{OptCNI + "=<CNI network>"}, o.Known...), cniargs.Allowed()...)
	return fmt.Errorf("unknown option(s) %s: %s accepts %s", strings.Join(unknown, ", "), o.Flag, strings.Join(accepted, ", "))
}
