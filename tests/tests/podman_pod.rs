//! End to end with podman 4.3, run inside a throwaway node namespace, our pause image as
//! `--infra-image`, networked by runtime-shim two ways: as an OCI hook (the shipped
//! hooks.d files, `--network none`) and as a CNI plugin (`network_backend = "cni"`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::Path;
use std::time::Duration;

use podwire_testkit::podman::{Podman, build_pause_image};
use podwire_testkit::*;
use podwire_testkit::{http, oci};
use serde_json::{Value, json};

const PAUSE: &str = "localhost/podwire/pause:e2e";
const BUSYBOX: &str = "localhost/pwt-busybox:e2e";

fn net_conf(name: &str, bridge: &str, subnet: &str, ipam: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": name, "type": "runtime-shim", "bridge": bridge,
        "isDefaultGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": ipam}
    })
}

fn images(p: &Podman, tmp: &Path) {
    let archive = build_pause_image(tmp, PAUSE);
    p.ok(&["load", "-i", archive.to_str().unwrap()]);
    let rootfs = tmp.join("rootfs");
    oci::build_rootfs(&rootfs, &pause_bin());
    fs::write(rootfs.join("www/index.html"), "hello from podman pod a\n").unwrap();
    p.import(&rootfs, BUSYBOX, r#"CMD ["/bin/sh"]"#);
}

/// Pods A (httpd app) and B; B fetches A's address. Returns A's IP.
fn two_pods_cross_traffic(p: &mut Podman, network: &str) -> String {
    let (a, b) = (unique_name("pa"), unique_name("pb"));
    for pod in [&a, &b] {
        p.pods.push(pod.clone());
        p.ok(&[
            "pod",
            "create",
            "--name",
            pod,
            "--network",
            network,
            "--infra-image",
            PAUSE,
        ]);
        p.ok(&["pod", "start", pod]);
    }
    p.ok(&[
        "run", "-d", "--pod", &a, BUSYBOX, "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    // A container of pod A sees the pod's eth0 (the infra's network namespace).
    let shown = p.ok(&[
        "run", "--rm", "--pod", &a, BUSYBOX, "ip", "-o", "-4", "addr", "show", "eth0",
    ]);
    let ip = shown
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 on eth0 in pod A: {shown}"))
        .to_string();
    let script = oci::http_get_script(&ip, 80);
    let body = wait_for("pod B fetching pod A", Duration::from_secs(20), || {
        let o = p.run(&["run", "--rm", "--pod", &b, BUSYBOX, "sh", "-c", &script]);
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.contains("hello from").then_some(s)
    });
    assert!(body.contains("hello from podman pod a"), "{body}");
    ip
}

fn ports(node: &Node, bridge: &str) -> usize {
    let o = node
        .node
        .run("ip", &["-o", "link", "show", "master", bridge]);
    String::from_utf8_lossy(&o.stdout).lines().count()
}

fn reservations(ipam: &Path, network: &str) -> usize {
    fs::read_dir(ipam.join(network))
        .map(|r| {
            r.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn podman_pods_wired_by_the_shipped_oci_hooks() {
    require_root();
    let node = Node::new("pmhook");
    let tmp = TempDir::new("pmhook");
    let ipam = tmp.path().join("ipam");
    let state = tmp.path().join("state");
    let config = tmp.path().join("net.json");
    fs::write(
        &config,
        net_conf("pwpmhook", "pwbr0", "10.82.0.0/24", &ipam).to_string(),
    )
    .unwrap();
    // The shipped hooks.d files, pointed at this build, this config and a private state dir.
    let hooks = tmp.path().join("hooks.d");
    fs::create_dir_all(&hooks).unwrap();
    for stage in ["createRuntime", "poststop"] {
        let name = format!("podwire-{stage}.json");
        let shipped = workspace_root().join("runtime-shim/hooks.d").join(&name);
        let mut h: Value = serde_json::from_slice(&fs::read(&shipped).unwrap()).unwrap();
        assert_eq!(h["version"], "1.0.0");
        assert_eq!(h["when"]["commands"], json!(["^/pause$"]));
        h["hook"]["path"] = json!(bin("runtime-shim"));
        h["hook"]["args"] = oci::hook_args(stage, &config, &state);
        fs::write(hooks.join(&name), h.to_string()).unwrap();
    }
    let mut p = Podman::new("netavark", "", Some(&node.node.path()));
    p.hooks_dir = Some(hooks);
    images(&p, tmp.path());
    let ip = two_pods_cross_traffic(&mut p, "none");
    assert!(ip.starts_with("10.82.0."), "{ip}");
    assert_eq!(ports(&node, "pwbr0"), 2);
    let infra_ids: Vec<String> = fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".json")
                .map(String::from)
        })
        .collect();
    assert_eq!(infra_ids.len(), 2, "one record per pod infra");
    for id in &infra_ids {
        assert!(
            netns::path_of(&runtime_shim::hook::pin_name(id))
                .unwrap()
                .exists()
        );
    }
    // Only the infra containers were wired: apps and clients did not match ^/pause$.
    assert_eq!(reservations(&ipam, "pwpmhook"), 2);
    for pod in std::mem::take(&mut p.pods) {
        let o = p.remove_pod(&pod);
        assert!(o.status.success(), "pod rm: {o:?}");
    }
    assert_eq!(ports(&node, "pwbr0"), 0, "veths left after pod rm");
    assert_eq!(
        reservations(&ipam, "pwpmhook"),
        0,
        "addresses left after pod rm"
    );
    assert_eq!(fs::read_dir(&state).unwrap().count(), 0, "records left");
    for id in &infra_ids {
        let pin = netns::path_of(&runtime_shim::hook::pin_name(id)).unwrap();
        assert!(!pin.exists(), "{} left", pin.display());
    }
}

#[test]
fn podman_pods_networked_by_the_cni_plugin() {
    require_root();
    let node = Node::new("pmcni");
    let tmp = TempDir::new("pmcni");
    let ipam = tmp.path().join("ipam");
    let name = format!("pwpmcni{}", std::process::id());
    // The plugin dir holds runtime-shim under its CNI type name.
    let plugins = tmp.path().join("cni-bin");
    fs::create_dir_all(&plugins).unwrap();
    fs::copy(bin("runtime-shim"), plugins.join("runtime-shim")).unwrap();
    let mut p = Podman::new(
        "cni",
        &format!("cni_plugin_dirs = [\"{}\"]", plugins.display()),
        Some(&node.node.path()),
    );
    let mut plugin = net_conf(&name, "pwbr1", "10.83.0.0/24", &ipam);
    plugin.as_object_mut().unwrap().remove("cniVersion");
    plugin.as_object_mut().unwrap().remove("name");
    let conflist = json!({"cniVersion": "1.0.0", "name": name, "plugins": [plugin]});
    fs::write(
        p.net_d().join(format!("{name}.conflist")),
        conflist.to_string(),
    )
    .unwrap();
    let ls = p.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(ls.contains(&format!("{name} runtime-shim")), "{ls}");
    images(&p, tmp.path());
    let ip = two_pods_cross_traffic(&mut p, &name);
    assert!(ip.starts_with("10.83.0."), "{ip}");
    assert_eq!(ports(&node, "pwbr1"), 2);
    assert_eq!(reservations(&ipam, &name), 2);
    for pod in std::mem::take(&mut p.pods) {
        let o = p.remove_pod(&pod);
        assert!(o.status.success(), "pod rm: {o:?}");
    }
    assert_eq!(ports(&node, "pwbr1"), 0, "veths left after pod rm");
    assert_eq!(reservations(&ipam, &name), 0, "addresses left after pod rm");
}

fn nft_table(node: &Node, network: &str) -> Option<String> {
    let o = node.node.run(
        "nft",
        &["list", "table", "inet", &format!("podwire-{network}")],
    );
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn podman_containers_with_static_ip_mac_ports_two_networks_and_reload() {
    require_root();
    require_tool("nft");
    let node = Node::new("pmuser");
    let tmp = TempDir::new("pmuser");
    let ipam = tmp.path().join("ipam");
    let (one, two) = (
        format!("pwpmu1{}", std::process::id()),
        format!("pwpmu2{}", std::process::id()),
    );
    let plugins = tmp.path().join("cni-bin");
    fs::create_dir_all(&plugins).unwrap();
    fs::copy(bin("runtime-shim"), plugins.join("runtime-shim")).unwrap();
    let p = Podman::new(
        "cni",
        &format!(
            "cni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]",
            plugins.display()
        ),
        Some(&node.node.path()),
    );
    for (name, bridge, subnet) in [
        (&one, "pwbr2", "10.84.0.0/24"),
        (&two, "pwbr3", "10.85.0.0/24"),
    ] {
        // The conflist the docs ship, with this test's bridge, subnet and IPAM dir.
        let c = shipped_conflist("podman.conflist", name, bridge, subnet, &ipam);
        fs::write(p.net_d().join(format!("{name}.conflist")), c.to_string()).unwrap();
    }
    images(&p, tmp.path());
    let inspect = |ctr: &str, what: &str| p.ok(&["inspect", "-f", what, ctr]);
    let eth = |ctr: &str, dev: &str| p.ok(&["exec", ctr, "ip", "-o", "addr", "show", dev]);

    // --ip, --mac-address and -p through the chained portmap.
    let web = unique_name("web");
    p.ok(&[
        "run",
        "-d",
        "--name",
        &web,
        "--network",
        &one,
        "--ip",
        "10.84.0.50",
        "--mac-address",
        "02:84:00:00:00:50",
        "-p",
        "18080:80",
        BUSYBOX,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let shown = eth(&web, "eth0");
    assert!(shown.contains("10.84.0.50/24"), "{shown}");
    let link = p.ok(&["exec", &web, "ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("02:84:00:00:00:50"), "{link}");
    // The published port, reached at the node's own address on the bridge (portmap's
    // OUTPUT DNAT), from inside the node.
    let body = wait_for("the published port", Duration::from_secs(20), || {
        http::get(&node.node, "10.84.0.1", 18080, "/").filter(|b| b.contains("hello"))
    });
    assert!(body.contains("hello from podman pod a"), "{body}");
    assert!(nft_table(&node, &one).is_some(), "the network's masquerade");

    // A firewall reload wipes the node's rules; `podman network reload` puts everything
    // back and keeps the static address.
    node.node.ok("nft", &["flush", "ruleset"]);
    assert!(nft_table(&node, &one).is_none());
    p.ok(&["network", "reload", &web]);
    assert!(
        eth(&web, "eth0").contains("10.84.0.50/24"),
        "reload kept the address"
    );
    assert!(
        nft_table(&node, &one).is_some(),
        "reload healed the masquerade"
    );
    let body = wait_for(
        "the published port after reload",
        Duration::from_secs(20),
        || http::get(&node.node, "10.84.0.1", 18080, "/").filter(|b| b.contains("hello")),
    );
    assert!(body.contains("hello"), "{body}");

    // A container on two networks: both interfaces addressed, one default route (that of
    // the network set up first: podman 4.3 sets networks up in map order, which varies).
    let both = unique_name("both");
    p.ok(&[
        "run",
        "-d",
        "--name",
        &both,
        "--network",
        &format!("{one},{two}"),
        BUSYBOX,
        "sleep",
        "600",
    ]);
    let routes = p.ok(&["exec", &both, "ip", "route"]);
    assert_eq!(routes.matches("default").count(), 1, "{routes}");
    let dev_of = |prefix: &str| {
        ["eth0", "eth1"]
            .into_iter()
            .find(|d| eth(&both, d).contains(prefix))
            .unwrap_or_else(|| panic!("no interface in {prefix}x"))
    };
    let (d1, d2) = (dev_of("10.84.0."), dev_of("10.85.0."));
    assert_ne!(d1, d2);
    assert!(
        routes.contains(&format!("default via 10.84.0.1 dev {d1}"))
            || routes.contains(&format!("default via 10.85.0.1 dev {d2}")),
        "the default route goes through its own network's gateway: {routes}"
    );
    let nets = inspect(
        &both,
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
    );
    assert!(
        nets.contains(&format!("{one}=10.84.0.")) && nets.contains(&format!("{two}=10.85.0.")),
        "{nets}"
    );

    // rm -f leaves nothing of ours: no port on either bridge, no address, no table.
    for ctr in [&web, &both] {
        p.ok(&["rm", "-f", "-t", "0", ctr]);
    }
    for (name, bridge) in [(&one, "pwbr2"), (&two, "pwbr3")] {
        assert_eq!(ports(&node, bridge), 0, "{bridge}: veths left after rm -f");
        assert_eq!(
            reservations(&ipam, name),
            0,
            "{name}: addresses left after rm -f"
        );
        assert!(
            nft_table(&node, name).is_none(),
            "{name}: table left after rm -f"
        );
    }
}
