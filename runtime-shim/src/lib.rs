//! runtime-shim: wire a pod's network namespace to a docker0-style bridge, and unwire it.
//!
//! Setup validates the whole config first ([`config`]), decides what to create in pure
//! code ([`plan`]), reserves addresses ([`ipam`], host-local's on-disk layout), then talks
//! netlink directly ([`link`]): one veth request creates the pair with its peer already
//! inside the pod, named `eth0`, enslaved and up. Masquerade is one rule per network
//! ([`masq`]). Every step pushes an undo; a failure unwinds them all ([`apply`]).
//! Teardown needs only the container id: the host veth name is a hash of it.
#![forbid(unsafe_code)]

use std::path::PathBuf;

pub mod apply;
pub mod cni;
pub mod config;
pub mod gc;
pub mod hook;
pub mod ipam;
pub mod join;
pub mod kernel;
pub mod link;
pub mod masq;
pub mod nft;
pub mod oci;
pub mod overlay;
pub mod plan;
pub mod result;
pub mod routes;

pub use apply::{check, setup, teardown};
pub use config::{NetConf, Network};
pub use result::CniResult;

/// Everything that can go wrong in runtime-shim.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed JSON (the position is in the source).
    #[error("cannot parse network config")]
    Decode(#[source] serde_json::Error),
    /// A config field failed validation; `field` is its JSON path.
    #[error("invalid network config: {field}: {reason}")]
    Config { field: String, reason: String },
    /// A request argument (container id, ifname, netns path) is invalid.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "missing capability {cap}: runtime-shim needs CAP_NET_ADMIN, CAP_NET_RAW, \
         CAP_SYS_ADMIN and CAP_SYS_PTRACE (run as root)"
    )]
    Capability { cap: &'static str },
    /// Reading or changing this process's capability sets failed.
    #[error("cannot drop capabilities")]
    Capabilities(#[source] caps::errors::CapsError),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    /// A netlink request failed.
    #[error("{op} {target}")]
    Netlink {
        op: link::NlOp,
        /// What it was about: a link name or index, an address, a route.
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("IPAM: no free address left in {range} for network {network:?}")]
    Exhausted { network: String, range: String },
    /// A requested (static) address is held by another attachment.
    #[error("{field}: address {ip} is already in use in network {network:?}")]
    AddressInUse {
        field: String,
        ip: std::net::IpAddr,
        network: String,
    },
    /// An object of podwire's name that podwire did not make: never changed.
    #[error("{kind} {name} exists but was not made by podwire; leaving it alone")]
    NotOurs { kind: &'static str, name: String },
    #[error(
        "container {id} interface {ifname} is already set up (host veth {veth} exists); \
         tear it down first"
    )]
    AlreadySetUp {
        id: String,
        ifname: String,
        veth: String,
    },
    /// A tool (iptables) ran and failed; `stderr` is what it said.
    #[error("{cmd} failed: {stderr}")]
    Command { cmd: String, stderr: String },
    /// A tool is not installed in the system directories it is run from.
    #[error("{tool} not found in {dirs}")]
    ToolNotFound { tool: String, dirs: String },
    /// A tool could not be started, or its thread could not drop capabilities first.
    #[error("cannot run {tool}")]
    Exec {
        tool: String,
        #[source]
        source: ExecError,
    },
    /// CHECK found the attachment differs from what ADD made.
    #[error("check failed: {0}")]
    Check(Mismatch),
    /// CNI: the config asks for a spec version this plugin does not speak.
    #[error("incompatible CNI version {version:?} (supported: {supported})")]
    Version { version: String, supported: String },
    /// CNI: a required environment variable is missing or invalid.
    #[error("invalid environment variable {var}: {reason}")]
    Env { var: &'static str, reason: String },
    /// The container (or its namespace, or the sandbox to join) does not exist.
    #[error("unknown container")]
    UnknownContainer(#[source] Gone),
    /// OCI hook: the state JSON on stdin is unusable (`field` is the JSON path).
    #[error(
        "cannot parse OCI state{}",
        if field.as_str() == "." { String::new() } else { format!(" at {field}") }
    )]
    State {
        field: String,
        #[source]
        source: serde_json::Error,
    },
    /// OCI hook: the state's pid is not a process id.
    #[error("OCI state: pid {pid} is not a process id")]
    StatePid { pid: i64 },
    /// `join`: the bundle's config.json is missing or unusable.
    #[error("bundle {path}")]
    Bundle {
        path: PathBuf,
        #[source]
        problem: BundleProblem,
    },
    /// A setup step failed; everything the call had changed was undone.
    #[error("setup failed at step '{step}' (everything this call changed was undone)")]
    Step {
        step: apply::Step,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a tool could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot drop capabilities first")]
    Capabilities(#[source] caps::errors::CapsError),
    #[error("exec failed")]
    Spawn(#[source] std::io::Error),
    #[error("the thread running it panicked")]
    Panicked,
}

/// Which container (or sandbox, or namespace) is gone.
#[derive(Debug, thiserror::Error)]
pub enum Gone {
    #[error("sandbox {id}: process {pid} is gone")]
    SandboxProcess { id: String, pid: i32 },
    #[error("sandbox process {0} does not exist")]
    Process(i32),
    #[error("sandbox {id}: its network namespace {netns} is gone")]
    SandboxNetns { id: String, netns: PathBuf },
    #[error("sandbox {id} is not running (process {pid} is gone or elsewhere)")]
    SandboxNotRunning { id: String, pid: i32 },
    #[error("no sandbox {id} in {state_dir} (was it started with the runtime-shim hook?)")]
    NoRecord { id: String, state_dir: PathBuf },
    #[error("network namespace {0} does not exist")]
    Netns(PathBuf),
}

/// What is wrong with a bundle's config.json (`join`).
#[derive(Debug, thiserror::Error)]
pub enum BundleProblem {
    #[error("no config.json in the bundle (create it with `runc spec` first)")]
    Missing,
    #[error("cannot stat it")]
    Stat(#[source] std::io::Error),
    #[error("not a regular file")]
    NotRegularFile,
    /// The runtime-spec check failed: the JSON path and what is wrong there.
    #[error("not an OCI runtime config: {0}")]
    NotRuntimeConfig(String),
    #[error("{field}: not {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("linux.namespaces: type {0:?} appears twice")]
    DuplicateNamespace(String),
}

/// What CHECK found different from what ADD made.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    #[error("no address is reserved for {id}/{ifname}")]
    NotReserved { id: String, ifname: String },
    #[error("bridge {0} is missing")]
    BridgeMissing(String),
    #[error("host veth {0} is missing")]
    VethMissing(String),
    #[error("host veth {veth} is not attached to bridge {bridge}")]
    VethNotOnBridge { veth: String, bridge: String },
    #[error("host veth {0} is down")]
    VethDown(String),
    #[error("{0} is missing in the pod")]
    PodLinkMissing(String),
    #[error("{0} is down in the pod")]
    PodLinkDown(String),
    #[error("{ifname} lacks address {addr}")]
    AddressMissing { ifname: String, addr: ipnet::IpNet },
    #[error("route {dst}{} is missing", via.map(|g| format!(" via {g}")).unwrap_or_default())]
    RouteMissing {
        dst: ipnet::IpNet,
        via: Option<std::net::IpAddr>,
    },
    #[error(
        "nftables table inet {0} (masquerade, isolation) is missing or differs from the \
         network's config"
    )]
    PolicyMissing(String),
    #[error("address {ip} held for {id}/{ifname} is not in prevResult")]
    NotInPrevResult {
        ip: std::net::IpAddr,
        id: String,
        ifname: String,
    },
}

/// An error and its causes, one after the other: how each binary prints an error, once,
/// at its edge.
pub use netns::error_chain as chain;

impl Error {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
    /// The innermost error, below any `Step` wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::Step { source, .. } => source.root(),
            e => e,
        }
    }
}

