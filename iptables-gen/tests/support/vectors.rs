//! The golden vectors' `config.json` (see vectors/kube-proxy/README.md) as a Config and a
//! sync plan: shared by the golden tests and the privileged tests that run the vectors'
//! inputs through the kernel.

use std::path::Path;

use iptables_gen::{Config, Family, LocalDetector, SyncPlan};

/// Map a vector's config.json (see vectors/kube-proxy/README.md) to a Config and plan.
pub fn load_config(dir: &Path) -> (Config, SyncPlan, Vec<String>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut c = Config {
        family: if v["ipFamily"] == "IPv6" {
            Family::V6
        } else {
            Family::V4
        },
        node_name: v["nodeName"].as_str().unwrap_or("").into(),
        node_ip: v["nodeIP"].as_str().and_then(|s| s.parse().ok()),
        masquerade_mark: v["masqueradeMark"].as_str().unwrap().into(),
        masquerade_all: v["masqueradeAll"].as_bool().unwrap_or(false),
        localhost_nodeports: v["localhostNodePorts"].as_bool().unwrap_or(true),
        conntrack_tcp_be_liberal: v["conntrackTCPBeLiberal"].as_bool().unwrap_or(false),
        random_fully: v["randomFully"].as_bool().unwrap_or(false),
        ..Config::default()
    };
    for iface in v["nodeInterfaces"].as_array().into_iter().flatten() {
        for a in iface["addresses"].as_array().into_iter().flatten() {
            let ip = a.as_str().unwrap().split('/').next().unwrap();
            c.node_addresses.push(ip.parse().unwrap());
        }
    }
    c.local_detector = match v["localDetector"]["mode"].as_str() {
        Some("ClusterCIDR") => LocalDetector::ClusterCidr(
            v["localDetector"]["cidr"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        ),
        Some("NodeCIDR") => LocalDetector::NodeCidr(
            v["localDetector"]["cidr"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        ),
        Some("BridgeInterface") => {
            LocalDetector::BridgeInterface(v["localDetector"]["interface"].as_str().unwrap().into())
        }
        Some("InterfaceNamePrefix") => LocalDetector::InterfaceNamePrefix(
            v["localDetector"]["prefix"].as_str().unwrap().into(),
        ),
        _ => LocalDetector::None,
    };
    for n in v["nodePortAddresses"].as_array().into_iter().flatten() {
        c.nodeport_addresses
            .push(n.as_str().unwrap().parse().unwrap());
    }
    for (k, on) in v["nfacctCounters"].as_object().into_iter().flatten() {
        if on.as_bool() == Some(true) {
            c.nfacct.insert(k.clone());
        }
    }
    let plan = SyncPlan {
        full: v["sync"]["fullSync"].as_bool().unwrap_or(true),
        existing_chains: v["sync"]["existingNatChains"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
        ..Default::default()
    };
    let changed = v["sync"]["changedServices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    (c, plan, changed)
}
