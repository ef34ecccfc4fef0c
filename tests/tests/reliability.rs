//! Reliability under load and crashes, with the real CLI (one exec per operation, as a
//! runtime calls it) inside throwaway node namespaces.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use podwire_tests::*;

struct Net {
    node: Node,
    dir: TempDir,
    name: String,
    config: PathBuf,
}

impl Net {
    fn new(tag: &str, subnet: &str) -> Net {
        let node = Node::new(tag);
        let dir = TempDir::new(tag);
        let name = format!("pw{tag}");
        let config = dir.path().join("net.json");
        let json = serde_json::json!({
            "cniVersion": "1.0.0", "name": name, "bridge": "pwbr0", "isDefaultGateway": true,
            "ipMasq": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                     "dataDir": dir.path().join("ipam")}
        });
        std::fs::write(&config, json.to_string()).unwrap();
        Net {
            node,
            dir,
            name,
            config,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node.node.path().display()))
            .arg("--")
            .arg(bin("runtime-shim"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null());
        c
    }

    fn setup(&self, pod: &Ns, id: &str) -> Output {
        let ns = pod.path();
        self.cmd(&["setup", "--netns", ns.to_str().unwrap(), "--id", id])
            .output()
            .unwrap()
    }

    fn teardown(&self, id: &str) -> Output {
        self.cmd(&["teardown", "--id", id]).output().unwrap()
    }

    /// Host-side veths (our naming: pw + 12 hex).
    fn host_veths(&self) -> Vec<String> {
        podwire_veths(&self.node.node)
    }

    /// IPAM records (files named by an address).
    fn records(&self) -> Vec<String> {
        ipam_records(&self.dir.path().join("ipam"), &self.name)
    }
}

