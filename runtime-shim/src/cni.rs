//! The CNI plugin entry point (spec 1.1): `CNI_*` environment and netconf on stdin in,
//! result JSON (or error JSON with the spec's codes) on stdout out.
//!
//! A runtime finds the binary through `CNI_PATH` as `"type": "runtime-shim"`. Commands:
//! ADD (setup, chained after any `prevResult`), DEL (idempotent teardown: empty
//! `CNI_NETNS`, no `prevResult` and repeated calls all succeed), CHECK, VERSION (answered
//! before anything else is parsed: podman calls it often), STATUS and GC.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{NetConf, Network, Requested, parse_mac, parse_requested_ip};
use crate::result::CniResult;
use crate::{Error, Result};

/// Spec versions this plugin reads configs of and writes results in.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// Well-known error codes (CNI spec, "Error" section); 100+ are this plugin's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Netlink or iptables failed.
    pub const KERNEL: u32 = 100;
    /// No free address in the network's ranges.
    pub const EXHAUSTED: u32 = 101;
    /// ADD for an attachment that is already set up.
    pub const ALREADY_SET_UP: u32 = 102;
    /// CHECK found the attachment differs from what ADD made.
    pub const CHECK_FAILED: u32 = 103;
    /// A requested (static) address is held by another attachment.
    pub const ADDRESS_IN_USE: u32 = 104;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// One invocation's environment, as the spec defines it.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` (`K=V;K=V`): `IP` and `MAC` are read; every other key (`K8S_POD_*`,
    /// `IgnoreUnknown`, ...) is accepted and ignored.
    pub args: String,
}

impl Request {
    /// Read the `CNI_*` variables through `get` (the process environment in production).
    /// Only what the command needs is required.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Request> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(Error::Env {
                    var: "CNI_COMMAND",
                    reason: format!("unknown command {other:?}"),
                });
            }
            None => {
                return Err(Error::Env {
                    var: "CNI_COMMAND",
                    reason: "not set".into(),
                });
            }
        };
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |var: &'static str| -> Result<String> {
            match get(var) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(Error::Env {
                    var,
                    reason: "required for this command but not set".into(),
                }),
            }
        };
        let (container_id, ifname) = if per_attachment {
            let id = required("CNI_CONTAINERID")?;
            crate::validate_container_id(&id).map_err(|e| Error::Env {
                var: "CNI_CONTAINERID",
                reason: e.to_string(),
            })?;
            let ifname = required("CNI_IFNAME")?;
            crate::validate_ifname("ifname", &ifname).map_err(|e| Error::Env {
                var: "CNI_IFNAME",
                reason: e.to_string(),
            })?;
            (id, ifname)
        } else {
            (String::new(), String::new())
        };
        // DEL may come with an empty CNI_NETNS (containerd's RemovePodSandbox).
        let netns = match command {
            Command::Add | Command::Check => Some(PathBuf::from(required("CNI_NETNS")?)),
            Command::Del => get("CNI_NETNS")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            _ => None,
        };
        if let Some(p) = &netns {
            if !p.is_absolute() {
                return Err(Error::Env {
                    var: "CNI_NETNS",
                    reason: format!("{} is not an absolute path", p.display()),
                });
            }
        }
        Ok(Request {
            command,
            container_id,
            netns,
            ifname,
            args: get("CNI_ARGS").unwrap_or_default(),
        })
    }
}

/// The spec's code for an error.
pub fn error_code(e: &Error) -> u32 {
    match e.root() {
        Error::Version { .. } => code::INCOMPATIBLE_VERSION,
        Error::Env { .. } | Error::Invalid { .. } => code::INVALID_ENV,
        Error::UnknownContainer(_) => code::UNKNOWN_CONTAINER,
        Error::Netns(netns::Error::NotFound { .. } | netns::Error::NoProcess { .. }) => {
            code::UNKNOWN_CONTAINER
        }
        Error::Netns(netns::Error::NotNetNs { .. }) => code::INVALID_ENV,
        Error::Decode(_) | Error::State { .. } | Error::StatePid { .. } => code::DECODE,
        Error::Config { .. } => code::INVALID_CONFIG,
        Error::Capability { .. } | Error::Capabilities(_) | Error::ToolNotFound { .. } => {
            code::NOT_AVAILABLE
        }
        Error::Exhausted { .. } => code::EXHAUSTED,
        Error::AddressInUse { .. } => code::ADDRESS_IN_USE,
        Error::AlreadySetUp { .. } => code::ALREADY_SET_UP,
        Error::Check(_) => code::CHECK_FAILED,
        Error::Io { source, .. } | Error::Netlink { source, .. } if transient(source) => {
            code::TRY_AGAIN
        }
        Error::Io { .. } | Error::Bundle { .. } => code::IO,
        _ => code::KERNEL,
    }
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EAGAIN | nix::libc::EBUSY | nix::libc::EINTR | nix::libc::ENOBUFS)
    )
}

