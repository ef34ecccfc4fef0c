//! `runtime-shim join`: make an app container part of a pod by rewriting its bundle's
//! `config.json` so it joins the sandbox's network, IPC and UTS namespaces (the
//! "containers in a pod share one network stack" step; what kubelet asks of a CRI
//! runtime for every app container).
//!
//! The sandbox is named by container id (the hook's record: the pinned netns plus the
//! sandbox pid for IPC and UTS), by pid, or by a netns path (network only, unless a
//! record says which sandbox holds it). Everything is resolved and the new config built
//! before the file is replaced atomically, so a failure changes nothing. Running it twice
//! gives the same file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use netns::NetNs;
use serde_json::{Value, json};

use crate::hook::{Record, read_record};
use crate::{BundleProblem, Error, Gone, Result};

/// How the sandbox was named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    Pid(i32),
    Path(PathBuf),
    Id(String),
}

impl Sandbox {
    pub fn parse(s: &str) -> Result<Sandbox> {
        if s.starts_with('/') {
            Ok(Sandbox::Path(PathBuf::from(s)))
        } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            match s.parse::<i32>() {
                Ok(p) if p > 0 => Ok(Sandbox::Pid(p)),
                _ => Err(Error::Invalid {
                    what: "sandbox pid",
                    value: s.into(),
                    reason: "not a process id".into(),
                }),
            }
        } else {
            crate::validate_container_id(s)?;
            Ok(Sandbox::Id(s.to_string()))
        }
    }
}

/// The namespaces to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub net: PathBuf,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

fn proc_ns(pid: i32, kind: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/{kind}"))
}

fn dead(what: Gone) -> Error {
    Error::UnknownContainer(what)
}

/// The namespaces of a live process, refusing the caller's own network namespace (the
/// app would end up on the node's network, not the pod's).
fn by_pid(pid: i32) -> Result<Target> {
    let ns = NetNs::from_pid(pid).map_err(|e| match e {
        netns::Error::NotFound { .. } | netns::Error::NoProcess { .. } => dead(Gone::Process(pid)),
        e => e.into(),
    })?;
    if ns == NetNs::current()? {
        return Err(Error::Invalid {
            what: "sandbox",
            value: pid.to_string(),
            reason: "process is in the node's network namespace (this one), not a pod's".into(),
        });
    }
    Ok(Target {
        net: proc_ns(pid, "net"),
        ipc: Some(proc_ns(pid, "ipc")),
        uts: Some(proc_ns(pid, "uts")),
    })
}

/// A recorded sandbox: its pinned netns, and IPC/UTS of its process, which must still be
/// the one in that netns (not a dead sandbox whose pid was reused).
fn by_record(r: &Record) -> Result<Target> {
    let pinned = NetNs::open(&r.netns).map_err(|e| match e {
        netns::Error::NotFound { .. } => dead(Gone::SandboxNetns {
            id: r.id.clone(),
            netns: r.netns.clone(),
        }),
        e => e.into(),
    })?;
    match NetNs::from_pid(r.pid) {
        Ok(ns) if ns == pinned => {}
        _ => {
            return Err(dead(Gone::SandboxNotRunning {
                id: r.id.clone(),
                pid: r.pid,
            }));
        }
    }
    Ok(Target {
        net: r.netns.clone(),
        ipc: Some(proc_ns(r.pid, "ipc")),
        uts: Some(proc_ns(r.pid, "uts")),
    })
}

/// Resolve the sandbox to namespace paths. `state_dir` holds the hook's records.
pub fn resolve(sandbox: &Sandbox, state_dir: &Path) -> Result<Target> {
    match sandbox {
        Sandbox::Pid(p) => by_pid(*p),
        Sandbox::Id(id) => match read_record(state_dir, id)? {
            Some(r) => by_record(&r),
            None => Err(dead(Gone::NoRecord {
                id: id.clone(),
                state_dir: state_dir.to_path_buf(),
            })),
        },
        Sandbox::Path(p) => {
            let ns = NetNs::open(p).map_err(|e| match e {
                netns::Error::NotFound { .. } => dead(Gone::Netns(p.clone())),
                e => e.into(),
            })?;
            if ns == NetNs::current()? {
                return Err(Error::Invalid {
                    what: "sandbox",
                    value: p.display().to_string(),
                    reason: "is the node's network namespace (this one), not a pod's".into(),
                });
            }
            Ok(Target {
                net: p.clone(),
                ipc: None,
                uts: None,
            })
        }
    }
}

