//! The OCI hook entry point: `runtime-shim hook` reads the container state JSON a runtime
//! writes on the hook's stdin.
//!
//! - createRuntime or prestart (a live `pid`): wire `/proc/<pid>/ns/net`, after pinning
//!   it as `/run/netns/podwire-<id>` so the namespace outlives the sandbox until
//!   teardown and `join` can find it by id; a record `<state dir>/<id>.json` keeps the
//!   config path, the interface name and the result.
//! - poststop (no `pid` at all with runc and podman, `pid: 0` with crun; the namespace
//!   may be gone): tear down by container id, unpin, drop the record.
//!
//! The stage comes from `--stage` if given, else from the state (`status` "stopped" or no
//! live pid means poststop). Setup is idempotent, so the same hook may be registered for
//! both createRuntime and prestart.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use netns::NetNs;
use serde::{Deserialize, Serialize};

use crate::result::CniResult;
use crate::{Error, Result, validate_container_id};

/// Annotation naming the network config file (when the hook has no `--config`).
pub const CONFIG_ANNOTATION: &str = "podwire.io/network-config";
/// Annotation naming the pod interface (default eth0).
pub const IFNAME_ANNOTATION: &str = "podwire.io/ifname";
pub const DEFAULT_STATE_DIR: &str = "/run/podwire";
pub const DEFAULT_IFNAME: &str = "eth0";

/// The OCI runtime state (runtime-spec "State"), as runc, crun and podman write it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    #[serde(default)]
    pub oci_version: String,
    pub id: String,
    #[serde(default)]
    pub status: String,
    /// runc omits it at poststop; crun sends 0.
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub bundle: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

pub fn parse_state(bytes: &[u8]) -> Result<State> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let s: State = serde_path_to_error::deserialize(de).map_err(|e| Error::State {
        field: e.path().to_string(),
        source: e.into_inner(),
    })?;
    validate_container_id(&s.id)?;
    if let Some(pid) = s.pid {
        if pid < 0 || pid > i64::from(i32::MAX) {
            return Err(Error::StatePid { pid });
        }
    }
    Ok(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Setup,
    Teardown,
}

/// Which half to run: the named stage, or what the state implies.
pub fn stage(state: &State, explicit: Option<&str>) -> Result<Stage> {
    match explicit {
        Some("createRuntime" | "prestart") => Ok(Stage::Setup),
        Some("poststop") => Ok(Stage::Teardown),
        Some(other) => Err(Error::Invalid {
            what: "hook stage",
            value: other.to_string(),
            reason: "runtime-shim runs at createRuntime or prestart (setup) and poststop \
                     (teardown); createContainer and startContainer run in the container's \
                     namespaces, where the host veth cannot be made"
                .into(),
        }),
        None => {
            let live = state.pid.is_some_and(|p| p > 0);
            if state.status == "stopped" || !live {
                Ok(Stage::Teardown)
            } else {
                Ok(Stage::Setup)
            }
        }
    }
}

/// The name the sandbox's namespace is pinned under in /run/netns. Injective: an id that
/// fits is `podwire-<id>`; a longer one (netns names are at most 128 bytes) is
/// `podwire--<sha256 of the id>`, and no id maps there, since ids start with a letter or
/// digit.
pub fn pin_name(id: &str) -> String {
    const PREFIX: &str = "podwire-";
    if PREFIX.len() + id.len() <= 128 {
        format!("{PREFIX}{id}")
    } else {
        use sha2::{Digest, Sha256};
        let hex: String = Sha256::digest(id.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{PREFIX}-{hex}")
    }
}

/// What setup remembers for teardown and `join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub pid: i32,
    /// The pinned namespace.
    pub netns: PathBuf,
    pub config: PathBuf,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CniResult>,
}

pub fn record_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(format!("{id}.json"))
}

