//! Node safety: hostile or unlucky inputs never delete a node's interface, never give one
//! address to two pods, never leave a change behind, never block. Each test fails on the
//! code before this suite existed; all run inside throwaway node namespaces.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use podwire_testkit::*;

/// A network on bridge `bridge`; with `shared`, its IPAM dataDir lives there instead.
fn net(tag: &str, subnet: &str, bridge: &str, shared: Option<&TempDir>) -> Network {
    let mut conf = serde_json::json!({
        "bridge": bridge, "isDefaultGateway": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}
    });
    let n = Network::new(tag, conf.clone());
    if let Some(d) = shared {
        conf["name"] = n.name.clone().into();
        conf["cniVersion"] = "1.0.0".into();
        conf["ipam"]["dataDir"] = d.path().join("ipam").display().to_string().into();
        std::fs::write(&n.config, conf.to_string()).unwrap();
    }
    n
}

/// The config of a second network `name` on `a`'s bridge (`pwbr0`), with its IPAM in
/// `shared` too; returns its path.
fn second_network(a: &Network, shared: &TempDir, name: &str, subnet: &str) -> PathBuf {
    let conf = a.dir.path().join(format!("{name}.json"));
    let json = serde_json::json!({
        "cniVersion": "1.0.0", "name": name, "bridge": "pwbr0", "isDefaultGateway": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                 "dataDir": shared.path().join("ipam")}
    });
    std::fs::write(&conf, json.to_string()).unwrap();
    conf
}

/// A shell script run in a private mount namespace (its mounts vanish with it).
fn in_private_mounts(script: &str) -> Output {
    run(
        "unshare",
        &["-m", "--propagation", "private", "sh", "-c", script],
    )
}

/// The shell command of `runtime-shim setup` of `pod` as `id` in `n`'s node.
fn setup_line(n: &Network, pod: &Ns, id: &str) -> String {
    format!(
        "nsenter --net={} -- {} setup --netns {} --id {id} --config {}",
        n.node.node.path().display(),
        bin("runtime-shim").display(),
        pod.path().display(),
        n.config.display()
    )
}

