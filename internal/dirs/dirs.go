// Package dirs creates directories whose path may be a symlink to a directory that does not exist yet.
package dirs

import (
	"fmt"
	"os"
	"path/filepath"
)

// maxLinks bounds how many symlinks in a row Make follows.
const maxLinks = 8

// Make creates dir and any missing parents, like os.MkdirAll, also when dir is a symlink whose target does not
// exist yet: then it creates the target. The managed plugin's /run/netns and /run/cni are symlinks into the
// host's /run (see scripts/build-rootfs.sh), where those directories do not exist after a boot until someone creates
// them, and os.MkdirAll fails on the dangling link with "file exists".
func Make(dir string, perm os.FileMode) error {
	for range maxLinks {
		fi, err := os.Lstat(dir)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			break
		}
		if _, err := os.Stat(dir); err == nil {
			break // the link resolves: MkdirAll follows it
		}
		target, err := os.Readlink(dir)
		if err != nil {
			return fmt.Errorf("reading symlink %s: %w", dir, err)
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(dir), target)
		}
		dir = target
	}
	return os.MkdirAll(dir, perm)
}