fn ip_of(o: &Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn five_hundred_setups_and_teardowns_from_four_interleaved_workers() {
    const WORKERS: usize = 4;
    const PER_WORKER: usize = 125;
    let n = Net::new("load", "10.85.0.0/22");
    // Addresses held right now, by id: a setup handing out a held address is a duplicate.
    let live: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let max_live = Mutex::new(0usize);
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (n, live, errors, max_live) = (&n, &live, &errors, &max_live);
            s.spawn(move || {
                // Each worker keeps up to three pods alive and tears the oldest down as
                // it goes, so setups and teardowns of all workers interleave.
                let mut mine: std::collections::VecDeque<(String, Ns)> = Default::default();
                for k in 0..PER_WORKER {
                    let id = format!("w{w}-p{k}");
                    let pod = Ns::new(&format!("l{w}-{k}"));
                    let o = n.setup(&pod, &id);
                    if !o.status.success() {
                        errors.lock().unwrap().push(format!(
                            "setup {id}: {}",
                            String::from_utf8_lossy(&o.stderr)
                        ));
                        continue;
                    }
                    let ip = ip_of(&o);
                    {
                        let mut l = live.lock().unwrap();
                        if let Some((other, _)) = l.iter().find(|(_, v)| **v == ip) {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("{ip} handed to {id} while {other} holds it"));
                        }
                        l.insert(id.clone(), ip);
                        let mut m = max_live.lock().unwrap();
                        *m = (*m).max(l.len());
                    }
                    mine.push_back((id, pod));
                    while mine.len() > 3 || (k == PER_WORKER - 1 && !mine.is_empty()) {
                        let (old, pod) = mine.pop_front().unwrap();
                        live.lock().unwrap().remove(&old);
                        let o = n.teardown(&old);
                        if !o.status.success() {
                            errors.lock().unwrap().push(format!(
                                "teardown {old}: {}",
                                String::from_utf8_lossy(&o.stderr)
                            ));
                        }
                        drop(pod);
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    assert!(errors.is_empty(), "{} errors: {errors:#?}", errors.len());
    assert!(*max_live.lock().unwrap() > 4, "workers did overlap");
    assert!(
        n.host_veths().is_empty(),
        "leaked links: {:?}",
        n.host_veths()
    );
    assert!(
        n.records().is_empty(),
        "leaked reservations: {:?}",
        n.records()
    );
    let masq = n
        .node
        .node
        .ok("iptables", &["-t", "nat", "-S", "POSTROUTING"]);
    assert_eq!(masq.matches("podwire masq").count(), 1, "{masq}");
}

#[test]
fn sigkill_at_any_point_of_setup_leaves_nothing_a_teardown_or_gc_cannot_clear() {
    let n = Net::new("kill", "10.86.0.0/24");
    // Warm the bridge and masquerade rule, so kills land in per-pod work too.
    let warm = Ns::new("kill-warm");
    assert!(n.setup(&warm, "warm").status.success());
    // 0 to 20 ms after exec: before, during and after the per-pod work.
    let killed_at = |i: usize| Duration::from_micros(i as u64 * 500);
    let mut pods = Vec::new();
    for i in 0..40 {
        let pod = Ns::new(&format!("k{i}"));
        let ns = pod.path();
        let id = format!("kill{i}");
        let mut child = n
            .cmd(&["setup", "--netns", ns.to_str().unwrap(), "--id", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(killed_at(i));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        pods.push((id, pod));
    }
    // Whatever the kills left holds its addresses: a new pod never gets one of them.
    let held = n.records();
    assert!(
        held.len() > 1,
        "no kill landed after the reservation: {held:?}"
    );
    let fresh = Ns::new("kill-fresh");
    let o = n.setup(&fresh, "fresh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fresh_ip = ip_of(&o);
    assert!(!held.contains(&fresh_ip), "{fresh_ip} was still reserved");
    // Half are torn down by id, as a runtime's DEL would; GC reclaims the rest.
    for (id, _) in pods.iter().step_by(2) {
        let o = n.teardown(id);
        assert!(
            o.status.success(),
            "teardown {id}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = n
        .cmd(&["gc", "--valid", "warm/eth0", "--valid", "fresh/eth0"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "gc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut left = n.records();
    left.retain(|ip| *ip != fresh_ip);
    assert_eq!(left.len(), 1, "only warm's address remains: {left:?}");
    assert_eq!(
        n.host_veths().len(),
        2,
        "only warm's and fresh's veths remain"
    );
    for (id, pod) in &pods {
        let links = pod.links();
        assert_eq!(
            links,
            vec!["lo".to_string()],
            "{id}: pod interface left: {links:?}"
        );
    }
}

#[test]
fn the_shim_keeps_only_the_capabilities_it_needs() {
    let n = Net::new("caps", "10.87.0.0/24");
    // An `iptables` first in PATH that records its capability sets, then runs the real
    // one: what the shim execs shows the shim's bounding set (a root exec's permitted set
    // is the bounding set).
    let tools = n.dir.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let report = n.dir.path().join("caps.txt");
    let real = podwire_tests::oci::find("iptables");
    let script = tools.join("iptables");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ngrep '^Cap' /proc/self/status > {}\nexec {} \"$@\"\n",
            report.display(),
            real.display()
        ),
    )
    .unwrap();
    run("chmod", &["0755", script.to_str().unwrap()]);
    let pod = Ns::new("caps-pod");
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", tools.display());
    let o = n
        .cmd(&[
            "setup",
            "--netns",
            pod.path().to_str().unwrap(),
            "--id",
            "caps1",
        ])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let caps = std::fs::read_to_string(&report).expect("the shim ran iptables");
    let field = |name: &str| {
        let hex = caps
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:\t")))
            .unwrap();
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    // CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_SYS_ADMIN 21, CAP_SYS_PTRACE 19.
    let want = (1u64 << 12) | (1 << 13) | (1 << 21) | (1 << 19);
    assert_eq!(field("CapBnd"), want, "{caps}");
    assert_eq!(field("CapEff") & !want, 0, "{caps}");
    assert_eq!(field("CapInh"), 0, "{caps}");
    assert_eq!(field("CapAmb"), 0, "{caps}");
    assert!(n.teardown("caps1").status.success());
}
