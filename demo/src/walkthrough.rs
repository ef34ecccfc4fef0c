//! The `make demo` walkthrough: how Kubernetes networking works, step by step, with real
//! kernel objects and a real runtime (runc), inside throwaway node namespaces. Every step
//! prints a heading and the real command output, and records what it observed in a
//! [`Summary`] (the privileged test asserts on it). Everything is removed at the end, on
//! failure and on Ctrl-C (a signal thread turns SIGINT/SIGTERM into an error between
//! actions, so the normal destructors run).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use podwire_testkit::oci::{self, Runc};
use podwire_testkit::{Ns, TempDir, bin, pause_bin, require_root, require_tool};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Block SIGINT/SIGTERM in this (and every later) thread and note them on a thread of
/// their own; child processes get a clean mask from std's spawn.
pub fn install_signal_watch() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_ok() {
        std::thread::spawn(move || {
            if set.wait().is_ok() {
                INTERRUPTED.store(true, Ordering::SeqCst);
                eprintln!("\ninterrupted: cleaning up");
            }
        });
    }
}

type R<T> = Result<T, String>;

fn check_interrupt() -> R<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub color: bool,
    pub quiet: bool,
    /// Node 1 is the namespace the demo runs in (the real host, for an operator) instead
    /// of a throwaway one. Refused when anything the demo would create already exists;
    /// everything created is removed and the changed sysctls are restored at the end.
    pub on_host: bool,
}

impl Opts {
    pub fn for_terminal(quiet: bool) -> Opts {
        Opts {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            quiet,
            on_host: false,
        }
    }
}

/// What each step observed.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub n: u32,
    pub name: String,
    pub ok: bool,
    pub facts: Value,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    pub ok: bool,
    pub seconds: f64,
    pub steps: Vec<Step>,
    pub error: Option<String>,
    /// Namespaces, pins and runc containers of this run still present after cleanup.
    pub left_behind: Vec<String>,
}

struct Out {
    o: Opts,
}

impl Out {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.o.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn heading(&self, n: u32, title: &str) {
        if !self.o.quiet {
            println!("\n{}", self.paint("1;36", &format!("== {n}. {title} ==")));
        }
    }
    fn say(&self, s: &str) {
        if !self.o.quiet {
            println!("{s}");
        }
    }
    fn cmd(&self, shown: &str, output: &str) {
        if !self.o.quiet {
            println!("{}", self.paint("32", &format!("$ {shown}")));
            for l in output.trim_end().lines() {
                println!("  {l}");
            }
        }
    }
    fn good(&self, s: &str) {
        if !self.o.quiet {
            println!("{} {s}", self.paint("1;32", "✓"));
        }
    }
}

fn text(o: &Output) -> String {
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    s
}

/// Run a command inside a namespace; Err with its output if it fails.
fn ns_run(ns: &Path, cmd: &str, args: &[&str]) -> R<String> {
    check_interrupt()?;
    let o = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg("--")
        .arg(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!("`{cmd} {}` failed: {}", args.join(" "), text(&o)))
    }
}

const CLUSTER_CIDR: &str = "10.244.0.0/16";
const SERVICE_IP: &str = "10.96.0.10";
/// node-1's subnet; node-2 is on another, behind a router.
const NODE_NET: &str = "192.168.77";
const NODE_NET2: &str = "192.168.78";

struct DemoNode {
    name: String,
    // Field order is drop order: containers go before the namespace.
    runc: Runc,
    /// None: the caller's own namespace (`--on-host`), cleaned by [`HostGuard`].
    ns: Option<Ns>,
    path: PathBuf,
    config: PathBuf,
    state: PathBuf,
}

#[derive(Clone)]
struct Pod {
    name: String,
    node: usize,
    sandbox: String,
    app: String,
    ip: String,
    app_label: String,
}

struct Cluster {
    nodes: Vec<DemoNode>,
    /// The router between the nodes' subnets.
    router: Option<Ns>,
    pods: Vec<Pod>,
    shim: PathBuf,
    rootfs: PathBuf,
    podwire_state: PathBuf,
    prefix: String,
    rng: u64,
    out: Out,
    tmp: TempDir,
}

impl Cluster {
    fn rand(&mut self) -> u64 {
        // xorshift: names only need to look like Kubernetes', not be secure.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// A ReplicaSet-style suffix (Kubernetes' alphabet without vowels and look-alikes).
    fn suffix(&mut self, len: usize) -> String {
        const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..len)
            .map(|_| ALPHA[(self.rand() % ALPHA.len() as u64) as usize] as char)
            .collect()
    }

    fn node_ns(&self, i: usize) -> PathBuf {
        self.nodes[i].path.clone()
    }

