//! A private containerd (1.6, CRI plugin) for tests and the demo: its own root, state,
//! socket and CNI dirs, started inside a node namespace, with runtime-shim as the CNI
//! plugin and our pause image as the sandbox image. Stopped and cleaned on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{TempDir, bin, require_root, require_tool, wait_for};

pub struct Containerd {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub netns: PathBuf,
    child: Option<Child>,
    pub pods: Vec<String>,
}

impl Containerd {
    /// Start containerd in `netns` with one CNI network: `conflist` (runtime-shim).
    pub fn start(netns: &Path, sandbox_image: &str, conflist: &Value) -> Containerd {
        require_root();
        require_tool("containerd");
        require_tool("ctr");
        let dir = TempDir::new("containerd");
        let d = dir.path().to_path_buf();
        let socket = d.join("containerd.sock");
        let cni_bin = d.join("cni-bin");
        let cni_conf = d.join("cni-net.d");
        fs::create_dir_all(&cni_bin).expect("cni-bin");
        fs::create_dir_all(&cni_conf).expect("cni-net.d");
        fs::copy(bin("runtime-shim"), cni_bin.join("runtime-shim")).expect("copy shim");
        // containerd always runs the loopback plugin for lo; conflists chain portmap.
        for plugin in ["loopback", "portmap"] {
            let path = ["/usr/lib/cni", "/opt/cni/bin"]
                .into_iter()
                .map(|d| Path::new(d).join(plugin))
                .find(|p| p.is_file())
                .unwrap_or_else(|| {
                    panic!(
                        "CNI {plugin} plugin missing: install containernetworking-plugins (make deps)"
                    )
                });
            std::os::unix::fs::symlink(path, cni_bin.join(plugin)).expect("plugin link");
        }
        fs::write(cni_conf.join("10-podwire.conflist"), conflist.to_string()).expect("conflist");
        let runc = crate::oci::find("runc");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  # netns files under our state dir, not /run/netns.
  netns_mounts_under_state_dir = true
  # The sandbox's oom_score_adj -998 needs CAP_SYS_RESOURCE, which this machine lacks.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            runc = runc.display(),
            cni_bin = cni_bin.display(),
            cni_conf = cni_conf.display(),
        );
        fs::write(d.join("config.toml"), config).expect("config.toml");
        let log = fs::File::create(d.join("containerd.log")).expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--", "containerd", "--config"])
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let mut me = Containerd {
            dir,
            socket,
            netns: netns.to_path_buf(),
            child: Some(child),
            pods: Vec::new(),
        };
        let ready = wait_for("containerd's CRI socket", Duration::from_secs(30), || {
            if let Some(c) = me.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Some(Err(format!("containerd exited: {st}")));
                }
            }
            let o = me.cri(&["version"]);
            o.status.success().then_some(Ok(()))
        });
        if let Err(e) = ready {
            panic!("{e}\n{}", me.log());
        }
        me
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr -n k8s.io images import`.
    pub fn import(&self, archive: &Path) {
        crate::ok(
            "ctr",
            &[
                "--address",
                self.socket.to_str().expect("utf-8"),
                "-n",
                "k8s.io",
                "images",
                "import",
                archive.to_str().expect("utf-8"),
            ],
        );
    }

    /// One podwire-cri call.
    pub fn cri(&self, args: &[&str]) -> Output {
        Command::new(bin("podwire-cri"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("podwire-cri")
    }

    /// A podwire-cri call that must succeed; its JSON.
    pub fn cri_ok(&self, args: &[&str]) -> Value {
        let o = self.cri(args);
        assert!(
            o.status.success(),
            "podwire-cri {args:?}: {}\n{}\n--- containerd log tail:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        serde_json::from_slice(&o.stdout).expect("podwire-cri JSON")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("pod-logs")
    }

    /// Stop and remove a sandbox (two CNI DELs, as kubelet causes).
    pub fn remove_pod(&mut self, id: &str) -> (Output, Output) {
        let stop = self.cri(&["stop-pod", id]);
        let rm = self.cri(&["remove-pod", id]);
        self.pods.retain(|p| p != id);
        (stop, rm)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.pods) {
            self.remove_pod(&id);
        }
        if let Some(mut c) = self.child.take() {
            // nsenter execs containerd: the child is containerd itself.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
        // Shims of containers still running (a failed test) outlive containerd.
        let sock = self.socket.display().to_string();
        for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&sock) {
                if let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        // Unmount whatever is still mounted under our dirs (snapshots, netns), deepest first.
        let root = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(String::from))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // CRI's cgroup parent, removed only when empty.
        for ctl in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir(ctl.path().join("k8s.io"));
        }
    }
}
