package iptcmd

import (
	"fmt"
	"strings"
)

// tableOrder is the order tables are written in, so that equal batches have equal text.
var tableOrder = []string{"raw", "mangle", "filter", "nat", "security"}

// Batch is iptables-restore input. Each table's part holds its chain declarations first (a declaration
// creates the chain, or flushes it if it exists), then the commands in the order given, then the chain
// deletions, so a jump can be deleted in the same batch as the chain it targets.
type Batch struct {
	tables map[string]*tablePart
}

type tablePart struct {
	declare, commands, remove strings.Builder
}

func (b *Batch) part(table string) *tablePart {
	if b.tables == nil {
		b.tables = map[string]*tablePart{}
	}
	p := b.tables[table]
	if p == nil {
		p = &tablePart{}
		b.tables[table] = p
	}
	return p
}

// Declare creates the chain, or empties it if it exists.
func (b *Batch) Declare(table, chain string) {
	fmt.Fprintf(&b.part(table).declare, ":%s - [0:0]\n", chain)
}

// Append adds a rule at the end of chain.
func (b *Batch) Append(table, chain string, args ...string) {
	fmt.Fprintf(&b.part(table).commands, "-A %s %s\n", chain, Join(args))
}

// Insert adds a rule at the top of chain.
func (b *Batch) Insert(table, chain string, args ...string) {
	fmt.Fprintf(&b.part(table).commands, "-I %s 1 %s\n", chain, Join(args))
}

// Delete removes a rule given as iptables-save printed it ("-A <chain> ...").
func (b *Batch) Delete(table, saved string) {
	fmt.Fprintf(&b.part(table).commands, "-D %s\n", strings.TrimPrefix(saved, "-A "))
}

// Remove deletes the chain; it is declared too, so that it is empty by then.
func (b *Batch) Remove(table, chain string) {
	b.Declare(table, chain)
	fmt.Fprintf(&b.part(table).remove, "-X %s\n", chain)
}

// Empty reports whether the batch changes nothing.
func (b *Batch) Empty() bool { return len(b.tables) == 0 }

// String is the batch as iptables-restore reads it.
func (b *Batch) String() string {
	var out strings.Builder
	for _, name := range tableOrder {
		if p := b.tables[name]; p != nil {
			fmt.Fprintf(&out, "*%s\n%s%s%sCOMMIT\n", name, p.declare.String(), p.commands.String(), p.remove.String())
		}
	}
	return out.String()
}

// Join writes a rule's arguments as iptables-save prints them: an argument with a space is quoted.
func Join(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t") {
			a = `"` + a + `"`
		}
		quoted[i] = a
	}
	return strings.Join(quoted, " ")
}
