//! End to end with runc, inside a throwaway node namespace: two pods, each a sandbox
//! running our `pause` in a new netns, wired by `runtime-shim hook` (createRuntime, and
//! for pod B prestart) and unwired at poststop; busybox httpd app containers joined with
//! `runtime-shim join`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::Path;
use std::process::Output;

use podwire_testkit::oci::{self, Runc};
use podwire_testkit::*;
use serde_json::Value;

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn pod_ip(state_dir: &Path, id: &str) -> String {
    let rec: Value =
        serde_json::from_slice(&fs::read(state_dir.join(format!("{id}.json"))).unwrap()).unwrap();
    let a = rec["result"]["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

fn join(shim: &Path, state_dir: &Path, sandbox: &str, bundle: &Path) -> Output {
    run(
        shim.to_str().unwrap(),
        &[
            "join",
            "--sandbox",
            sandbox,
            "--state-dir",
            state_dir.to_str().unwrap(),
            bundle.to_str().unwrap(),
        ],
    )
}

fn ns_inode(pid: i32) -> String {
    fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn two_runc_pods_wired_by_the_hook_and_joined_by_app_containers() {
    require_root();
    let node = Node::new("runc");
    let tmp = TempDir::new("runc");
    let shim = bin("runtime-shim");
    let state_dir = tmp.path().join("podwire-state");
    let ipam = tmp.path().join("ipam");
    let config = tmp.path().join("net.json");
    fs::write(
        &config,
        format!(
            r#"{{"cniVersion":"1.0.0","name":"pwrunc","type":"runtime-shim","bridge":"pwbr0",
                "isDefaultGateway":true,"ipMasq":true,
                "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.79.0.0/24"}}]],
                         "dataDir":"{}"}}}}"#,
            ipam.display()
        ),
    )
    .unwrap();
    let rootfs = tmp.path().join("rootfs");
    oci::build_rootfs(&rootfs, &pause_bin());
    // Declared after the node, so containers are deleted before the node goes.
    let rt = Runc::new(tmp.path(), &node.node.path());
    let tag = unique_name("p").replace('-', "");
    let (sbx_a, sbx_b) = (format!("{tag}-sbx-a"), format!("{tag}-sbx-b"));

    // Sandboxes: pause as uid 65535 in new namespaces. A is wired at createRuntime and
    // prestart (the second call must be a no-op), B at prestart only.
    for (id, stages) in [
        (&sbx_a, &["createRuntime", "prestart"][..]),
        (&sbx_b, &["prestart"][..]),
    ] {
        let b = tmp.path().join(id);
        let mut spec = rt.bundle(&b, &rootfs, &["/pause"], None);
        spec["process"]["user"] = serde_json::json!({"uid": 65535, "gid": 65535});
        spec["hooks"] = oci::shim_hooks(&shim, &config, &state_dir, stages);
        oci::write_config(&b, &spec);
        rt.run_detached(id, &b)
            .unwrap_or_else(|log| panic!("sandbox {id}: {log}"));
    }
    let (pid_a, pid_b) = (rt.pid(&sbx_a), rt.pid(&sbx_b));
    let (ip_a, ip_b) = (pod_ip(&state_dir, &sbx_a), pod_ip(&state_dir, &sbx_b));
    assert_ne!(ip_a, ip_b);
    for id in [&sbx_a, &sbx_b] {
        let pin = netns::path_of(&runtime_shim::hook::pin_name(id)).unwrap();
        assert!(
            pin.exists(),
            "namespace of {id} pinned at {}",
            pin.display()
        );
    }

    // App containers: httpd joined to each sandbox, each serving its pod's name.
    let mut apps = Vec::new();
    for (sbx, name) in [(&sbx_a, "a"), (&sbx_b, "b")] {
        let www = tmp.path().join(format!("www-{name}"));
        fs::create_dir_all(&www).unwrap();
        fs::write(www.join("index.html"), format!("hello from pod {name}\n")).unwrap();
        let id = format!("{tag}-app-{name}");
        let b = tmp.path().join(&id);
        rt.bundle(
            &b,
            &rootfs,
            &["httpd", "-f", "-p", "80", "-h", "/www"],
            Some(&www),
        );
        let o = join(&shim, &state_dir, sbx, &b);
        assert!(o.status.success(), "join: {}", text(&o));
        // Idempotent: a second join changes nothing.
        let before = fs::read(b.join("config.json")).unwrap();
        let o = join(&shim, &state_dir, sbx, &b);
        assert!(o.status.success(), "second join: {}", text(&o));
        assert_eq!(before, fs::read(b.join("config.json")).unwrap());
        rt.run_detached(&id, &b)
            .unwrap_or_else(|log| panic!("app {id}: {log}"));
        apps.push(id);
    }
    let app_a_pid = rt.pid(&apps[0]);
    assert_eq!(
        ns_inode(app_a_pid),
        ns_inode(pid_a),
        "app shares the sandbox netns"
    );
    // Both containers see the same eth0 with the pod's address.
    let sees = |id: &str| {
        let o = rt.exec(id, &["ip", "-o", "-4", "addr", "show", "eth0"]);
        assert!(o.status.success(), "exec in {id}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (s, a) = (sees(&sbx_a), sees(&apps[0]));
    assert_eq!(s, a);
    assert!(a.contains(&format!("inet {ip_a}/24")), "{a}");
    // UTS is shared too: the app sees the sandbox's hostname.
    let host = |id: &str| String::from_utf8_lossy(&rt.exec(id, &["hostname"]).stdout).into_owned();
    assert_eq!(host(&sbx_a), host(&apps[0]));

    // Pod B reaches pod A's IP:80 (a client container in pod B).
    let client = |sandbox: &str, target: &str, cid: &str| -> Output {
        let b = tmp.path().join(cid);
        rt.bundle(
            &b,
            &rootfs,
            &["sh", "-c", &oci::http_get_script(target, 80)],
            None,
        );
        let o = join(&shim, &state_dir, sandbox, &b);
        assert!(o.status.success(), "join: {}", text(&o));
        // httpd may need a moment after `run -d` returns.
        let mut last = None;
        for _ in 0..50 {
            let o = rt.run_fg(cid, &b);
            if String::from_utf8_lossy(&o.stdout).contains("hello from") {
                return o;
            }
            last = Some(o);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        last.unwrap()
    };
    let o = client(&sbx_b, &ip_a, &format!("{tag}-cli-b"));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("hello from pod a"),
        "pod B -> {ip_a}:80: {}",
        text(&o)
    );
    let o = client(&sbx_a, &ip_b, &format!("{tag}-cli-a"));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("hello from pod b"),
        "pod A -> {ip_b}:80: {}",
        text(&o)
    );
    // Inside pod A, a second container reaches the app on localhost.
    let o = client(&sbx_a, "127.0.0.1", &format!("{tag}-local-a"));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("hello from pod a"),
        "localhost:80 in pod A: {}",
        text(&o)
    );
    // A second server on port 80 in the same pod cannot bind it.
    let dup = format!("{tag}-dup-a");
    let b = tmp.path().join(&dup);
    rt.bundle(
        &b,
        &rootfs,
        &["httpd", "-f", "-p", "80", "-h", "/www"],
        None,
    );
    assert!(join(&shim, &state_dir, &sbx_a, &b).status.success());
    let o = rt.run_fg(&dup, &b);
    assert!(
        !o.status.success(),
        "a second port-80 server started: {}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use")
            || String::from_utf8_lossy(&o.stdout).contains("in use"),
        "{}",
        text(&o)
    );

    // The pod's state is visible on the node: one veth per pod on the bridge.
    let ports = node
        .node
        .ok("ip", &["-o", "link", "show", "master", "pwbr0"]);
    assert_eq!(ports.lines().count(), 2, "{ports}");

    // Delete everything: apps, then sandboxes (poststop tears down).
    for id in apps.iter().chain([&sbx_a, &sbx_b]) {
        let o = rt.delete(id);
        assert!(o.status.success(), "runc delete {id}: {}", text(&o));
    }
    let ports = node
        .node
        .ok("ip", &["-o", "link", "show", "master", "pwbr0"]);
    assert_eq!(ports.trim(), "", "veths left after delete");
    let records: Vec<_> = fs::read_dir(ipam.join("pwrunc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(records.is_empty(), "reservations left: {records:?}");
    for id in [&sbx_a, &sbx_b] {
        let pin = netns::path_of(&runtime_shim::hook::pin_name(id)).unwrap();
        assert!(!pin.exists(), "pinned namespace left: {}", pin.display());
        assert!(
            !state_dir.join(format!("{id}.json")).exists(),
            "record left"
        );
    }
    let _ = pid_b;
}

#[test]
fn join_refuses_a_dead_sandbox_or_a_missing_bundle_and_changes_nothing() {
    require_root();
    let tmp = TempDir::new("join");
    let shim = bin("runtime-shim");
    let b = tmp.path().join("bundle");
    fs::create_dir_all(&b).unwrap();
    // No config.json.
    let o = join(&shim, tmp.path(), "1", &b);
    assert!(!o.status.success());
    assert!(text(&o).contains("no config.json"), "{}", text(&o));
    // A sandbox id with no record, a pid that does not exist, a netns that does not.
    let out = run("runc", &["spec", "--bundle", b.to_str().unwrap()]);
    assert!(out.status.success());
    let before = fs::read(b.join("config.json")).unwrap();
    let me = std::process::id().to_string();
    for (sandbox, want) in [
        ("no-such-sandbox", "no sandbox no-such-sandbox"),
        ("2147483647", "does not exist"),
        ("/run/netns/pwt-no-such-ns", "does not exist"),
        (me.as_str(), "node's network namespace"),
        ("../../etc", "container id"),
    ] {
        let o = join(&shim, tmp.path(), sandbox, &b);
        assert!(!o.status.success(), "{sandbox}");
        assert!(text(&o).contains(want), "{sandbox}: {}", text(&o));
        assert_eq!(before, fs::read(b.join("config.json")).unwrap());
    }
    // Garbage config.json: refused, left as it was.
    fs::write(b.join("config.json"), "{not json").unwrap();
    let pod = Ns::new("join-pod");
    let o = join(&shim, tmp.path(), pod.path().to_str().unwrap(), &b);
    assert!(
        text(&o).contains("not an OCI runtime config"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read(b.join("config.json")).unwrap(), b"{not json");
}
