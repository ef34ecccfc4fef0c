//! `iptables-gen`: kube-proxy's iptables rules from `kubectl get services,endpointslices
//! -A -o json`. Prints `iptables-restore` input, or applies it (`--apply`).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use clap::Parser;
use ipnet::IpNet;
use iptables_gen::apply::{
    clear_stale_udp_flows, ensure_jumps, host_addresses, host_has_random_fully, iptables_cleanup,
    kernel_service_chains, nft_cleanup, nft_existing, run_cmd, tool, tools,
};
use iptables_gen::kpc::KubeProxyConfiguration;
use iptables_gen::serve::{self, Health, Metrics};
use iptables_gen::watch::{self, Change, EventKind, Store};
use iptables_gen::{
    Config, Error, Family, Generated, LocalDetector, Result, SyncPlan, SyncState, model, nftables,
    render, state,
};

#[derive(Parser, Debug)]
#[command(
    name = "iptables-gen",
    version,
    about = "kube-proxy-compatible iptables-restore rules from Service and EndpointSlice objects"
)]
struct Cli {
    /// Input files (a v1 List, or single objects); none or `-` reads stdin.
    files: Vec<PathBuf>,
    /// KubeProxyConfiguration (JSON); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node name: endpoints with this nodeName are local (default: the hostname).
    #[arg(long)]
    hostname_override: Option<String>,
    /// The primary node IP.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// The node's local addresses, IP or IP/CIDR (repeatable; default: read from the host
    /// when --nodeport-addresses needs them).
    #[arg(long = "node-address")]
    node_addresses: Vec<String>,
    /// The pod network: traffic from outside it to a ClusterIP is masqueraded.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// ClusterCIDR (default with --cluster-cidr), NodeCIDR, BridgeInterface,
    /// InterfaceNamePrefix, or None.
    #[arg(long)]
    detect_local_mode: Option<String>,
    /// This node's pod CIDR (for --detect-local-mode NodeCIDR).
    #[arg(long)]
    node_pod_cidr: Option<String>,
    /// For --detect-local-mode BridgeInterface.
    #[arg(long)]
    pod_bridge_interface: Option<String>,
    /// For --detect-local-mode InterfaceNamePrefix.
    #[arg(long)]
    pod_interface_name_prefix: Option<String>,
    /// Masquerade all ClusterIP traffic.
    #[arg(long)]
    masquerade_all: bool,
    /// The fwmark bit for SNAT (0..31).
    #[arg(long)]
    masquerade_bit: Option<u32>,
    /// Comma-separated CIDRs whose node addresses accept NodePorts (default: all).
    #[arg(long)]
    nodeport_addresses: Option<String>,
    /// Accept NodePorts on 127.0.0.1 (IPv4).
    #[arg(long)]
    iptables_localhost_nodeports: Option<bool>,
    /// IPv4 or IPv6.
    #[arg(long, value_enum, default_value = "IPv4")]
    ip_family: Family,
    /// `--random-fully` on the MASQUERADE rule (default: if the host's iptables has it).
    #[arg(long)]
    random_fully: Option<bool>,
    /// An nfacct counter that exists (repeatable): ct_state_invalid_dropped_pkts,
    /// localhost_nps_accepted_pkts.
    #[arg(long = "nfacct-counter")]
    nfacct_counters: Vec<String>,
    /// As when net.netfilter.nf_conntrack_tcp_be_liberal is set: no INVALID drop rule.
    #[arg(long)]
    conntrack_tcp_be_liberal: bool,
    /// Reject the whole input if any object fails validation.
    #[arg(long)]
    strict: bool,
    /// Run iptables-restore (ip6tables-restore) and ensure the jump rules; with
    /// `--backend nftables`, `nft -f` (one transaction). A full sync also removes the
    /// other backend's rules, as kube-proxy does when it switches modes.
    #[arg(long)]
    apply: bool,
    /// iptables (kube-proxy's iptables mode) or nftables (its nftables mode: table
    /// `ip kube-proxy` / `ip6 kube-proxy`).
    /// (Default: the KubeProxyConfiguration's `mode`, else iptables.)
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Remove everything either backend installed (iptables chains and jumps, the
    /// nftables tables) for --ip-family, and exit.
    #[arg(long)]
    cleanup: bool,
    /// Remember what was applied; later runs write only what changed.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Confirm that the last pending sync was applied (after a pipeline).
    #[arg(long)]
    commit: bool,
    /// Write every service's chains (still deleting chains the state says are stale).
    #[arg(long)]
    full: bool,
    /// Print kube-proxy's normalised (sorted) form instead of the raw restore input.
    #[arg(long)]
    normalize: bool,
    /// Keep running as the node's sync loop, reading watch events (`kubectl get services
    /// -A --watch --output-watch-events -o json`, and the same for endpointslices) from
    /// FILE (repeatable; a FIFO, a file, or `-` for stdin). Needs --apply.
    #[arg(long = "watch", value_name = "FILE")]
    watch: Vec<PathBuf>,
    /// Watch mode: the shortest time between two syncs (bursts of events coalesce).
    #[arg(long, default_value = "1s", value_parser = duration)]
    min_sync_period: Duration,
    /// Watch mode: a full sync at least this often.
    #[arg(long, default_value = "1h", value_parser = duration)]
    sync_period: Duration,
    /// Watch mode: a stream whose initial list was not ended by a BOOKMARK counts as
    /// listed after this long without an event.
    #[arg(long, default_value = "1s", value_parser = duration)]
    initial_list_quiet: Duration,
    /// Watch mode: serve /healthz here (kube-proxy's; unhealthy once a change waited
    /// twice --sync-period unapplied). Empty: off.
    #[arg(long, default_value = "127.0.0.1:10256")]
    healthz_bind_address: String,
    /// Watch mode: serve Prometheus /metrics here, with kube-proxy's names. Empty: off.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: String,
}

fn duration(s: &str) -> std::result::Result<Duration, String> {
    iptables_gen::watch::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration (1s, 100ms, 1h0m0s)"))
}

fn opt_err(option: &str, reason: impl Into<String>) -> Error {
    Error::Option {
        option: option.into(),
        reason: reason.into(),
    }
}

fn parse_cidr(option: &str, s: &str) -> Result<IpNet> {
    model::parse_cidr_sloppy(s).ok_or_else(|| opt_err(option, format!("{s:?} is not a CIDR")))
}

fn iface(option: &str, s: &str) -> Result<String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(s.to_string())
    } else {
        Err(opt_err(option, format!("{s:?} is not an interface name")))
    }
}

