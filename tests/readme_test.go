package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cniplug/cniplug/internal/testing/testutil"
)

// The README and docs/*.md show commands that a reader runs as written on a fresh machine. These tests keep
// them true: the scripts and make targets they name exist, their links resolve, the flags they show are the
// binary's, and the README's first network works against a real dockerd.

// readmeDocs returns README.md and docs/*.md, by path relative to the repository root.
func readmeDocs(t *testing.T) map[string]string {
	t.Helper()
	root := testutil.RepoRoot()
	paths := []string{"README.md"}
	more, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range more {
		paths = append(paths, filepath.Join("docs", filepath.Base(p)))
	}
	docs := map[string]string{}
	for _, p := range paths {
		data, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		docs[p] = string(data)
	}
	return docs
}

var (
	fenceRe      = regexp.MustCompile("(?ms)^```[^\n]*\n(.*?)^```")
	codeSpanRe   = regexp.MustCompile("`[^`\n]+`")
	scriptRe     = regexp.MustCompile(`\bscripts/[A-Za-z0-9_.-]+\.sh\b`)
	makeRe       = regexp.MustCompile(`(?:^|[\s(])make ([a-z][a-z0-9-]*(?: [a-z][a-z0-9-]*)*)`)
	makeTargetRe = regexp.MustCompile(`(?m)^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?:[^=]|$)`)
	linkRe       = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	headingRe    = regexp.MustCompile(`(?m)^#{1,6} +(.+?) *$`)
	flagRe       = regexp.MustCompile(`(?:^|[\s\[])--([a-z][a-z0-9-]*)`)
)

// codeOf returns the text of a markdown document's fenced blocks and inline code spans: where commands are.
func codeOf(doc string) []string {
	var code []string
	for _, m := range fenceRe.FindAllStringSubmatch(doc, -1) {
		code = append(code, m[1])
	}
	return append(code, codeSpanRe.FindAllString(fenceRe.ReplaceAllString(doc, ""), -1)...)
}

// TestREADMEScriptsAndTargets checks that every scripts/*.sh the README and docs name exists and is
// executable (they are shown run as `sudo scripts/setup.sh`), and that every `make <target>` they show is
// a target of the Makefile. It needs nothing but the checkout.
func TestREADMEScriptsAndTargets(t *testing.T) {
	root := testutil.RepoRoot()
	makefile, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]bool{}
	for _, m := range makeTargetRe.FindAllStringSubmatch(string(makefile), -1) {
		for _, name := range strings.Fields(m[1]) {
			targets[name] = true
		}
	}
	scripts, makes := 0, 0
	for path, doc := range readmeDocs(t) {
		for _, s := range slices.Compact(slices.Sorted(slices.Values(scriptRe.FindAllString(doc, -1)))) {
			scripts++
			fi, err := os.Stat(filepath.Join(root, s))
			switch {
			case err != nil:
				t.Errorf("%s names %s: %v", path, s, err)
			case fi.Mode()&0o111 == 0:
				t.Errorf("%s names %s, which is not executable (mode %v): the docs run scripts directly", path, s, fi.Mode())
			}
		}
		for _, code := range codeOf(doc) {
			for _, m := range makeRe.FindAllStringSubmatch(code, -1) {
				for _, target := range strings.Fields(m[1]) {
					makes++
					if !targets[target] {
						t.Errorf("%s shows `make %s`, but the Makefile has no target %q", path, m[1], target)
					}
				}
			}
		}
	}
	if scripts == 0 || makes == 0 {
		t.Errorf("found %d script paths and %d make targets in README.md and docs/: the patterns no longer match", scripts, makes)
	}
}

// anchors returns the GitHub anchors of a markdown document's headings.
func anchors(doc string) map[string]bool {
	set := map[string]bool{}
	for _, m := range headingRe.FindAllStringSubmatch(fenceRe.ReplaceAllString(doc, ""), -1) {
		var b strings.Builder
		for _, r := range strings.ToLower(m[1]) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
				b.WriteRune(r)
			}
		}
		set[b.String()] = true
	}
	return set
}

