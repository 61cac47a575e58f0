package dirs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMake(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layout func(root string) (dir string) // prepares root, returns the dir to make
		want   string                         // relative to root: must be a directory afterwards
	}{
		{"plain path", func(root string) string { return filepath.Join(root, "a", "b") }, "a/b"},
		{"exists", func(root string) string {
			_ = os.MkdirAll(filepath.Join(root, "a"), 0o755)
			return filepath.Join(root, "a")
		}, "a"},
		{"dangling absolute symlink (the managed plugin's /run/cni)", func(root string) string {
			_ = os.MkdirAll(filepath.Join(root, "run"), 0o755)
			_ = os.Symlink(filepath.Join(root, "host", "run", "cni"), filepath.Join(root, "run", "cni"))
			return filepath.Join(root, "run", "cni")
		}, "host/run/cni"},
		{"dangling relative symlink", func(root string) string {
			_ = os.Symlink("real/netns", filepath.Join(root, "netns"))
			return filepath.Join(root, "netns")
		}, "real/netns"},
		{"a chain of two links", func(root string) string {
			_ = os.Symlink(filepath.Join(root, "second"), filepath.Join(root, "first"))
			_ = os.Symlink(filepath.Join(root, "target"), filepath.Join(root, "second"))
			return filepath.Join(root, "first")
		}, "target"},
		{"resolving symlink", func(root string) string {
			_ = os.MkdirAll(filepath.Join(root, "target"), 0o755)
			_ = os.Symlink(filepath.Join(root, "target"), filepath.Join(root, "link"))
			return filepath.Join(root, "link", "sub")
		}, "target/sub"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := tc.layout(root)
			if err := Make(dir, 0o755); err != nil {
				t.Fatalf("Make(%s): %v", dir, err)
			}
			if fi, err := os.Stat(filepath.Join(root, tc.want)); err != nil || !fi.IsDir() {
				t.Fatalf("%s is not a directory after Make: %v", tc.want, err)
			}
			if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
				t.Fatalf("%s does not resolve to a directory after Make: %v", dir, err)
			}
		})
	}
	t.Run("a file in the way", func(t *testing.T) {
		root := t.TempDir()
		f := filepath.Join(root, "file")
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := Make(f, 0o755); err == nil {
			t.Fatal("Make over a regular file succeeded")
		}
	})
}