/// The record of sandbox `id`, if there is one. A garbage record is an error.
pub fn read_record(state_dir: &Path, id: &str) -> Result<Option<Record>> {
    validate_container_id(id)?;
    let p = record_path(state_dir, id);
    // A FIFO, device or symlink planted as a record is refused, never read from.
    let bytes = match crate::read_bounded(&p, 1 << 20, true) {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read record", &p, e)),
    };
    match serde_json::from_slice::<Record>(&bytes) {
        Ok(r) if r.id == id => Ok(Some(r)),
        // A torn or foreign file must not wedge this sandbox's setup or teardown: both
        // work by id without a record (setup writes a new one).
        Ok(_) => {
            eprintln!(
                "runtime-shim: ignoring record {}: it is for another id",
                p.display()
            );
            Ok(None)
        }
        Err(e) => {
            eprintln!("runtime-shim: ignoring torn record {}: {e}", p.display());
            Ok(None)
        }
    }
}

/// A hook sandbox found in the state dir by [`sandboxes`].
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    /// None: the record is torn.
    pub record: Option<Record>,
    /// The sandbox process still runs in the pinned namespace (or has not pinned it yet).
    pub live: bool,
}

/// Every sandbox with a record in `state_dir`, and whether it still lives.
pub fn sandboxes(state_dir: &Path) -> Result<Vec<Sandbox>> {
    let entries = match fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read state dir", state_dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if validate_container_id(id).is_err() {
            continue;
        }
        // One unreadable, symlinked or planted record must not stop the pass.
        let record = match read_record(state_dir, id) {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "runtime-shim: skipping sandbox record of {id}: {}",
                    crate::chain(&e)
                );
                continue;
            }
        };
        let live = record.as_ref().is_some_and(|r| {
            let Ok(ns) = NetNs::from_pid(r.pid) else {
                return false;
            };
            match NetNs::open(&r.netns) {
                Ok(pinned) => pinned == ns,
                // Setup writes the record before pinning: a live process without a pin
                // yet is a setup in flight (or one killed there; poststop cleans it).
                Err(netns::Error::NotFound { .. }) => true,
                Err(_) => false,
            }
        });
        out.push(Sandbox {
            id: id.to_string(),
            record,
            live,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Whether sandbox `id`'s namespace is pinned.
pub fn pinned(id: &str) -> bool {
    rec_path_of(&pin_name(id)).exists()
}

/// Forget a dead sandbox: unpin its namespace and remove its record. Its addresses and
/// veth are the network GC's (they are no longer valid attachments).
pub fn forget(state_dir: &Path, id: &str) -> Result<()> {
    let pin = rec_path_of(&pin_name(id));
    match netns::unpin(&pin) {
        Ok(()) | Err(netns::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    remove_record(state_dir, id)
}

/// Temporary record files of hook processes that died between write and rename.
pub fn remove_stale_tmp(state_dir: &Path) -> Vec<PathBuf> {
    let mut gone = Vec::new();
    let Ok(entries) = fs::read_dir(state_dir) else {
        return gone;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // ".<id>.tmp<pid>"
        let Some((_, pid)) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp")) else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && fs::remove_file(entry.path()).is_ok() {
            gone.push(entry.path());
        }
    }
    gone
}

/// Write atomically: a reader sees the old record or the new one, never half of one.
fn write_record(state_dir: &Path, r: &Record) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .create(state_dir)
        .map_err(|e| Error::io("create state dir", state_dir, e))?;
    let p = record_path(state_dir, &r.id);
    let tmp = state_dir.join(format!(".{}.tmp{}", r.id, std::process::id()));
    let body = serde_json::to_vec(r).map_err(Error::Decode)?;
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_data()?;
        fs::rename(&tmp, &p)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("write record", &p, e)
    })
}

fn remove_record(state_dir: &Path, id: &str) -> Result<()> {
    let p = record_path(state_dir, id);
    match fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove record", &p, e)),
    }
}

/// Hook options from argv.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub ifname: Option<String>,
    pub stage: Option<String>,
    pub state_dir: Option<PathBuf>,
}