/// The capabilities runtime-shim uses: links, routes, addresses and sysctls
/// (NET_ADMIN), iptables (NET_ADMIN, NET_RAW), setns and pinning namespaces (SYS_ADMIN),
/// and opening `/proc/<pid>/ns/net` of a sandbox running as another user (SYS_PTRACE).
pub const NEEDED_CAPABILITIES: [caps::Capability; 4] = [
    caps::Capability::CAP_NET_ADMIN,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SYS_ADMIN,
    caps::Capability::CAP_SYS_PTRACE,
];

/// Least privilege: drop every other capability from the bounding set (so nothing this
/// process execs can regain it), then from the permitted, effective, inheritable and
/// ambient sets. CAP_SETPCAP stays permitted, never effective, only so that the thread
/// that execs a tool can shrink its own bounding set to what that tool needs
/// ([`masq::run_tool`]). Call first thing; a process with fewer capabilities keeps what
/// it has (and [`check_capabilities`] says what is missing).
pub fn drop_capabilities() -> Result<()> {
    drop_capabilities_but(&[])
}

/// What `join` needs besides [`NEEDED_CAPABILITIES`]: to read and replace a bundle's
/// config.json that root does not own, and to give it back to its owner.
pub const JOIN_CAPABILITIES: [caps::Capability; 3] = [
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FOWNER,
];