/// The spec's error object. `msg` is short, `details` the full chain. STATUS reports
/// every failure as "plugin not available" (50), as the spec asks.
pub fn error_json(command: Option<Command>, version: &str, e: &Error) -> String {
    let msg = match e {
        Error::Step { step, .. } => format!("setup failed at step '{step}'"),
        _ => crate::chain(e.root()),
    };
    let v = json!({
        "cniVersion": if version.is_empty() { LATEST } else { version },
        "code": if command == Some(Command::Status) { code::NOT_AVAILABLE } else { error_code(e) },
        "msg": msg,
        "details": crate::chain(e),
    });
    v.to_string()
}

/// VERSION's answer.
pub fn version_json() -> String {
    json!({"cniVersion": LATEST, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

fn check_version(v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(Error::config("cniVersion", "missing"));
    }
    if !SUPPORTED_VERSIONS.contains(&v) {
        return Err(Error::Version {
            version: v.to_string(),
            supported: SUPPORTED_VERSIONS.join(", "),
        });
    }
    Ok(())
}

/// Versions before 1.0.0 put a `version` ("4"/"6") in every ips entry.
fn pre_1_0(v: &str) -> bool {
    v.starts_with("0.")
}

/// Render a result in the requested spec version.
pub fn result_json(r: &CniResult, version: &str) -> Result<String> {
    let mut v = serde_json::to_value(r).map_err(Error::Decode)?;
    v["cniVersion"] = Value::String(version.to_string());
    if pre_1_0(version) {
        if let Some(ips) = v.get_mut("ips").and_then(Value::as_array_mut) {
            for ip in ips {
                let fam = match ip.get("address").and_then(Value::as_str) {
                    Some(a) if a.contains(':') => "6",
                    _ => "4",
                };
                ip["version"] = Value::String(fam.into());
            }
        }
    }
    Ok(v.to_string())
}

/// Read a `prevResult` of any supported version (0.x's `ips[].version` is ignored).
fn parse_prev(prev: &Value) -> Result<CniResult> {
    serde_json::from_value(prev.clone())
        .map_err(|e| Error::config("prevResult", format!("not a CNI result: {e}")))
}

/// Chaining: this plugin's result appended to the previous plugin's, with the interface
/// indices of our ips moved past the previous interfaces.
pub fn merge(prev: CniResult, mut ours: CniResult) -> CniResult {
    let shift = prev.interfaces.len();
    for ip in &mut ours.ips {
        ip.interface = ip.interface.map(|i| i + shift);
    }
    let mut out = prev;
    out.interfaces.extend(ours.interfaces);
    out.ips.extend(ours.ips);
    out.routes.extend(ours.routes);
    let ours_dns_empty = ours.dns.is_null() || ours.dns.as_object().is_some_and(|o| o.is_empty());
    if !ours_dns_empty {
        out.dns = ours.dns;
    }
    out.cni_version = ours.cni_version;
    out
}

#[derive(Deserialize)]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// GC's `cni.dev/valid-attachments`, as (container id, ifname) pairs.
fn valid_attachments(conf: &NetConf) -> Result<BTreeSet<(String, String)>> {
    const KEY: &str = "cni.dev/valid-attachments";
    let Some(v) = conf.other.get(KEY) else {
        return Err(Error::config(
            KEY,
            "missing: GC needs the list of valid attachments",
        ));
    };
    let list: Vec<Attachment> = serde_json::from_value(v.clone())
        .map_err(|e| Error::config(KEY, format!("not a list of {{containerID, ifname}}: {e}")))?;
    Ok(list
        .into_iter()
        .map(|a| (a.container_id, a.ifname))
        .collect())
}

/// Parse and validate stdin for a non-VERSION command. Returns the conf as written too
/// (prevResult and GC's attachment list live there).
fn load(stdin: &[u8]) -> Result<(NetConf, Network)> {
    let conf = NetConf::from_slice(stdin)?;
    check_version(&conf.cni_version)?;
    let net = conf.validate()?;
    Ok((conf, net))
}

/// Best-effort cniVersion of a (possibly invalid) netconf, for the error JSON.
pub fn requested_version(stdin: &[u8]) -> String {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion", default)]
        v: String,
    }
    serde_json::from_slice::<V>(stdin)
        .ok()
        .map(|v| v.v)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_string())
}

