//! The fuzz targets' bodies. Each takes raw bytes, drives one input parser of podwire the
//! way the binaries do, and panics when an invariant breaks: a panic, a hang (libFuzzer's
//! timeout), or output that could carry input into a rule, a path or a JSON answer. The
//! `fuzz_targets/` binaries are one-line wrappers; `tests/replay.rs` runs the seeds and
//! every saved crash through the same functions in `make test`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use ipt::{Config, Family, LocalDetector, SyncPlan};
use iptables_gen as ipt;
use runtime_shim::cni::{self, Command, Request};
use runtime_shim::config::next_ip;
use runtime_shim::hook;
use runtime_shim::ipam::Allocation;
use runtime_shim::join::{self, Sandbox, Target};
use runtime_shim::result::{CniResult, Interface, IpConfig};
use runtime_shim::{masq, plan};
use serde_json::Value;

/// An answer printed on a runtime's stdout: one line of valid JSON.
fn assert_json_line(s: &str, what: &str) -> Value {
    assert!(!s.contains('\n'), "{what}: newline in {s:?}");
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{what}: invalid JSON ({e}): {s:?}"))
}

fn assert_error_json(s: &str) {
    let v = assert_json_line(s, "error JSON");
    let code = v["code"]
        .as_u64()
        .expect("error JSON without a numeric code");
    assert!(
        matches!(code, 1..=7 | 11 | 50 | 100..=103),
        "unexpected error code {code}"
    );
    let version = v["cniVersion"]
        .as_str()
        .expect("error JSON without cniVersion");
    assert!(
        cni::SUPPORTED_VERSIONS.contains(&version),
        "error JSON in unsupported version {version:?}"
    );
    assert!(v["msg"].is_string() && v["details"].is_string());
}

/// A kernel interface name as the kernel takes it.
fn assert_ifname(name: &str, what: &str) {
    assert!(
        !name.is_empty()
            && name.len() <= 15
            && name != "."
            && name != ".."
            && !name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0),
        "{what}: {name:?} is not a valid interface name"
    );
}