/// runtime-shim in `node` with extra arguments (another network's config, …).
fn shim_at(node: &Ns, args: &[&str]) -> Output {
    shim_in(node).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ip_of(o: &Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let a = v["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

/// The node's own "eth0": a (veth) link with an address, as a NIC would be.
fn node_nic(node: &Ns) {
    node.ok(
        "ip",
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
        ],
    );
    node.ok("ip", &["addr", "add", "192.168.50.10/24", "dev", "eth0"]);
    node.ok("ip", &["link", "set", "eth0", "up"]);
}

#[test]
fn the_shims_own_namespace_is_refused_and_no_node_link_is_deleted() {
    let n = net("own", "10.91.0.0/24", "pwbr0", None);
    node_nic(&n.node.node);
    let own = "/proc/self/ns/net";
    // teardown and setup with the caller's own namespace.
    let o = n.shim(&[
        "teardown",
        "--netns",
        own,
        "--id",
        "never-set-up",
        "--ifname",
        "eth0",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("runtime-shim itself runs in"),
        "{}",
        stderr(&o)
    );
    let o = n.setup(Path::new(own), "c1");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("runtime-shim itself runs in"),
        "{}",
        stderr(&o)
    );
    // CNI DEL and ADD likewise, with CNI error JSON.
    let conf = std::fs::read(&n.config).unwrap();
    for cmd in ["DEL", "ADD", "CHECK"] {
        let mut c = shim_in(&n.node.node);
        c.envs([
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c9"),
            ("CNI_NETNS", own),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut ch = c.spawn().unwrap();
        use std::io::Write;
        ch.stdin.take().unwrap().write_all(&conf).unwrap();
        let o = ch.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["code"], 4, "{cmd}: {v}");
        assert!(v["msg"].as_str().unwrap().contains("netns"), "{cmd}: {v}");
    }
    // A teardown of an id never set up, with a pod namespace holding an "eth0" that is
    // not ours: it stays.
    let mut n = n;
    let p = n.node.add_pod("p");
    n.node.pod(p).ok(
        "ip",
        &["link", "add", "eth0", "type", "veth", "peer", "name", "e0p"],
    );
    let path = n.node.pod(p).path();
    let o = n.shim(&[
        "teardown",
        "--netns",
        path.to_str().unwrap(),
        "--id",
        "never-set-up",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(n.node.pod(p).links().contains(&"eth0".to_string()));
    let links = n.node.node.links();
    assert!(links.contains(&"eth0".to_string()), "{links:?}");
    assert!(
        !links.contains(&"pwbr0".to_string()),
        "nothing was created: {links:?}"
    );
    assert!(n.records().is_empty());
}

#[test]
fn gc_of_one_network_never_touches_another_on_the_same_bridge() {
    let shared = TempDir::new("gcshared");
    let mut a = net("gca", "10.92.1.0/24", "pwbr0", Some(&shared));
    // Network B lives in A's node (one bridge, cni0-style default shared).
    let b_name = "pwgcb";
    let b_conf = second_network(&a, &shared, b_name, "10.92.2.0/24");
    let pa = a.node.add_pod("a");
    let pb = a.node.add_pod("b");
    assert!(a.setup(&a.node.pod(pa).path(), "pod-a").status.success());
    // Pod B on network B, in the same node.
    let on_b = |verb: &str| {
        let ns = a.node.pod(pb).path();
        let args = [
            verb,
            "--netns",
            ns.to_str().unwrap(),
            "--id",
            "pod-b",
            "--config",
        ];
        shim_in(&a.node.node)
            .args(args)
            .arg(&b_conf)
            .output()
            .unwrap()
    };
    let o = on_b("setup");
    assert!(o.status.success(), "{}", stderr(&o));
    // GC of A with no valid attachment: A's pod goes, B's stays whole.
    let o = a.shim(&["gc"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(podwire_veths(&a.node.node).len(), 1);
    assert!(a.node.pod(pb).links().contains(&"eth0".to_string()));
    assert!(!a.node.pod(pa).links().contains(&"eth0".to_string()));
    assert_eq!(ipam_records(&shared.path().join("ipam"), b_name).len(), 1);
    assert!(ipam_records(&shared.path().join("ipam"), &a.name).is_empty());
    let o = on_b("check");
    assert!(o.status.success(), "B still checks out: {}", stderr(&o));
}

#[test]
fn del_racing_add_never_leaves_a_live_pod_without_its_address() {
    let mut n = net("race", "10.93.0.0/24", "pwbr0", None);
    for i in 0..20 {
        let p = n.node.add_pod(&format!("r{i}"));
        let path = n.node.pod(p).path();
        let id = format!("x{i}");
        let (add, del) = std::thread::scope(|s| {
            let add = s.spawn(|| n.setup(&path, &id));
            let del = s.spawn(|| n.shim(&["teardown", "--id", &id]));
            (add.join().unwrap(), del.join().unwrap())
        });
        assert!(del.status.success(), "{}", stderr(&del));
        let veth_there = n.node.pod(p).links().contains(&"eth0".to_string());
        let held = n.records();
        if add.status.success() && veth_there {
            // ADD ran last: its address must still be reserved, so no other pod gets it.
            assert!(
                held.contains(&ip_of(&add)),
                "{i}: live pod without its address"
            );
            assert!(n.shim(&["teardown", "--id", &id]).status.success());
        }
        assert!(n.records().is_empty(), "{i}: {held:?}");
    }
}

#[test]
fn a_retried_add_keeps_one_address() {
    let mut n = net("readd", "10.94.0.0/24", "pwbr0", None);
    let a = n.node.add_pod("a");
    let first = n.setup(&n.node.pod(a).path(), "c1");
    assert!(first.status.success(), "{}", stderr(&first));
    // The namespace vanishes without DEL; the runtime retries ADD in a new one (once the
    // kernel has destroyed the old pair).
    n.node.pods.remove(a);
    wait_for("the old veth to go", Duration::from_secs(10), || {
        podwire_veths(&n.node.node).is_empty().then_some(())
    });
    let b = n.node.add_pod("b");
    let again = n.setup(&n.node.pod(b).path(), "c1");
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(ip_of(&again), ip_of(&first));
    assert_eq!(n.records(), vec![ip_of(&first)]);
    let o = n.shim(&[
        "check",
        "--netns",
        n.node.pod(b).path().to_str().unwrap(),
        "--id",
        "c1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // An ADD of an attachment that is set up is refused and leaves it (and its lock and
    // note) alone: DEL then releases its address.
    let dup = n.setup(&n.node.pod(b).path(), "c1");
    assert!(stderr(&dup).contains("already set up"), "{}", stderr(&dup));
    let locks = n.data_dir().join(&n.name).join("attachments");
    assert_eq!(std::fs::read_dir(&locks).unwrap().count(), 1);
    assert!(n.teardown(None, "c1").status.success());
    assert!(n.records().is_empty());
    assert_eq!(std::fs::read_dir(&locks).unwrap().count(), 0);
}

#[test]
fn a_failed_setup_undoes_node_changes_and_refuses_non_bridges() {
    let mut n = net("undo", "10.95.0.0/24", "pwbr0", None);
    node_nic(&n.node.node);
    // A pre-existing, down bridge; forwarding off.
    n.node
        .node
        .ok("ip", &["link", "add", "pwbr0", "type", "bridge"]);
    n.node.node.ok("sysctl", &["-qw", "net.ipv4.ip_forward=0"]);
    let p = n.node.add_pod("p");
    // eth0 already in the pod: creating the veth fails after the bridge and sysctl steps.
    n.node.pod(p).ok(
        "ip",
        &["link", "add", "eth0", "type", "veth", "peer", "name", "e0p"],
    );
    let o = n.setup(&n.node.pod(p).path(), "c1");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("step 'create veth'"), "{}", stderr(&o));
    let fwd = n.node.node.ok("sysctl", &["-n", "net.ipv4.ip_forward"]);
    assert_eq!(fwd.trim(), "0", "ip_forward restored");
    let br = n
        .node
        .node
        .ok("ip", &["-o", "addr", "show", "dev", "pwbr0"]);
    assert!(!br.contains("10.95.0.1"), "gateway address removed: {br}");
    let st = n.node.node.ok("ip", &["-o", "link", "show", "pwbr0"]);
    assert!(!st.contains(",UP"), "bridge set down again: {st}");
    assert!(n.records().is_empty());
    // A config whose bridge is the node's NIC, or lo: refused before any change.
    for nic in ["eth0", "lo"] {
        let conf = n.dir.path().join(format!("{nic}.json"));
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&n.config).unwrap()).unwrap();
        v["bridge"] = nic.into();
        std::fs::write(&conf, v.to_string()).unwrap();
        let o = shim_at(
            &n.node.node,
            &[
                "setup",
                "--netns",
                n.node.pod(p).path().to_str().unwrap(),
                "--id",
                "c2",
                "--config",
                conf.to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("bridge:") && stderr(&o).contains("not a bridge"),
            "{}",
            stderr(&o)
        );
        let addrs = n.node.node.ok("ip", &["-o", "addr", "show", "dev", nic]);
        assert!(!addrs.contains("10.95.0.1"), "{nic}: {addrs}");
    }
    assert!(n.records().is_empty());
}

#[test]
fn a_full_disk_leaves_no_reservation_or_temp_file() {
    let mut n = net("full", "10.96.0.0/24", "pwbr0", None);
    let p = n.node.add_pod("p");
    let data = n.dir.path().join("ipam");
    std::fs::create_dir_all(&data).unwrap();
    // A tiny tmpfs, filled up, as dataDir; in a private mount namespace of the shim's.
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {d} && mkdir -p {d}/{net} && touch {d}/{net}/lock \
         && (dd if=/dev/zero of={d}/fill bs=4k 2>/dev/null; true) \
         && {setup}; rc=$?; ls -A {d}/{net}; exit $rc",
        d = data.display(),
        net = n.name,
        setup = setup_line(&n, n.node.pod(p), "c1"),
    );
    let o = in_private_mounts(&script);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("No space left"), "{}", stderr(&o));
    let left: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .filter(|l| l != "lock" && l != "attachments")
        .collect();
    assert!(left.is_empty(), "left in the full dataDir: {left:?}");
    assert!(podwire_veths(&n.node.node).is_empty());
}

#[test]
fn planted_fifos_and_devices_never_block() {
    let mut n = net("fifo", "10.97.0.0/24", "pwbr0", None);
    let p = n.node.add_pod("p");
    let fifo = n.dir.path().join("fifo");
    ok("mkfifo", &[fifo.to_str().unwrap()]);
    let bounded = |c: &mut Command| -> Output {
        let mut ch = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let st = wait_for("the shim to return", Duration::from_secs(20), || {
            ch.try_wait().unwrap()
        });
        let mut out = Output {
            status: st,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        use std::io::Read;
        ch.stderr
            .take()
            .unwrap()
            .read_to_end(&mut out.stderr)
            .unwrap();
        out
    };
    // A FIFO as the pod namespace.
    let mut c = shim_in(&n.node.node);
    c.args([
        "setup",
        "--netns",
        fifo.to_str().unwrap(),
        "--id",
        "c1",
        "--config",
    ])
    .arg(&n.config);
    let o = bounded(&mut c);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // FIFOs as an address record and as the cursor: setup and GC go on.
    let dir = n.dir.path().join("ipam").join(&n.name);
    std::fs::create_dir_all(&dir).unwrap();
    ok("mkfifo", &[dir.join("10.97.0.2").to_str().unwrap()]);
    ok(
        "mkfifo",
        &[dir.join("last_reserved_ip.0").to_str().unwrap()],
    );
    let o = n.setup(&n.node.pod(p).path(), "c1");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ip_of(&o), "10.97.0.3");
    // A FIFO, a symlink and garbage as hook records: gc --state-dir reports and goes on.
    let state = n.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    ok("mkfifo", &[state.join("fifo1.json").to_str().unwrap()]);
    std::os::unix::fs::symlink("/etc/hostname", state.join("link1.json")).unwrap();
    let mut c = shim_in(&n.node.node);
    c.args([
        "gc",
        "--valid",
        "c1/eth0",
        "--state-dir",
        state.to_str().unwrap(),
        "--config",
    ])
    .arg(&n.config);
    let o = bounded(&mut c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("fifo1") && stderr(&o).contains("link1"),
        "{}",
        stderr(&o)
    );
    // The annotation naming /dev/zero (or a FIFO) as the config: refused at once.
    for cfg in ["/dev/zero", fifo.to_str().unwrap()] {
        let st = format!(
            r#"{{"ociVersion":"1.0.2","id":"a1","status":"creating","pid":1,
                "annotations":{{"podwire.io/network-config":"{cfg}"}}}}"#
        );
        let mut ch = Command::new(bin("runtime-shim"))
            .args(["hook", "--state-dir", state.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        ch.stdin.take().unwrap().write_all(st.as_bytes()).unwrap();
        let status = wait_for("the hook to return", Duration::from_secs(20), || {
            ch.try_wait().unwrap()
        });
        assert_eq!(status.code(), Some(1), "{cfg}");
    }
}

#[test]
fn routes_apply_never_replaces_the_nodes_own_routes() {
    let n = net("routes", "10.98.0.0/24", "pwbr0", None);
    node_nic(&n.node.node);
    n.node
        .node
        .ok("ip", &["route", "add", "default", "via", "192.168.50.1"]);
    let before = n.node.node.ok("ip", &["route", "show"]);
    let nodes = n.dir.path().join("nodes.json");
    let write_nodes = |cidr2: &str, cidr3: &str| {
        std::fs::write(
            &nodes,
            serde_json::json!({"items": [
                {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"},
                 "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.10"}]}},
                {"metadata": {"name": "n2"}, "spec": {"podCIDR": cidr2},
                 "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.11"}]}},
                {"metadata": {"name": "n3"}, "spec": {"podCIDR": cidr3},
                 "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.12"}]}}
            ]})
            .to_string(),
        )
        .unwrap();
    };
    let routes = |cluster: Option<&str>| {
        let mut a = vec![
            "routes",
            "--nodes",
            nodes.to_str().unwrap(),
            "--node",
            "n1",
            "--apply",
        ];
        if let Some(c) = cluster {
            a.extend(["--cluster-cidr", c]);
        }
        shim_at(&n.node.node, &a)
    };
    for (c2, c3, cluster) in [
        ("10.244.2.0/24", "0.0.0.0/0", Some("10.244.0.0/16")),
        ("10.244.2.0/24", "192.168.50.0/24", Some("10.244.0.0/16")),
        ("10.244.2.0/24", "192.168.50.0/24", Some("192.168.0.0/16")),
        ("10.244.2.0/24", "10.244.3.0/24", None),
    ] {
        write_nodes(c2, c3);
        let o = routes(cluster);
        assert_eq!(o.status.code(), Some(1), "{c3} {cluster:?}");
        assert_eq!(
            n.node.node.ok("ip", &["route", "show"]),
            before,
            "{c3}: all or nothing"
        );
    }
    write_nodes("10.244.2.0/24", "10.244.3.0/24");
    let o = routes(Some("10.244.0.0/16"));
    assert!(o.status.success(), "{}", stderr(&o));
    let after = n.node.node.ok("ip", &["route", "show"]);
    assert!(
        after.contains("10.244.3.0/24 via 192.168.50.12")
            && after.contains("default via 192.168.50.1"),
        "{after}"
    );
    // A failure part-way (n3's new InternalIP is not on a connected subnet, so the kernel
    // refuses that route after n2's new one went in): what was applied is taken back.
    std::fs::write(
        &nodes,
        serde_json::json!({"items": [
            {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.10"}]}},
            {"metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.4.0/24"},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.11"}]}},
            {"metadata": {"name": "n3"}, "spec": {"podCIDR": "10.244.3.0/24"},
             "status": {"addresses": [{"type": "InternalIP", "address": "10.123.0.3"}]}}
        ]})
        .to_string(),
    )
    .unwrap();
    let o = routes(Some("10.244.0.0/16"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        n.node.node.ok("ip", &["route", "show"]),
        after,
        "all or nothing"
    );
}

#[test]
fn executed_tools_come_from_system_dirs_with_two_capabilities() {
    let mut n = net("caps", "10.99.0.0/24", "pwbr0", None);
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&n.config).unwrap()).unwrap();
    v["ipMasq"] = true.into();
    std::fs::write(&n.config, v.to_string()).unwrap();
    // Fake iptables first in PATH and in the working directory: never run.
    let tools = n.dir.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let planted = n.dir.path().join("planted-ran");
    for dir in [&tools, &n.dir.path().to_path_buf()] {
        let f = dir.join("iptables");
        std::fs::write(
            &f,
            format!("#!/bin/sh\ntouch {}\nexit 0\n", planted.display()),
        )
        .unwrap();
        run("chmod", &["0755", f.to_str().unwrap()]);
    }
    // The real iptables, wrapped (in a private mount namespace) to record the capability
    // sets it runs with.
    let report = n.dir.path().join("caps.txt");
    let real = n.dir.path().join("real");
    std::fs::create_dir_all(&real).unwrap();
    let target = std::fs::canonicalize(podwire_testkit::oci::find("iptables")).unwrap();
    std::fs::copy(&target, real.join("iptables")).unwrap();
    let wrapper = n.dir.path().join("wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ngrep '^Cap' /proc/self/status > {}\nexec {} \"$@\"\n",
            report.display(),
            real.join("iptables").display()
        ),
    )
    .unwrap();
    run("chmod", &["0755", wrapper.to_str().unwrap()]);
    let p = n.node.add_pod("p");
    // Setup execs nothing (masquerade is netlink); `unmasq` runs iptables to remove
    // the rules of versions before the nftables table.
    let script = format!(
        "mount --bind {w} {t} && cd {cwd} && export PATH={tools}:/usr/sbin:/usr/bin:/sbin:/bin \
         && {setup} && nsenter --net={node} -- {shim} unmasq --config {config}",
        w = wrapper.display(),
        t = target.display(),
        cwd = n.dir.path().display(),
        tools = tools.display(),
        setup = setup_line(&n, n.node.pod(p), "caps1"),
        node = n.node.node.path().display(),
        shim = bin("runtime-shim").display(),
        config = n.config.display(),
    );
    let o = in_private_mounts(&script);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!planted.exists(), "a planted iptables ran");
    let caps = std::fs::read_to_string(&report).expect("the shim ran the system iptables");
    let field = |name: &str| {
        let hex = caps
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:\t")))
            .unwrap();
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    // CAP_NET_ADMIN 12, CAP_NET_RAW 13: nothing else, in any set.
    let want = (1u64 << 12) | (1 << 13);
    assert_eq!(field("CapBnd"), want, "{caps}");
    assert_eq!(field("CapPrm") & !want, 0, "{caps}");
    assert_eq!(field("CapEff") & !want, 0, "{caps}");
    assert_eq!(field("CapInh") | field("CapAmb"), 0, "{caps}");
    // Without CAP_SYS_PTRACE the error names it.
    let o = run(
        "nsenter",
        &[
            &format!("--net={}", n.node.node.path().display()),
            "--",
            "setpriv",
            "--bounding-set",
            "-sys_ptrace",
            "--",
            bin("runtime-shim").to_str().unwrap(),
            "teardown",
            "--id",
            "caps1",
            "--config",
            n.config.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("missing capability CAP_SYS_PTRACE"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn join_keeps_the_owner_of_config_json() {
    let n = net("join", "10.90.0.0/24", "pwbr0", None);
    let bundle = n.dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let cfg = bundle.join("config.json");
    std::fs::write(
        &cfg,
        r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"},
            "linux":{"namespaces":[{"type":"network"},{"type":"mount"}]}}"#,
    )
    .unwrap();
    run("chown", &["1234:2345", cfg.to_str().unwrap()]);
    run("chmod", &["0640", cfg.to_str().unwrap()]);
    let o = Command::new(bin("runtime-shim"))
        .args(["join", "--sandbox"])
        .arg(n.node.node.path())
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&cfg).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 2345, 0o640));
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains(&n.node.node.path().display().to_string())
    );
}