/// The KubeProxyConfiguration file, if any.
fn read_kpc(cli: &Cli) -> Result<KubeProxyConfiguration> {
    match &cli.config {
        Some(p) => {
            let t = std::fs::read(p).map_err(|e| Error::Io {
                op: "read",
                path: p.display().to_string(),
                source: e,
            })?;
            KubeProxyConfiguration::parse(&t)
        }
        None => Ok(KubeProxyConfiguration::default()),
    }
}

/// Settings from a KubeProxyConfiguration, then flags on top.
fn build_config(cli: &Cli, kpc: &KubeProxyConfiguration, nft: bool) -> Result<Config> {
    let mode = kpc.mode_settings(nft);
    let mut c = Config {
        family: cli.ip_family,
        ..Config::default()
    };
    c.node_name = match cli
        .hostname_override
        .clone()
        .or_else(|| kpc.hostname_override.clone())
    {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_lowercase(),
    };
    c.node_ip = cli.node_ip;
    for a in &cli.node_addresses {
        let ip = a.split('/').next().unwrap_or("");
        c.node_addresses.push(
            model::parse_ip_sloppy(ip)
                .ok_or_else(|| opt_err("--node-address", format!("{a:?} is not an IP")))?,
        );
    }
    let bit = cli.masquerade_bit.or(mode.masquerade_bit).unwrap_or(14);
    c.masquerade_mark = iptables_gen::mark_for_bit(bit)?;
    c.masquerade_all = cli.masquerade_all || mode.masquerade_all == Some(true);
    c.localhost_nodeports = cli
        .iptables_localhost_nodeports
        .or(kpc.iptables.localhost_node_ports)
        .unwrap_or(true);
    let npa: Vec<String> = match &cli.nodeport_addresses {
        Some(l) => l
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        None => kpc.node_port_addresses.clone().unwrap_or_default(),
    };
    for n in &npa {
        c.nodeport_addresses
            .push(parse_cidr("--nodeport-addresses", n)?);
    }
    let cluster_cidr = match cli
        .cluster_cidr
        .clone()
        .or_else(|| kpc.cluster_cidr.clone())
    {
        Some(cc) => {
            // kube-proxy accepts a comma-separated dual-stack pair; take our family's.
            let nets: Vec<IpNet> = cc
                .split(',')
                .map(|x| parse_cidr("--cluster-cidr", x.trim()))
                .collect::<Result<_>>()?;
            nets.into_iter()
                .find(|n| n.addr().is_ipv4() == (c.family == Family::V4))
        }
        None => None,
    };
    let mode = cli
        .detect_local_mode
        .clone()
        .or_else(|| kpc.detect_local_mode.clone())
        .unwrap_or_else(|| {
            if cluster_cidr.is_some() {
                "ClusterCIDR".into()
            } else {
                "None".into()
            }
        });
    c.local_detector = match mode.as_str() {
        "ClusterCIDR" => match cluster_cidr {
            Some(n) => LocalDetector::ClusterCidr(n),
            None => LocalDetector::None,
        },
        "NodeCIDR" => LocalDetector::NodeCidr(parse_cidr(
            "--node-pod-cidr",
            cli.node_pod_cidr.as_deref().ok_or_else(|| {
                opt_err(
                    "--node-pod-cidr",
                    "required with --detect-local-mode NodeCIDR",
                )
            })?,
        )?),
        "BridgeInterface" => LocalDetector::BridgeInterface(iface(
            "--pod-bridge-interface",
            &cli.pod_bridge_interface
                .clone()
                .or_else(|| kpc.detect_local.bridge_interface.clone())
                .unwrap_or_default(),
        )?),
        "InterfaceNamePrefix" => LocalDetector::InterfaceNamePrefix(iface(
            "--pod-interface-name-prefix",
            &cli.pod_interface_name_prefix
                .clone()
                .or_else(|| kpc.detect_local.interface_name_prefix.clone())
                .unwrap_or_default(),
        )?),
        "None" | "" => LocalDetector::None,
        other => {
            return Err(opt_err(
                "--detect-local-mode",
                format!("unknown mode {other:?}"),
            ));
        }
    };
    for n in &cli.nfacct_counters {
        if n != "ct_state_invalid_dropped_pkts" && n != "localhost_nps_accepted_pkts" {
            return Err(opt_err(
                "--nfacct-counter",
                format!("unknown counter {n:?}"),
            ));
        }
        c.nfacct.insert(n.clone());
    }
    c.conntrack_tcp_be_liberal = cli.conntrack_tcp_be_liberal;
    c.random_fully = cli
        .random_fully
        .unwrap_or_else(|| host_has_random_fully(c.family));
    // Node addresses from the host, only when nodePortAddresses needs them.
    if c.node_addresses.is_empty()
        && !c.nodeport_addresses.is_empty()
        && !c.nodeport_addresses.iter().any(|n| n.prefix_len() == 0)
    {
        c.node_addresses = host_addresses();
    }
    Ok(c)
}

