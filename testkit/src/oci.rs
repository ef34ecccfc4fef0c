//! Fixtures for driving a real OCI runtime (runc) from tests and the demo: a busybox
//! rootfs with our `pause`, bundles made with `runc spec`, and a [`Runc`] handle that
//! runs every command inside a node namespace and deletes its containers on drop.

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

/// busybox applets the tests and the demo use.
const APPLETS: &[&str] = &[
    "sh", "httpd", "nc", "ip", "sleep", "cat", "echo", "printf", "hostname", "ls", "ping", "true",
    "false", "wc", "grep", "tail",
];

/// A read-only rootfs shared by every container: static busybox with its applets, our
/// pause as `/pause`, and the mount points runc's default spec needs.
pub fn build_rootfs(dir: &Path, pause: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "www", "run"] {
        fs::create_dir_all(dir.join(d)).unwrap_or_else(|e| panic!("mkdir rootfs/{d}: {e}"));
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("busybox-static is not installed; run `make deps`");
    fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    for a in APPLETS {
        let _ = symlink("busybox", dir.join("bin").join(a));
    }
    fs::copy(pause, dir.join("pause")).expect("copy pause");
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    fs::write(dir.join("etc/group"), "root:x:0:\n").expect("group");
}

/// runc, run inside the network namespace at `netns` (the node), with a private state
/// root. Containers it started are killed and deleted on drop (their poststop hooks run).
pub struct Runc {
    pub root: PathBuf,
    pub netns: PathBuf,
    pub logs: PathBuf,
    started: RefCell<Vec<String>>,
}

