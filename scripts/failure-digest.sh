#!/usr/bin/env bash
# failure-digest.sh LOG: for every test `go test -v` reported as failed in LOG, the last lines its output
# attributed to a _test.go line (t.Errorf, t.Fatalf, t.Logf), each with one continuation line, cut to 300
# characters. Sequential tests only: the "=== RUN/NAME/CONT" markers attribute output to a test.
set -euo pipefail
awk '
  function keep(line) {
    n[cur]++; said[cur, n[cur]] = substr(line, 1, 300)
  }
  /^=== (RUN|NAME|CONT) / { cur = $3; cont = 0; next }
  /^ *--- FAIL: / { failed[++nf] = $3; next }
  /^ *--- (PASS|SKIP): / { next }
  /^ +[A-Za-z0-9_.-]+_test\.go:[0-9]+: / { if (cur != "") { keep($0); cont = 1 }; next }
  cont == 1 && /^        / { keep($0); cont = 0; next }
  { cont = 0 }
  END {
    for (i = 1; i <= nf; i++) {
      t = failed[i]
      if (shown[t]++) continue
      hasSub = 0
      for (k = 1; k <= nf; k++) if (index(failed[k], t "/") == 1) hasSub = 1
      if (n[t] == 0 && hasSub) continue # a parent whose failed subtests speak for it
      printf "  %s\n", t
      from = n[t] > 8 ? n[t] - 7 : 1
      if (n[t] == 0) print "    (nothing attributed to a _test.go line)"
      for (j = from; j <= n[t]; j++) printf "  %s\n", said[t, j]
    }
  }
' "$1"