    fn add_node(&mut self, name: &str, pod_cidr: &str, on_host: bool) -> R<usize> {
        let (ns, path) = if on_host {
            (
                None,
                PathBuf::from(format!("/proc/{}/ns/net", std::process::id())),
            )
        } else {
            let ns = Ns::new(&format!("demo-{name}"));
            let p = ns.path();
            (Some(ns), p)
        };
        let i = self.nodes.len();
        let dir = self.tmp.path().join(name);
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config = dir.join("net.json");
        let conf = json!({
            "cniVersion": "1.0.0", "name": "pods", "type": "runtime-shim", "bridge": "cni0",
            "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
            // Masquerade what leaves the cluster, never pod-to-pod traffic.
            "ipMasq": true, "nonMasqueradeCIDRs": [CLUSTER_CIDR],
            // 50 bytes below the nodes' links: room for the VXLAN headers of step 6.
            "mtu": 1450,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]],
                     "dataDir": dir.join("ipam")}
        });
        fs::write(
            &config,
            serde_json::to_vec_pretty(&conf).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        // Bridged pod-to-pod replies must pass iptables for Service DNAT (br_netfilter),
        // as on every Kubernetes node; the setting is per namespace.
        ns_run(
            &path,
            "sh",
            &[
                "-c",
                "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables",
            ],
        )?;
        let runc = Runc::new(&dir, &path);
        self.nodes.push(DemoNode {
            name: name.to_string(),
            runc,
            ns,
            path,
            config,
            state: dir.join("iptables-gen-state"),
        });
        Ok(i)
    }

    /// A pod: a pause sandbox wired by the shim's hook, and an httpd app container joined
    /// to it answering with the pod's name.
    fn start_pod(&mut self, node: usize, name: &str, app_label: &str) -> R<Pod> {
        check_interrupt()?;
        let sandbox = format!("{}-{name}", self.prefix);
        let app = format!("{sandbox}-app");
        let dir = self.tmp.path().join("pods").join(name);
        let www = dir.join("www");
        fs::create_dir_all(&www).map_err(|e| e.to_string())?;
        fs::write(www.join("index.html"), format!("{name}\n")).map_err(|e| e.to_string())?;
        podwire_testkit::http::install_whoami(&www).map_err(|e| e.to_string())?;
        let n = &self.nodes[node];
        let sb = dir.join("sandbox");
        let mut spec = n.runc.bundle(&sb, &self.rootfs, &["/pause"], None);
        spec["hostname"] = json!(name);
        spec["process"]["user"] = json!({"uid": 65535, "gid": 65535});
        spec["hooks"] = oci::shim_hooks(
            &self.shim,
            &n.config,
            &self.podwire_state,
            &["createRuntime"],
        );
        oci::write_config(&sb, &spec);
        n.runc
            .run_detached(&sandbox, &sb)
            .map_err(|log| format!("sandbox {name}: {log}"))?;
        let rec: Value = fs::read(self.podwire_state.join(format!("{sandbox}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| format!("no shim record for {sandbox}"))?;
        let ip = rec["result"]["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .ok_or("no IP in the shim's result")?
            .to_string();
        let ab = dir.join("app");
        n.runc.bundle(
            &ab,
            &self.rootfs,
            &["httpd", "-f", "-p", "80", "-h", "/www"],
            Some(&www),
        );
        self.join(&sandbox, &ab)?;
        n.runc
            .run_detached(&app, &ab)
            .map_err(|log| format!("app {name}: {log}"))?;
        let pod = Pod {
            name: name.to_string(),
            node,
            sandbox,
            app,
            ip,
            app_label: app_label.to_string(),
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    fn join(&self, sandbox: &str, bundle: &Path) -> R<()> {
        let o = Command::new(&self.shim)
            .args(["join", "--sandbox", sandbox, "--state-dir"])
            .arg(&self.podwire_state)
            .arg(bundle)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("join: {}", text(&o)))
        }
    }

    fn delete_pod(&mut self, name: &str) -> R<Pod> {
        let i = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| format!("no pod {name}"))?;
        let p = self.pods.remove(i);
        let rt = &self.nodes[p.node].runc;
        for id in [&p.app, &p.sandbox] {
            let o = rt.delete(id);
            if !o.status.success() {
                return Err(format!("runc delete {id}: {}", text(&o)));
            }
        }
        Ok(p)
    }

    /// A short-lived container joined to `pod`, running `script`; its stdout.
    fn in_pod(&self, pod: &Pod, tag: &str, script: &str) -> R<Output> {
        check_interrupt()?;
        let id = format!("{}-{tag}", pod.sandbox);
        let b = self.tmp.path().join("pods").join(&pod.name).join(tag);
        let rt = &self.nodes[pod.node].runc;
        rt.bundle(&b, &self.rootfs, &["sh", "-c", script], None);
        self.join(&pod.sandbox, &b)?;
        Ok(rt.run_fg(&id, &b))
    }

    /// `n` HTTP requests from `client` to `host:port`; who answered, counted.
    fn tally(&self, client: &Pod, host: &str, port: u16, n: usize) -> R<BTreeMap<String, usize>> {
        let script = format!(
            "i=0; while [ $i -lt {n} ]; do {} | tail -n 1; i=$((i+1)); done",
            oci::http_get_script(host, port)
        );
        let o = self.in_pod(client, "tally", &script)?;
        let mut t = BTreeMap::new();
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            *t.entry(l.trim().to_string()).or_insert(0) += 1;
        }
        let answered: usize = t.values().sum();
        if answered < n {
            *t.entry("(no answer)".into()).or_insert(0) += n - answered;
        }
        Ok(t)
    }

    /// GET http://ip/ from a client pod, retrying briefly while a server starts.
    fn get_from(&self, client: &Pod, ip: &str) -> R<String> {
        self.get_path_from(client, ip, "/")
    }

    /// GET http://ip`path` from a client pod.
    fn get_path_from(&self, client: &Pod, ip: &str, path: &str) -> R<String> {
        let mut last = String::new();
        for _ in 0..30 {
            let o = self.in_pod(client, "get", &oci::http_get_path_script(ip, 80, path))?;
            let body = String::from_utf8_lossy(&o.stdout);
            if let Some(b) = body.split("\r\n\r\n").nth(1) {
                return Ok(b.trim().to_string());
            }
            last = text(&o);
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("no answer from {ip}: {last}"))
    }

    fn services_json(&self, endpoints: &[&Pod]) -> Value {
        let eps: Vec<Value> = endpoints
            .iter()
            .map(|p| {
                json!({"addresses": [p.ip], "conditions": {"ready": true},
                       "nodeName": self.nodes[p.node].name,
                       "targetRef": {"kind": "Pod", "name": p.name, "namespace": "default"}})
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "my-service", "namespace": "default"},
             "spec": {"type": "ClusterIP", "clusterIP": SERVICE_IP, "selector": {"app": "nginx"},
                      "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 80}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "my-service-7xk2p", "namespace": "default",
                          "labels": {"kubernetes.io/service-name": "my-service"}},
             "addressType": "IPv4",
             "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
             "endpoints": eps}
        ]})
    }

    /// `iptables-gen` in node `i`'s namespace, applying, with its state directory.
    fn iptables_gen(&self, i: usize) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node_ns(i).display()))
            .arg("--")
            .arg(bin("iptables-gen"))
            .args([
                "--hostname-override",
                &self.nodes[i].name,
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--apply",
            ])
            .arg("--state-dir")
            .arg(&self.nodes[i].state);
        c
    }

    /// kube-proxy's job on node `i` as a running loop: `iptables-gen --watch`, fed through
    /// two FIFOs as two `kubectl get … --watch --output-watch-events -o json` pipes would
    /// feed it, its state in the node's state directory (so later one-shot syncs are
    /// partial against what it applied).
    fn start_watch(&self, i: usize) -> R<Watch> {
        let dir = self.tmp.path();
        let (svc, eps) = (dir.join("services.watch"), dir.join("endpointslices.watch"));
        for f in [&svc, &eps] {
            let o = Command::new("mkfifo")
                .arg(f)
                .output()
                .map_err(|e| e.to_string())?;
            if !o.status.success() {
                return Err(format!("mkfifo: {}", text(&o)));
            }
        }
        let mut child = self
            .iptables_gen(i)
            .arg("--watch")
            .arg(&svc)
            .arg("--watch")
            .arg(&eps)
            .args(["--min-sync-period", "100ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("iptables-gen --watch: {e}"))?;
        let err = child.stderr.take().ok_or("no stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let open = |p: &Path| {
            fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        let (services, slices) = (open(&svc)?, open(&eps)?);
        Ok(Watch {
            child,
            services,
            slices,
            lines,
        })
    }

    /// kube-proxy's job on node `i`: the selected pods as endpoints, rules applied.
    fn sync_services(&self, i: usize) -> R<String> {
        let eps: Vec<&Pod> = self
            .pods
            .iter()
            .filter(|p| p.app_label == "nginx")
            .collect();
        let input = self
            .tmp
            .path()
            .join(format!("services-{}.json", self.nodes[i].name));
        fs::write(
            &input,
            serde_json::to_vec_pretty(&self.services_json(&eps)).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let o = self
            .iptables_gen(i)
            .arg(&input)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!("iptables-gen: {}", text(&o)));
        }
        Ok(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }

    /// The Service chains in node `i`'s nat table.
    fn service_rules(&self, i: usize) -> R<String> {
        let all = ns_run(&self.node_ns(i), "iptables", &["-t", "nat", "-S"])?;
        Ok(all
            .lines()
            .filter(|l| {
                l.contains("KUBE-SERVICES") || l.contains("KUBE-SVC-") || l.contains("KUBE-SEP-")
            })
            .filter(|l| {
                !l.starts_with(
                    "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports",
                )
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    fn table(&self) -> R<String> {
        let mut s = format!(
            "{:<36} {:<6} {:<8} {:<14} {}\n",
            "NAME", "READY", "STATUS", "IP", "NODE"
        );
        for p in &self.pods {
            let rt = &self.nodes[p.node].runc;
            let o = rt
                .cmd()
                .args(["state", &p.app])
                .output()
                .map_err(|e| e.to_string())?;
            let st: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            let running = st["status"] == "running";
            let _ = writeln!(
                s,
                "{:<36} {:<6} {:<8} {:<14} {}",
                p.name,
                if running { "1/1" } else { "0/1" },
                if running { "Running" } else { "Unknown" },
                p.ip,
                self.nodes[p.node].name
            );
        }
        Ok(s)
    }
}

/// `--on-host`: what the demo changes in the caller's namespace, put back on drop.
/// A running `iptables-gen --watch` and the write ends of its two streams.
struct Watch {
    child: std::process::Child,
    services: fs::File,
    slices: fs::File,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Watch {
    /// One watch event, printed as kubectl prints it.
    fn send(&mut self, slices: bool, kind: &str, object: &Value) -> R<()> {
        use std::io::Write;
        let ev = json!({"object": object, "type": kind});
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        ev.serialize(&mut ser).map_err(|e| e.to_string())?;
        out.push(b'\n');
        let f = if slices {
            &mut self.slices
        } else {
            &mut self.services
        };
        f.write_all(&out).map_err(|e| format!("watch stream: {e}"))
    }

    /// Its next stderr line containing `what`.
    fn wait_line(&mut self, what: &str) -> R<String> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let l = self
                .lines
                .recv_timeout(left)
                .map_err(|_| format!("iptables-gen --watch: no {what:?} in 30 s"))?;
            if l.contains(what) {
                return Ok(l.trim_start_matches("iptables-gen: ").to_string());
            }
        }
    }

    /// SIGTERM: it stops with success and leaves the rules in place.
    fn stop(mut self) -> R<()> {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGTERM).map_err(|e| e.to_string())?;
        let st = self.child.wait().map_err(|e| e.to_string())?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("iptables-gen --watch exited {st}"))
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct HostGuard {
    ns: PathBuf,
    sysctls: Vec<(String, String)>,
}

impl HostGuard {
    const SYSCTLS: [&'static str; 2] = [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
    ];

    /// Refuse when the demo's objects exist already: it would change or delete them.
    fn new() -> R<HostGuard> {
        let ns = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        // Not /sys/class/net: sysfs shows the namespace it was mounted in.
        let links = ns_run(&ns, "ip", &["-o", "link", "show"])?;
        for link in ["cni0", "pwnode0", "flannel.1"] {
            if links.contains(&format!(": {link}:")) || links.contains(&format!(": {link}@")) {
                return Err(format!(
                    "--on-host: link {link} exists here; the demo would take it over"
                ));
            }
        }
        let nat = ns_run(&ns, "iptables", &["-t", "nat", "-S"])?;
        if nat.contains("KUBE-") {
            return Err(
                "--on-host: KUBE-* iptables chains exist here (kube-proxy?); refusing".into(),
            );
        }
        let routes = ns_run(&ns, "ip", &["route"])?;
        for r in ["10.244.", NODE_NET, NODE_NET2] {
            if routes.contains(r) {
                return Err(format!("--on-host: routes to {r}x exist here; refusing"));
            }
        }
        let sysctls = Self::SYSCTLS
            .iter()
            .filter_map(|p| {
                Some((
                    p.to_string(),
                    fs::read_to_string(p).ok()?.trim().to_string(),
                ))
            })
            .collect();
        Ok(HostGuard { ns, sysctls })
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        // Links: the bridge, the overlay device and the link to the router (its peer and
        // the route through it go with it).
        for link in ["cni0", "flannel.1", "pwnode0"] {
            let _ = ns_run(&self.ns, "ip", &["link", "del", link]);
        }
        // iptables-gen's chains: jumps from the built-in chains first, then the chains.
        for table in ["nat", "filter"] {
            let Ok(rules) = ns_run(&self.ns, "iptables", &["-t", table, "-S"]) else {
                continue;
            };
            for r in rules
                .lines()
                .filter(|l| l.starts_with("-A ") && l.contains("-j KUBE-"))
            {
                let chain = r.split_whitespace().nth(1).unwrap_or_default();
                if !chain.starts_with("KUBE-") {
                    let _ = Command::new("sh")
                        .arg("-c")
                        .arg(format!("iptables -t {table} -D {}", &r[3..]))
                        .status();
                }
            }
            for c in rules.lines().filter_map(|l| l.strip_prefix("-N KUBE-")) {
                let _ = ns_run(
                    &self.ns,
                    "iptables",
                    &["-t", table, "-F", &format!("KUBE-{c}")],
                );
            }
            for c in rules.lines().filter_map(|l| l.strip_prefix("-N KUBE-")) {
                let _ = ns_run(
                    &self.ns,
                    "iptables",
                    &["-t", table, "-X", &format!("KUBE-{c}")],
                );
            }
        }
        for (p, v) in &self.sysctls {
            let _ = fs::write(p, v);
        }
    }
}

fn tally_text(t: &BTreeMap<String, usize>) -> String {
    t.iter()
        .map(|(k, v)| format!("{v:>3}  {k}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Run the whole walkthrough. Never panics on a failed step: the error is in the summary.
pub fn run(opts: Opts) -> Summary {
    let start = Instant::now();
    let out = Out { o: opts };
    let mut summary = Summary::default();
    let mut names = (Vec::new(), Vec::new());
    let r = walkthrough(out, &mut summary, &mut names);
    if let Err(e) = r {
        summary.error = Some(e);
    }
    // Everything created is gone now (the cluster was dropped inside walkthrough).
    let (ns_names, pins) = names;
    let live = netns::list().unwrap_or_default();
    for n in ns_names.iter().chain(pins.iter()) {
        if live.contains(n) {
            summary.left_behind.push(n.clone());
        }
    }
    summary.seconds = (start.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    summary.ok = summary.error.is_none()
        && summary.left_behind.is_empty()
        && summary.steps.iter().all(|s| s.ok)
        && summary.steps.len() == 7;
    summary
}

fn walkthrough(out: Out, summary: &mut Summary, names: &mut (Vec<String>, Vec<String>)) -> R<()> {
    require_root();
    for t in ["runc", "nsenter", "iptables", "bridge"] {
        require_tool(t);
    }
    let tmp = TempDir::new("demo");
    let rootfs = tmp.path().join("rootfs");
    oci::build_rootfs(&rootfs, &pause_bin());
    let mut c = Cluster {
        nodes: Vec::new(),
        router: None,
        pods: Vec::new(),
        shim: bin("runtime-shim"),
        rootfs,
        podwire_state: tmp.path().join("podwire-state"),
        prefix: format!("pwdemo{}", std::process::id()),
        rng: u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        out,
        tmp,
    };
    let guard = if c.out.o.on_host {
        Some(HostGuard::new()?)
    } else {
        None
    };
    let r = steps(&mut c, summary);
    // Record what to look for afterwards, then tear everything down (drop order: pods'
    // containers via runc, whose poststop hooks unwire them, then the namespaces).
    names.0 = c
        .nodes
        .iter()
        .filter_map(|n| n.ns.as_ref().map(|ns| ns.name.clone()))
        .collect();
    names.1 = c
        .pods
        .iter()
        .map(|p| runtime_shim::hook::pin_name(&p.sandbox))
        .collect();
    let out = Out { o: c.out.o.clone() };
    let pods = c.pods.len();
    let nodes = c.nodes.len();
    drop(c);
    drop(guard);
    if r.is_ok() {
        out.heading(7, "Clean up");
        out.say(&format!(
            "runc deleted {pods} pods (poststop hooks unwired them); {nodes} node namespaces removed"
        ));
        summary.steps.push(Step {
            n: 7,
            name: "cleanup".into(),
            ok: true,
            facts: json!({"pods_deleted": pods, "nodes_removed": nodes}),
        });
    }
    r
}

fn push(summary: &mut Summary, n: u32, name: &str, ok: bool, facts: Value) -> R<()> {
    summary.steps.push(Step {
        n,
        name: name.into(),
        ok,
        facts: facts.clone(),
    });
    if ok {
        Ok(())
    } else {
        Err(format!("step {n} ({name}) failed: {facts}"))
    }
}

fn steps(c: &mut Cluster, summary: &mut Summary) -> R<()> {
    // Node pod CIDRs, carved from the cluster range by the project's own code.
    let nodes_json = json!({"apiVersion": "v1", "kind": "NodeList", "items": [
        {"metadata": {"name": "node-1"},
         "status": {"addresses": [{"type": "InternalIP", "address": format!("{NODE_NET}.1")}]}},
        {"metadata": {"name": "node-2"},
         "status": {"addresses": [{"type": "InternalIP", "address": format!("{NODE_NET2}.2")}]}}
    ]});
    let nodes_file = c.tmp.path().join("nodes.json");
    fs::write(&nodes_file, nodes_json.to_string()).map_err(|e| e.to_string())?;
    let shim_path = c.shim.clone();
    let routes = |node: &str, ns: Option<&Path>| -> R<Value> {
        let args = [
            "routes",
            "--nodes",
            nodes_file.to_str().unwrap_or_default(),
            "--node",
            node,
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--backend",
            "vxlan",
        ];
        let shim = shim_path.to_str().unwrap_or_default();
        let s = match ns {
            Some(ns) => {
                let mut a = args.to_vec();
                a.push("--apply");
                ns_run(ns, shim, &a)?
            }
            None => {
                let o = Command::new(shim)
                    .args(args)
                    .output()
                    .map_err(|e| e.to_string())?;
                String::from_utf8_lossy(&o.stdout).into_owned()
            }
        };
        serde_json::from_str(&s).map_err(|e| format!("routes output: {e}: {s}"))
    };
    let plan = routes("node-1", None)?;
    let cidr_of = |v: &Value, node: &str| -> String {
        v["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == node))
            .and_then(|n| n["podCIDRs"][0].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (cidr1, cidr2) = (cidr_of(&plan, "node-1"), cidr_of(&plan, "node-2"));
    let n1 = c.add_node("node-1", &cidr1, c.out.o.on_host)?;

    // 1. Pod
    c.out.heading(
        1,
        "Pod: a pause sandbox and an app container sharing one network stack",
    );
    c.out.say(&format!(
        "runc starts the sandbox of pod nginx-1: our pause ({} bytes) in new namespaces;\n\
         runtime-shim, its createRuntime hook, wires the new netns to node-1's bridge.",
        fs::metadata(pause_bin()).map(|m| m.len()).unwrap_or(0)
    ));
    let nginx1 = c.start_pod(n1, "nginx-1", "web")?;
    let rt = &c.nodes[n1].runc;
    let eth = |id: &str| -> R<String> {
        let o = rt.exec(id, &["ip", "-o", "-4", "addr", "show", "eth0"]);
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .take(4)
                .collect::<Vec<_>>()
                .join(" "))
        } else {
            Err(text(&o))
        }
    };
    let (sb_eth, app_eth) = (eth(&nginx1.sandbox)?, eth(&nginx1.app)?);
    c.out
        .cmd("runc exec nginx-1/sandbox ip -o -4 addr show eth0", &sb_eth);
    c.out.cmd(
        "runc exec nginx-1/httpd   ip -o -4 addr show eth0",
        &app_eth,
    );
    let local = c.get_from(&nginx1, "127.0.0.1")?;
    c.out.cmd(
        "(a second container in nginx-1) GET http://localhost:80/",
        &local,
    );
    let dup = c.in_pod(&nginx1, "dup", "httpd -f -p 80 -h /www")?;
    let dup_failed = !dup.status.success();
    c.out.cmd(
        "(a third container in nginx-1) httpd -f -p 80",
        text(&dup).trim(),
    );
    c.out.good(
        "one network stack: same eth0, localhost shared, and port 80 taken for the whole pod",
    );
    push(
        summary,
        1,
        "pod",
        sb_eth == app_eth && local == "nginx-1" && dup_failed,
        json!({
            "pod": "nginx-1", "ip": nginx1.ip, "sandbox_eth0": sb_eth, "app_eth0": app_eth,
            "localhost_answer": local, "second_server_failed": dup_failed,
            "second_server_error": text(&dup).trim()
        }),
    )?;

    // 2. Bridge
    c.out.heading(
        2,
        "Bridge: cni0, one veth per pod, the bridge as the pods' gateway",
    );
    let node1 = c.node_ns(n1);
    let br = ns_run(&node1, "ip", &["-br", "-4", "addr", "show", "cni0"])?;
    c.out.cmd("(node-1) ip -br -4 addr show cni0", &br);
    let links = ns_run(&node1, "bridge", &["link", "show"])?;
    c.out.cmd("(node-1) bridge link show", &links);
    let route =
        String::from_utf8_lossy(&c.nodes[n1].runc.exec(&nginx1.app, &["ip", "route"]).stdout)
            .into_owned();
    c.out.cmd("(pod nginx-1) ip route", &route);
    let gw = cidr1.replace(".0/24", ".1");
    let default_ok = route.contains(&format!("default via {gw} dev eth0"));
    push(
        summary,
        2,
        "bridge",
        br.contains(&format!("{gw}/24")) && links.lines().count() == 1 && default_ok,
        json!({
            "bridge": "cni0", "bridge_address": br.split_whitespace().nth(2), "pod_subnet": cidr1,
            "veths": links.lines().count(), "pod_default_route_via": gw
        }),
    )?;

    // 3. Deployment
    c.out.heading(
        3,
        "Deployment: two replicas of nginx, each answering with its own name",
    );
    let hash = format!("{:x}", c.rand() % 0xff_ffff_ffff)
        .chars()
        .take(10)
        .collect::<String>();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let name = format!("nginx-deployment-{hash}-{}", c.suffix(5));
        replicas.push(c.start_pod(n1, &name, "nginx")?);
    }
    let mut answers = Vec::new();
    for r in &replicas {
        let body = c.get_from(&nginx1, &r.ip)?;
        c.out
            .cmd(&format!("(pod nginx-1) GET http://{}/", r.ip), &body);
        answers.push(json!({"name": r.name, "ip": r.ip, "answer": body}));
    }
    let table = c.table()?;
    c.out
        .cmd("kubectl get pods -o wide   # (what it would show)", &table);
    let own = replicas
        .iter()
        .zip(&answers)
        .all(|(r, a)| a["answer"] == r.name.as_str());
    push(
        summary,
        3,
        "deployment",
        own && !table.contains("0/1"),
        json!({"replicas": answers}),
    )?;

    // 4. Service
    c.out.heading(
        4,
        "Service: a ClusterIP in front of the replicas (kube-proxy's iptables rules)",
    );
    let client = c.start_pod(n1, "client", "client")?;
    let svc = c.services_json(&replicas.iter().collect::<Vec<_>>());
    c.out.cmd(
        "kubectl get service,endpointslice my-service -o json   # (abridged)",
        &format!(
            "{}\n{}",
            serde_json::to_string(&svc["items"][0]["spec"]).unwrap_or_default(),
            serde_json::to_string(&svc["items"][1]["endpoints"]).unwrap_or_default()
        ),
    );
    let log = c.sync_services(n1)?;
    c.out
        .cmd("(node-1) iptables-gen services.json --apply …", &log);
    let rules = c.service_rules(n1)?;
    c.out.cmd(
        "(node-1) iptables -t nat -S | grep -E 'KUBE-(SERVICES|SVC|SEP)'",
        &rules,
    );
    let t = c.tally(&client, SERVICE_IP, 8080, 20)?;
    c.out.cmd(
        &format!("(pod client) 20 × GET http://{SERVICE_IP}:8080/   # who answered"),
        &tally_text(&t),
    );
    let both = replicas
        .iter()
        .all(|r| t.get(&r.name).copied().unwrap_or(0) > 0)
        && t.values().sum::<usize>() == 20
        && !t.contains_key("(no answer)");
    push(
        summary,
        4,
        "service",
        both && rules.contains("KUBE-SVC-"),
        json!({
            "cluster_ip": SERVICE_IP, "port": 8080, "target_port": 80,
            "sep_chains": rules.lines().filter(|l| l.starts_with("-N KUBE-SEP-")).count(),
            "tally": t
        }),
    )?;

    // 5. Pods come and go
    c.out.heading(
        5,
        "Pods come and go: a replica dies, a replacement gets a new IP, the sync follows",
    );
    // From here kube-proxy's job runs as a loop, fed by the two watches.
    let mut w = c.start_watch(n1)?;
    let objs = c.services_json(&replicas.iter().collect::<Vec<_>>());
    w.send(false, "ADDED", &objs["items"][0])?;
    w.send(true, "ADDED", &objs["items"][1])?;
    let bookmark = |k: &str| json!({"kind": k, "metadata": {"resourceVersion": "1"}});
    w.send(false, "BOOKMARK", &bookmark("Service"))?;
    w.send(true, "BOOKMARK", &bookmark("EndpointSlice"))?;
    let first = w.wait_line("applied full sync")?;
    c.out.cmd(
        "(node-1) iptables-gen --watch services --watch endpointslices --apply …   # the sync loop",
        &first,
    );
    let gone = c.delete_pod(&replicas[0].name)?;
    c.out.say(&format!(
        "runc delete {} (its poststop hook released {})",
        gone.name, gone.ip
    ));
    let name = format!("nginx-deployment-{hash}-{}", c.suffix(5));
    let fresh = c.start_pod(n1, &name, "nginx")?;
    c.out.say(&format!(
        "replacement {} started with IP {}",
        fresh.name, fresh.ip
    ));
    let objs = c.services_json(&[&replicas[1], &fresh]);
    w.send(true, "MODIFIED", &objs["items"][1])?;
    let log = w.wait_line("applied partial sync")?;
    c.out.cmd(
        "(endpointslices watch) MODIFIED my-service-7xk2p   → (node-1) by itself:",
        &log,
    );
    let t = c.tally(&client, SERVICE_IP, 8080, 20)?;
    c.out.cmd(
        &format!("(pod client) 20 × GET http://{SERVICE_IP}:8080/"),
        &tally_text(&t),
    );
    let current = [&replicas[1], &fresh];
    let ok5 = fresh.ip != gone.ip
        && current
            .iter()
            .all(|r| t.get(&r.name).copied().unwrap_or(0) > 0)
        && !t.contains_key(&gone.name)
        && t.values().sum::<usize>() == 20
        && log.contains("partial");
    // SIGTERM: the loop stops cleanly, the rules stay (the next steps sync one-shot).
    w.stop()?;
    push(
        summary,
        5,
        "pods-come-and-go",
        ok5,
        json!({
            "deleted": {"name": gone.name, "ip": gone.ip},
            "replacement": {"name": fresh.name, "ip": fresh.ip},
            "sync": log, "tally": t
        }),
    )?;

    // 6. Nodes
    c.out.heading(
        6,
        "Across nodes: a second node behind a router, a VXLAN overlay, one Service",
    );
    let n2 = c.add_node("node-2", &cidr2, false)?;
    let node2 = c.node_ns(n2);
    // The network between the nodes: two subnets joined by a router, so node-2 is not on
    // node-1's link and routes via its address (host-gw) cannot work.
    let router = Ns::new("demo-router");
    let rpath = router.path();
    ns_run(
        &rpath,
        "sh",
        &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
    )?;
    for (ns, net, peer) in [(&node1, NODE_NET, "pwr1"), (&node2, NODE_NET2, "pwr2")] {
        let router_ns = rpath.to_str().unwrap_or_default().to_string();
        ns_run(
            ns,
            "ip",
            &[
                "link", "add", "pwnode0", "type", "veth", "peer", "name", peer, "netns", &router_ns,
            ],
        )?;
        let me = if net == NODE_NET { "1" } else { "2" };
        ns_run(
            ns,
            "ip",
            &["addr", "add", &format!("{net}.{me}/24"), "dev", "pwnode0"],
        )?;
        ns_run(ns, "ip", &["link", "set", "pwnode0", "up"])?;
        ns_run(
            &rpath,
            "ip",
            &["addr", "add", &format!("{net}.254/24"), "dev", peer],
        )?;
        ns_run(&rpath, "ip", &["link", "set", peer, "up"])?;
    }
    ns_run(
        &node1,
        "ip",
        &[
            "route",
            "add",
            &format!("{NODE_NET2}.0/24"),
            "via",
            &format!("{NODE_NET}.254"),
        ],
    )?;
    ns_run(
        &node2,
        "ip",
        &[
            "route",
            "add",
            &format!("{NODE_NET}.0/24"),
            "via",
            &format!("{NODE_NET2}.254"),
        ],
    )?;
    c.router = Some(router);
    let r1 = routes("node-1", Some(&node1))?;
    let r2 = routes("node-2", Some(&node2))?;
    c.out.cmd(
        "runtime-shim routes --nodes nodes.json --node node-1 --cluster-cidr 10.244.0.0/16 --backend vxlan --apply",
        &r1["changed"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default(),
    );
    let dev = ns_run(&node1, "ip", &["-d", "-o", "link", "show", "flannel.1"])?;
    let dev_line = dev
        .split_whitespace()
        .skip_while(|w| *w != "vxlan")
        .take(13)
        .collect::<Vec<_>>()
        .join(" ");
    c.out.cmd("(node-1) ip -d link show flannel.1", &dev_line);
    c.out.say(
        "  the overlay device: pod packets for other nodes leave inside UDP 8472 from node-1's address",
    );
    let shown = ns_run(&node1, "ip", &["route"])?;
    let overlay_route: String = shown
        .lines()
        .filter(|l| l.contains("flannel.1"))
        .collect::<Vec<_>>()
        .join("\n");
    c.out
        .cmd("(node-1) ip route | grep flannel.1", &overlay_route);
    c.out
        .say("  node-2's pod CIDR is reached via node-2's VTEP address, on the overlay");
    let neigh = ns_run(&node1, "ip", &["neigh", "show", "dev", "flannel.1"])?;
    c.out.cmd("(node-1) ip neigh show dev flannel.1", &neigh);
    c.out
        .say("  that VTEP address is node-2's VTEP MAC: set once, never ARPed for");
    let fdb = ns_run(&node1, "bridge", &["fdb", "show", "dev", "flannel.1"])?;
    c.out.cmd("(node-1) bridge fdb show dev flannel.1", &fdb);
    c.out.say(&format!(
        "  frames for that MAC are sent to node-2's address {NODE_NET2}.2, through the router"
    ));
    let far_name = format!("nginx-deployment-{hash}-{}", c.suffix(5));
    let far = c.start_pod(n2, &far_name, "nginx")?;
    let body = c.get_from(&client, &far.ip)?;
    c.out.cmd(
        &format!(
            "(pod client on node-1) GET http://{}/   # a pod on node-2",
            far.ip
        ),
        &body,
    );
    // ipMasq is on, with the cluster range in nonMasqueradeCIDRs: a pod on node-2 sees
    // the client pod's own address (the Kubernetes model), not node-1's.
    let seen = podwire_testkit::http::client_addr(&c.get_path_from(
        &client,
        &far.ip,
        "/cgi-bin/whoami",
    )?);
    c.out.cmd(
        &format!(
            "(pod client {} on node-1) GET http://{}/cgi-bin/whoami   # who does node-2's pod see?",
            client.ip, far.ip
        ),
        &seen,
    );
    let table = ns_run(&node1, "nft", &["list", "table", "inet", "podwire-pods"])?;
    c.out.cmd(
        "(node-1) nft list table inet podwire-pods   # ipMasq, except towards 10.244.0.0/16",
        &table,
    );
    let log1 = c.sync_services(n1)?;
    let log2 = c.sync_services(n2)?;
    c.out.cmd(
        "(node-1, node-2) iptables-gen services.json --apply …",
        &format!("{log1}\n{log2}"),
    );
    let t = c.tally(&client, SERVICE_IP, 8080, 30)?;
    c.out.cmd(
        &format!("(pod client) 30 × GET http://{SERVICE_IP}:8080/"),
        &tally_text(&t),
    );
    let backends = [&replicas[1], &fresh, &far];
    let router_routes = ns_run(&rpath, "ip", &["route"])?;
    let ok6 = body == far.name
        && seen == client.ip
        && shown.contains(&format!(
            "{cidr2} via {} dev flannel.1",
            cidr2.trim_end_matches("/24")
        ))
        && fdb.contains(&format!("dst {NODE_NET2}.2"))
        && !router_routes.contains("10.244.")
        && r2["routes"][0]["dst"] == cidr1.as_str()
        && backends
            .iter()
            .all(|b| t.get(&b.name).copied().unwrap_or(0) > 0)
        && t.values().sum::<usize>() == 30
        && !t.contains_key("(no answer)");
    push(
        summary,
        6,
        "multi-node",
        ok6,
        json!({
            "cluster_cidr": CLUSTER_CIDR,
            "nodes": [{"name": "node-1", "pod_cidr": cidr1, "ip": format!("{NODE_NET}.1")},
                      {"name": "node-2", "pod_cidr": cidr2, "ip": format!("{NODE_NET2}.2")}],
            "overlay": {"device": dev_line, "route": overlay_route, "neighbours": neigh,
                        "fdb": fdb, "router_has_pod_routes": router_routes.contains("10.244.")},
            "routes_node_1": r1["routes"], "routes_node_2": r2["routes"],
            "cross_node_pod": {"name": far.name, "ip": far.ip, "answer": body,
                               "sees_client_as": seen},
            "tally": t
        }),
    )?;
    Ok(())
}