fn config_path(opts: &Options, state: &State, rec: Option<&Record>) -> Result<PathBuf> {
    let p = opts
        .config
        .clone()
        .or_else(|| state.annotations.get(CONFIG_ANNOTATION).map(PathBuf::from))
        .or_else(|| rec.map(|r| r.config.clone()))
        .ok_or_else(|| {
            Error::config(
                "config",
                format!("no network config: pass --config FILE in the hook's args, or set the annotation {CONFIG_ANNOTATION}"),
            )
        })?;
    if !p.is_absolute() {
        return Err(Error::config(
            "config",
            format!("{} must be an absolute path", p.display()),
        ));
    }
    Ok(p)
}

/// The config named by `--config` or the annotation: a regular file of bounded size
/// (whoever may set a sandbox's annotations may name any path; `/dev/zero` or a FIFO is
/// refused at once).
fn load_config(path: &Path) -> Result<crate::config::Network> {
    let bytes = crate::read_regular(path, crate::MAX_CONFIG_BYTES)?;
    Ok(crate::config::load(&bytes)?.1)
}

/// Run the hook for the state on stdin. Returns the result at setup.
pub fn run(opts: &Options, stdin: &[u8]) -> Result<Option<CniResult>> {
    let state = parse_state(stdin)?;
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    let rec = read_record(&state_dir, &state.id)?;
    let ifname = opts
        .ifname
        .clone()
        .or_else(|| state.annotations.get(IFNAME_ANNOTATION).cloned())
        .or_else(|| rec.as_ref().map(|r| r.ifname.clone()))
        .unwrap_or_else(|| DEFAULT_IFNAME.into());
    crate::validate_ifname("ifname", &ifname)?;
    let config = config_path(opts, &state, rec.as_ref())?;
    let net = load_config(&config)?;
    crate::check_capabilities()?;
    match stage(&state, opts.stage.as_deref())? {
        Stage::Setup => setup(&state, &state_dir, rec, config, &net, ifname).map(Some),
        Stage::Teardown => {
            teardown(&state.id, &state_dir, &net, &ifname)?;
            Ok(None)
        }
    }
}

fn setup(
    state: &State,
    state_dir: &Path,
    prior: Option<Record>,
    config: PathBuf,
    net: &crate::config::Network,
    ifname: String,
) -> Result<CniResult> {
    let id = state.id.as_str();
    let pid = state.pid.unwrap_or(0) as i32;
    let sandbox = NetNs::from_pid(pid).map_err(|e| match e {
        netns::Error::NotFound { .. } | netns::Error::NoProcess { .. } => {
            Error::UnknownContainer(crate::Gone::SandboxProcess { id: id.into(), pid })
        }
        e => e.into(),
    })?;
    // A sandbox started without its own network namespace would get "eth0" made in the
    // node's namespace: refuse.
    if sandbox == NetNs::current()? {
        return Err(Error::Invalid {
            what: "sandbox",
            value: id.to_string(),
            reason: "it shares the node's network namespace; give it its own \
                     (linux.namespaces: {\"type\": \"network\"} with no path)"
                .into(),
        });
    }
    if let Some(r) = prior {
        let same = r.pid == pid && NetNs::open(&r.netns).is_ok_and(|p| p == sandbox);
        match (same, r.result) {
            // createRuntime then prestart: the second call finds the attachment in place.
            (true, Some(res)) => return Ok(res),
            // A setup of this sandbox that died half way: start over.
            (true, None) => teardown(id, state_dir, net, &r.ifname)?,
            // An earlier sandbox of the same id whose poststop never ran.
            (false, _) => teardown(id, state_dir, net, &r.ifname)?,
        }
    }
    let name = pin_name(id);
    // The record goes first: a pin then always has a record, so a crash anywhere leaves
    // something `gc --state-dir` finds.
    let mut rec = Record {
        id: id.to_string(),
        pid,
        netns: rec_path_of(&name),
        config,
        ifname: ifname.clone(),
        result: None,
    };
    write_record(state_dir, &rec)?;
    let undo = |e: Error| {
        let _ = netns::unpin(rec_path_of(&name));
        let _ = remove_record(state_dir, id);
        e
    };
    let pinned = match netns::pin(&name, &sandbox) {
        Err(netns::Error::Exists { .. }) => {
            // Left by an earlier sandbox of the same id that crashed: replace it.
            netns::remove(&name)
                .and_then(|_| netns::pin(&name, &sandbox))
                .map_err(|e| undo(e.into()))?
        }
        r => r.map_err(|e| undo(e.into()))?,
    };
    let res = crate::setup(net, pinned.path(), id, &ifname, &Default::default()).map_err(&undo)?;
    rec.result = Some(res.clone());
    // The attachment works without the result in the record; only prestart's shortcut
    // and `join`'s display use it.
    if let Err(e) = write_record(state_dir, &rec) {
        eprintln!("runtime-shim: hook: {}", crate::chain(&e));
    }
    Ok(res)
}