/// [`drop_capabilities`], keeping `extra` too.
pub fn drop_capabilities_but(extra: &[caps::Capability]) -> Result<()> {
    use caps::{CapSet, Capability, CapsHashSet};
    let err = Error::Capabilities;
    let mut keep: CapsHashSet = NEEDED_CAPABILITIES.into_iter().collect();
    keep.extend(extra.iter().copied());
    keep.insert(Capability::CAP_SETPCAP);
    // Shrinking the bounding set needs CAP_SETPCAP, which goes last.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).map_err(err)? {
        for c in caps::read(None, CapSet::Bounding).map_err(err)? {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c).map_err(err)?;
            }
        }
    }
    let now: CapsHashSet = caps::read(None, CapSet::Permitted)
        .map_err(err)?
        .intersection(&keep)
        .copied()
        .collect();
    let effective: CapsHashSet = now
        .iter()
        .copied()
        .filter(|c| *c != Capability::CAP_SETPCAP)
        .collect();
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::set(None, CapSet::Effective, &effective).map_err(err)?;
    caps::set(None, CapSet::Permitted, &now).map_err(err)?;
    Ok(())
}

/// Fail early, with a clear message naming the capability that is missing, when the
/// process lacks what setup and teardown need.
pub fn check_capabilities() -> Result<()> {
    use caps::{CapSet, Capability};
    for (cap, name) in [
        (Capability::CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (Capability::CAP_NET_RAW, "CAP_NET_RAW"),
        (Capability::CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (Capability::CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    ] {
        if !caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false) {
            return Err(Error::Capability { cap: name });
        }
    }
    Ok(())
}

/// Largest config file read (a network config, a NodeList is allowed more).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Read a file that must be regular (a FIFO, device or socket is refused without
/// blocking: `/dev/zero` or a planted FIFO never hangs or exhausts memory), at most `max`
/// bytes.
pub fn read_regular(path: &std::path::Path, max: u64) -> Result<Vec<u8>> {
    read_bounded(path, max, false).map_err(|e| Error::io("read", path, e))
}

/// The one reader of files podwire does not write atomically itself: opened
/// `O_NONBLOCK` (a planted FIFO never blocks the open or the read), refused unless it is a
/// regular file, at most `max` bytes; with `nofollow`, a symlink is refused too (ELOOP).
pub(crate) fn read_bounded(
    path: &std::path::Path,
    max: u64,
    nofollow: bool,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Error as IoError, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    if nofollow {
        flags |= nix::libc::O_NOFOLLOW;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(IoError::new(ErrorKind::InvalidData, "not a regular file"));
    }
    let mut v = Vec::new();
    f.take(max + 1).read_to_end(&mut v)?;
    if v.len() as u64 > max {
        return Err(IoError::new(
            ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(v)
}

/// Container ids: what CNI allows (alphanumerics plus `_.-`, starting alphanumeric), so an
/// id can never smuggle a path or a newline into state files or rule comments.
pub fn validate_container_id(id: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::Invalid {
            what: "container id",
            value: id.to_string(),
            reason: reason.to_string(),
        })
    };
    if id.is_empty() {
        return bad("must not be empty");
    }
    if id.len() > 256 {
        return bad("longer than 256 bytes");
    }
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad("must start with a letter or digit");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return bad("only letters, digits, '_', '.' and '-' are allowed");
    }
    Ok(())
}

/// Interface names: at most 15 bytes, no '/', whitespace, ':' or control characters.
pub fn validate_ifname(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > 15 {
        "longer than 15 bytes (the kernel's IFNAMSIZ)"
    } else if name == "." || name == ".." {
        "must not be '.' or '..'"
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        "must not contain '/', ':', whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(Error::Invalid {
        what,
        value: name.to_string(),
        reason: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        for ok in ["a", "abc123", "rc-runc-sbx-a", "k8s_POD.1", &"f".repeat(64)] {
            validate_container_id(ok).unwrap();
        }
        for bad in [
            "",
            "-x",
            "../etc",
            "a/b",
            "a b",
            "a\nb",
            "a\"b",
            &"x".repeat(257),
        ] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ifnames() {
        validate_ifname("ifname", "eth0").unwrap();
        validate_ifname("ifname", "abcdefghijklmno").unwrap();
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", "a:b", ".", ".."] {
            let e = validate_ifname("ifname", bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid ifname"), "{e}");
        }
    }

    #[test]
    fn step_root() {
        let e = Error::Step {
            step: apply::Step::CreateVeth,
            source: Box::new(Error::Check(Mismatch::VethDown("pw1".into()))),
        };
        assert!(matches!(e.root(), Error::Check(_)));
        assert!(e.to_string().contains("step 'create veth'"));
        // The cause is printed once, by chain, not in each message.
        assert!(!e.to_string().contains("pw1"));
        assert_eq!(
            chain(&e),
            "setup failed at step 'create veth' (everything this call changed was undone): \
             check failed: host veth pw1 is down"
        );
    }
}
