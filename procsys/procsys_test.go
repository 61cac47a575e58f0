package procsys

import (
	"os"
	"runtime"
	"testing"

	"github.com/cniplug/cniplug/internal/testing/testutil"
	"golang.org/x/sys/unix"
)

// From a Docker managed plugin (20.10): /proc/sys is a read-only bind of proc's sys directory.
const pluginMountinfo = `68 44 254:0 /var/lib/docker/plugins/d53d/rootfs / rw,relatime master:1 - ext4 /dev/vda rw
69 68 0:39 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
86 68 254:0 /run /host/run rw,relatime shared:3 - ext4 /dev/vda rw
48 69 0:39 /sys /proc/sys ro,nosuid,nodev,noexec,relatime - proc proc rw
49 69 0:44 / /proc/acpi ro,relatime - tmpfs tmpfs ro
`

func TestFind(t *testing.T) {
	m, ok := Find(pluginMountinfo, "/proc/sys")
	if !ok || !m.ReadOnly() || !has(m.Options, "noexec") {
		t.Errorf("plugin /proc/sys: %+v %v, want a read-only mount", m, ok)
	}
	if _, ok := Find(pluginMountinfo, "/sys"); ok {
		t.Error("found a mount at /sys, which the sample has not")
	}
	// The last (topmost) mount at a point wins; escaped paths are matched unescaped.
	stacked := "1 0 0:1 / /proc/sys ro - proc proc rw\n2 1 0:1 /sys /proc/sys rw,nosuid - proc proc rw\n3 0 0:2 / /a\\040b ro - x x ro\n"
	if m, ok := Find(stacked, "/proc/sys"); !ok || m.ReadOnly() {
		t.Errorf("stacked: %+v, want the writable top mount", m)
	}
	if _, ok := Find(stacked, "/a b"); !ok {
		t.Error("escaped mount point not found")
	}
}

// TestEnsureWritable reproduces a container's read-only /proc/sys in a mount namespace of this thread only.
func TestEnsureWritable(t *testing.T) {
	testutil.RequireRoot(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with its private mount namespace
		if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			t.Errorf("making mounts private: %v", err)
			return
		}
		if changed, err := EnsureWritable(); err != nil || changed {
			t.Errorf("writable /proc/sys: changed=%v err=%v, want nothing done", changed, err)
		}
		if err := unix.Mount("/proc/sys", "/proc/sys", "", unix.MS_BIND, ""); err != nil {
			t.Errorf("bind: %v", err)
			return
		}
		ro := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
		if err := unix.Mount("", "/proc/sys", "", ro, ""); err != nil {
			t.Errorf("remount ro: %v", err)
			return
		}
		const probe = "/proc/sys/net/ipv4/ip_forward"
		value, _ := os.ReadFile(probe)
		if err := os.WriteFile(probe, value, 0o644); err == nil {
			t.Errorf("writing %s succeeded on a read-only /proc/sys", probe)
		}
		changed, err := EnsureWritable()
		if err != nil || !changed {
			t.Errorf("read-only /proc/sys: changed=%v err=%v", changed, err)
			return
		}
		if err := os.WriteFile(probe, value, 0o644); err != nil {
			t.Errorf("after EnsureWritable: %v", err)
		}
		data, _ := os.ReadFile("/proc/thread-self/mountinfo")
		if m, _ := Find(string(data), "/proc/sys"); !has(m.Options, "nosuid") || !has(m.Options, "noexec") {
			t.Errorf("remount lost flags: %v", m.Options)
		}
	}()
	<-done
}
