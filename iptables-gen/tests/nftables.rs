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

/// Every `(map, element)` the text adds, from its `add element T MAP { E, E, … }` lines.
fn added_elements(t: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for l in t.lines() {
        if let Some(r) = l.strip_prefix("add element ip kube-proxy ") {
            let (map, rest) = r.split_once(" { ").unwrap();
            for e in rest.trim_end_matches(" }").split(", ") {
                out.insert((map.to_string(), e.to_string()));
            }
        }
    }
    out
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
        "add chain ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80",
        "add set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }",
        "add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80",
        // Without affinity, a service picks its endpoint through the shared chain for its
        // endpoint count, from the map keyed by destination and index.
        "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 goto cluster-endpoints-1",
        "add rule ip kube-proxy cluster-endpoints-2 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @cluster-endpoints",
        "add rule ip kube-proxy masquerading ct status dnat ip saddr . ip daddr @hairpin-endpoints mark set mark or 0x00004000",
    ] {
        assert!(g.text.lines().any(|l| l == want), "missing: {want}");
    }
    assert!(
        !g.text.contains("endpoint-5OJB2KTY"),
        "no chain per endpoint without affinity"
    );
    let els = added_elements(&g.text);
    for (map, e) in [
        (
            "service-ips",
            "172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80",
        ),
        (
            "no-endpoint-services",
            "172.30.0.46 . tcp . 80 comment \"ns6/svc6:p80\" : goto reject-chain",
        ),
        // svc4's two endpoints, by its ClusterIP and its external IP.
        (
            "cluster-endpoints",
            "172.30.0.44 . tcp . 80 . 0 : 10.180.0.4 . 80",
        ),
        (
            "cluster-endpoints",
            "172.30.0.44 . tcp . 80 . 1 : 10.180.0.5 . 80",
        ),
        (
            "cluster-endpoints",
            "192.168.99.33 . tcp . 80 . 1 : 10.180.0.5 . 80",
        ),
        // svc2 (externalTrafficPolicy Local, no local endpoint): its NodePort reaches the
        // cluster endpoints only through the short-circuit for pod and node traffic.
        (
            "cluster-nodeport-endpoints",
            "tcp . 3001 . 0 : 10.180.0.2 . 80",
        ),
        ("hairpin-endpoints", "10.180.0.5 . 10.180.0.5"),
    ] {
        assert!(
            els.contains(&(map.to_string(), e.to_string())),
            "missing {map} {{ {e} }}"
        );
    }
    let svc4: Vec<&str> = g
        .text
        .lines()
        .filter(|l| l.starts_with("add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 "))
        .collect();
    assert!(
        svc4.last().unwrap().ends_with(" goto cluster-endpoints-2"),
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
    for want in [
        "delete element ip kube-proxy hairpin-endpoints { 10.180.0.5 . 10.180.0.5 }",
        "add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 goto cluster-endpoints-1",
    ] {
        assert!(g1.text.lines().any(|l| l == want), "missing: {want}");
    }
    assert!(
        !g1.text
            .contains("add chain ip kube-proxy cluster-endpoints-1"),
        "a selection chain in use is not rewritten (its rules would walk the maps again)"
    );
    let els = added_elements(&g1.text);
    assert!(els.contains(&(
        "cluster-endpoints".into(),
        "172.30.0.44 . tcp . 80 . 0 : 10.180.0.4 . 80".into()
    )));
    assert!(
        !els.iter().any(|(_, e)| e.contains("10.180.0.5")),
        "{els:?}"
    );
    // The selection chains stay; nothing is deleted.
    assert!(
        !g1.text.contains("chain ip kube-proxy cluster-endpoints-"),
        "{}",
        g1.text
    );
    assert!(g1.cleanup.is_empty());

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

#[test]
fn a_partial_sync_needing_a_new_selection_chain_becomes_full() {
    let with = |n: usize| {
        let mut v = input_json();
        for it in v["items"].as_array_mut().unwrap() {
            if it["metadata"]["name"] == "svc1-1" {
                let eps: Vec<serde_json::Value> = (0..n)
                    .map(|i| serde_json::json!({"addresses": [format!("10.181.0.{}", i + 1)], "conditions": {}}))
                    .collect();
                it["endpoints"] = eps.into();
            }
        }
        objects(&v)
    };
    let g0 = sync(&with(20), None);
    assert!(g0.text.contains(
        "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 goto cluster-endpoints-20\n"
    ));
    // 20 -> 19: no selection chain for 19 endpoints is left by the last sync.
    let g1 = sync(&with(19), Some(&g0.state));
    assert!(g1.full, "{}", g1.text);
    let pos = |needle: &str| {
        g1.text
            .find(needle)
            .unwrap_or_else(|| panic!("missing {needle}: {}", g1.text))
    };
    // Every chain that reads the maps is flushed before they are made anew.
    assert!(
        pos("flush chain ip kube-proxy cluster-endpoints-20\n")
            < pos("delete map ip kube-proxy cluster-endpoints\n")
    );
    assert!(
        pos("delete map ip kube-proxy cluster-endpoints\n")
            < pos("add rule ip kube-proxy cluster-endpoints-19 dnat")
    );
    assert_eq!(
        g1.cleanup,
        "delete chain ip kube-proxy cluster-endpoints-20\n"
    );
    // 19 -> 3: a preset chain, so partial.
    let g2 = sync(&with(3), Some(&g1.state));
    assert!(!g2.full);
    assert_eq!(g2.written_services, 1);
    assert!(!g2.text.contains("map ip kube-proxy cluster-endpoints\n"));
}

#[test]
fn hairpin_pairs_only_for_endpoints_that_can_send_from_this_node() {
    let mut v = input_json();
    for it in v["items"].as_array_mut().unwrap() {
        if it["metadata"]["name"] == "svc4-1" {
            it["endpoints"][1]["nodeName"] = "other-node".into();
        }
    }
    let els = added_elements(&sync(&objects(&v), None).text);
    let pair = |ip: &str| ("hairpin-endpoints".to_string(), format!("{ip} . {ip}"));
    // 10.180.0.5 runs on another node: its own traffic to the Service is DNATed there.
    assert!(!els.contains(&pair("10.180.0.5")), "{els:?}");
    // 10.180.0.4 has no nodeName (unknown node) and stays, as do this node's endpoints.
    assert!(els.contains(&pair("10.180.0.4")));
    assert!(els.contains(&(
        "cluster-endpoints".to_string(),
        "172.30.0.44 . tcp . 80 . 1 : 10.180.0.5 . 80".to_string()
    )));
}
