package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/cniplug/cniplug/admin"
	"github.com/cniplug/cniplug/attach"
)

// printGC names the outcome of CNI GC on each network: ran (with how many valid attachments), skipped and
// why, or failed.
func TestPrintGCReportsCNIGC(t *testing.T) {
	rep := &admin.GCReport{MinAge: "50s", Report: attach.Report{GC: []attach.GCResult{
		{Network: "ran", Valid: 3},
		{Network: "empty", Skipped: "no valid attachment to name"},
		{Network: "broken", Valid: 1, Error: "CNI GC on network \"broken\": plugin says no"},
	}}}
	var out bytes.Buffer
	printGC(&out, rep)
	for _, want := range []string{
		"CNI GC on ran ran with 3 valid attachment(s)",
		"CNI GC on empty skipped: no valid attachment to name",
		"CNI GC on broken failed: CNI GC on network \"broken\": plugin says no",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("gc output lacks %q:\n%s", want, out.String())
		}
	}
}
