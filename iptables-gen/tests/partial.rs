//! Partial syncs (kube-proxy's, spec §5): only changed services' chains are rewritten,
//! the shared chains are always complete, chains that went away get `-X`, and the result
//! is the same whether the previous state is in memory or read back from disk.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use iptables_gen::model::{self, Objects};
use iptables_gen::{Config, Family, Generated, LocalDetector, SyncPlan, SyncState, render, state};

fn input() -> Objects {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/kube-proxy/overall-iptables-rules");
    let mut objs = Objects::default();
    model::parse(&std::fs::read(dir.join("input.json")).unwrap(), &mut objs).unwrap();
    objs
}

fn cfg() -> Config {
    Config {
        node_name: "node1".into(),
        node_ip: Some("192.168.0.2".parse().unwrap()),
        local_detector: LocalDetector::ClusterCidr("10.0.0.0/8".parse().unwrap()),
        ..Config::default()
    }
}

fn full(cfg: &Config, objs: &Objects) -> Generated {
    iptables_gen::generate(cfg, objs, &SyncPlan::full())
}

fn partial(cfg: &Config, objs: &Objects, prev: &SyncState) -> Generated {
    iptables_gen::generate(
        cfg,
        objs,
        &SyncPlan {
            full: false,
            previous: Some(prev.clone()),
            ..Default::default()
        },
    )
}

type Tables = std::collections::BTreeMap<(String, String), Vec<String>>;

/// Chains (with their rules) a restore text declares, and the chains it deletes.
fn parse(t: &str) -> (Tables, Vec<(String, String)>) {
    let (mut m, mut x) = (Tables::new(), Vec::new());
    let mut table = String::new();
    for l in render::normalize(t).unwrap().lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.into();
        } else if let Some(c) = l.strip_prefix(':') {
            m.insert(
                (table.clone(), c.split(' ').next().unwrap().into()),
                Vec::new(),
            );
        } else if let Some(r) = l.strip_prefix("-A ") {
            let c = r.split(' ').next().unwrap().to_string();
            m.get_mut(&(table.clone(), c)).unwrap().push(l.to_string());
        } else if let Some(c) = l.strip_prefix("-X ") {
            x.push((table.clone(), c.to_string()));
        }
    }
    (m, x)
}

/// What the kernel holds after restoring `text` with --noflush over `before`: declared
/// chains are flushed and refilled, then -X deletes, the others stay as they were.
fn apply(before: &str, text: &str) -> Tables {
    let mut kernel = parse(before).0;
    let (chains, deletes) = parse(text);
    kernel.extend(chains);
    for d in deletes {
        let rules = kernel
            .remove(&d)
            .unwrap_or_else(|| panic!("-X of unknown {d:?}"));
        assert!(rules.is_empty(), "-X of a chain with rules: {d:?}");
    }
    kernel
}

/// Equal tables, or a panic naming the chains that differ (not the whole dump).
fn same_tables(got: &Tables, want: &Tables) {
    let diff: Vec<_> = got
        .keys()
        .chain(want.keys())
        .filter(|k| got.get(*k) != want.get(*k))
        .collect();
    assert!(diff.is_empty(), "chains differ: {diff:?}");
}

fn copy(o: &Objects) -> Objects {
    Objects {
        services: o.services.clone(),
        slices: o.slices.clone(),
        rejected: Vec::new(),
    }
}

fn change_endpoint(objs: &mut Objects, slice: &str, to: &str) {
    let sl = objs
        .slices
        .iter_mut()
        .find(|s| s.metadata.name == slice)
        .unwrap();
    sl.endpoints.as_mut().unwrap()[0].addresses = vec![to.into()];
}

#[test]
fn a_partial_sync_rewrites_one_service_and_lands_on_the_full_result() {
    let cfg = cfg();
    let before = input();
    let g0 = full(&cfg, &before);
    let mut after = input();
    change_endpoint(&mut after, "svc1-1", "10.180.0.99");
    let want = full(&cfg, &after);

    let p = partial(&cfg, &after, &g0.state);
    assert_eq!(p.written_services, 1);
    assert_eq!(
        p.deleted_chains.len(),
        1,
        "the old endpoint's SEP chain: {:?}",
        p.deleted_chains
    );
    assert_eq!(p.active_chains(), want.active_chains());
    // Restoring the partial text over the first sync gives what the full sync gives.
    same_tables(&apply(&g0.text, &p.text), &parse(&want.text).0);

    // The same from a state that went through the state file (no shared lines kept).
    let text = state::render(&g0.state, Family::V4);
    let from_disk = state::parse(&text, Family::V4, Path::new("/s")).unwrap();
    let d = partial(&cfg, &after, &from_disk);
    assert!(d.text == p.text, "partial sync from the state file differs");
    assert_eq!(d.written_services, 1);

    // Nothing changed: nothing rewritten, nothing deleted, the shared chains complete.
    let again = partial(&cfg, &after, &p.state);
    assert_eq!(again.written_services, 0);
    assert!(again.deleted_chains.is_empty());
    assert_eq!(
        apply(&want.text, &again.text),
        apply(&want.text, &want.text)
    );
}

#[test]
fn a_removed_service_loses_its_chains() {
    let cfg = cfg();
    let before = input();
    let g0 = full(&cfg, &before);
    let mut after = input();
    after.services.retain(|s| s.metadata.name != "svc4");
    after.slices.retain(|s| s.metadata.name != "svc4-1");
    let p = partial(&cfg, &after, &g0.state);
    let gone: BTreeSet<String> = g0
        .active_chains()
        .difference(&full(&cfg, &after).active_chains())
        .cloned()
        .collect();
    assert!(!gone.is_empty());
    assert_eq!(
        p.deleted_chains.iter().cloned().collect::<BTreeSet<_>>(),
        gone
    );
    assert_eq!(p.written_services, 0);
    same_tables(
        &apply(&g0.text, &p.text),
        &parse(&full(&cfg, &after).text).0,
    );
}

#[test]
fn resource_versions_decide_when_every_object_has_one() {
    let cfg = cfg();
    let mut before = input();
    for (i, s) in before.services.iter_mut().enumerate() {
        s.metadata.resource_version = Some(format!("{}", 100 + i));
    }
    for (i, s) in before.slices.iter_mut().enumerate() {
        s.metadata.resource_version = Some(format!("{}", 200 + i));
    }
    let g0 = full(&cfg, &before);
    // The API server bumps resourceVersion on every write: that is the change signal.
    let mut after = copy(&before);
    change_endpoint(&mut after, "svc1-1", "10.180.0.99");
    let sl = after
        .slices
        .iter_mut()
        .find(|s| s.metadata.name == "svc1-1")
        .unwrap();
    sl.metadata.resource_version = Some("999".into());
    assert_eq!(partial(&cfg, &after, &g0.state).written_services, 1);
    // A service that gains a resourceVersion-less slice is compared by content.
    let mut mixed = copy(&before);
    mixed.slices[0].metadata.resource_version = None;
    assert_eq!(partial(&cfg, &mixed, &g0.state).written_services, 1);
}

#[test]
fn a_config_change_rewrites_every_service() {
    let cfg = cfg();
    let objs = input();
    let g0 = full(&cfg, &objs);
    let other = Config {
        masquerade_all: true,
        ..cfg.clone()
    };
    let p = partial(&other, &objs, &g0.state);
    assert_eq!(p.written_services, full(&other, &objs).written_services);
    assert!(p.text == full(&other, &objs).text);
}
