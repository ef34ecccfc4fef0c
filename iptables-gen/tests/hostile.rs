//! Hostile object content and flags through the real binary (no root: generation only,
//! with `--state-dir` and `--commit` as a pipeline uses them).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn generate(args: &[&str], input: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iptables-gen"))
        .args(["--hostname-override", "node-1", "--random-fully", "false"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

fn objects(label: &str, extra_addr: Option<&str>) -> String {
    let mut eps =
        vec![serde_json::json!({"addresses": ["10.244.1.5"], "conditions": {"ready": true}})];
    if let Some(a) = extra_addr {
        eps.push(serde_json::json!({"addresses": [a], "conditions": {"ready": true}}));
    }
    serde_json::json!({"kind": "List", "items": [
        {"kind": "Service", "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "1"},
         "spec": {"clusterIP": "10.96.0.10", "type": "ClusterIP",
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
        {"kind": "EndpointSlice", "metadata": {"name": "web-1", "namespace": "ns", "resourceVersion": "1",
            "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
        {"kind": "EndpointSlice", "metadata": {"name": "evil", "namespace": "ns", "resourceVersion": "1",
            "labels": {"kubernetes.io/service-name": label}},
         "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.1.9"]}], "ports": []}
    ]})
    .to_string()
}

#[test]
fn a_forged_label_is_skipped_and_cannot_poison_the_state() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    let evil = "web\nc KUBE-SVC-LIVE0000000000000\ns 0 0 a b c";
    let o = generate(&["--state-dir", dir], &objects(evil, None));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("EndpointSlice ns/evil") && err.contains("labels"),
        "{err}"
    );
    let c = generate(&["--state-dir", dir, "--commit"], "");
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let state = std::fs::read_to_string(d.path().join("state-IPv4")).unwrap();
    assert!(!state.contains("LIVE"), "{state}");
    // The next sync, with the bad slice gone, deletes no chain it does not own.
    let o = generate(&["--state-dir", dir], &objects("web", None));
    assert!(o.status.success());
    let rules = String::from_utf8_lossy(&o.stdout);
    assert!(!rules.lines().any(|l| l.starts_with("-X")), "{rules}");
}

#[test]
fn endpoint_addresses_the_api_server_refuses_are_skipped_with_a_message() {
    for bad in ["127.0.0.1", "0.0.0.0", "169.254.169.254", "224.0.0.18"] {
        let o = generate(&[], &objects("web", Some(bad)));
        assert!(o.status.success());
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!out.contains(bad), "{bad} reached the rules");
        assert!(
            err.contains(bad) && err.contains("EndpointSlice ns/web-1"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn ip_family_is_checked_for_every_mode() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    for args in [
        vec!["--ip-family", "IPv5", "--state-dir", dir, "--commit"],
        vec!["--ip-family", "ipv6"],
    ] {
        let o = generate(&args, "");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("--ip-family"));
    }
}