fn rec_path_of(name: &str) -> PathBuf {
    netns::path_of(name).unwrap_or_else(|_| PathBuf::from(name))
}

/// Tear down by id: veth and addresses, then the pin and the record. Idempotent.
pub fn teardown(
    id: &str,
    state_dir: &Path,
    net: &crate::config::Network,
    ifname: &str,
) -> Result<()> {
    let pin = rec_path_of(&pin_name(id));
    let netns_path = pin.exists().then_some(pin.as_path());
    let r = crate::teardown(net, netns_path, id, ifname);
    match netns::unpin(&pin) {
        Ok(()) | Err(netns::Error::NotFound { .. }) => {}
        Err(e) => eprintln!(
            "runtime-shim: hook: unpin {}: {}",
            pin.display(),
            crate::chain(&e)
        ),
    }
    r?;
    remove_record(state_dir, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNC_CREATE: &str = r#"{"ociVersion":"1.0.2-dev","id":"rc-runc-sbx-a","status":"creating","pid":20712,"bundle":"/tmp/b","annotations":{"io.rc.pod":"rc-runc-sbx-a"}}"#;
    const RUNC_POSTSTOP: &str = r#"{"ociVersion":"1.0.2-dev","id":"rc-runc-sbx-a","status":"stopped","bundle":"/tmp/b","annotations":{}}"#;
    const CRUN_PRESTART: &str = r#"{"ociVersion":"1.0","id":"rc-crun-sbx-a","pid":12240,"root":"/tmp/rootfs","bundle":"/tmp/b","status":"created","annotations":{}}"#;
    const CRUN_POSTSTOP: &str = r#"{"ociVersion":"1.0","id":"rc-crun-sbx-a","pid":0,"root":"/tmp/rootfs","bundle":"/tmp/b","status":"stopped"}"#;

    #[test]
    fn stages_inferred_from_runc_and_crun_states() {
        let s = |j: &str| stage(&parse_state(j.as_bytes()).unwrap(), None).unwrap();
        assert_eq!(s(RUNC_CREATE), Stage::Setup);
        assert_eq!(s(CRUN_PRESTART), Stage::Setup);
        assert_eq!(s(RUNC_POSTSTOP), Stage::Teardown);
        assert_eq!(s(CRUN_POSTSTOP), Stage::Teardown);
    }

    #[test]
    fn explicit_stage_wins_and_unknown_is_refused() {
        let st = parse_state(RUNC_CREATE.as_bytes()).unwrap();
        assert_eq!(stage(&st, Some("poststop")).unwrap(), Stage::Teardown);
        assert_eq!(stage(&st, Some("prestart")).unwrap(), Stage::Setup);
        let e = stage(&st, Some("startContainer")).unwrap_err().to_string();
        assert!(e.contains("hook stage"), "{e}");
    }

    #[test]
    fn bad_states() {
        for (j, want) in [
            ("", "EOF"),
            ("{", "EOF"),
            (r#"{"status":"creating"}"#, "missing field `id`"),
            (r#"{"id":"../x","status":"creating"}"#, "container id"),
            (r#"{"id":"a","pid":"12"}"#, "pid"),
            (r#"{"id":"a","pid":-5}"#, "pid"),
            (r#"{"id":"a","pid":99999999999}"#, "pid"),
        ] {
            let e = crate::chain(&parse_state(j.as_bytes()).unwrap_err());
            assert!(e.contains(want), "{j}: {e}");
        }
    }

    #[test]
    fn pin_names_fit() {
        assert_eq!(pin_name("abc"), "podwire-abc");
        let long = "a".repeat(200);
        let n = pin_name(&long);
        assert!(n.len() <= 128 && n.starts_with("podwire--"), "{n}");
        netns::validate_name(&n).unwrap();
        netns::validate_name(&pin_name(&"f".repeat(64))).unwrap();
        // Injective: the short id that spells a long id's pin suffix maps elsewhere, and
        // ids of every length map to distinct names.
        let suffix = n.strip_prefix("podwire-").unwrap();
        assert_ne!(pin_name(suffix.trim_start_matches('-')), n);
        let ids: Vec<String> = (110..140).map(|l| "b".repeat(l)).collect();
        let mut names: Vec<String> = ids.iter().map(|i| pin_name(i)).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ids.len());
    }

    #[test]
    fn config_sources_in_order() {
        let mut st = parse_state(RUNC_CREATE.as_bytes()).unwrap();
        let none = Options::default();
        assert!(config_path(&none, &st, None).is_err());
        st.annotations
            .insert(CONFIG_ANNOTATION.into(), "/etc/podwire/a.json".into());
        assert_eq!(
            config_path(&none, &st, None).unwrap(),
            PathBuf::from("/etc/podwire/a.json")
        );
        let explicit = Options {
            config: Some("/etc/podwire/b.json".into()),
            ..Default::default()
        };
        assert_eq!(
            config_path(&explicit, &st, None).unwrap(),
            PathBuf::from("/etc/podwire/b.json")
        );
        st.annotations
            .insert(CONFIG_ANNOTATION.into(), "relative.json".into());
        assert!(config_path(&none, &st, None).is_err());
    }

    #[test]
    fn records_round_trip_atomically() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_record(d.path(), "x1").unwrap().is_none());
        let r = Record {
            id: "x1".into(),
            pid: 42,
            netns: "/run/netns/podwire-x1".into(),
            config: "/etc/c.json".into(),
            ifname: "eth0".into(),
            result: None,
        };
        write_record(d.path(), &r).unwrap();
        let back = read_record(d.path(), "x1").unwrap().unwrap();
        assert_eq!(back.pid, 42);
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        remove_record(d.path(), "x1").unwrap();
        remove_record(d.path(), "x1").unwrap();
        // A torn record is reported and treated as absent: setup and teardown by id
        // still work. A symlink planted as a record is refused.
        fs::write(record_path(d.path(), "x2"), "{\"id\":\"x2\",\"pi").unwrap();
        assert!(read_record(d.path(), "x2").unwrap().is_none());
        std::os::unix::fs::symlink("/etc/hostname", record_path(d.path(), "x3")).unwrap();
        assert!(read_record(d.path(), "x3").is_err());
        assert!(read_record(d.path(), "../etc/passwd").is_err());
    }

    #[test]
    fn sandboxes_list_dead_and_torn_records() {
        let d = tempfile::tempdir().unwrap();
        let rec = |id: &str, pid: i32| Record {
            id: id.into(),
            pid,
            netns: format!("/run/netns/podwire-{id}").into(),
            config: "/etc/c.json".into(),
            ifname: "eth0".into(),
            result: None,
        };
        // pid 0 never has a namespace of its own to look at: dead.
        write_record(d.path(), &rec("gone", 0)).unwrap();
        fs::write(record_path(d.path(), "torn"), "{").unwrap();
        fs::write(d.path().join(".gone.tmp999999999"), "{").unwrap();
        fs::write(d.path().join("not a record"), "").unwrap();
        let sb = sandboxes(d.path()).unwrap();
        let ids: Vec<(&str, bool, bool)> = sb
            .iter()
            .map(|s| (s.id.as_str(), s.live, s.record.is_some()))
            .collect();
        assert_eq!(ids, vec![("gone", false, true), ("torn", false, false)]);
        let tmp = remove_stale_tmp(d.path());
        assert_eq!(tmp, vec![d.path().join(".gone.tmp999999999")]);
    }
}
