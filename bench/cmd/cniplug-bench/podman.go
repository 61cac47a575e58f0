package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// podman runs Debian's podman 4.x with its CNI backend on the benchmark's conflist, with all its state (vfs
// storage, run root, network config) in the benchmark's temp dir so that removing that dir removes it all.
type podman struct {
	dir   string
	env   []string
	image string
}

// ulimits: podman's default rlimits need CAP_SYS_RESOURCE, which these machines do not grant.
var podmanUlimits = []string{"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}

// ensurePodman installs podman with apt when it is missing.
func ensurePodman(e *env) error {
	if _, err := exec.LookPath("podman"); err == nil {
		return nil
	}
	e.logf("podman is missing: installing Debian's podman with apt-get")
	if _, err := run("apt-get", "update", "-qq"); err != nil {
		return err
	}
	cmd := exec.Command("apt-get", "install", "-y", "-qq", "podman")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get install podman: %w: %s", err, out)
	}
	return nil
}

func (e *env) setupPodman() (*podman, error) {
	if err := ensurePodman(e); err != nil {
		return nil, err
	}
	p := &podman{dir: filepath.Join(e.tmp, "podman")}
	netDir := filepath.Join(p.dir, "net.d")
	if err := os.MkdirAll(netDir, 0o755); err != nil {
		return nil, err
	}
	// The very same conflist bytes Docker's network uses.
	data, err := os.ReadFile(e.conflist)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(netDir, filepath.Base(e.conflist)), data, 0o644); err != nil {
		return nil, err
	}
	containersConf := fmt.Sprintf(`[network]
network_backend = "cni"
cni_plugin_dirs = [%q]
network_config_dir = %q
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
`, filepath.Join(e.repo, "bin", "cni"), netDir, filepath.Join(p.dir, "events.log"))
	storageConf := fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n",
		filepath.Join(p.dir, "root"), filepath.Join(p.dir, "runroot"))
	for name, body := range map[string]string{"containers.conf": containersConf, "storage.conf": storageConf} {
		if err := os.WriteFile(filepath.Join(p.dir, name), []byte(body), 0o644); err != nil {
			return nil, err
		}
	}
	p.env = append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(p.dir, "containers.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(p.dir, "storage.conf"))
	e.onCleanup("removing podman state", p.cleanup)
	// The same image: the filesystem of Docker's busybox image, exported from a container and imported. Not
	// `docker save | podman load`: Docker 29's containerd image store saves an OCI index that Podman 4 does not
	// load, and the image's filesystem is all the bench needs of it.
	p.image = "localhost/" + strings.TrimPrefix(e.image, "docker.io/")
	ctr, err := run("docker", "create", e.image, "true")
	if err != nil {
		return nil, fmt.Errorf("docker create %s for its filesystem: %w", e.image, err)
	}
	if f := strings.Fields(ctr); len(f) > 0 {
		ctr = f[len(f)-1] // the ID is the last line, after any warning
	}
	defer func() { _, _ = run("docker", "rm", "-f", ctr) }()
	export := exec.Command("docker", "export", ctr)
	imp := p.cmd("import", "--change", `CMD ["/bin/sh"]`, "--change", "ENV PATH=/bin", "-", p.image)
	pipe, err := export.StdoutPipe()
	if err != nil {
		return nil, err
	}
	imp.Stdin = pipe
	if err := export.Start(); err != nil {
		return nil, err
	}
	out, ierr := imp.CombinedOutput()
	eerr := export.Wait()
	if ierr != nil || eerr != nil {
		return nil, fmt.Errorf("docker export | podman import: %v %v: %s", eerr, ierr, out)
	}
	return p, nil
}

func (p *podman) cmd(args ...string) *exec.Cmd {
	c := exec.Command("podman", args...)
	c.Env = p.env
	return c
}

// runArgs is `podman run --rm` of the image's `true` on network (a CNI network name, or "none").
func (p *podman) runArgs(network string) []string {
	return append(append([]string{"run", "--rm", "--network", network}, podmanUlimits...), p.image, "true")
}

func (p *podman) cleanup() error {
	_ = p.cmd("rm", "-af").Run()
	_ = p.cmd("rmi", "-af").Run()
	// Anything podman still has mounted under its dirs (it should have none with vfs) is unmounted first.
	if f, err := os.Open("/proc/self/mounts"); err == nil {
		var mounts []string
		s := bufio.NewScanner(f)
		for s.Scan() {
			if fields := strings.Fields(s.Text()); len(fields) > 1 && strings.HasPrefix(fields[1], p.dir) {
				mounts = append(mounts, fields[1])
			}
		}
		f.Close()
		for i := len(mounts) - 1; i >= 0; i-- {
			_, _ = run("umount", "-l", mounts[i])
		}
	}
	return os.RemoveAll(p.dir)
}

func measurePodman(ctx context.Context, e *env, o *options) *podmanResult {
	pr := &podmanResult{}
	p, err := e.setupPodman()
	if err != nil {
		pr.Error = err.Error()
		return pr
	}
	pr.Version, _ = run("podman", "--version")
	for i := 0; i < 2; i++ { // warm-up
		for _, nw := range []string{"none", e.cniName} {
			if _, err := timed(p.cmd(p.runArgs(nw)...)); err != nil {
				pr.Error = err.Error()
				return pr
			}
		}
	}
	for i := 0; i < o.PodmanN; i++ {
		for _, nw := range []string{"none", e.cniName} {
			d, err := timed(p.cmd(p.runArgs(nw)...))
			if err != nil {
				pr.Error = err.Error()
				return pr
			}
			if nw == "none" {
				pr.None = append(pr.None, d.Seconds())
			} else {
				pr.CNI = append(pr.CNI, d.Seconds())
			}
		}
		if ctx.Err() != nil {
			pr.Error = ctx.Err().Error()
			return pr
		}
	}
	return pr
}
