//! Reliability under load and crashes, with the real CLI (one exec per operation, as a
//! runtime calls it) inside throwaway node namespaces.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use podwire_testkit::*;

type Net = Network;

fn net(tag: &str, subnet: &str) -> Net {
    Network::bridge(tag, subnet, serde_json::json!({"ipMasq": true}))
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
    let n = net("load", "10.85.0.0/22");
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
                    let o = n.setup(&pod.path(), &id);
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
                        let o = n.teardown(None, &old);
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
    // ADDs healing the network's table raced DELs of the last pod: it went with the last.
    assert_eq!(
        n.nft_table(),
        None,
        "the last teardown takes the network's table"
    );
}

#[test]
fn sigkill_at_any_point_of_setup_leaves_nothing_a_teardown_or_gc_cannot_clear() {
    let n = net("kill", "10.86.0.0/24");
    // Warm the bridge and masquerade rule, so kills land in per-pod work too.
    let warm = Ns::new("kill-warm");
    assert!(n.setup(&warm.path(), "warm").status.success());
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
    let o = n.setup(&fresh.path(), "fresh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fresh_ip = ip_of(&o);
    assert!(!held.contains(&fresh_ip), "{fresh_ip} was still reserved");
    // Half are torn down by id, as a runtime's DEL would; GC reclaims the rest.
    for (id, _) in pods.iter().step_by(2) {
        let o = n.teardown(None, id);
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

/// Sandbox processes in their own network namespace inside a node, and the pins the hook
/// made for them in /run/netns: both gone on drop, whatever the test did.
struct Sandboxes {
    procs: Vec<std::process::Child>,
    ids: Vec<String>,
}

impl Sandboxes {
    /// A process in a new network namespace under `node` (as runc's sandbox would be).
    fn spawn(&mut self, node: &Ns, id: &str) -> u32 {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .args(["--", "unshare", "--net", "sleep", "600"])
            .spawn()
            .unwrap();
        let pid = child.id();
        // nsenter and unshare exec in place: once it is `sleep`, the namespace is its own.
        wait_for("sandbox process", Duration::from_secs(10), || {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "sleep").then_some(())
        });
        self.procs.push(child);
        self.ids.push(id.to_string());
        pid
    }

    fn kill(&mut self, pid: u32) {
        if let Some(c) = self.procs.iter_mut().find(|c| c.id() == pid) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sandboxes {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        for id in &self.ids {
            let _ = netns::remove(&format!("podwire-{id}"));
        }
    }
}

fn pinned(id: &str) -> bool {
    std::path::Path::new(&format!("/run/netns/podwire-{id}")).exists()
}

#[test]
fn sigkill_during_the_oci_hook_leaves_nothing_poststop_or_gc_cannot_clear() {
    let n = net("hkill", "10.84.0.0/24");
    let state = n.dir.path().join("state");
    let state_s = state.to_str().unwrap();
    let tag = unique_name("hk");
    let mut sb = Sandboxes {
        procs: Vec::new(),
        ids: Vec::new(),
    };
    let hook = |stage: &str, state_json: String| {
        let mut c = n
            .cmd(&["hook", "--stage", stage, "--state-dir", state_s])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        // The hook may already be dead (killed) or done: a broken pipe is fine.
        let _ = c.stdin.take().unwrap().write_all(state_json.as_bytes());
        c
    };
    let created = |id: &str, pid: u32| {
        serde_json::json!({"ociVersion": "1.0.2", "id": id, "status": "creating", "pid": pid,
                           "bundle": "/nonexistent", "annotations": {}})
        .to_string()
    };
    // A sandbox wired in full: GC must keep it.
    let warm = format!("{tag}-warm");
    let warm_pid = sb.spawn(&n.node.node, &warm);
    let o = hook("createRuntime", created(&warm, warm_pid))
        .wait_with_output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // SIGKILL 0 to 15 ms after exec: before the record, between record and pin, during
    // the veth/IPAM work and after.
    let mut killed = Vec::new();
    for i in 0..30 {
        let id = format!("{tag}-{i}");
        let pid = sb.spawn(&n.node.node, &id);
        let mut c = hook("createRuntime", created(&id, pid));
        std::thread::sleep(Duration::from_micros(i as u64 * 500));
        let _ = c.kill();
        let _ = c.wait();
        killed.push((id, pid));
    }
    let left_after_kills = killed.iter().filter(|(id, _)| pinned(id)).count();
    let records_after_kills = std::fs::read_dir(&state).unwrap().count() - 1;
    eprintln!(
        "hook kills: {left_after_kills}/30 left a pin, {records_after_kills} a record, {} an address",
        n.records().len() - 1
    );
    assert!(left_after_kills > 0, "no kill landed after the pin");

    // Half get their poststop (the runtime deletes the container: the process is gone,
    // the state has no pid); the rest die unseen, for GC to find.
    for (i, (id, pid)) in killed.iter().enumerate() {
        sb.kill(*pid);
        if i % 2 == 0 {
            let stopped = serde_json::json!({"ociVersion": "1.0.2", "id": id,
                                              "status": "stopped", "bundle": "/nonexistent"});
            let o = hook("poststop", stopped.to_string())
                .wait_with_output()
                .unwrap();
            assert!(
                o.status.success(),
                "poststop {id}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(!pinned(id), "{id}: poststop left its pin");
        }
    }
    // And the live sandbox's record torn: its pin says it may still run, so GC keeps it.
    std::fs::write(state.join(format!("{warm}.json")), "{\"id\":").unwrap();
    let o = n.cmd(&["gc", "--state-dir", state_s]).output().unwrap();
    assert!(
        o.status.success(),
        "gc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report = String::from_utf8_lossy(&o.stdout).to_string();
    eprintln!("gc: {}", report.split(';').next().unwrap_or(""));

    for (id, _) in &killed {
        assert!(!pinned(id), "{id}: pin left after GC ({report})");
    }
    let mut records: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    records.sort();
    assert_eq!(records, vec![format!("{warm}.json")], "GC: {report}");
    assert!(pinned(&warm), "GC removed a live sandbox's pin");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("its record is torn"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        n.records().len(),
        1,
        "only warm's address remains: {report}"
    );
    assert_eq!(
        n.host_veths().len(),
        1,
        "only warm's veth remains: {report}"
    );

    // The live one still tears down cleanly, torn record and all.
    let stopped = serde_json::json!({"ociVersion": "1.0.2", "id": warm, "status": "stopped"});
    let o = hook("poststop", stopped.to_string())
        .wait_with_output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!pinned(&warm));
    assert!(n.records().is_empty() && n.host_veths().is_empty());
}

#[test]
fn ipam_state_survives_a_reboot_like_restart_and_torn_records() {
    let dir = TempDir::new("boot");
    let data = dir.path().join("ipam");
    let config = dir.path().join("net.json");
    let name = "pwboot";
    std::fs::write(
        &config,
        serde_json::json!({
            "cniVersion": "1.0.0", "name": name, "bridge": "pwbr0", "isDefaultGateway": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.85.0.0/24"}]],
                     "dataDir": data}
        })
        .to_string(),
    )
    .unwrap();
    let shim = |node: &Ns, args: &[&str]| {
        shim_in(node)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let setup = |node: &Ns, pod: &Ns, id: &str| {
        let o = shim(
            node,
            &["setup", "--netns", pod.path().to_str().unwrap(), "--id", id],
        );
        assert!(
            o.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        ip_of(&o)
    };

    // Before: four pods on one node.
    let mut before = Vec::new();
    {
        let mut node = Node::new("boot-a");
        for i in 0..4 {
            let p = node.add_pod(&format!("boot-a{i}"));
            before.push(setup(&node.node, node.pod(p), &format!("old{i}")));
        }
        // A power cut: a torn (empty) record, a garbage one, a writer's temporary file
        // and a half-written round-robin cursor.
        let net_dir = data.join(name);
        std::fs::write(net_dir.join("10.85.0.200"), "").unwrap();
        std::fs::write(net_dir.join("10.85.0.201"), [0xffu8, 0xfe, 0, 0x80]).unwrap();
        std::fs::write(net_dir.join(".tmp-4000000-10.85.0.202"), "old9\r\neth0").unwrap();
        std::fs::write(net_dir.join("last_reserved_ip.0"), "10.85.").unwrap();
    } // Reboot: every namespace, link and process is gone; the data dir is on disk.
    let torn = ["10.85.0.200", "10.85.0.201"];

    // After: a new node, a new process that knows only the data dir.
    let mut node = Node::new("boot-b");
    let mut after = Vec::new();
    for i in 0..4 {
        let p = node.add_pod(&format!("boot-b{i}"));
        let ip = setup(&node.node, node.pod(p), &format!("new{i}"));
        assert!(
            !before.contains(&ip),
            "{ip} is still reserved for an old pod"
        );
        assert!(
            !torn.contains(&ip.as_str()),
            "{ip} is held by a torn record"
        );
        after.push(ip);
    }
    // The runtime's DELs for the old pods (namespace gone) release their addresses (found
    // through each attachment's note, so the torn records do not get in the way; GC
    // reports and removes them below).
    for i in 0..4 {
        let o = shim(&node.node, &["teardown", "--id", &format!("old{i}")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let mut held = ipam_records(&data, name);
    held.retain(|ip| !torn.contains(&ip.as_str()));
    let mut want = after.clone();
    want.sort();
    assert_eq!(held, want, "only the new pods' addresses are held");

    // GC with the live attachments reclaims the debris.
    let mut args = vec!["gc".to_string()];
    for i in 0..4 {
        args.push("--valid".into());
        args.push(format!("new{i}/eth0"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = shim(&node.node, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(report.contains("3 debris file(s)"), "{report}");
    assert!(
        report.contains("10.85.0.200") && report.contains("10.85.0.201"),
        "{report}"
    );
    assert_eq!(ipam_records(&data, name), want, "{report}");
    assert!(
        !data.join(name).join(".tmp-4000000-10.85.0.202").exists(),
        "{report}"
    );
    for i in 0..4 {
        let o = shim(&node.node, &["teardown", "--id", &format!("new{i}")]);
        assert!(o.status.success());
    }
    assert!(ipam_records(&data, name).is_empty());
}
