//! The nftables backend without a kernel: what a full sync declares and references, and
//! what partial syncs write (only changed services, their old elements deleted, stale
//! chains flushed then deleted), the same from a state in memory or read back from disk.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use iptables_gen::model::{self, Objects};
use iptables_gen::{
    Config, Family, Generated, LocalDetector, SyncPlan, SyncState, nftables, state,
};

fn input_json() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/kube-proxy/overall-iptables-rules/input.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn objects(v: &serde_json::Value) -> Objects {
    let mut objs = Objects::default();
    model::parse(v.to_string().as_bytes(), &mut objs).unwrap();
    objs
}

fn cfg() -> Config {
    Config {
        node_name: "test-node".into(),
        node_ip: Some("192.168.0.2".parse().unwrap()),
        local_detector: LocalDetector::ClusterCidr("10.0.0.0/8".parse().unwrap()),
        ..Config::default()
    }
}

fn sync(objs: &Objects, prev: Option<&SyncState>) -> Generated {
    nftables::generate(
        &cfg(),
        objs,
        &SyncPlan {
            full: prev.is_none(),
            previous: prev.cloned(),
            ..Default::default()
        },
    )
}

/// Chains a text declares, and every chain a rule or element jumps or goes to.
fn declared_and_targets(t: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut declared = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for l in t.lines() {
        if let Some(r) = l.strip_prefix("add chain ip kube-proxy ") {
            declared.insert(r.split(' ').next().unwrap().to_string());
        }
        let w: Vec<&str> = l.split(' ').collect();
        for p in w.windows(2) {
            if p[0] == "goto" || p[0] == "jump" {
                targets.insert(p[1].trim_end_matches(['}', ',']).to_string());
            }
        }
    }
    (declared, targets)
}

#[test]
fn a_full_sync_declares_everything_it_references_and_no_anonymous_set() {
    let g = sync(&objects(&input_json()), None);
    assert!(g.full);
    let (declared, targets) = declared_and_targets(&g.text);
    let missing: Vec<_> = targets.difference(&declared).collect();
    assert!(missing.is_empty(), "undeclared targets {missing:?}");
    assert!(
        !g.text.contains("vmap {") && !g.text.contains("!= {"),
        "{}",
        g.text
    );
    // kube-proxy's names (its TestOverallNFTablesRules).
    for want in [
        "add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80",
        "add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
        "add set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }",
        "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
        "add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment \"ns6/svc6:p80\" : goto reject-chain }",
        "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
    ] {
        assert!(g.text.lines().any(|l| l == want), "missing: {want}");
    }
    // Two endpoints: the first is taken with probability 1/2, the second gets the rest.
    let svc4: Vec<&str> = g
        .text
        .lines()
        .filter(|l| l.starts_with("add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 "))
        .collect();
    assert!(
        svc4.iter()
            .any(|l| l.contains("numgen random mod 2 == 0 goto endpoint-"))
    );
    assert!(
        svc4.last().unwrap().contains(" goto endpoint-5RFCDDV7-"),
        "{svc4:?}"
    );
    // Deterministic.
    assert_eq!(sync(&objects(&input_json()), None).text, g.text);
}

#[test]
fn partial_syncs_write_only_what_changed() {
    let v = input_json();
    let g0 = sync(&objects(&v), None);
    // Nothing changed: the fixed part only.
    let same = sync(&objects(&v), Some(&g0.state));
    assert!(!same.full);
    assert_eq!(same.written_services, 0);
    assert!(!same.text.contains(" element "), "{}", same.text);
    assert!(
        !same.text.lines().any(|l| l.contains("-ns")),
        "no per-service object: {}",
        same.text
    );
    assert!(same.cleanup.is_empty());

    // svc4 loses endpoint 10.180.0.5: only svc4 is rewritten, its old elements are
    // deleted first, its dropped endpoint chain is flushed and then deleted.
    let mut v2 = v.clone();
    for it in v2["items"].as_array_mut().unwrap() {
        if it["metadata"]["name"] == "svc4-1" {
            it["endpoints"].as_array_mut().unwrap().pop();
        }
    }
    let g1 = sync(&objects(&v2), Some(&g0.state));
    assert_eq!(g1.written_services, 1);
    let per_service: BTreeSet<&str> = g1
        .text
        .lines()
        .filter(|l| l.starts_with("add chain ") && l.contains("-ns"))
        .collect();
    assert!(
        per_service.iter().all(|l| l.contains("ns4/svc4")),
        "{per_service:?}"
    );
    let first_add = g1.text.find("add element").unwrap();
    let last_delete = g1.text.rfind("delete element").unwrap();
    assert!(last_delete < first_add, "deletes come first");
    let gone = "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80";
    assert!(
        g1.text
            .contains(&format!("flush chain ip kube-proxy {gone}"))
    );
    assert_eq!(g1.cleanup, format!("delete chain ip kube-proxy {gone}\n"));
    assert_eq!(g1.deleted_chains, vec![gone.to_string()]);

    // The same from a state read back from disk.
    let text = state::render(&g0.state, Family::V4);
    let disk = state::parse(&text, Family::V4, Path::new("/s")).unwrap();
    let g1d = sync(&objects(&v2), Some(&disk));
    assert_eq!(g1d.text, g1.text);
    assert_eq!(g1d.cleanup, g1.cleanup);

    // svc6 removed: its elements go; it had no chains (no endpoints).
    let mut v3 = v2.clone();
    v3["items"]
        .as_array_mut()
        .unwrap()
        .retain(|it| it["metadata"]["name"] != "svc6");
    let g2 = sync(&objects(&v3), Some(&g1.state));
    assert_eq!(g2.written_services, 0);
    assert!(
        g2.text.contains(
            "delete element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 }"
        )
    );
    assert!(
        g2.text
            .contains("delete element ip kube-proxy cluster-ips { 172.30.0.46 }")
    );
    assert!(!g2.text.contains("add element"));
    // A config change makes it full again.
    let mut c = cfg();
    c.masquerade_all = true;
    let g3 = nftables::generate(
        &c,
        &objects(&v3),
        &SyncPlan {
            full: false,
            previous: Some(g2.state.clone()),
            ..Default::default()
        },
    );
    assert!(g3.full);
}

#[test]
fn two_services_on_one_node_port_do_not_fail_the_sync() {
    let mut v = input_json();
    // svc3's NodePort 3003 becomes svc2's 3001 too.
    for it in v["items"].as_array_mut().unwrap() {
        if it["metadata"]["name"] == "svc3" {
            it["spec"]["ports"][0]["nodePort"] = 3001.into();
        }
    }
    let g = sync(&objects(&v), None);
    let n = g
        .text
        .lines()
        .filter(|l| {
            l.contains("service-nodeports { tcp . 3001 ")
                || l.contains("no-endpoint-nodeports { tcp . 3001 ")
        })
        .count();
    // svc2's own two (eTP=Local without local endpoints: a goto and a drop); not svc3's.
    assert_eq!(n, 2, "{}", g.text);
    assert!(
        g.warnings.iter().any(|w| w.contains("another service's")),
        "{:?}",
        g.warnings
    );
}