/// Which ruleset to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Iptables,
    Nftables,
}

fn read_inputs(files: &[PathBuf]) -> Result<model::Objects> {
    let mut objs = model::Objects::default();
    if files.is_empty() || files.iter().any(|f| f == Path::new("-")) {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Error::Io {
                op: "read",
                path: "stdin".into(),
                source: e,
            })?;
        model::parse(&buf, &mut objs)?;
    }
    for f in files.iter().filter(|f| *f != Path::new("-")) {
        let buf = std::fs::read(f).map_err(|e| Error::Io {
            op: "read",
            path: f.display().to_string(),
            source: e,
        })?;
        model::parse(&buf, &mut objs).map_err(|e| match e {
            Error::Json(j) => Error::Option {
                option: f.display().to_string(),
                reason: format!("malformed JSON: {j}"),
            },
            e => e,
        })?;
    }
    Ok(objs)
}

fn run(cli: Cli) -> Result<()> {
    let family = cli.ip_family;
    let kpc = read_kpc(&cli)?;
    // --backend, else the configuration's `mode`, else iptables (kube-proxy's default).
    let nft = match cli.backend {
        Some(b) => b == Backend::Nftables,
        None => kpc.mode.as_deref() == Some("nftables"),
    };
    // Each backend keeps its own state: one never passes for the other's.
    let state_dir = cli
        .state_dir
        .as_ref()
        .map(|d| if nft { d.join("nftables") } else { d.clone() });
    if let Some(d) = state_dir.as_ref().filter(|_| nft) {
        std::fs::create_dir_all(d).map_err(|e| Error::Io {
            op: "create",
            path: d.display().to_string(),
            source: e,
        })?;
    }
    if cli.commit {
        let dir = state_dir
            .as_deref()
            .ok_or_else(|| opt_err("--commit", "needs --state-dir"))?;
        return state::commit(dir, family);
    }
    if cli.cleanup {
        // Everything of both backends, whichever was used; a tool that is not installed
        // means that backend installed nothing.
        let mut first = None;
        if tool(tools(family).1).is_ok() {
            if let Err(e) = iptables_cleanup(family) {
                first.get_or_insert(e);
            }
        }
        if tool("nft").is_ok() {
            if let Err(e) = nft_cleanup(family) {
                first.get_or_insert(e);
            }
        }
        for d in [
            cli.state_dir.clone(),
            cli.state_dir.as_ref().map(|d| d.join("nftables")),
        ]
        .into_iter()
        .flatten()
        {
            state::invalidate(&d, family);
        }
        return first.map_or(Ok(()), Err);
    }
    let cfg = build_config(&cli, &kpc, nft)?;
    let syncer = Syncer {
        cfg,
        nft,
        state_dir,
        apply: cli.apply,
        normalize: cli.normalize,
    };
    if !cli.watch.is_empty() {
        if !cli.apply {
            return Err(opt_err("--watch", "needs --apply"));
        }
        if !cli.files.is_empty() {
            return Err(opt_err(
                "--watch",
                "reads its objects from the streams, not files",
            ));
        }
        return watch_loop(&cli, &syncer);
    }
    let objs = read_inputs(&cli.files)?;
    for r in &objs.rejected {
        eprintln!("iptables-gen: skipped {r}");
    }
    if cli.strict && !objs.rejected.is_empty() {
        return Err(Error::Strict {
            count: objs.rejected.len(),
            first: objs.rejected[0].clone(),
        });
    }
    let prev = match &syncer.state_dir {
        Some(d) => match state::load(d, syncer.cfg.family) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "iptables-gen: {}; doing a full sync",
                    iptables_gen::error_chain(&e)
                );
                None
            }
        },
        None => None,
    };
    let full = cli.full || prev.is_none();
    syncer.sync(&objs, prev, full, true).map(|_| ())
}