/// A small deterministic generator (no dependency): xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Life {
    /// An operation is running or was killed: may hold anything.
    Unknown,
    Live,
    Gone,
}

/// Every pod's eth0 IPv4 address in the node, by pod: no address may appear twice.
fn duplicate_addresses(pods: &[(String, PathBuf)]) -> Vec<String> {
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut dups = Vec::new();
    for (id, ns) in pods {
        let out = run(
            "nsenter",
            &[
                &format!("--net={}", ns.display()),
                "--",
                "ip",
                "-o",
                "-4",
                "addr",
                "show",
                "dev",
                "eth0",
            ],
        );
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(a) = l.split_whitespace().nth(3) else {
                continue;
            };
            if let Some(other) = seen.insert(a.to_string(), id.clone()) {
                dups.push(format!("{a} held by {id} and {other}"));
            }
        }
    }
    dups
}

#[test]
fn soak_four_workers_three_hundred_random_operations_two_networks_one_bridge() {
    const WORKERS: u64 = 4;
    const OPS: u64 = 300;
    const SLOTS: u64 = 6;
    let shared = TempDir::new("soak");
    let a = net("soaka", "10.89.1.0/26", "pwbr0", Some(&shared));
    node_nic(&a.node.node);
    let node = &a.node.node;
    node.ok("ip", &["route", "add", "default", "via", "192.168.50.1"]);
    node.ok("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    let b_name = "pwsoakb".to_string();
    let b_conf = second_network(&a, &shared, &b_name, "10.89.2.0/26");
    let confs = [a.config.clone(), b_conf.clone()];
    let names = [a.name.clone(), b_name.clone()];
    // Both masquerade: every ADD heals its network's table while DELs of last pods and
    // GCs remove it.
    for c in &confs {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(c).unwrap()).unwrap();
        v["ipMasq"] = true.into();
        std::fs::write(c, v.to_string()).unwrap();
    }
    let node_routes = || -> Vec<String> {
        node.ok("ip", &["route", "show"])
            .lines()
            .filter(|l| !l.contains("pwbr0"))
            .map(String::from)
            .collect()
    };
    let node_links = || -> Vec<String> {
        node.links()
            .into_iter()
            .filter(|l| l != "pwbr0" && !(l.len() == 14 && l.starts_with("pw")))
            .collect()
    };
    let sysctls = || {
        node.ok(
            "sysctl",
            &["net.ipv4.ip_forward", "net.ipv4.conf.eth0.forwarding"],
        )
    };
    let (routes0, links0, sysctl0) = (node_routes(), node_links(), sysctls());
    // Slot k of worker w: pod id w<w>s<k>, on network k % 2, in its own namespace.
    let pods: Vec<(String, usize, Ns)> = (0..WORKERS)
        .flat_map(|w| (0..SLOTS).map(move |k| (w, k)))
        .map(|(w, k)| {
            (
                format!("w{w}s{k}"),
                (k % 2) as usize,
                Ns::new(&format!("s{w}{k}")),
            )
        })
        .collect();
    let life: std::sync::Mutex<std::collections::HashMap<String, Life>> =
        std::sync::Mutex::new(pods.iter().map(|p| (p.0.clone(), Life::Gone)).collect());
    let errors: std::sync::Mutex<Vec<String>> = Default::default();
    let counts: std::sync::Mutex<std::collections::BTreeMap<&str, u64>> = Default::default();
    let shim = |net: usize, args: &[&str]| -> Command {
        let mut c = shim_in(node);
        c.args(args)
            .arg("--config")
            .arg(&confs[net])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (pods, life, errors, counts, shim) = (&pods, &life, &errors, &counts, &shim);
            let names = &names;
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1).wrapping_mul(0x1234_5678_9abc));
                let mine: Vec<&(String, usize, Ns)> = pods
                    .iter()
                    .filter(|p| p.0.starts_with(&format!("w{w}s")))
                    .collect();
                for i in 0..OPS / WORKERS {
                    let (id, net, ns) = mine[rng.next(SLOTS) as usize];
                    let path = ns.path();
                    let p = path.to_str().unwrap();
                    let op = ["ADD", "DEL", "CHECK", "GC", "KILL"][rng.next(5) as usize];
                    *counts.lock().unwrap().entry(op).or_default() += 1;
                    let was = life.lock().unwrap()[id];
                    match op {
                        "ADD" => {
                            life.lock().unwrap().insert(id.clone(), Life::Unknown);
                            let o = shim(*net, &["setup", "--netns", p, "--id", id])
                                .output()
                                .unwrap();
                            let stays = was == Life::Live && stderr(&o).contains("already set up");
                            let now = if o.status.success() || stays {
                                Life::Live
                            } else {
                                Life::Unknown
                            };
                            life.lock().unwrap().insert(id.clone(), now);
                        }
                        "DEL" => {
                            life.lock().unwrap().insert(id.clone(), Life::Unknown);
                            let o = shim(*net, &["teardown", "--netns", p, "--id", id])
                                .output()
                                .unwrap();
                            if o.status.success() {
                                life.lock().unwrap().insert(id.clone(), Life::Gone);
                            } else {
                                errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("DEL {id}: {}", stderr(&o)));
                            }
                        }
                        "CHECK" => {
                            if was == Life::Live {
                                let o = shim(*net, &["check", "--netns", p, "--id", id])
                                    .output()
                                    .unwrap();
                                if !o.status.success() && life.lock().unwrap()[id] == Life::Live {
                                    errors
                                        .lock()
                                        .unwrap()
                                        .push(format!("CHECK {id}: {}", stderr(&o)));
                                }
                            }
                        }
                        "GC" => {
                            let gc_net = rng.next(2) as usize;
                            // Everything that is live or may be (in flight, killed) stays.
                            let valid: Vec<String> = pods
                                .iter()
                                .filter(|q| {
                                    q.1 == gc_net && life.lock().unwrap()[&q.0] != Life::Gone
                                })
                                .map(|q| format!("{}/eth0", q.0))
                                .collect();
                            let mut args = vec!["gc"];
                            for v in &valid {
                                args.extend(["--valid", v.as_str()]);
                            }
                            let o = shim(gc_net, &args).output().unwrap();
                            if !o.status.success() {
                                errors.lock().unwrap().push(format!(
                                    "GC {}: {}",
                                    names[gc_net],
                                    stderr(&o)
                                ));
                            }
                        }
                        _ => {
                            // SIGKILL an ADD or a DEL at a random point of its run.
                            life.lock().unwrap().insert(id.clone(), Life::Unknown);
                            let verb = if rng.next(2) == 0 {
                                "setup"
                            } else {
                                "teardown"
                            };
                            let mut ch = shim(*net, &[verb, "--netns", p, "--id", id])
                                .spawn()
                                .unwrap();
                            std::thread::sleep(Duration::from_micros(rng.next(8000)));
                            let _ = ch.kill();
                            let _ = ch.wait();
                        }
                    }
                    if i % 15 == 14 {
                        let live: Vec<(String, PathBuf)> =
                            pods.iter().map(|q| (q.0.clone(), q.2.path())).collect();
                        let d = duplicate_addresses(&live);
                        if !d.is_empty() {
                            errors.lock().unwrap().push(format!("duplicates: {d:?}"));
                        }
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    assert!(errors.is_empty(), "{} errors: {errors:#?}", errors.len());
    let all: Vec<(String, PathBuf)> = pods.iter().map(|q| (q.0.clone(), q.2.path())).collect();
    assert!(duplicate_addresses(&all).is_empty());
    // Final DEL of every pod, then GC of both networks: nothing of any pod is left.
    for (id, net, ns) in &pods {
        let o = shim(
            *net,
            &[
                "teardown",
                "--netns",
                ns.path().to_str().unwrap(),
                "--id",
                id,
            ],
        )
        .output()
        .unwrap();
        assert!(o.status.success(), "{id}: {}", stderr(&o));
    }
    for net in 0..2 {
        let o = shim(net, &["gc"]).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(podwire_veths(node).is_empty(), "{:?}", podwire_veths(node));
    for n in &names {
        let dir = shared.path().join("ipam").join(n);
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f != "lock" && f != "attachments" && !f.starts_with("last_reserved_ip."))
            .collect();
        assert!(left.is_empty(), "{n}: {left:?}");
        assert!(
            std::fs::read_dir(dir.join("attachments"))
                .unwrap()
                .next()
                .is_none(),
            "{n}: lock files left"
        );
    }
    for (id, _, ns) in &pods {
        assert_eq!(ns.links(), ["lo"], "{id}");
    }
    assert_eq!(node_routes(), routes0, "node routes");
    assert_eq!(node_links(), links0, "node links");
    assert_eq!(sysctls(), sysctl0, "sysctls");
    let ruleset = node.ok("nft", &["list", "ruleset"]);
    assert!(ruleset.trim().is_empty(), "tables left: {ruleset}");
    eprintln!("soak: {:?}", counts.into_inner().unwrap());
}

#[test]
fn gc_skips_an_attachment_whose_add_or_del_is_in_flight() {
    let mut n = net("busy", "10.88.5.0/24", "pwbr0", None);
    let p = n.node.add_pod("p");
    assert!(n.setup(&n.node.pod(p).path(), "c1").status.success());
    // Hold c1's attachment lock, as an ADD or DEL of it in flight would.
    let veth = runtime_shim::plan::host_veth_name("c1", "eth0");
    let held = runtime_shim::ipam::AttachmentLock::lock(&n.data_dir(), &n.name, &veth, true)
        .unwrap()
        .unwrap();
    let o = n.shim(&["gc"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        n.records().len(),
        1,
        "the in-flight attachment keeps its address"
    );
    assert_eq!(n.host_veths(), vec![veth.clone()]);
    drop(held);
    let o = n.shim(&["gc"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(n.records().is_empty() && n.host_veths().is_empty());
}
