// Package procsys makes /proc/sys writable for the CNI plugins cniplug runs. A container runtime mounts
// /proc/sys read-only (Docker does so for managed plugins too), but CNI plugins write per-interface sysctls
// in the namespaces they configure: IPv6 (disable_ipv6, keep_addr_on_down), portmap's route_localnet,
// tuning's sysctls. With CAP_SYS_ADMIN and no other restriction the read-only bind mount can be lifted.
package procsys

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is /proc/sys's entry in a mountinfo file.
type Mount struct {
	Options []string // per-mount options (ro, nosuid, ...)
}

// ReadOnly reports whether the mount is read-only.
func (m Mount) ReadOnly() bool { return has(m.Options, "ro") }

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Find returns the topmost mount at target in mountinfo text (proc(5)), or false when target is no mount point.
func Find(mountinfo, target string) (Mount, bool) {
	var m Mount
	found := false
	sc := bufio.NewScanner(strings.NewReader(mountinfo))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || unescape(f[4]) != target {
			continue
		}
		m, found = Mount{Options: strings.Split(f[5], ",")}, true // later lines are mounted on top
	}
	return m, found
}

// unescape undoes mountinfo's octal escapes of space, tab, newline and backslash.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// EnsureWritable remounts /proc/sys read-write when it is a read-only mount of its own, keeping its other
// flags. It reports whether it changed anything; on a host (or a privileged container) it does nothing.
func EnsureWritable() (bool, error) {
	data, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		return false, err
	}
	m, ok := Find(string(data), "/proc/sys")
	if !ok || !m.ReadOnly() {
		return false, nil
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND)
	for opt, flag := range map[string]uintptr{"nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV, "noexec": unix.MS_NOEXEC,
		"relatime": unix.MS_RELATIME, "noatime": unix.MS_NOATIME, "nodiratime": unix.MS_NODIRATIME} {
		if has(m.Options, opt) {
			flags |= flag
		}
	}
	if err := unix.Mount("", "/proc/sys", "", flags, ""); err != nil {
		return false, fmt.Errorf("remounting /proc/sys read-write (CNI plugins set sysctls; the plugin needs CAP_SYS_ADMIN): %w", err)
	}
	return true, nil
}