/// One sync's settings: what to write, and whether and where to apply and remember it.
struct Syncer {
    cfg: Config,
    nft: bool,
    state_dir: Option<PathBuf>,
    apply: bool,
    normalize: bool,
}

impl Syncer {
    /// Generate the rules for `objs` (partial against `prev` unless `full`), then apply
    /// them (or print them), remember the state, and tidy up after them. `list_kernel`:
    /// read the kernel's per-service chains first (needed unless `prev` is known to be
    /// what the kernel holds, as in the watch loop).
    fn sync(
        &self,
        objs: &model::Objects,
        prev: Option<SyncState>,
        full: bool,
        list_kernel: bool,
    ) -> Result<Generated> {
        let (cfg, nft) = (&self.cfg, self.nft);
        let mut plan = SyncPlan {
            full: full || prev.is_none(),
            previous: prev,
            ..Default::default()
        };
        if self.apply && (list_kernel || plan.full) {
            plan.existing_chains.extend(if nft {
                nft_existing(cfg.family)?
            } else {
                kernel_service_chains(cfg.family)?
            });
        }
        let g = if nft {
            nftables::generate(cfg, objs, &plan)
        } else {
            iptables_gen::generate(cfg, objs, &plan)
        };
        // The nftables generator decides full or partial from the state's fingerprint too.
        let full = plan.full || (nft && g.full);
        for w in &g.warnings {
            eprintln!("iptables-gen: {w}");
        }
        if !self.apply {
            self.print(&g)?;
            return Ok(g);
        }
        let applied = if nft {
            run_cmd(&tool("nft")?, &["-f", "-"], Some(g.text.as_bytes()))
        } else {
            if plan.full {
                ensure_jumps(cfg)?;
            }
            run_cmd(
                &tool(tools(cfg.family).1)?,
                &["-w", "5", "--noflush", "--counters"],
                Some(g.text.as_bytes()),
            )
        };
        if let Err(e) = applied {
            if let Some(d) = &self.state_dir {
                state::invalidate(d, cfg.family);
            }
            return Err(e);
        }
        if let Some(d) = &self.state_dir {
            state::save_pending(d, cfg.family, &g.state)?;
            state::commit(d, cfg.family)?;
        }
        if !g.cleanup.is_empty() {
            // Chains flushed by the main transaction; an older kernel may refuse to
            // delete them yet (they stay empty; the next full sync removes them).
            if let Err(e) = run_cmd(&tool("nft")?, &["-f", "-"], Some(g.cleanup.as_bytes())) {
                eprintln!(
                    "iptables-gen: stale chains left flushed: {}",
                    iptables_gen::error_chain(&e)
                );
            }
        }
        if g.written_services > 0 || !g.deleted_chains.is_empty() {
            clear_stale_udp_flows(cfg, objs);
        }
        if plan.full {
            // Switching backends: the other one's rules go, as in kube-proxy.
            let other = if nft {
                tool(tools(cfg.family).1).and_then(|_| iptables_cleanup(cfg.family))
            } else {
                tool("nft").and_then(|_| nft_cleanup(cfg.family))
            };
            if let Err(e) = other {
                eprintln!(
                    "iptables-gen: could not remove the other backend's rules: {}",
                    iptables_gen::error_chain(&e)
                );
            }
        }
        eprintln!(
            "iptables-gen: applied {} sync: {} service(s) written, {} chain(s) deleted{}",
            if full { "full" } else { "partial" },
            g.written_services,
            g.deleted_chains.len(),
            if nft { " (nftables)" } else { "" }
        );
        Ok(g)
    }

