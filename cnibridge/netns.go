package cnibridge

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/cniplug/cniplug/internal/dirs"
)

// netnsMountPoint creates the empty file a namespace is pinned on.
func netnsMountPoint(path string) error {
	if err := dirs.Make(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating netns dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("creating netns file %s: %w", path, err)
	}
	return f.Close()
}

// pinNetNS pins the existing network namespace at src at path too, as `ip netns attach` does.
func pinNetNS(src, path string) error {
	if err := netnsMountPoint(path); err != nil {
		return err
	}
	if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return fmt.Errorf("bind-mounting netns %s at %s: %w", src, path, err)
	}
	return nil
}

// createNetNS creates a new network namespace and pins it with a bind mount at path, as `ip netns add` does.
func createNetNS(path string) error {
	if err := netnsMountPoint(path); err != nil {
		return err
	}

	errCh := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errCh <- fmt.Errorf("reading thread netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errCh <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		mountErr := unix.Mount(self, path, "none", unix.MS_BIND, "")
		// Put the thread back before unlocking it. If that fails it stays locked, and the runtime discards
		// it when this goroutine ends instead of running other goroutines in the wrong namespace. (Locking
		// without restoring would wedge the main thread forever were this goroutine scheduled there.)
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		if mountErr != nil {
			errCh <- fmt.Errorf("bind-mounting netns at %s: %w", path, mountErr)
			return
		}
		errCh <- nil
	}()
	if err := <-errCh; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// pinNetNSOver bind-mounts the network namespace at src over path, on top of the namespace pinned there: path
// names src's namespace from then on, and keeps it alive after src is unmounted. There is no moment at which
// path names no namespace. removeNetNS unpins both.
func pinNetNSOver(src, path string) error {
	if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting netns %s at %s: %w", src, path, err)
	}
	return nil
}

// sameNetNS reports whether the paths name the same network namespace.
func sameNetNS(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// removeNetNS unpins and removes a namespace created by createNetNS, with every namespace pinned over it
// (pinNetNSOver). A missing path is not an error.
func removeNetNS(path string) error {
	for pinned := true; pinned; {
		switch err := unix.Unmount(path, unix.MNT_DETACH); {
		case err == nil: // another may be stacked below
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT):
			pinned = false // not a mount point (any more), or no such file
		default:
			return fmt.Errorf("unmounting netns %s: %w", path, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing netns %s: %w", path, err)
	}
	return nil
}

// isNetNS reports whether path is a pinned network namespace (a bind mount of an nsfs inode).
func isNetNS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}