/// Everything a command reads from its input, parsed and validated before anything is
/// changed (bad input changes nothing). Pure: no I/O, so it is also what the fuzzer drives.
#[derive(Debug)]
pub struct Input {
    pub conf: NetConf,
    pub net: Network,
    /// ADD and CHECK: the previous plugin's result, if chained.
    pub prev: Option<CniResult>,
    /// GC: the attachments to keep.
    pub valid: Option<BTreeSet<(String, String)>>,
    /// ADD: the static address(es) and MAC asked for.
    pub requested: Requested,
}

/// `CNI_ARGS` as (key, value) pairs: `K=V` separated by `;`.
pub fn parse_cni_args(args: &str) -> Result<Vec<(&str, &str)>> {
    args.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=').ok_or_else(|| Error::Env {
                var: "CNI_ARGS",
                reason: format!("{p:?} is not KEY=VALUE"),
            })
        })
        .collect()
}

/// What the runtime asks for this attachment, from every conventional place: `CNI_ARGS`
/// `IP=` (comma-separated) and `MAC=`, `args.cni.ips`/`mac`, and the `ips`/`mac`
/// capabilities in `runtimeConfig`. Addresses from all of them are merged (as host-local
/// does); for the MAC, runtimeConfig wins over args, args over `CNI_ARGS` (as bridge does).
/// Each address is checked against the network's ranges here, before anything changes.
pub fn requested(args: &str, conf: &NetConf, net: &Network) -> Result<Requested> {
    let mut ips: Vec<(String, std::net::IpAddr)> = Vec::new();
    let mut mac = None;
    let mut push = |field: String, s: &str| -> Result<()> {
        let ip = parse_requested_ip(&field, s)?;
        if !ips.iter().any(|(_, x)| *x == ip) {
            ips.push((field, ip));
        }
        Ok(())
    };
    for (k, v) in parse_cni_args(args)? {
        match k {
            "IP" => {
                for ip in v.split(',').filter(|s| !s.is_empty()) {
                    push("CNI_ARGS IP".into(), ip)?;
                }
            }
            "MAC" if !v.is_empty() => mac = Some(parse_mac("CNI_ARGS MAC", v)?),
            _ => {}
        }
    }
    let sources = [
        ("args.cni", conf.args.as_ref().and_then(|a| a.cni.as_ref())),
        ("runtimeConfig", conf.runtime_config.as_ref()),
    ];
    for (name, rc) in sources {
        let Some(rc) = rc else { continue };
        for (i, s) in rc.ips.iter().flatten().enumerate() {
            push(format!("{name}.ips[{i}]"), s)?;
        }
        if let Some(m) = rc.mac.as_deref().filter(|m| !m.is_empty()) {
            mac = Some(parse_mac(&format!("{name}.mac"), m)?);
        }
    }
    net.place_requested(&ips)?;
    Ok(Requested { ips, mac })
}

/// Parse stdin for `req` (not VERSION, which reads nothing).
pub fn parse_input(req: &Request, stdin: &[u8]) -> Result<Input> {
    let (conf, net) = load(stdin)?;
    let prev = match req.command {
        Command::Add | Command::Check => conf.prev_result.as_ref().map(parse_prev).transpose()?,
        _ => None,
    };
    let valid = match req.command {
        Command::Gc => Some(valid_attachments(&conf)?),
        _ => None,
    };
    let requested = match req.command {
        Command::Add => requested(&req.args, &conf, &net)?,
        _ => Requested::default(),
    };
    Ok(Input {
        conf,
        net,
        prev,
        valid,
        requested,
    })
}

