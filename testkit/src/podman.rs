//! A private podman for tests and the demo: its own store, run root and containers.conf
//! (runc, capped ulimits, cgroupfs: see docs/testing.md, "Runtime notes"), optionally run inside a
//! node namespace. Pods it made are removed on drop, and the store reset.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{TempDir, require_root, require_tool, run};

pub struct Podman {
    pub dir: TempDir,
    /// Run podman (and so its hooks, CNI plugins, conmon) inside this namespace.
    pub netns: Option<PathBuf>,
    pub hooks_dir: Option<PathBuf>,
    pub pods: Vec<String>,
}

impl Podman {
    /// `network` is the `[network]` table's body beyond the backend line.
    pub fn new(backend: &str, network: &str, netns: Option<&Path>) -> Podman {
        require_root();
        require_tool("podman");
        let dir = TempDir::new("podman");
        let hard = run("sh", &["-c", "ulimit -Hn"]);
        let mut nofile = String::from_utf8_lossy(&hard.stdout).trim().to_string();
        if nofile == "unlimited" || nofile.is_empty() {
            nofile = "1048576".into();
        }
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=32768:32768\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             [network]\nnetwork_backend = \"{backend}\"\nnetwork_config_dir = \"{}/net.d\"\n{network}\n",
            dir.path().display()
        );
        std::fs::create_dir_all(dir.path().join("net.d")).expect("net.d");
        std::fs::write(dir.path().join("containers.conf"), conf).expect("containers.conf");
        Podman {
            dir,
            netns: netns.map(Path::to_path_buf),
            hooks_dir: None,
            pods: Vec::new(),
        }
    }

    pub fn net_d(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .args(["--", "podman"]);
                c
            }
            None => Command::new("podman"),
        };
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .args(["--root", d.join("store").to_str().expect("utf-8 path")])
            .args(["--runroot", d.join("run").to_str().expect("utf-8 path")])
            .args(["--tmpdir", d.join("tmp").to_str().expect("utf-8 path")]);
        if let Some(h) = &self.hooks_dir {
            c.args(["--hooks-dir", h.to_str().expect("utf-8 path")]);
        }
        c.args(args).stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("podman")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Import a rootfs directory as an image.
    pub fn import(&self, rootfs: &Path, reference: &str, change: &str) {
        let tar = self.dir.path().join("rootfs.tar");
        crate::ok(
            "tar",
            &[
                "-C",
                rootfs.to_str().expect("utf-8"),
                "-cf",
                tar.to_str().expect("utf-8"),
                ".",
            ],
        );
        self.ok(&[
            "import",
            "--change",
            change,
            tar.to_str().expect("utf-8"),
            reference,
        ]);
    }

    /// Remove a pod, and the empty cgroup dirs podman 4.3 leaves behind for it.
    pub fn remove_pod(&self, pod: &str) -> Output {
        let id = self.run(&["pod", "inspect", "-f", "{{.ID}}", pod]);
        let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        let out = self.run(&["pod", "rm", "-f", "-t", "0", pod]);
        // podman 4.3 with cgroupfs on cgroup v1 leaves empty libpod_parent/<pod-id> dirs.
        if !id.is_empty() {
            for ctl in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_dir(ctl.path().join("libpod_parent").join(&id));
            }
        }
        out
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for pod in std::mem::take(&mut self.pods) {
            self.remove_pod(&pod);
        }
        self.run(&["system", "reset", "--force"]);
    }
}

/// Build the pause OCI archive with the project's script.
pub fn build_pause_image(dir: &Path, image_ref: &str) -> PathBuf {
    let out = dir.join("pause-image.tar");
    let script = crate::workspace_root().join("pause/mk-image.sh");
    crate::ok(
        script.to_str().expect("utf-8"),
        &[
            crate::pause_bin().to_str().expect("utf-8"),
            image_ref,
            out.to_str().expect("utf-8"),
        ],
    );
    out
}
