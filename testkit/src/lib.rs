//! podwire-testkit: the fixtures of podwire's privileged tests, demo and benchmarks —
//! node and pod namespaces, the shim runner, and the runc, podman and containerd drivers,
//! one copy each.
//!
//! Every privileged test builds its own throwaway *node* namespace (and pod namespaces
//! beside it) with a unique name, so the host's links, routes and firewall are never
//! touched and tests can run in parallel. Everything is removed on drop, which also runs
//! when a test panics; namespaces left by a killed earlier run are swept on the next run.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use netns::NetNs;

pub mod containerd;
pub mod http;
pub mod oci;
pub mod podman;

/// Prefix of every namespace the tests create: `pwt-<pid>-<n>-<tag>`.
pub const PREFIX: &str = "pwt-";

/// Fail loudly (never skip) when a privileged test cannot run.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this is a privileged test: it needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN). \
             Run `make test` as root; it never passes by skipping."
        );
    }
}

/// Fail loudly if a tool the test drives is missing.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        panic!("required tool `{tool}` is not installed; run `make deps` (as root)");
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf()
}

/// A unique name for this process: `pwt-<pid>-<n>-<tag>`.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{PREFIX}{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Remove `pwt-<pid>-*` namespaces whose creating test process is dead (a killed run).
pub fn sweep_stale() {
    let Ok(names) = netns::list() else { return };
    for name in names {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = netns::remove(&name);
        }
    }
}

/// Run a command, returning its output; panics with the output if it could not start.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Run a command that must succeed; returns stdout.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "`{cmd} {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `f` until it returns Some, or panic after `limit` (a safety bound, not a timing
/// assertion: limits are generous).
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A named network namespace owned by a test, removed on drop.
pub struct Ns {
    pub name: String,
    pub ns: NetNs,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        require_root();
        sweep_stale();
        let name = unique_name(tag);
        let ns = netns::create(&name).unwrap_or_else(|e| panic!("create netns {name}: {e}"));
        let me = Ns { name, ns };
        me.ok("ip", &["link", "set", "lo", "up"]);
        me
    }

    pub fn path(&self) -> PathBuf {
        netns::path_of(&self.name).expect("valid name")
    }

    /// Run a command inside this namespace (via nsenter, so no mount namespace games).
    pub fn run(&self, cmd: &str, args: &[&str]) -> Output {
        let net = format!("--net={}", self.path().display());
        let mut a = vec![net.as_str(), "--", cmd];
        a.extend_from_slice(args);
        run("nsenter", &a)
    }

    /// Run a command inside this namespace that must succeed; returns stdout.
    pub fn ok(&self, cmd: &str, args: &[&str]) -> String {
        let net = format!("--net={}", self.path().display());
        let mut a = vec![net.as_str(), "--", cmd];
        a.extend_from_slice(args);
        ok("nsenter", &a)
    }

    /// Names of the links in this namespace.
    pub fn links(&self) -> Vec<String> {
        self.ok("ip", &["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Err(e) = netns::remove(&self.name) {
            eprintln!("fixture: cannot remove netns {}: {e}", self.name);
        }
    }
}

/// A throwaway Kubernetes "node": its own network namespace, plus pod namespaces that
/// tests wire to it. Dropping the node removes the pods, then the node; whatever the
/// tests created inside (bridges, veths, iptables rules) dies with the namespaces.
pub struct Node {
    pub node: Ns,
    pub pods: Vec<Ns>,
}

impl Node {
    pub fn new(tag: &str) -> Node {
        Node {
            node: Ns::new(&format!("{tag}-node")),
            pods: Vec::new(),
        }
    }

    /// A new pod namespace (lo up), owned by the node fixture; returns its index.
    pub fn add_pod(&mut self, tag: &str) -> usize {
        self.pods.push(Ns::new(tag));
        self.pods.len() - 1
    }

    pub fn pod(&self, i: usize) -> &Ns {
        &self.pods[i]
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Pods first: their veth peers vanish with them, then the node and its bridge.
        self.pods.clear();
    }
}

/// IPAM reservations of a network (host-local layout: files named by an address), sorted.
pub fn ipam_records(data_dir: &Path, network: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data_dir.join(network))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// runtime-shim's host veths in a node namespace (`pw` + 12 hex digits).
pub fn podwire_veths(node: &Ns) -> Vec<String> {
    node.links()
        .into_iter()
        .filter(|l| l.len() == 14 && l.starts_with("pw"))
        .collect()
}

/// The one way tests, the demo and the benchmarks run `runtime-shim`: inside a node's
/// namespace (nsenter, no mount namespace games), as a runtime on that node runs it;
/// stdin is /dev/null unless the caller sets it.
pub fn shim_in(node: &Ns) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", node.path().display()))
        .arg("--")
        .arg(bin("runtime-shim"))
        .stdin(Stdio::null());
    c
}