/// Run one CNI command. Ok(Some(json)) is printed on stdout; Ok(None) prints nothing.
pub fn run(req: &Request, stdin: &[u8]) -> Result<Option<String>> {
    if req.command == Command::Version {
        return Ok(Some(version_json()));
    }
    let Input {
        conf,
        net,
        prev,
        valid,
        requested,
    } = parse_input(req, stdin)?;
    crate::check_capabilities()?;
    let id = req.container_id.as_str();
    let ifname = req.ifname.as_str();
    let netns = || {
        req.netns.as_deref().ok_or(Error::Env {
            var: "CNI_NETNS",
            reason: "required".into(),
        })
    };
    match req.command {
        Command::Version => Ok(Some(version_json())),
        Command::Add => {
            let mut ours = crate::setup(&net, netns()?, id, ifname, &requested)?;
            ours.cni_version = conf.cni_version.clone();
            let out = match prev {
                Some(p) => merge(p, ours),
                None => ours,
            };
            Ok(Some(result_json(&out, &conf.cni_version)?))
        }
        Command::Del => {
            crate::teardown(&net, req.netns.as_deref(), id, ifname)?;
            Ok(None)
        }
        Command::Check => {
            let reported = prev.as_ref().map(|p| p.routes.as_slice());
            crate::check(&net, netns()?, id, ifname, reported)?;
            if let Some(prev) = prev {
                check_prev(&net, &prev, id, ifname)?;
            }
            Ok(None)
        }
        Command::Status => {
            status(&net)?;
            Ok(None)
        }
        Command::Gc => {
            let report = crate::gc::gc(&net, &valid.unwrap_or_default())?;
            if !report.is_empty() {
                eprintln!("runtime-shim: GC: {report}");
            }
            Ok(None)
        }
    }
}

/// CHECK against prevResult: the addresses IPAM holds for the attachment are the ones
/// the runtime recorded.
fn check_prev(net: &Network, prev: &CniResult, id: &str, ifname: &str) -> Result<()> {
    let store = crate::ipam::Store::open(&net.data_dir, &net.name)?;
    let held = store.get_by_id(id, ifname)?;
    for ip in held {
        let found = prev.ips.iter().any(|c| {
            c.address
                .split('/')
                .next()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                == Some(ip)
        });
        if !found {
            return Err(Error::Check(crate::Mismatch::NotInPrevResult {
                ip,
                id: id.into(),
                ifname: ifname.into(),
            }));
        }
    }
    Ok(())
}