impl Runc {
    pub fn new(state_dir: &Path, netns: &Path) -> Runc {
        crate::require_tool("runc");
        let root = state_dir.join("runc-root");
        let logs = state_dir.join("runc-logs");
        fs::create_dir_all(&root).expect("runc root");
        fs::create_dir_all(&logs).expect("runc logs");
        Runc {
            root,
            netns: netns.to_path_buf(),
            logs,
            started: RefCell::new(Vec::new()),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .args(["--", "runc", "--root"])
            .arg(&self.root);
        c
    }

    fn out(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run runc: {e}"))
    }

    /// A bundle dir with a `runc spec` config adjusted for tests: no terminal, the shared
    /// rootfs read-only, `args`, CAP_NET_RAW (ping), and `/www` bound from `www` if given.
    pub fn bundle(&self, dir: &Path, rootfs: &Path, args: &[&str], www: Option<&Path>) -> Value {
        fs::create_dir_all(dir).expect("bundle dir");
        let _ = fs::remove_file(dir.join("config.json"));
        let out = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(dir)
            .output()
            .expect("runc spec");
        assert!(out.status.success(), "runc spec: {out:?}");
        let mut v: Value =
            serde_json::from_slice(&fs::read(dir.join("config.json")).expect("read spec"))
                .expect("runc spec JSON");
        v["process"]["terminal"] = json!(false);
        v["process"]["args"] = json!(args);
        v["root"] = json!({"path": rootfs, "readonly": true});
        if let Some(caps) = v["process"]["capabilities"].as_object_mut() {
            for set in caps.values_mut() {
                if let Some(a) = set.as_array_mut() {
                    a.push(json!("CAP_NET_RAW"));
                }
            }
        }
        if let Some(www) = www {
            v["mounts"]
                .as_array_mut()
                .expect("mounts")
                .push(json!({"destination": "/www", "type": "bind", "source": www,
                             "options": ["rbind", "ro"]}));
        }
        write_config(dir, &v);
        v
    }

    /// `runc run -d`; the container's stdio goes to a log file. Err(log) on failure.
    pub fn run_detached(&self, id: &str, bundle: &Path) -> Result<(), String> {
        let log = self.logs.join(format!("{id}.log"));
        let f = fs::File::create(&log).expect("log file");
        let status = self
            .cmd()
            .args(["run", "-d", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .status()
            .expect("runc run");
        // runc may have created state even when it failed; delete it on drop either way.
        self.started.borrow_mut().push(id.to_string());
        if status.success() {
            Ok(())
        } else {
            Err(fs::read_to_string(&log).unwrap_or_default())
        }
    }

    /// `runc run` in the foreground (a short-lived client); deleted afterwards.
    pub fn run_fg(&self, id: &str, bundle: &Path) -> Output {
        let o = self
            .cmd()
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .output()
            .expect("runc run");
        let _ = self.out(&["delete", "--force", id]);
        o
    }

    pub fn pid(&self, id: &str) -> i32 {
        let o = self.out(&["state", id]);
        assert!(o.status.success(), "runc state {id}: {o:?}");
        let v: Value = serde_json::from_slice(&o.stdout).expect("state JSON");
        v["pid"].as_i64().expect("pid") as i32
    }

    pub fn exec(&self, id: &str, args: &[&str]) -> Output {
        let mut a = vec!["exec", id];
        a.extend_from_slice(args);
        self.out(&a)
    }

    /// Kill and delete (runs poststop hooks). Returns delete's output.
    pub fn delete(&self, id: &str) -> Output {
        let _ = self.out(&["kill", id, "KILL"]);
        // The kill is asynchronous; `delete --force` waits for the container to stop.
        let o = self.out(&["delete", "--force", id]);
        self.started.borrow_mut().retain(|x| x != id);
        o
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        let ids: Vec<String> = self.started.borrow().iter().rev().cloned().collect();
        for id in ids {
            let o = self.delete(&id);
            if !o.status.success() {
                let err = String::from_utf8_lossy(&o.stderr);
                if !err.contains("does not exist") {
                    eprintln!("fixture: runc delete {id}: {err}");
                }
            }
        }
    }
}

pub fn write_config(bundle: &Path, v: &Value) {
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(v).expect("serialize"),
    )
    .expect("write config.json");
}

/// A hook's argv: `runtime-shim hook --stage STAGE --config CONFIG --state-dir DIR`.
pub fn hook_args(stage: &str, config: &Path, state_dir: &Path) -> Value {
    json!([
        "runtime-shim",
        "hook",
        "--stage",
        stage,
        "--config",
        config,
        "--state-dir",
        state_dir
    ])
}

/// The hooks entry that makes `shim` wire the sandbox (at `stages`) and unwire it at
/// poststop. `env` is exactly what runc passes (no PATH, as podman's hooks often have).
pub fn shim_hooks(shim: &Path, config: &Path, state_dir: &Path, stages: &[&str]) -> Value {
    let args = |stage: &str| hook_args(stage, config, state_dir);
    let entry = |stage: &str| json!([{"path": shim, "args": args(stage), "env": ["PODWIRE_HOOK=1"], "timeout": 10}]);
    let mut h = serde_json::Map::new();
    for s in stages {
        h.insert((*s).to_string(), entry(s));
    }
    h.insert("poststop".into(), entry("poststop"));
    Value::Object(h)
}

/// An HTTP GET with busybox nc; returns the body (after the blank line).
pub fn http_get_script(host: &str, port: u16) -> String {
    http_get_path_script(host, port, "/")
}

/// [`http_get_script`] of another path.
pub fn http_get_path_script(host: &str, port: u16, path: &str) -> String {
    format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}")
}

/// A tool's absolute path: `$PATH`, then the sbin dirs (runc is in /usr/sbin).
pub fn find(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not installed; run `make deps`"))
}

/// An OCI image archive of a rootfs directory (pause/mk-image.sh in directory mode).
pub fn image_from_dir(dir: &Path, image_ref: &str, out: &Path, cmd: &str) {
    let script = crate::workspace_root().join("pause/mk-image.sh");
    let o = Command::new(script)
        .arg(dir)
        .arg(image_ref)
        .arg(out)
        .env("IMAGE_ENTRYPOINT", "null")
        .env("IMAGE_CMD", cmd)
        .env("IMAGE_USER", "0:0")
        .output()
        .expect("mk-image.sh");
    assert!(o.status.success(), "mk-image.sh: {o:?}");
}