/// `data` is CNI environment lines (`KEY=VALUE`), a blank line, then the netconf on stdin.
pub fn cni_request(data: &[u8]) {
    let (env_part, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let env: BTreeMap<String, String> = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let req = match Request::from_env(|k| env.get(k).cloned()) {
        Ok(r) => r,
        Err(e) => return assert_error_json(&cni::error_json(None, cni::LATEST, &e)),
    };
    if req.command == Command::Version {
        let v = assert_json_line(&cni::version_json(), "VERSION");
        assert_eq!(v["cniVersion"], cni::LATEST);
        return;
    }
    if matches!(req.command, Command::Add | Command::Del | Command::Check) {
        runtime_shim::validate_container_id(&req.container_id).expect("accepted container id");
        assert_ifname(&req.ifname, "CNI_IFNAME");
    }
    let input = match cni::parse_input(&req, stdin) {
        Ok(i) => i,
        Err(e) => {
            let version = cni::requested_version(stdin);
            return assert_error_json(&cni::error_json(Some(req.command), &version, &e));
        }
    };
    let net = &input.net;
    assert!(cni::SUPPORTED_VERSIONS.contains(&net.cni_version.as_str()));
    assert_ifname(&net.bridge, "bridge");
    assert!(net.data_dir.is_absolute());
    assert!(
        !net.data_dir.components().any(|c| c == Component::ParentDir),
        "dataDir {} escapes",
        net.data_dir.display()
    );
    assert!(
        net.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
        "network name {:?}",
        net.name
    );
    if req.command == Command::Gc {
        assert!(input.valid.is_some());
    }

    // What setup would plan with the first address of each range set.
    let allocs: Vec<Allocation> = net
        .range_sets
        .iter()
        .enumerate()
        .filter_map(|(set, rs)| {
            // host-local's first pick: the range start, skipping the gateway.
            let r = rs.first()?;
            let ip = if r.start == r.gateway {
                next_ip(r.start).filter(|&ip| r.contains(ip))?
            } else {
                r.start
            };
            Some(Allocation {
                ip,
                range: r.clone(),
                set,
            })
        })
        .collect();
    for a in &allocs {
        assert!(a.range.contains(a.ip), "range start outside its range");
        assert!(a.range.subnet.contains(&a.range.gateway));
    }
    let id = if req.container_id.is_empty() {
        "fuzz"
    } else {
        &req.container_id
    };
    let ifname = if req.ifname.is_empty() {
        "eth0"
    } else {
        &req.ifname
    };
    let p = plan::plan(net, id, ifname, &allocs);
    assert_ifname(&p.host_veth, "host veth");
    assert_ne!(p.host_veth, net.bridge);
    if let Some(t) = masq::Policy::of(net).table() {
        // nf_tables' name limit; comments within nft's.
        assert!(t.name.len() < 256, "table name {}", t.name);
        for (chain, comment) in t.rule_comments() {
            assert!(
                comment.len() <= runtime_shim::nft::COMMENT_MAX,
                "{chain}: {comment}"
            );
        }
    }
    for (_, ip) in &input.requested.ips {
        assert!(
            net.range_sets.iter().flatten().any(|r| r.contains(*ip)),
            "a requested address outside every range was accepted: {ip}"
        );
    }

    // The answer ADD would print, chained after prevResult.
    let ours = CniResult {
        cni_version: net.cni_version.clone(),
        interfaces: vec![Interface {
            name: ifname.to_string(),
            sandbox: req.netns.as_ref().map(|n| n.display().to_string()),
            ..Default::default()
        }],
        ips: p
            .pod_addrs
            .iter()
            .zip(&p.gateways)
            .map(|(a, g)| IpConfig {
                address: a.to_string(),
                gateway: Some(g.to_string()),
                interface: Some(0),
            })
            .collect(),
        routes: Vec::new(),
        dns: net.dns.clone().unwrap_or(Value::Null),
    };
    let out = match input.prev {
        Some(prev) => {
            let n = prev.interfaces.len();
            let merged = cni::merge(prev, ours);
            assert!(
                merged
                    .ips
                    .iter()
                    .rev()
                    .take(p.pod_addrs.len())
                    .all(|ip| ip.interface == Some(n))
            );
            merged
        }
        None => ours,
    };
    let text = cni::result_json(&out, &net.cni_version).expect("result renders");
    let v = assert_json_line(&text, "result");
    assert_eq!(v["cniVersion"].as_str(), Some(net.cni_version.as_str()));
}

/// `data` is the OCI state JSON a runtime writes on a hook's stdin.
pub fn oci_state(data: &[u8]) {
    let Ok(state) = hook::parse_state(data) else {
        return;
    };
    runtime_shim::validate_container_id(&state.id).expect("accepted id");
    // Whatever the id, the pin and the record stay in their directories.
    let pin = hook::pin_name(&state.id);
    assert!(
        pin.len() <= 128 && !pin.contains('/') && pin != "." && pin != "..",
        "pin name {pin:?}"
    );
    let dir = Path::new("/run/podwire");
    let rec = hook::record_path(dir, &state.id);
    assert_eq!(
        rec.parent(),
        Some(dir),
        "record path {} escapes",
        rec.display()
    );
    assert!(
        rec.components()
            .all(|c| !matches!(c, Component::ParentDir | Component::CurDir))
    );
    let st = hook::stage(&state, None).expect("a stage is always inferred");
    let live = state.pid.is_some_and(|p| p > 0);
    if !live {
        assert_eq!(st, hook::Stage::Teardown);
    }
    for explicit in ["createRuntime", "prestart", "poststop"] {
        hook::stage(&state, Some(explicit)).expect("named stages are accepted");
    }
    if let Some(name) = state.annotations.get(hook::IFNAME_ANNOTATION)
        && runtime_shim::validate_ifname("ifname", name).is_ok()
    {
        assert_ifname(name, "ifname annotation");
    }
}

fn count_ns(v: &Value, kind: &str) -> Vec<String> {
    v["linux"]["namespaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["type"] == kind)
                .map(|n| n["path"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `data` is an app container's config.json; the first line may also be tried as a
/// `--sandbox` argument.
pub fn join_rewrite(data: &[u8]) {
    if let Some(line) = data.split(|&b| b == b'\n').next()
        && let Ok(s) = std::str::from_utf8(line)
    {
        match Sandbox::parse(s) {
            Ok(Sandbox::Id(id)) => runtime_shim::validate_container_id(&id).expect("id"),
            Ok(Sandbox::Pid(p)) => assert!(p > 0),
            Ok(Sandbox::Path(p)) => assert!(p.is_absolute()),
            Err(_) => {}
        }
    }
    let target = Target {
        net: PathBuf::from("/run/netns/podwire-fuzz"),
        ipc: Some(PathBuf::from("/proc/4242/ns/ipc")),
        uts: Some(PathBuf::from("/proc/4242/ns/uts")),
    };
    let path = Path::new("/bundle/config.json");
    let Ok(out) = join::rewrite(data, &target, path) else {
        return;
    };
    runtime_shim::oci::parse_config(&out).expect("output is an OCI config");
    let v: Value = serde_json::from_slice(&out).expect("output is JSON");
    for (kind, want) in [
        ("network", "/run/netns/podwire-fuzz"),
        ("ipc", "/proc/4242/ns/ipc"),
        ("uts", "/proc/4242/ns/uts"),
    ] {
        assert_eq!(
            count_ns(&v, kind),
            vec![want.to_string()],
            "{kind} namespaces"
        );
    }
    assert!(v.get("hostname").is_none() && v.get("domainname").is_none());
    let again = join::rewrite(&out, &target, path).expect("rewritten config rewrites");
    assert_eq!(again, out, "rewrite is not idempotent");
}

/// Characters kube-proxy's comments may hold once quoted.
fn comment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || " ./:_->;[]".contains(c)
}

/// Restore text that input cannot have bent: printable ASCII lines, quotes only in pairs
/// around plain comment text, nothing iptables-restore would read as an escape.
fn assert_restore_text(text: &str) {
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line in restore text");
        assert!(
            line.chars()
                .all(|c| (' '..='~').contains(&c) && c != '\'' && c != '\\'),
            "odd character in {line:?}"
        );
        let quoted: Vec<&str> = line.split('"').collect();
        assert!(quoted.len() % 2 == 1, "unbalanced quotes in {line:?}");
        for (i, part) in quoted.iter().enumerate() {
            if i % 2 == 1 {
                assert!(
                    part.chars().all(comment_char),
                    "odd comment {part:?} in {line:?}"
                );
                assert!(
                    quoted[i - 1].ends_with("--comment "),
                    "quotes outside a comment in {line:?}"
                );
            }
        }
        assert!(
            line.starts_with('*')
                || line.starts_with(':')
                || line.starts_with("-A ")
                || line.starts_with("-X ")
                || line == "COMMIT",
            "unexpected line {line:?}"
        );
    }
}

/// `data` is one option byte (family, masquerade-all, local detector, nodeport addresses,
/// random-fully, node name, nfacct, localhost nodeports), then `kubectl get -o json` text.
pub fn iptables_gen(data: &[u8]) {
    let Some((&flags, json)) = data.split_first() else {
        return;
    };
    let mut objs = ipt::model::Objects::default();
    if ipt::model::parse(json, &mut objs).is_err() {
        return;
    }
    let v6 = flags & 1 != 0;
    let net = |s4: &str, s6: &str| (if v6 { s6 } else { s4 }).parse().expect("literal CIDR");
    let mut cfg = Config {
        family: if v6 { Family::V6 } else { Family::V4 },
        masquerade_all: flags & 2 != 0,
        random_fully: flags & 16 != 0,
        localhost_nodeports: flags & 128 == 0,
        ..Config::default()
    };
    if flags & 4 != 0 {
        cfg.local_detector = LocalDetector::ClusterCidr(net("10.244.0.0/16", "fd00:10:244::/48"));
    }
    if flags & 8 != 0 {
        cfg.nodeport_addresses = vec![net("192.168.0.0/24", "fd00:1::/64")];
        cfg.node_addresses = vec![if v6 {
            IpAddr::from([0xfd00, 1, 0, 0, 0, 0, 0, 5])
        } else {
            IpAddr::from([192, 168, 0, 5])
        }];
    }
    if flags & 32 != 0 {
        cfg.node_name = "node-a".into();
        cfg.node_ip = cfg.node_addresses.first().copied();
    }
    if flags & 64 != 0 {
        cfg.nfacct = [
            "ct_state_invalid_dropped_pkts",
            "localhost_nps_accepted_pkts",
        ]
        .map(String::from)
        .into();
    }
    let full = ipt::generate(&cfg, &objs, &SyncPlan::full());
    assert_restore_text(&full.text);
    ipt::render::normalize(&full.text).expect("output parses as restore text");
    ipt::render::check_jumps(&full.text).expect("every jump has a declared, non-empty chain");

    let again = ipt::generate(&cfg, &objs, &SyncPlan::full());
    assert_eq!(again.text, full.text, "output is not deterministic");

    // A partial sync of the same input rewrites no service and deletes no chain.
    let partial = ipt::generate(
        &cfg,
        &objs,
        &SyncPlan {
            full: false,
            previous: Some(full.state.clone()),
            existing_chains: full.active_chains(),
        },
    );
    assert_eq!(partial.written_services, 0, "unchanged services rewritten");
    assert!(
        partial.deleted_chains.is_empty(),
        "{:?} deleted",
        partial.deleted_chains
    );
    assert_restore_text(&partial.text);

    // The nftables backend: every line one command of ours, quotes paired, no input text
    // able to open or close a block or start a command; the state round-trips.
    let nft = ipt::nftables::generate(&cfg, &objs, &SyncPlan::full());
    for l in nft.text.lines().chain(nft.cleanup.lines()) {
        assert!(
            ["add ", "flush ", "delete "]
                .iter()
                .any(|p| l.starts_with(p)),
            "not a command: {l:?}"
        );
        assert!(l.matches('"').count() % 2 == 0, "unpaired quote: {l:?}");
        assert!(
            !l.contains(';')
                || l.contains("{ type ")
                || l.contains("{ typeof ")
                || l.contains("{ comment "),
            "{l:?}"
        );
        assert!(l.bytes().all(|b| (b' '..=b'~').contains(&b)), "{l:?}");
    }
    let nft_partial = ipt::nftables::generate(
        &cfg,
        &objs,
        &SyncPlan {
            full: false,
            previous: Some(nft.state.clone()),
            ..Default::default()
        },
    );
    assert_eq!(
        nft_partial.written_services, 0,
        "nftables: unchanged services rewritten"
    );
    let text = ipt::state::render(&nft.state, cfg.family);
    ipt::state::parse(&text, cfg.family, std::path::Path::new("s"))
        .expect("the nftables state reads back");
}