/// STATUS: ready when the IPAM state directory can be opened (created and locked).
/// Any failure is reported with code 50 (see [`error_json`]).
fn status(net: &Network) -> Result<()> {
    crate::ipam::Store::open(&net.data_dir, &net.name).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{Interface, IpConfig, Route};
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn environment() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        let r = Request::from_env(env(&add)).unwrap();
        assert_eq!(r.command, Command::Add);
        assert_eq!(
            r.netns.as_deref(),
            Some(std::path::Path::new("/run/netns/x"))
        );

        // DEL with an empty CNI_NETNS (containerd's second DEL) is fine.
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(Request::from_env(env(&del)).unwrap().netns, None);

        // VERSION as podman sends it.
        let v = [
            ("CNI_COMMAND", "VERSION"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
        ];
        assert_eq!(
            Request::from_env(env(&v)).unwrap().command,
            Command::Version
        );

        for (pairs, var) in [
            (&[("CNI_COMMAND", "FROB")][..], "CNI_COMMAND"),
            (&[][..], "CNI_COMMAND"),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ][..],
                "CNI_CONTAINERID",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_NETNS", "/x"),
                ][..],
                "CNI_IFNAME",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                ][..],
                "CNI_NETNS",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "../a"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ][..],
                "CNI_CONTAINERID",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "a/b"),
                    ("CNI_NETNS", "/x"),
                ][..],
                "CNI_IFNAME",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "x"),
                ][..],
                "CNI_NETNS",
            ),
        ] {
            let e = Request::from_env(env(pairs)).unwrap_err();
            assert_eq!(error_code(&e), code::INVALID_ENV);
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    fn err_of(stdin: &str) -> Error {
        load(stdin.as_bytes()).unwrap_err()
    }

    #[test]
    fn config_error_codes() {
        assert_eq!(error_code(&err_of("{")), code::DECODE);
        assert_eq!(error_code(&err_of("[1]")), code::DECODE);
        let base = r#""name":"n","type":"runtime-shim","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}"#;
        let e = err_of(&format!(r#"{{"cniVersion":"9.9.9",{base}}}"#));
        assert_eq!(error_code(&e), code::INCOMPATIBLE_VERSION);
        let e = err_of(&format!(r#"{{{base}}}"#));
        assert_eq!(error_code(&e), code::INVALID_CONFIG);
        assert!(e.to_string().contains("cniVersion"));
        let e = err_of(
            r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/33"}}"#,
        );
        assert_eq!(error_code(&e), code::INVALID_CONFIG);
        assert!(e.to_string().contains("ipam.subnet"), "{e}");
        let e = err_of(
            r#"{"cniVersion":"1.0.0","name":"n","mtu":"x","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#,
        );
        assert_eq!(error_code(&e), code::INVALID_CONFIG);
        assert!(e.to_string().contains("mtu"), "{e}");
        for v in SUPPORTED_VERSIONS {
            load(format!(r#"{{"cniVersion":"{v}",{base}}}"#).as_bytes()).unwrap();
        }
    }

    #[test]
    fn error_json_shape() {
        let e = Error::Step {
            step: crate::apply::Step::CreateVeth,
            source: Box::new(Error::Exhausted {
                network: "n".into(),
                range: "10.0.0.0/30".into(),
            }),
        };
        let v: Value = serde_json::from_str(&error_json(Some(Command::Add), "1.0.0", &e)).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], code::EXHAUSTED);
        assert_eq!(v["msg"], "setup failed at step 'create veth'");
        assert!(v["details"].as_str().unwrap().contains("no free address"));
        let v: Value =
            serde_json::from_str(&error_json(Some(Command::Status), "1.1.0", &e)).unwrap();
        assert_eq!(v["code"], code::NOT_AVAILABLE);
        let eagain = Error::Netlink {
            op: crate::link::NlOp::AddAddress,
            target: "x".into(),
            source: std::io::Error::from_raw_os_error(nix::libc::EBUSY),
        };
        assert_eq!(error_code(&eagain), code::TRY_AGAIN);
        let gone = Error::Netns(netns::Error::NotFound { path: "/x".into() });
        assert_eq!(error_code(&gone), code::UNKNOWN_CONTAINER);
    }

    #[test]
    fn version_answer() {
        let v: Value = serde_json::from_str(&version_json()).unwrap();
        assert_eq!(v["cniVersion"], LATEST);
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED_VERSIONS.len()
        );
        assert_eq!(requested_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(requested_version(b"garbage"), LATEST);
        assert_eq!(requested_version(br#"{"cniVersion":"7"}"#), LATEST);
    }

    fn ours() -> CniResult {
        CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    ..Default::default()
                },
                Interface {
                    name: "pw0".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    sandbox: Some("/x".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.1.0.2/24".into(),
                    gateway: Some("10.1.0.1".into()),
                    interface: Some(2),
                },
                IpConfig {
                    address: "fd00::2/64".into(),
                    gateway: None,
                    interface: Some(2),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("10.1.0.1".into()),
            }],
            dns: json!({}),
        }
    }

    #[test]
    fn results_per_version() {
        let v: Value = serde_json::from_str(&result_json(&ours(), "0.3.1").unwrap()).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        let v: Value = serde_json::from_str(&result_json(&ours(), "1.1.0").unwrap()).unwrap();
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["interfaces"][2]["sandbox"], "/x");
    }

    #[test]
    fn chained_after_a_previous_result() {
        let prev: CniResult = parse_prev(&json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "other0"}],
            "ips": [{"version": "4", "address": "192.168.9.5/24", "interface": 0}],
            "dns": {"nameservers": ["10.96.0.10"]}
        }))
        .unwrap();
        let m = merge(prev, ours());
        assert_eq!(m.interfaces.len(), 4);
        assert_eq!(m.ips[0].interface, Some(0));
        assert_eq!(m.ips[1].interface, Some(3));
        assert_eq!(m.ips[2].interface, Some(3));
        assert_eq!(
            m.dns["nameservers"][0], "10.96.0.10",
            "empty dns keeps the previous"
        );
        assert!(parse_prev(&json!({"ips": "x"})).is_err());
    }

    #[test]
    fn gc_attachment_list() {
        let conf = NetConf::from_slice(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        let v = valid_attachments(&conf).unwrap();
        assert!(v.contains(&("a".to_string(), "eth0".to_string())));
        let conf = NetConf::from_slice(br#"{"cniVersion":"1.1.0","name":"n"}"#).unwrap();
        assert!(valid_attachments(&conf).is_err());
        let conf = NetConf::from_slice(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"id":"a"}]}"#,
        )
        .unwrap();
        assert!(valid_attachments(&conf).is_err());
    }
}