/// A bridge network on a throwaway node: the node namespace, a private directory holding
/// the IPAM `dataDir` (`<dir>/ipam`) and the config file (`<dir>/net.json`).
pub struct Network {
    pub node: Node,
    pub dir: TempDir,
    /// The network's name: `pw<tag>`.
    pub name: String,
    pub config: PathBuf,
}

impl Network {
    /// `conf` is the network config without `name` and `ipam.dataDir`, which are filled in
    /// (`cniVersion` 1.0.0 and `type` runtime-shim are defaults).
    pub fn new(tag: &str, mut conf: serde_json::Value) -> Network {
        let node = Node::new(tag);
        let dir = TempDir::new(tag);
        let name = format!("pw{tag}");
        conf["name"] = name.clone().into();
        if conf.get("cniVersion").is_none() {
            conf["cniVersion"] = "1.0.0".into();
        }
        if conf.get("type").is_none() {
            conf["type"] = "runtime-shim".into();
        }
        conf["ipam"]["dataDir"] = dir.path().join("ipam").display().to_string().into();
        let config = dir.path().join("net.json");
        std::fs::write(&config, conf.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        Network {
            node,
            dir,
            name,
            config,
        }
    }

    /// A network of one IPv4 range on bridge `pwbr0` with a default gateway, plus `extra`
    /// top-level fields.
    pub fn bridge(tag: &str, subnet: &str, extra: serde_json::Value) -> Network {
        let mut conf = serde_json::json!({
            "bridge": "pwbr0", "isDefaultGateway": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}
        });
        if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        Network::new(tag, conf)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// runtime-shim `args` in the node, with `--config` of this network appended.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = shim_in(&self.node.node);
        c.args(args).arg("--config").arg(&self.config);
        c
    }

    pub fn shim_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output()
            .unwrap_or_else(|e| panic!("cannot run runtime-shim: {e}"))
    }

    pub fn shim(&self, args: &[&str]) -> Output {
        self.shim_env(&[], args)
    }

    /// `runtime-shim setup` of the pod namespace at `netns` as container `id`.
    pub fn setup(&self, netns: &Path, id: &str) -> Output {
        let ns = netns.display().to_string();
        self.shim(&["setup", "--netns", &ns, "--id", id])
    }

    /// `runtime-shim teardown` of container `id`, with its namespace if given.
    pub fn teardown(&self, netns: Option<&Path>, id: &str) -> Output {
        match netns {
            Some(n) => {
                let ns = n.display().to_string();
                self.shim(&["teardown", "--netns", &ns, "--id", id])
            }
            None => self.shim(&["teardown", "--id", id]),
        }
    }

    /// The network's IPAM reservations (addresses), sorted.
    pub fn records(&self) -> Vec<String> {
        ipam_records(&self.data_dir(), &self.name)
    }

    /// runtime-shim's host veths in the node.
    pub fn host_veths(&self) -> Vec<String> {
        podwire_veths(&self.node.node)
    }

    /// The network's nftables table (masquerade, isolation) as `nft` lists it, if any.
    pub fn nft_table(&self) -> Option<String> {
        let table = format!("podwire-{}", self.name);
        let o = self
            .node
            .node
            .run("nft", &["list", "table", "inet", &table]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).to_string())
    }

    /// Masquerade rules of one family in the network's table.
    pub fn masq_rules(&self, v4: bool) -> usize {
        let family = if v4 { "ip saddr" } else { "ip6 saddr" };
        self.nft_table()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.trim_start().starts_with(family) && l.contains("masquerade"))
            .count()
    }
}

/// A conflist shipped in `docs/conflists/`, with the first plugin's bridge, subnet and
/// IPAM dir replaced (what a user edits before copying it), and the network renamed.
pub fn shipped_conflist(
    file: &str,
    name: &str,
    bridge: &str,
    subnet: &str,
    ipam: &Path,
) -> serde_json::Value {
    let path = workspace_root().join("docs/conflists").join(file);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut v: serde_json::Value = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    v["name"] = name.into();
    let shim = &mut v["plugins"][0];
    shim["bridge"] = bridge.into();
    shim["ipam"]["ranges"] = serde_json::json!([[{ "subnet": subnet }]]);
    shim["ipam"]["dataDir"] = ipam.display().to_string().into();
    v
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A workspace binary built by `cargo build --workspace --bins` (which `make test` runs
/// first), found next to the test executable: target/<profile>/<name>.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // Tests live in target/<profile>/deps, binaries (the demo) in target/<profile>.
    let mut dir = exe
        .parent()
        .expect("executable has a directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries first (`make build`, which `make test` does)",
        p.display()
    );
    p
}

/// The static pause binary (`make pause` writes target/pause/pause), or $PODWIRE_PAUSE.
pub fn pause_bin() -> PathBuf {
    let p = std::env::var_os("PODWIRE_PAUSE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/pause/pause"));
    assert!(
        p.is_file(),
        "{} is missing: run `make pause` (make test does)",
        p.display()
    );
    p
}

