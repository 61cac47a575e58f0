package netrules

import (
	"context"
	"fmt"
	"strings"

	"github.com/cniplug/cniplug/iptcmd"
)

type family struct {
	top topChains
	v6  bool
	cmd *iptcmd.Command
	// programmed is the batch last applied, and chains the per-network chains it made: a batch equal to the
	// last one is not applied again.
	programmed string
	chains     []string
}

func (f *family) name() string {
	if f.v6 {
		return "IPv6"
	}
	return "IPv4"
}

// apply programs the family's batch for the sets if it changed since the last one: one read of the host's
// rules and one restore. The jumps from the built-in chains are checked each time a batch is applied, so a
// batch after a flush (a firewalld reload) puts them back.
func (f *family) apply(ctx context.Context, sets []networkSet) error {
	b := renderBatch(f.top, sets, f.v6, f.chains)
	if b.text == f.programmed {
		return nil
	}
	rs, err := f.cmd.Read(ctx)
	if err != nil {
		return fmt.Errorf("reading the %s firewall rules: %w", f.name(), err)
	}
	if b.empty {
		f.removeJumps(b.restore, rs)
	} else {
		f.addJumps(b.restore, rs)
	}
	if err := f.cmd.Write(ctx, b.restore); err != nil {
		f.programmed = "" // unknown state: the next change applies again
		return fmt.Errorf("programming the networks' %s firewall rules: %w", f.name(), err)
	}
	f.programmed, f.chains = b.text, b.chains
	if b.empty {
		f.programmed = ""
	}
	return nil
}

func (t topChains) isolationJump() []string {
	return []string{"-m", "comment", "--comment", "cniplug network isolation", "-j", t.isolation}
}

func (t topChains) acceptJump() []string {
	return []string{"-m", "comment", "--comment", "cniplug networks", "-j", t.networks}
}

func (t topChains) masqueradeJump() []string {
	return []string{"-m", "comment", "--comment", "cniplug network masquerade", "-j", t.masquerade}
}

// jumps are the instance's jumps from the built-in chains, with the table and chain each sits in.
func (t topChains) jumps() []struct {
	table, from, chain string
	rule               []string
} {
	return []struct {
		table, from, chain string
		rule               []string
	}{
		{tableMangle, "FORWARD", t.isolation, t.isolationJump()},
		{tableFilter, "FORWARD", t.networks, t.acceptJump()},
		{tableNAT, "POSTROUTING", t.masquerade, t.masqueradeJump()},
	}
}

// addJumps adds the jumps to the top chains that the host lacks (the batch declares the chains): the
// isolation jump first in mangle FORWARD, the accepts appended to filter FORWARD (after Docker's chains:
// DOCKER-USER stays first), the masquerade appended to nat POSTROUTING.
func (f *family) addJumps(b *iptcmd.Batch, rs iptcmd.Ruleset) {
	for _, j := range f.top.jumps() {
		if len(rs.Jumps(j.table, j.from, j.chain)) > 0 {
			continue
		}
		if j.table == tableMangle {
			b.Insert(j.table, j.from, j.rule...)
		} else {
			b.Append(j.table, j.from, j.rule...)
		}
	}
}

// removeJumps deletes the jumps to the top chains (the batch then deletes the chains).
func (f *family) removeJumps(b *iptcmd.Batch, rs iptcmd.Ruleset) {
	for _, j := range f.top.jumps() {
		for _, rule := range rs.Jumps(j.table, j.from, j.chain) {
			b.Delete(j.table, rule)
		}
	}
}

// existingChains lists the instance's chains on the host: its top chains and the per-network chains its
// top chains jump to (another instance's networks have chains of the same form).
func existingChains(top topChains, rs iptcmd.Ruleset) []string {
	var out []string
	for _, c := range []struct{ table, chain string }{{tableMangle, top.isolation}, {tableFilter, top.networks}, {tableNAT, top.masquerade}} {
		if !rs.HasChain(c.table, c.chain) {
			continue
		}
		out = append(out, c.table+" "+c.chain)
		seen := map[string]bool{}
		for _, r := range rs.Rules(c.table, c.chain) {
			fields := strings.Fields(r)
			n := len(fields)
			if n < 2 || fields[n-2] != "-j" || seen[fields[n-1]] ||
				!(strings.HasPrefix(fields[n-1], netChainPrefix) || strings.HasPrefix(fields[n-1], netMasqPrefix)) {
				continue
			}
			target := fields[n-1]
			seen[target] = true
			out = append(out, c.table+" "+target)
			if c.table == tableMangle && !strings.HasSuffix(target, "-D") && rs.HasChain(tableMangle, target+"-D") && !seen[target+"-D"] {
				seen[target+"-D"] = true
				out = append(out, tableMangle+" "+target+"-D")
			}
		}
	}
	return out
}

// removeLegacy deletes the per-container chains (CNIPLUG-NET-<attachment>) that cniplug versions before the
// per-network rules made, with their jumps.
func removeLegacy(b *iptcmd.Batch, rs iptcmd.Ruleset) {
	for _, c := range rs.Chains(tableFilter, "CNIPLUG-NET-") {
		for _, rule := range rs.Jumps(tableFilter, "", c) {
			b.Delete(tableFilter, rule)
		}
		b.Remove(tableFilter, c)
	}
}

// intact reports whether every jump to the top chains is there (a jump cannot exist without its chain).
func (f *family) intact(ctx context.Context) (bool, error) {
	rs, err := f.cmd.Read(ctx)
	if err != nil {
		return false, fmt.Errorf("reading the %s firewall rules: %w", f.name(), err)
	}
	for _, j := range f.top.jumps() {
		if len(rs.Jumps(j.table, j.from, j.chain)) == 0 {
			return false, nil
		}
	}
	return true, nil
}