/// The new config.json text: `linux.namespaces` entries for network, IPC and UTS point at
/// the sandbox's (added if absent); `hostname`/`domainname` are dropped when UTS is
/// shared, since setting them would rename the whole pod. Everything else is kept as is.
pub fn rewrite(config: &[u8], target: &Target, path: &Path) -> Result<Vec<u8>> {
    let bad = |problem: BundleProblem| Error::Bundle {
        path: path.to_path_buf(),
        problem,
    };
    let not = |field, expected| bad(BundleProblem::WrongType { field, expected });
    // Validate against the runtime spec first: the file must be a config a runtime takes.
    crate::oci::parse_config(config).map_err(|e| bad(BundleProblem::NotRuntimeConfig(e)))?;
    let mut v: Value = serde_json::from_slice(config)
        .map_err(|e| bad(BundleProblem::NotRuntimeConfig(e.to_string())))?;
    let root = v
        .as_object_mut()
        .ok_or_else(|| not("(the file)", "a JSON object"))?;
    let linux = root
        .entry("linux")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| not("linux", "an object"))?;
    let nss = linux
        .entry("namespaces")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| not("linux.namespaces", "an array"))?;
    // runc refuses a config naming one namespace type twice; so do we, rather than
    // pointing one entry at the sandbox and leaving the other to win.
    let mut seen = std::collections::BTreeSet::new();
    for n in nss.iter() {
        if let Some(t) = n.get("type").and_then(Value::as_str) {
            if !seen.insert(t.to_string()) {
                return Err(bad(BundleProblem::DuplicateNamespace(t.to_string())));
            }
        }
    }
    let wanted = [
        ("network", Some(&target.net)),
        ("ipc", target.ipc.as_ref()),
        ("uts", target.uts.as_ref()),
    ];
    for (kind, p) in wanted {
        let Some(p) = p else { continue };
        let entry = json!({"type": kind, "path": p.to_string_lossy()});
        match nss
            .iter_mut()
            .find(|n| n.get("type").and_then(Value::as_str) == Some(kind))
        {
            Some(n) => *n = entry,
            None => nss.push(entry),
        }
    }
    if target.uts.is_some() {
        root.remove("hostname");
        root.remove("domainname");
    }
    let mut out = serde_json::to_vec_pretty(&v).map_err(Error::Decode)?;
    out.push(b'\n');
    Ok(out)
}

/// Rewrite `<bundle>/config.json` to join `sandbox`. Returns what was joined.
pub fn join(bundle: &Path, sandbox: &Sandbox, state_dir: &Path) -> Result<Target> {
    let path = bundle.join("config.json");
    let meta = fs::symlink_metadata(&path).map_err(|e| Error::Bundle {
        path: path.clone(),
        problem: if e.kind() == std::io::ErrorKind::NotFound {
            BundleProblem::Missing
        } else {
            BundleProblem::Stat(e)
        },
    })?;
    if !meta.is_file() {
        return Err(Error::Bundle {
            path,
            problem: BundleProblem::NotRegularFile,
        });
    }
    let old = crate::read_regular(&path, 16 << 20)?;
    let target = resolve(sandbox, state_dir)?;
    let new = rewrite(&old, &target, &path)?;
    if new == old {
        return Ok(target);
    }
    let tmp = bundle.join(format!(".config.json.podwire{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        // The runtime (or a rootless user) owns the bundle: keep owner and mode.
        {
            use std::os::unix::fs::MetadataExt;
            nix::unistd::fchown(&f, Some(meta.uid().into()), Some(meta.gid().into()))
                .map_err(std::io::Error::from)?;
        }
        f.set_permissions(fs::Permissions::from_mode(meta.permissions().mode()))?;
        f.write_all(&new)?;
        f.sync_data()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("write", &path, e)
    })?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
        "ociVersion": "1.0.2-dev",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["httpd"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "hostname": "runc",
        "x-unknown-extension": {"kept": true},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                                 {"type": "uts"}, {"type": "mount"}]}
    }"#;

    fn target() -> Target {
        Target {
            net: "/run/netns/podwire-sbx".into(),
            ipc: Some("/proc/42/ns/ipc".into()),
            uts: Some("/proc/42/ns/uts".into()),
        }
    }

    #[test]
    fn joins_net_ipc_uts_and_keeps_the_rest() {
        let out = rewrite(SPEC.as_bytes(), &target(), Path::new("c")).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let nss = v["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(nss.len(), 5);
        let path_of = |k: &str| {
            nss.iter()
                .find(|n| n["type"] == k)
                .and_then(|n| n.get("path"))
                .and_then(Value::as_str)
                .map(String::from)
        };
        assert_eq!(
            path_of("network").as_deref(),
            Some("/run/netns/podwire-sbx")
        );
        assert_eq!(path_of("ipc").as_deref(), Some("/proc/42/ns/ipc"));
        assert_eq!(path_of("uts").as_deref(), Some("/proc/42/ns/uts"));
        assert_eq!(path_of("pid"), None);
        assert_eq!(path_of("mount"), None);
        assert!(v.get("hostname").is_none());
        assert_eq!(v["x-unknown-extension"]["kept"], true);
        // Idempotent: a second rewrite is byte-identical.
        let again = rewrite(&out, &target(), Path::new("c")).unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn adds_missing_namespaces_and_linux_section() {
        let spec = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#;
        let t = Target {
            ipc: None,
            uts: None,
            ..target()
        };
        let out = rewrite(spec.as_bytes(), &t, Path::new("c")).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["linux"]["namespaces"],
            json!([{"type": "network", "path": "/run/netns/podwire-sbx"}])
        );
    }

    #[test]
    fn refuses_what_is_not_a_runtime_config() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"ociVersion": 3}"#,
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":{"type":"network"}}}"#,
            // Found by the fuzzer: a second entry of a type would have been left alone.
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network"},{"type":"network","path":"/x"}]}}"#,
        ] {
            let e = crate::chain(
                &rewrite(bad.as_bytes(), &target(), Path::new("/b/config.json")).unwrap_err(),
            );
            assert!(e.starts_with("bundle /b/config.json:"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn sandbox_names() {
        assert_eq!(Sandbox::parse("123").unwrap(), Sandbox::Pid(123));
        assert_eq!(
            Sandbox::parse("/run/netns/x").unwrap(),
            Sandbox::Path("/run/netns/x".into())
        );
        assert_eq!(
            Sandbox::parse("sbx-a").unwrap(),
            Sandbox::Id("sbx-a".into())
        );
        for bad in ["0", "99999999999", "", "../x", "a b"] {
            assert!(Sandbox::parse(bad).is_err(), "{bad:?}");
        }
    }
}
