package cnibridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"golang.org/x/sys/unix"
)

// boundedExec is libcni's plugin runner for cniplug: plugins get only the CNI_* variables and PATH (plugins
// such as portmap exec iptables), not cniplug's whole environment; each runs in a process group of its own
// that is killed whole at the deadline (killing only the plugin would leave a child such as `iptables -w`
// holding its output pipe, and the exec would outlive the deadline); and each exec's duration is reported to
// the observer, if any.
type boundedExec struct {
	observer ExecObserver
	path     string // the plugins' PATH; "" for cniplug's own
}

func (e *boundedExec) Decode(jsonBytes []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(jsonBytes)
}

func (e *boundedExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *boundedExec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	env := make([]string, 0, 8)
	if e.path != "" {
		env = append(env, "PATH="+e.path)
	}
	command := ""
	for _, kv := range environ {
		if strings.HasPrefix(kv, "CNI_") || (e.path == "" && strings.HasPrefix(kv, "PATH=")) {
			env = append(env, kv)
		}
		if c, ok := strings.CutPrefix(kv, "CNI_COMMAND="); ok {
			command = c
		}
	}
	start := time.Now()
	out, err := runPlugin(ctx, pluginPath, stdinData, env)
	if e.observer != nil {
		e.observer.ObserveExec(filepath.Base(pluginPath), command, time.Since(start), err)
	}
	return out, err
}

func runPlugin(ctx context.Context, pluginPath string, stdinData []byte, env []string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		var stdout, stderr bytes.Buffer
		c := exec.CommandContext(ctx, pluginPath)
		c.Env = env
		c.Stdin = bytes.NewReader(stdinData)
		c.Stdout, c.Stderr = &stdout, &stderr
		c.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
		c.Cancel = func() error { return unix.Kill(-c.Process.Pid, unix.SIGKILL) }
		c.WaitDelay = time.Second
		err := c.Start()
		if err == nil {
			awaitExit(c.Process.Pid)
			err = c.Wait()
		}
		if err == nil {
			return stdout.Bytes(), nil
		}
		// A plugin binary being replaced on disk; libcni's RawExec retries the same way.
		if errors.Is(err, unix.ETXTBSY) && attempt < 5 && ctx.Err() == nil {
			time.Sleep(time.Second)
			continue
		}
		return nil, pluginError(err, stdout.Bytes(), stderr.Bytes())
	}
}

// pluginError builds the error libcni's RawExec would: the plugin's own CNI error when it printed one.
func pluginError(err error, stdout, stderr []byte) error {
	emsg := types.Error{}
	switch {
	case len(stdout) == 0 && len(stderr) == 0:
		emsg.Msg = fmt.Sprintf("netplugin failed with no error message: %v", err)
	case len(stdout) == 0:
		emsg.Msg = fmt.Sprintf("netplugin failed: %q: %v", string(stderr), err)
	default:
		if perr := json.Unmarshal(stdout, &emsg); perr != nil {
			emsg.Msg = fmt.Sprintf("netplugin failed but error parsing its diagnostic message %q: %v", string(stdout), perr)
		}
	}
	return &emsg
}

// awaitExit returns once the process has exited (or cannot be waited for), without reaping it. It waits in
// the runtime's network poller on a pidfd, which is readable once the process exits: exec.Cmd.Wait would
// block a thread in waitid for the plugin's whole run, and the Go runtime's monitor then wakes up every few
// microseconds to take the thread's processor back, which cost cniplug more CPU than the rest of the exec.
// Wait then reaps at once. Where pidfds are missing (Linux < 5.3) it returns at once and Wait blocks.
func awaitExit(pid int) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Read(func(fd uintptr) bool {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		return err != nil || info.Signo != 0
	})
}
