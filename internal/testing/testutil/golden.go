package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// UpdateGoldenEnv names the environment variable that makes Golden rewrite golden files instead of comparing.
const UpdateGoldenEnv = "CNIPLUG_UPDATE_GOLDEN"

// Golden compares got with the golden file at path (relative to the test's package dir). With
// CNIPLUG_UPDATE_GOLDEN=1 it writes got there instead, for a reviewer to read in the diff.
func Golden(t testing.TB, path, got string) {
	t.Helper()
	if os.Getenv(UpdateGoldenEnv) == "1" {
		Must(t, os.MkdirAll(filepath.Dir(path), 0o755))
		Must(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (%s=1 writes it): %v", UpdateGoldenEnv, err)
	}
	if string(want) != got {
		t.Errorf("differs from %s (%s=1 rewrites it):\n--- got\n%s\n--- want\n%s", path, UpdateGoldenEnv, got, want)
	}
}