// TestREADMELinks checks that every relative link of the README and docs/*.md names a file that exists and,
// for a markdown file, a heading it has.
func TestREADMELinks(t *testing.T) {
	root := testutil.RepoRoot()
	docs := readmeDocs(t)
	links := 0
	for path, doc := range docs {
		for _, m := range linkRe.FindAllStringSubmatch(fenceRe.ReplaceAllString(doc, ""), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			links++
			file, anchor, _ := strings.Cut(target, "#")
			rel := path
			if file != "" {
				rel = filepath.Join(filepath.Dir(path), file)
			}
			if _, err := os.Stat(filepath.Join(root, rel)); err != nil {
				t.Errorf("%s links to %s: %v", path, target, err)
				continue
			}
			if anchor == "" || !strings.HasSuffix(rel, ".md") {
				continue
			}
			body, ok := docs[rel]
			if !ok {
				data, err := os.ReadFile(filepath.Join(root, rel))
				if err != nil {
					t.Fatal(err)
				}
				body = string(data)
			}
			if !anchors(body)[anchor] {
				t.Errorf("%s links to %s: %s has no heading with anchor #%s", path, target, rel, anchor)
			}
		}
	}
	if links == 0 {
		t.Error("found no relative links in README.md and docs/: the pattern no longer matches")
	}
}