/// Two nodes, each a [`Network`] with the config `conf(k)` (k = 1, 2), joined either by
/// one link (`routed == false`: 10.0.0.1/24 and 10.0.0.2/24, both on `pwup0`) or through a
/// router namespace (node k on 10.0.k.1/24 via `pwup0`, the router at 10.0.k.254, the
/// nodes' default routes via it): the two kinds of node network `runtime-shim routes`
/// serves. The nodes' InternalIPs are [`TwoNodes::address`].
pub struct TwoNodes {
    pub nodes: [Network; 2],
    pub router: Option<Ns>,
}

impl TwoNodes {
    pub fn new(tag: &str, routed: bool, conf: impl Fn(u8) -> serde_json::Value) -> TwoNodes {
        let nodes = [
            Network::new(&format!("{tag}1"), conf(1)),
            Network::new(&format!("{tag}2"), conf(2)),
        ];
        // A veth `pwup0` in `node` with `addr`, up; its peer `peer` in namespace `other`.
        let uplink = |node: &Ns, other: &str, peer: &str, addr: &str| {
            ok(
                "ip",
                &[
                    "link", "add", "pwup0", "netns", &node.name, "type", "veth", "peer", "name",
                    peer, "netns", other,
                ],
            );
            node.ok("ip", &["addr", "add", addr, "dev", "pwup0"]);
            node.ok("ip", &["link", "set", "pwup0", "up"]);
        };
        let (a, b) = (&nodes[0].node.node, &nodes[1].node.node);
        if !routed {
            uplink(a, &b.name, "pwup0", "10.0.0.1/24");
            b.ok("ip", &["addr", "add", "10.0.0.2/24", "dev", "pwup0"]);
            b.ok("ip", &["link", "set", "pwup0", "up"]);
            return TwoNodes {
                nodes,
                router: None,
            };
        }
        let router = Ns::new(&format!("{tag}r"));
        router.ok("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        for (k, me) in [(1, a), (2, b)] {
            let peer = format!("pwr{k}");
            uplink(me, &router.name, &peer, &format!("10.0.{k}.1/24"));
            me.ok(
                "ip",
                &["route", "add", "default", "via", &format!("10.0.{k}.254")],
            );
            router.ok(
                "ip",
                &["addr", "add", &format!("10.0.{k}.254/24"), "dev", &peer],
            );
            router.ok("ip", &["link", "set", &peer, "up"]);
        }
        TwoNodes {
            nodes,
            router: Some(router),
        }
    }

    /// Node `k`'s (1 or 2) InternalIP.
    pub fn address(&self, k: u8) -> String {
        if self.router.is_some() {
            format!("10.0.{k}.1")
        } else {
            format!("10.0.0.{k}")
        }
    }

    /// Node `k`'s namespace.
    pub fn node(&self, k: u8) -> &Ns {
        &self.nodes[usize::from(k - 1)].node.node
    }

    /// A NodeList of nodes `which` (`node-<k>`, pod CIDR 10.244.<k>.0/24), written to
    /// `dir`; its path.
    pub fn nodes_file(&self, dir: &Path, which: &[u8]) -> PathBuf {
        let items: Vec<serde_json::Value> = which
            .iter()
            .map(|k| {
                serde_json::json!({"metadata": {"name": format!("node-{k}")},
                       "spec": {"podCIDR": format!("10.244.{k}.0/24")},
                       "status": {"addresses": [{"type": "InternalIP", "address": self.address(*k)}]}})
            })
            .collect();
        let name: Vec<String> = which.iter().map(|k| k.to_string()).collect();
        let path = dir.join(format!("nodes-{}.json", name.join("")));
        std::fs::write(
            &path,
            serde_json::json!({"kind": "NodeList", "items": items}).to_string(),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// `runtime-shim routes --nodes FILE --node node-<k> --cluster-cidr CIDR --apply ARGS`
    /// in node `k`.
    pub fn routes(&self, k: u8, nodes: &Path, cluster: &str, args: &[&str]) -> Output {
        let node = format!("node-{k}");
        shim_in(self.node(k))
            .args(["routes", "--nodes"])
            .arg(nodes)
            .args(["--node", &node, "--cluster-cidr", cluster, "--apply"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run runtime-shim: {e}"))
    }
}
