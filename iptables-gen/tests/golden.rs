//! Golden vectors: kube-proxy's own expected output (after its normalisation) and ours.
//! `vectors/kube-proxy/` is transcribed from kube-proxy's TestOverallIPTablesRules; the
//! `vectors/podwire/` ones were written from the spec, one per feature.

#![allow(clippy::unwrap_used)] // test code

use std::path::Path;

use iptables_gen::{SyncPlan, model, render};

#[path = "support/vectors.rs"]
mod vectors;
use vectors::load_config;

fn run_vector(dir: &Path) {
    let (cfg, mut plan, changed) = load_config(dir);
    let mut objs = model::Objects::default();
    model::parse(&std::fs::read(dir.join("input.json")).unwrap(), &mut objs).unwrap();
    assert!(objs.rejected.is_empty(), "{:?}", objs.rejected);
    if !plan.full {
        // A partial sync: every service but the changed ones was applied before as is.
        let before = iptables_gen::generate(&cfg, &objs, &SyncPlan::full());
        let mut st = before.state;
        for c in &changed {
            st.services.remove(c.as_str());
        }
        plan.previous = Some(st);
    }
    let g = iptables_gen::generate(&cfg, &objs, &plan);
    let got = render::normalize(&g.text).unwrap();
    let expected = dir.join("expected.txt");
    if !expected.exists() && std::env::var("PODWIRE_BLESS").is_ok() {
        // Writing a new vector: review the file against the spec before committing it.
        std::fs::write(&expected, &got).unwrap();
    }
    let want = std::fs::read_to_string(&expected).unwrap();
    let want = want.trim_start_matches([' ', '\t', '\n']);
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(i, (a, b))| format!("line {}:\n  want {a}\n  got  {b}", i + 1))
            .collect();
        panic!(
            "{}: output differs ({} vs {} lines)\n{}\n--- got ---\n{got}",
            dir.display(),
            want.lines().count(),
            got.lines().count(),
            diff.join("\n")
        );
    }
    if plan.full {
        // (A partial sync jumps to unchanged chains it does not redeclare.)
        render::check_jumps(&got).unwrap();
    }
    // Deterministic: the same input gives the same raw bytes.
    assert_eq!(iptables_gen::generate(&cfg, &objs, &plan).text, g.text);
}

#[test]
fn kube_proxy_overall_iptables_rules() {
    run_vector(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors/kube-proxy/overall-iptables-rules"),
    );
}

#[test]
fn podwire_feature_vectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/podwire");
    let mut n = 0;
    for e in std::fs::read_dir(&root).unwrap() {
        let d = e.unwrap().path();
        if d.join("input.json").exists() {
            run_vector(&d);
            n += 1;
        }
    }
    assert!(n >= 8, "expected the feature vectors, found {n}");
}
