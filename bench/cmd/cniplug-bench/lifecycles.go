package main

import (
	"context"
	"os/exec"
	"time"
)

// lifecycles times container lifecycles (a docker command and the ones that follow it) and counts the
// DeleteEndpoint calls cniplug has served, so that a lifecycle costed from the metrics waits for the ones
// before it.
type lifecycles struct {
	ctx     context.Context
	e       *env
	res     *results
	deletes float64
}

// plain is one lifecycle (the commands one after the other) by plain wall time, like none and bridge.
func (l *lifecycles) plain(args []string, more ...[]string) (time.Duration, error) {
	var total time.Duration
	for _, a := range append([][]string{args}, more...) {
		d, err := timed(exec.CommandContext(l.ctx, "docker", a...))
		total += d
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// uncosted is one lifecycle on the sync-DEL or direct-join network, by plain wall time. Then, outside the
// measurement, its DeleteEndpoint is counted in deletes and waited for: it may not fall into the metrics window
// of a cniplug lifecycle (settle counts DeleteEndpoint calls of both cniplug
// networks; the DEL's exec time would count as that lifecycle's) nor run while the other kinds are timed.
func (l *lifecycles) uncosted(args []string, more ...[]string) (time.Duration, error) {
	d, err := l.plain(args, more...)
	if err != nil {
		return d, err
	}
	l.deletes++
	_, err = l.e.settle(l.deletes)
	return d, err
}

// cniplug is one lifecycle on cniplug, with what it cost inside cniplug.
func (l *lifecycles) cniplug(args []string, more ...[]string) (time.Duration, lifecycleCost, error) {
	b, err := l.e.settle(l.deletes)
	if err != nil {
		return 0, lifecycleCost{}, err
	}
	d, err := timed(exec.CommandContext(l.ctx, "docker", args...))
	for _, m := range more {
		if err != nil {
			break
		}
		var d2 time.Duration
		d2, err = timed(exec.CommandContext(l.ctx, "docker", m...))
		d += d2
	}
	if err != nil {
		return d, lifecycleCost{}, err
	}
	l.deletes++
	a, err := l.e.settle(l.deletes)
	if err != nil {
		return d, lifecycleCost{}, err
	}
	return d, diff(b, a), nil
}

// isCniplugKind says whether the kind's network is on the bench's cniplug.
func isCniplugKind(kind string) bool {
	switch kind {
	case "cniplug", kindSync, kindDirect, kindDockerDirect, kindWarm, kindMasq, kindNftMasq:
		return true
	}
	return false
}

// of is one lifecycle of a kind: the cniplug networks costed from the metrics (default and direct-join), the
// sync-DEL one settled but not costed, the others plain.
func (l *lifecycles) of(kind string, args []string, more ...[]string) (time.Duration, error) {
	switch kind {
	case "cniplug", kindDirect, kindDockerDirect, kindWarm, kindMasq, kindNftMasq:
		d, cost, err := l.cniplug(args, more...)
		if err == nil && kind == "cniplug" {
			l.res.addCost(cost)
		} else if err == nil {
			l.res.addKindCost(kind, cost)
		}
		return d, err
	case kindSync:
		return l.uncosted(args, more...)
	default:
		return l.plain(args, more...)
	}
}

// settleAfter waits for extra DeleteEndpoint calls made outside the lifecycles counted so far, and takes the
// count the plugin reports from then on.
func (l *lifecycles) settleAfter(extra float64) error {
	s, err := l.e.settle(l.deletes + extra)
	if err != nil {
		return err
	}
	l.deletes = s.methodCount["NetworkDriver.DeleteEndpoint"]
	return nil
}