    /// Pipeline mode: the rules on stdout, the state pending until `--commit`.
    fn print(&self, g: &Generated) -> Result<()> {
        if let Some(d) = &self.state_dir {
            state::save_pending(d, self.cfg.family, &g.state)?;
        }
        let text = if self.normalize && !self.nft {
            render::normalize(&g.text)?
        } else if self.nft {
            // One input for `nft -f`: the deletions of flushed chains last (kernels
            // before 6.2 refuse them in the same transaction: use --apply there).
            format!("{}{}", g.text, g.cleanup)
        } else {
            g.text.clone()
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).map_err(|e| Error::Io {
            op: "write",
            path: "stdout".into(),
            source: e,
        })
    }
}

/// What the watch loop waits for.
enum Msg {
    Event(usize, watch::Event),
    /// A stream ended: EOF (None) or a read/parse error.
    End(usize, Option<Error>),
    Signal(nix::sys::signal::Signal),
}

/// The node's sync loop (`--watch`): kube-proxy's semantics. No sync before every stream
/// has delivered its initial list (a BOOKMARK, or `--initial-list-quiet` without an
/// event); then a sync at most every `--min-sync-period` while events come, partial
/// against the last applied state, and a full one at least every `--sync-period`, first,
/// and after a failed apply. A stream that ends or sends ERROR ends the loop with an error
/// (a supervisor restarts it; its first sync is full); SIGTERM or SIGINT end it with
/// success, the rules left in place.
fn watch_loop(cli: &Cli, syncer: &Syncer) -> Result<()> {
    let (tx, rx) = mpsc::channel::<Msg>();
    // Before any other thread starts: they inherit the blocked signals.
    take_signals(tx.clone())?;
    let health = Arc::new(Health::new(cli.sync_period.saturating_mul(2)));
    let metrics = Arc::new(Metrics::new());
    if !cli.healthz_bind_address.is_empty() {
        serve::serve(
            "--healthz-bind-address",
            &cli.healthz_bind_address,
            serve::healthz(Arc::clone(&health)),
        )?;
    }
    if !cli.metrics_bind_address.is_empty() {
        serve::serve(
            "--metrics-bind-address",
            &cli.metrics_bind_address,
            serve::metrics(Arc::clone(&metrics)),
        )?;
    }
    for (i, path) in cli.watch.iter().enumerate() {
        read_stream(i, path.clone(), tx.clone());
    }
    drop(tx);
    let names: Vec<String> = cli.watch.iter().map(|p| p.display().to_string()).collect();
    let mut sched = watch::Schedule::new(
        names.len(),
        Instant::now(),
        cli.min_sync_period,
        cli.sync_period,
        cli.initial_list_quiet,
    );
    let mut store = Store::default();
    let mut prev: Option<SyncState> = None;
    let mut warnings = Vec::new();
    loop {
        let now = Instant::now();
        let wait = sched.deadline(now).saturating_duration_since(now);
        match rx.recv_timeout(wait) {
            Ok(Msg::Event(i, ev)) => {
                let change = store.apply(&ev, &mut warnings).map_err(|e| Error::Watch {
                    reason: format!("{}: {}", names[i], iptables_gen::error_chain(&e)),
                })?;
                for w in warnings.drain(..) {
                    eprintln!("iptables-gen: {}: {w}", names[i]);
                }
                match change {
                    Change::Service => metrics.service_changes.inc(),
                    Change::EndpointSlice => metrics.endpoint_changes.inc(),
                    Change::None => 0,
                };
                if change != Change::None {
                    health.queued();
                }
                let bookmark = ev.kind == EventKind::Bookmark;
                sched.event(i, Instant::now(), bookmark, change != Change::None);
            }
            Ok(Msg::End(i, e)) => {
                return Err(Error::Watch {
                    reason: match e {
                        None => format!("{} ended", names[i]),
                        Some(e) => format!("{}: {}", names[i], iptables_gen::error_chain(&e)),
                    },
                });
            }
            Ok(Msg::Signal(sig)) => {
                eprintln!("iptables-gen: {sig}: stopping; the rules stay in place");
                return Ok(());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::Watch {
                    reason: "every stream and the signal thread are gone".into(),
                });
            }
        }
        let started = Instant::now();
        let Some(full) = sched.due(started) else {
            continue;
        };
        match syncer.sync(&store.objects(), prev.take(), full, false) {
            Ok(g) => {
                metrics.synced(full || g.full, started.elapsed().as_secs_f64());
                if !syncer.nft {
                    metrics.count_iptables(&g.text);
                }
                health.updated();
                sched.synced(started, full || g.full);
                prev = Some(g.state);
            }
            Err(e) => {
                if syncer.nft {
                    metrics.nftables_failures.inc();
                } else {
                    metrics.restore_failures.inc();
                }
                // What should be applied is not: pending, as a change would be.
                health.queued();
                sched.failed();
                eprintln!(
                    "iptables-gen: sync failed, retrying as a full sync: {}",
                    iptables_gen::error_chain(&e)
                );
            }
        }
    }
}

