package iptcmd

import (
	"strings"
)

// Ruleset is what iptables-save printed, by table.
type Ruleset map[string]*Table

// Table is one table's chains and rules.
type Table struct {
	chains map[string]bool
	rules  []string // "-A <chain> ..." lines, in order
}

// Parse reads iptables-save output. Lines it does not know (comments, counters, COMMIT) are skipped.
func Parse(save string) Ruleset {
	rs := Ruleset{}
	var t *Table
	for _, line := range strings.Split(save, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			t = &Table{chains: map[string]bool{}}
			rs[line[1:]] = t
		case t == nil:
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			t.chains[name] = true
		case strings.HasPrefix(line, "-A "):
			t.rules = append(t.rules, line)
		}
	}
	return rs
}

// HasChain reports whether the table has the chain.
func (rs Ruleset) HasChain(table, chain string) bool {
	t := rs[table]
	return t != nil && t.chains[chain]
}

// Chains returns the table's chains whose names start with prefix.
func (rs Ruleset) Chains(table, prefix string) []string {
	var out []string
	if t := rs[table]; t != nil {
		for c := range t.chains {
			if strings.HasPrefix(c, prefix) {
				out = append(out, c)
			}
		}
	}
	return out
}

// Rules returns the chain's rules as iptables-save prints them ("-A <chain> ..."); chain "" is every chain.
func (rs Ruleset) Rules(table, chain string) []string {
	var out []string
	if t := rs[table]; t != nil {
		for _, r := range t.rules {
			if chain == "" || strings.HasPrefix(r, "-A "+chain+" ") {
				out = append(out, r)
			}
		}
	}
	return out
}

// Jumps returns the rules of chain ("" is every chain) that jump (-j) or go (-g) to target.
func (rs Ruleset) Jumps(table, chain, target string) []string {
	var out []string
	for _, r := range rs.Rules(table, chain) {
		if strings.HasSuffix(r, " -j "+target) || strings.HasSuffix(r, " -g "+target) {
			out = append(out, r)
		}
	}
	return out
}
