//! `iptables-gen`: kube-proxy's iptables rules from `kubectl get services,endpointslices
//! -A -o json`. Prints `iptables-restore` input, or applies it (`--apply`).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use ipnet::IpNet;
use iptables_gen::apply::{
    clear_stale_udp_flows, ensure_jumps, host_addresses, host_has_random_fully, iptables_cleanup,
    kernel_service_chains, nft_cleanup, nft_existing, run_cmd, tool, tools,
};
use iptables_gen::kpc::KubeProxyConfiguration;
use iptables_gen::{
    Config, Error, Family, LocalDetector, Result, SyncPlan, model, nftables, render, state,
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
    let prev = match &state_dir {
        Some(d) => match state::load(d, cfg.family) {
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
    let mut plan = SyncPlan {
        full: cli.full || prev.is_none(),
        previous: prev,
        ..Default::default()
    };
    if cli.apply {
        plan.existing_chains.extend(if nft {
            nft_existing(cfg.family)?
        } else {
            kernel_service_chains(cfg.family)?
        });
    }
    let g = if nft {
        nftables::generate(&cfg, &objs, &plan)
    } else {
        iptables_gen::generate(&cfg, &objs, &plan)
    };
    // The nftables generator decides full or partial from the state's fingerprint too.
    let full = plan.full || (nft && g.full);
    for w in &g.warnings {
        eprintln!("iptables-gen: {w}");
    }
    let st = &g.state;
    if cli.apply {
        let applied = if nft {
            run_cmd(&tool("nft")?, &["-f", "-"], Some(g.text.as_bytes()))
        } else {
            if plan.full {
                ensure_jumps(&cfg)?;
            }
            run_cmd(
                &tool(tools(cfg.family).1)?,
                &["-w", "5", "--noflush", "--counters"],
                Some(g.text.as_bytes()),
            )
        };
        match applied {
            Ok(_) => {
                if let Some(d) = &state_dir {
                    state::save_pending(d, cfg.family, st)?;
                    state::commit(d, cfg.family)?;
                }
                if !g.cleanup.is_empty() {
                    // Chains flushed by the main transaction; an older kernel may refuse
                    // to delete them yet (they stay empty; the next full sync removes them).
                    if let Err(e) = run_cmd(&tool("nft")?, &["-f", "-"], Some(g.cleanup.as_bytes()))
                    {
                        eprintln!(
                            "iptables-gen: stale chains left flushed: {}",
                            iptables_gen::error_chain(&e)
                        );
                    }
                }
                if g.written_services > 0 || !g.deleted_chains.is_empty() {
                    clear_stale_udp_flows(&cfg, &objs);
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
            }
            Err(e) => {
                if let Some(d) = &state_dir {
                    state::invalidate(d, cfg.family);
                }
                return Err(e);
            }
        }
    } else {
        if let Some(d) = &state_dir {
            state::save_pending(d, cfg.family, st)?;
        }
        let text = if cli.normalize && !nft {
            render::normalize(&g.text)?
        } else if nft {
            // One input for `nft -f`: the deletions of flushed chains last (kernels
            // before 6.2 refuse them in the same transaction: use --apply there).
            format!("{}{}", g.text, g.cleanup)
        } else {
            g.text
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).map_err(|e| Error::Io {
            op: "write",
            path: "stdout".into(),
            source: e,
        })?;
    }
    Ok(())
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
