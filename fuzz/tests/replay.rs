//! Every seed (`seeds/<target>/`) and every crash the fuzzer found (`regressions/<target>/`,
//! kept after the fix) goes through its target's checks again. A regression file's name
//! says what it caught.
#![allow(clippy::unwrap_used)]

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let d = root.join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{} fails its checks", f.display());
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}");
}

#[test]
fn cni_request() {
    replay("cni_request", podwire_fuzz::cni_request);
}

#[test]
fn oci_state() {
    replay("oci_state", podwire_fuzz::oci_state);
}

#[test]
fn join_rewrite() {
    replay("join_rewrite", podwire_fuzz::join_rewrite);
}

#[test]
fn iptables_gen() {
    replay("iptables_gen", podwire_fuzz::iptables_gen);
}
