package netrules

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

type family struct {
	top     topChains
	v6      bool
	ipt     *iptables.IPTables
	restore string
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

// apply programs the family's batch for the sets if it changed since the last one. The jumps from the
// built-in chains are checked each time a batch is applied, so a batch after a flush (a firewalld reload)
// puts them back.
func (f *family) apply(ctx context.Context, sets []networkSet) error {
	b := renderBatch(f.top, sets, f.v6, f.chains)
	if b.text == f.programmed {
		return nil
	}
	if b.empty {
		if err := f.removeJumps(); err != nil {
			return err
		}
	} else if err := f.ensureJumps(); err != nil {
		return err
	}
	if err := restore(ctx, f.restore, b.text); err != nil {
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

// ensureJumps makes the top chains and the jumps to them: the isolation jump first in mangle FORWARD, the
// accepts appended to filter FORWARD (after Docker's chains: DOCKER-USER stays first), the masquerade
// appended to nat POSTROUTING.
func (f *family) ensureJumps() error {
	for _, j := range f.top.jumps() {
		ok, err := f.ipt.ChainExists(j.table, j.chain)
		if err != nil {
			return fmt.Errorf("reading the %s table: %w", j.table, err)
		}
		if !ok {
			if err := f.ipt.NewChain(j.table, j.chain); err != nil {
				return fmt.Errorf("creating chain %s: %w", j.chain, err)
			}
		}
		if j.table != tableMangle {
			if err := f.ipt.AppendUnique(j.table, j.from, j.rule...); err != nil {
				return fmt.Errorf("adding the jump to %s: %w", j.chain, err)
			}
			continue
		}
		ok, err = f.ipt.Exists(j.table, j.from, j.rule...)
		if err == nil && !ok {
			err = f.ipt.Insert(j.table, j.from, 1, j.rule...)
		}
		if err != nil {
			return fmt.Errorf("adding the jump to %s: %w", j.chain, err)
		}
	}
	return nil
}

// removeJumps deletes the jumps to the top chains (the batch then deletes the chains).
func (f *family) removeJumps() error {
	for _, j := range f.top.jumps() {
		ok, err := f.ipt.ChainExists(j.table, j.chain)
		if err != nil {
			return fmt.Errorf("reading the %s table: %w", j.table, err)
		}
		if !ok {
			continue
		}
		if err := f.ipt.DeleteIfExists(j.table, j.from, j.rule...); err != nil {
			return fmt.Errorf("removing the jump to %s: %w", j.chain, err)
		}
	}
	return nil
}

// existingChains lists the instance's chains on the host: its top chains and the per-network chains its
// isolation chain jumps to.
func (f *family) existingChains() ([]string, error) {
	var out []string
	for _, c := range []struct{ table, chain string }{{tableMangle, f.top.isolation}, {tableFilter, f.top.networks}, {tableNAT, f.top.masquerade}} {
		ok, err := f.ipt.ChainExists(c.table, c.chain)
		if err != nil {
			return nil, fmt.Errorf("reading the %s table: %w", c.table, err)
		}
		if !ok {
			continue
		}
		out = append(out, c.table+" "+c.chain)
		if c.table == tableFilter {
			continue
		}
		rules, err := f.ipt.List(c.table, c.chain)
		if err != nil {
			return nil, fmt.Errorf("reading chain %s: %w", c.chain, err)
		}
		seen := map[string]bool{}
		for _, r := range rules {
			fields := strings.Fields(r)
			if n := len(fields); n >= 2 && fields[n-2] == "-j" && (strings.HasPrefix(fields[n-1], netChainPrefix) || strings.HasPrefix(fields[n-1], netMasqPrefix)) && !seen[fields[n-1]] {
				seen[fields[n-1]] = true
				out = append(out, c.table+" "+fields[n-1])
				if strings.HasSuffix(fields[n-1], "-D") {
					continue
				}
				if ok, _ := f.ipt.ChainExists(tableMangle, fields[n-1]+"-D"); ok {
					seen[fields[n-1]+"-D"] = true
					out = append(out, tableMangle+" "+fields[n-1]+"-D")
				}
			}
		}
	}
	return out, nil
}

// removeLegacy deletes the per-container chains (CNIPLUG-NET-<attachment>) that cniplug versions before the
// per-network rules made, with their jumps from CNIPLUG-FORWARD.
func (f *family) removeLegacy(ctx context.Context) error {
	chains, err := f.ipt.ListChains(tableFilter)
	if err != nil {
		return fmt.Errorf("reading the filter table: %w", err)
	}
	var b strings.Builder
	for _, c := range chains {
		if !strings.HasPrefix(c, "CNIPLUG-NET-") {
			continue
		}
		rules, err := f.ipt.List(tableFilter, "CNIPLUG-FORWARD")
		if err == nil {
			for _, rule := range rules {
				if strings.HasSuffix(rule, "-j "+c) {
					fmt.Fprintf(&b, "%s\n", strings.Replace(rule, "-A ", "-D ", 1))
				}
			}
		}
		fmt.Fprintf(&b, "-F %s\n-X %s\n", c, c)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := restore(ctx, f.restore, "*filter\n"+b.String()+"COMMIT\n"); err != nil {
		return fmt.Errorf("removing the per-container rules of an earlier cniplug: %w", err)
	}
	return nil
}

// restore feeds a batch to iptables-restore without flushing the tables' other rules: all or nothing.
func restore(ctx context.Context, binary, batch string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "--noflush", "--wait")
	cmd.Stdin = strings.NewReader(batch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", binary, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// intact reports whether both jumps to the top chains are there (a jump cannot exist without its chain).
func (f *family) intact() bool {
	for _, j := range f.top.jumps() {
		if ok, err := f.ipt.Exists(j.table, j.from, j.rule...); err != nil || !ok {
			return false
		}
	}
	return true
}