/// SIGTERM and SIGINT, blocked in this thread (and so in every thread it starts after),
/// are taken by a thread of their own and sent to the loop.
fn take_signals(tx: mpsc::Sender<Msg>) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().map_err(|e| Error::Watch {
        reason: format!("block SIGTERM/SIGINT: {e}"),
    })?;
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            let _ = tx.send(Msg::Signal(sig));
        }
    });
    Ok(())
}

/// Stream `i`'s events, read on a thread of its own (a FIFO's open waits for its writer
/// there), then its end.
fn read_stream(i: usize, path: PathBuf, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let reader: Box<dyn Read + Send> = if path == Path::new("-") {
            Box::new(std::io::stdin())
        } else {
            match std::fs::File::open(&path) {
                Ok(f) => Box::new(f),
                Err(e) => {
                    let e = Error::Io {
                        op: "open",
                        path: path.display().to_string(),
                        source: e,
                    };
                    let _ = tx.send(Msg::End(i, Some(e)));
                    return;
                }
            }
        };
        let reader = std::io::BufReader::with_capacity(1 << 16, reader);
        for ev in watch::events(reader) {
            let msg = match ev {
                Ok(ev) => Msg::Event(i, ev),
                Err(e) => {
                    let _ = tx.send(Msg::End(i, Some(e)));
                    return;
                }
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        let _ = tx.send(Msg::End(i, None));
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iptables-gen: {}", iptables_gen::error_chain(&e));
            ExitCode::from(1)
        }
    }
}