// TestREADMEFlags checks the cniplug synopsis in docs/operating.md against the built binary: every flag it
// shows is one `cniplug --help` lists, and every operator command it shows exists with the flags shown for
// it. It needs bin/cniplug (`make build`).
func TestREADMEFlags(t *testing.T) {
	root := testutil.RepoRoot()
	bin := filepath.Join(root, "bin", "cniplug")
	if _, err := os.Stat(bin); err != nil {
		t.Skip("bin/cniplug is not built (run `make build`)")
	}
	help := func(args ...string) string {
		// -h makes the flag package print the usage and exit 2.
		out, err := exec.Command(bin, append(args, "--help")...).CombinedOutput()
		if err != nil {
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
				t.Errorf("cniplug %s --help: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		return string(out)
	}
	doc := readmeDocs(t)[filepath.Join("docs", "operating.md")]
	var synopsis []string
	for _, m := range fenceRe.FindAllStringSubmatch(doc, -1) {
		if strings.HasPrefix(m[1], "cniplug [") {
			synopsis = strings.Split(strings.TrimSpace(m[1]), "\n")
			break
		}
	}
	if len(synopsis) == 0 {
		t.Fatal("docs/operating.md has no code block starting with `cniplug [`: the synopsis this test checks")
	}
	mainHelp := help()
	checked := 0
	for _, line := range synopsis {
		line, _, _ = strings.Cut(line, "#")
		if strings.HasPrefix(line, "cniplug ") && !strings.HasPrefix(line, "cniplug [") {
			// The operator commands: `cniplug status | ls | gc [--dry-run]`.
			cmd, cmdHelp := "", ""
			for _, word := range strings.Fields(strings.TrimPrefix(line, "cniplug ")) {
				switch {
				case word == "|":
				case strings.HasPrefix(word, "[--") || strings.HasPrefix(word, "--"):
					flag := strings.Trim(word, "[]")
					if cmd == "" || !strings.Contains(cmdHelp, "\n  -"+strings.TrimPrefix(flag, "--")) {
						t.Errorf("docs/operating.md shows `cniplug %s %s`, which `cniplug %s --help` does not list:\n%s", cmd, flag, cmd, cmdHelp)
					}
					checked++
				default:
					cmd, cmdHelp = word, help(word)
					if !strings.Contains(cmdHelp, "Usage of cniplug "+cmd+":") {
						t.Errorf("docs/operating.md shows the operator command `cniplug %s`, but `cniplug %s --help` says:\n%s", cmd, cmd, cmdHelp)
					}
					checked++
				}
			}
			continue
		}
		for _, m := range flagRe.FindAllStringSubmatch(line, -1) {
			checked++
			if !strings.Contains(mainHelp, "\n  -"+m[1]+" ") && !strings.Contains(mainHelp, "\n  -"+m[1]+"\n") {
				t.Errorf("docs/operating.md shows cniplug --%s, which `cniplug --help` does not list", m[1])
			}
		}
	}
	if checked < 10 {
		t.Errorf("checked only %d flags and commands of docs/operating.md's synopsis: the parsing no longer matches it", checked)
	}
}

// readmeBlock returns the fenced code block that follows the marker line `<!-- readme-check: NAME -->` in
// README.md.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	doc := readmeDocs(t)["README.md"]
	marker := "<!-- readme-check: " + name + " -->\n"
	_, after, ok := strings.Cut(doc, marker)
	if !ok {
		t.Fatalf("README.md has no line %q", strings.TrimSpace(marker))
	}
	m := fenceRe.FindStringSubmatchIndex(after)
	if m == nil || strings.TrimSpace(after[:m[0]]) != "" {
		t.Fatalf("README.md: no fenced code block right after %q", strings.TrimSpace(marker))
	}
	return after[m[2]:m[3]]
}

// TestREADMEFirstNetwork runs the README's "first network" commands, then its clean-up commands, against the
// suite's dockerd and cniplug, and ends with the suite's leak check. The commands are run as written but for
// what must differ in the suite: its conf dir, its plugin's name, a unique network, bridge and container
// name, and a subnet no other test uses.
func TestREADMEFirstNetwork(t *testing.T) {
	requireSuite(t)
	name := testutil.UniqueName("rdme")
	box := testutil.UniqueName("rdmebox")
	_, _, prefix := nextSubnet()
	subst := []struct {
		from *regexp.Regexp
		to   string
	}{
		{regexp.MustCompile(`/etc/cni/net\.d/`), env.confDir + "/"},
		{regexp.MustCompile(`\bmynet`), name}, // the CNI network, its conflist file and bridge (mynet0), the Docker network
		{regexp.MustCompile(`\bmybox\b`), box},
		{regexp.MustCompile(`\b10\.66\.0\.`), prefix},
		{regexp.MustCompile(`(-d|--ipam-driver) cniplug\b`), "$1 " + driverName},
	}
	// Every replacement must apply to the first block (else the README changed in a way this test must
	// follow); the clean-up block need not contain all of them.
	rewrite := func(block string, all bool) string {
		for _, s := range subst {
			if all && !s.from.MatchString(block) {
				t.Fatalf("README.md's block no longer contains %s, which this test replaces for the suite:\n%s", s.from, block)
			}
			block = s.from.ReplaceAllString(block, s.to)
		}
		return block
	}
	first := readmeBlock(t, "first-network")
	if img := strings.TrimSuffix(image, ":latest"); !strings.Contains(first, img) {
		t.Fatalf("README.md's first network does not use %s, the image scripts/setup.sh builds:\n%s", img, first)
	}
	script := rewrite(first, true)
	cleanup := rewrite(readmeBlock(t, "first-network-cleanup"), false)
	for _, s := range []string{script, cleanup} {
		if strings.Contains(s, "/etc/cni") || strings.Contains(s, "-d cniplug ") {
			t.Fatalf("the README's commands would still touch the host's CNI setup after the substitutions:\n%s", s)
		}
	}
	bridge := name + "0"
	// Whatever fails, leave nothing behind (registered after requireSuite's leak check, so run before it).
	t.Cleanup(func() {
		_, _ = dockerErr("rm", "-f", box)
		_, _ = dockerErr("network", "rm", name)
		_ = exec.Command("ip", "link", "del", bridge).Run()
		_ = os.Remove(filepath.Join(env.confDir, "60-"+name+".conflist"))
		testutil.RemoveHostLocalBookkeeping(name)
	})

	out, err := exec.Command("bash", "-euo", "pipefail", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("the README's first network failed: %v\nscript:\n%s\noutput:\n%s", err, script, out)
	}
	// `ip addr show eth0` and the inspect line print the address host-local gave, from the subnet.
	if n := strings.Count(string(out), prefix); n < 2 {
		t.Errorf("the README's first network printed %d addresses of %s0/24, want the container's in `ip addr` and in inspect:\n%s", n, prefix, out)
	}
	if !strings.Contains(string(out), "1 packets received") {
		t.Errorf("the README's ping of the gateway got no answer:\n%s", out)
	}

	// The clean-up, line by line. Docker 20.10 may release a force-removed container's endpoint a moment
	// after `docker rm -f` returned ("has active endpoints" until then), as createNetwork's clean-up allows.
	for _, line := range strings.Split(strings.TrimSpace(cleanup), "\n") {
		out, err := exec.Command("bash", "-c", line).CombinedOutput()
		for deadline := time.Now().Add(45 * time.Second); err != nil && strings.Contains(string(out), "has active endpoints") && time.Now().Before(deadline); {
			time.Sleep(200 * time.Millisecond)
			out, err = exec.Command("bash", "-c", line).CombinedOutput()
		}
		if err != nil {
			t.Errorf("the README's clean-up %q failed: %v\n%s", line, err, out)
		}
	}
	if _, err := os.Stat(filepath.Join(env.confDir, "60-"+name+".conflist")); err == nil {
		t.Error("the README's clean-up left the conflist")
	}
	if out, err := dockerErr("network", "inspect", name); err == nil {
		t.Errorf("the README's clean-up left the Docker network: %s", out)
	}
}

// TestREADMELayout checks that the README's layout table names every top-level folder of the checkout (bin/,
// the build output, and hidden folders aside): a new folder needs a row saying what it is for.
func TestREADMELayout(t *testing.T) {
	root := testutil.RepoRoot()
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	readme := readmeDocs(t)["README.md"]
	for _, e := range entries {
		if !e.IsDir() || e.Name() == "bin" || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if !strings.Contains(readme, "| `"+e.Name()+"/") {
			t.Errorf("README.md's layout table has no row for %s/", e.Name())
		}
	}
}

// TestREADMEPluginSettings: the README's managed plugin settings table lists every setting of config.json that
// `docker plugin set` can change, each with config.json's default, and nothing else.
func TestREADMEPluginSettings(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testutil.RepoRoot(), "config.json"))
	testutil.Must(t, err)
	var cfg struct {
		Env []struct {
			Name, Value string
			Settable    []string
		}
		Args struct{ Settable []string }
	}
	testutil.Must(t, json.Unmarshal(b, &cfg))
	want := map[string]string{} // setting -> its default
	for _, e := range cfg.Env {
		if slices.Contains(e.Settable, "value") {
			want[e.Name] = e.Value
		}
	}
	if slices.Contains(cfg.Args.Settable, "value") {
		want["args"] = ""
	}
	_, section, ok := strings.Cut(readmeDocs(t)["README.md"], "\n## Managed plugin settings\n")
	if !ok {
		t.Fatal("README.md has no section \"Managed plugin settings\"")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	rows := map[string]string{}
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		rows[strings.Trim(strings.TrimSpace(cells[1]), "`")] = strings.TrimSpace(cells[2])
	}
	for name, def := range want {
		got, ok := rows[name]
		switch {
		case !ok:
			t.Errorf("README's settings table lacks %s (default %q)", name, def)
		case def == "" && !strings.HasPrefix(got, "("):
			t.Errorf("README says %s defaults to %s; config.json leaves it empty", name, got)
		case def != "" && got != "`"+def+"`":
			t.Errorf("README says %s defaults to %s; config.json says %q", name, got, def)
		}
	}
	for name := range rows {
		if _, ok := want[name]; !ok {
			t.Errorf("README's settings table lists %s, which config.json does not let `docker plugin set` change", name)
		}
	}
}
