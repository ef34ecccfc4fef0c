//! iptables-gen: Service + EndpointSlice objects in, the `iptables-restore` input that
//! kube-proxy's iptables mode writes out (text-compatible, checked against kube-proxy's own
//! golden test after its normalisation). A pure function: no netlink, no namespaces; the
//! CLI adds applying, jump rules and partial-sync state.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

pub mod apply;
pub mod conntrack;
pub mod kpc;
pub mod model;
pub mod names;
pub mod nftables;
pub mod proxier;
pub mod render;
pub mod rules;
pub mod serve;
pub mod state;
pub mod watch;

pub use rules::{Generated, ServiceState, SyncPlan, SyncState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed JSON; the source carries line and column.
    #[error("malformed JSON input")]
    Json(#[source] serde_json::Error),
    #[error("invalid option {option}: {reason}")]
    Option { option: String, reason: String },
    #[error("{count} object(s) failed validation (--strict): {first}")]
    Strict { count: usize, first: String },
    #[error("iptables-restore text, line {line}: {reason}")]
    Parse { line: usize, reason: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("watch stream: {reason}")]
    Watch { reason: String },
    #[error("state file {path} is corrupt: {reason}")]
    State { path: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes, one after the other: how the binary prints an error, once,
/// at its edge.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The IP family (`--ip-family IPv4|IPv6`, the same value enum for every mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, clap::ValueEnum)]
pub enum Family {
    #[default]
    #[value(name = "IPv4")]
    V4,
    #[value(name = "IPv6")]
    V6,
}

/// How kube-proxy tells pod traffic from everything else (`--detect-local-mode`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub enum LocalDetector {
    #[default]
    None,
    ClusterCidr(IpNet),
    NodeCidr(IpNet),
    BridgeInterface(String),
    InterfaceNamePrefix(String),
}

/// The proxier settings that shape the rules (kube-proxy's flags and config). Its JSON
/// form is fingerprinted into the state: any change means a full sync.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub family: Family,
    /// `--hostname-override`: endpoints with this nodeName are local.
    pub node_name: String,
    /// The primary node IP (LB source-range "allow the node" check).
    pub node_ip: Option<IpAddr>,
    /// The node's local addresses (used with a non-match-all `nodePortAddresses`).
    pub node_addresses: Vec<IpAddr>,
    pub local_detector: LocalDetector,
    /// The mark as text (`0x00004000` for `--masquerade-bit 14`).
    pub masquerade_mark: String,
    pub masquerade_all: bool,
    pub localhost_nodeports: bool,
    /// `--nodeport-addresses`; empty = all local addresses.
    pub nodeport_addresses: Vec<IpNet>,
    /// nfacct counters that exist (their `-m nfacct` matches are emitted).
    pub nfacct: BTreeSet<String>,
    pub conntrack_tcp_be_liberal: bool,
    pub random_fully: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            family: Family::V4,
            node_name: String::new(),
            node_ip: None,
            node_addresses: Vec::new(),
            local_detector: LocalDetector::None,
            masquerade_mark: mark_for_bit(14).unwrap_or_default(),
            masquerade_all: false,
            localhost_nodeports: true,
            nodeport_addresses: Vec::new(),
            nfacct: BTreeSet::new(),
            conntrack_tcp_be_liberal: false,
            random_fully: false,
        }
    }
}

/// kube-proxy's mark text for `--masquerade-bit` (Go `%#08x` of `1<<bit`: `0x00004000`).
pub fn mark_for_bit(bit: u32) -> Result<String> {
    if bit > 31 {
        return Err(Error::Option {
            option: "--masquerade-bit".into(),
            reason: format!("{bit} is outside 0..31"),
        });
    }
    Ok(format!("0x{:08x}", 1u32 << bit))
}

/// Build the model and generate. `objects` already holds the parsed input.
pub fn generate(cfg: &Config, objects: &model::Objects, plan: &SyncPlan) -> Generated {
    rules::generate(cfg, objects, plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks() {
        assert_eq!(mark_for_bit(14).unwrap(), "0x00004000");
        assert_eq!(mark_for_bit(0).unwrap(), "0x00000001");
        assert!(mark_for_bit(32).is_err());
    }
}
