//! `runtime-shim`: the protocol adapter. argv/stdin -> library -> stdout JSON + exit code.
//! Logs and errors go to stderr; stdout carries only results (a runtime parses it).
//!
//! Run with `CNI_COMMAND` set and no arguments (how libcni execs a plugin), it is a CNI
//! plugin: errors are CNI error JSON on stdout.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use runtime_shim::{Error, Result, config};

#[derive(Parser)]
#[command(
    name = "runtime-shim",
    version,
    about = "Wire pod network namespaces to a bridge (veth, IPAM, routes, masquerade)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct PodArgs {
    /// The pod's network namespace (/run/netns/NAME, /proc/PID/ns/net, ...).
    #[arg(long)]
    netns: PathBuf,
    /// Container (sandbox) id: keys the address reservation and the host veth name.
    #[arg(long)]
    id: String,
    /// Interface name inside the pod.
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// Network config JSON (CNI bridge + host-local fields); `-` reads stdin.
    #[arg(long)]
    config: PathBuf,
}

#[derive(Args)]
struct SetupArgs {
    #[command(flatten)]
    pod: PodArgs,
    /// A static address for the pod (one per range set; repeat for dual-stack).
    #[arg(long = "ip")]
    ips: Vec<String>,
    /// The pod interface's MAC address.
    #[arg(long)]
    mac: Option<String>,
}

#[derive(Args)]
struct TeardownArgs {
    /// The pod's network namespace, if it still exists (not needed).
    #[arg(long)]
    netns: Option<PathBuf>,
    #[arg(long)]
    id: String,
    #[arg(long, default_value = "eth0")]
    ifname: String,
    #[arg(long)]
    config: PathBuf,
}

/// How pod traffic reaches other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// flannel's host-gw: routes via the nodes' InternalIPs.
    HostGw,
    /// flannel's vxlan: an overlay device, routes, neighbours and FDB entries.
    Vxlan,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Wire a pod: bridge, veth, address, routes, masquerade. Prints the CNI result JSON.
    Setup(SetupArgs),
    /// Unwire a pod by container id (idempotent; the namespace may be gone).
    Teardown(TeardownArgs),
    /// Verify the pod's interface, addresses, routes and the network's firewall table.
    Check(PodArgs),
    /// OCI hook (createRuntime/prestart: wire the sandbox; poststop: tear it down).
    /// Reads the container state JSON on stdin.
    Hook {
        /// Network config; else the annotation podwire.io/network-config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Pod interface name; else the annotation podwire.io/ifname, else eth0.
        #[arg(long)]
        ifname: Option<String>,
        /// createRuntime, prestart or poststop; inferred from the state when absent.
        #[arg(long)]
        stage: Option<String>,
        /// Where sandbox records live.
        #[arg(long, default_value = runtime_shim::hook::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Rewrite an app container's BUNDLE/config.json to join a sandbox's network, IPC and
    /// UTS namespaces.
    Join {
        /// The sandbox: its container id (started with the hook), its pid, or a netns path.
        #[arg(long)]
        sandbox: String,
        #[arg(long, default_value = runtime_shim::hook::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The app container's bundle directory.
        bundle: PathBuf,
    },
    /// Remove reservations and links of attachments not listed (after crashes).
    Gc {
        #[arg(long)]
        config: PathBuf,
        /// A live attachment, CONTAINER_ID/IFNAME (repeat; none means remove all).
        #[arg(long = "valid")]
        valid: Vec<String>,
        /// Also the OCI hook's records: sandboxes still running are valid; dead ones
        /// (a poststop that never ran, a hook killed half way) lose their pin and record.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Routes between nodes' pod subnets, from a list of Kubernetes Node objects
    /// (`kubectl get nodes -o json`). Prints JSON; `--apply` installs this node's routes.
    Routes {
        /// NodeList JSON; `-` reads stdin.
        #[arg(long)]
        nodes: PathBuf,
        /// This node's name.
        #[arg(long)]
        node: String,
        /// Carve pod CIDRs out of this range for nodes that have none.
        #[arg(long)]
        cluster_cidr: Option<ipnet::IpNet>,
        /// Size of each node's pod CIDR.
        #[arg(long, default_value_t = 24)]
        node_cidr_mask: u8,
        /// Install the routes in this network namespace, all or nothing (needs
        /// --cluster-cidr: only routes inside it, never the default route, one covering a
        /// node address, or a route podwire did not install, are touched). podwire's
        /// routes of nodes that left are removed.
        #[arg(long)]
        apply: bool,
        /// host-gw: a route per node via its InternalIP (one L2 segment). vxlan: a
        /// flannel-compatible overlay for nodes that share no link.
        #[arg(long, value_enum, default_value_t = Backend::HostGw)]
        backend: Backend,
        /// vxlan: the device's name.
        #[arg(long, default_value = runtime_shim::overlay::DEFAULT_DEVICE)]
        vxlan_device: String,
        /// vxlan: the VXLAN network identifier.
        #[arg(long, default_value_t = runtime_shim::overlay::DEFAULT_VNI)]
        vni: u32,
        /// vxlan: the UDP port.
        #[arg(long, default_value_t = runtime_shim::overlay::DEFAULT_PORT)]
        vxlan_port: u16,
    },
    /// Remove the network's masquerade and isolation table (and the iptables rules of
    /// versions before it); the next pod setup puts it back.
    Unmasq {
        #[arg(long)]
        config: PathBuf,
    },
}

/// A regular file of at most `max` bytes, or stdin for `-`.
fn read_input(path: &Path, max: u64) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        read_stdin(max)
    } else {
        runtime_shim::read_regular(path, max)
    }
}

fn read_config(path: &Path) -> Result<config::Network> {
    Ok(config::load(&read_input(path, runtime_shim::MAX_CONFIG_BYTES)?)?.1)
}

/// NodeLists of large clusters run to megabytes.
const MAX_NODES_BYTES: u64 = 256 << 20;

/// Inputs on stdin (a CNI netconf with its prevResult, an OCI state) are small.
const MAX_STDIN_BYTES: u64 = 64 << 20;

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup(SetupArgs { pod: a, ips, mac }) => {
            let net = read_config(&a.config)?;
            let mut req = config::Requested::default();
            for ip in &ips {
                req.ips
                    .push(("--ip".into(), config::parse_requested_ip("--ip", ip)?));
            }
            req.mac = mac.map(|m| config::parse_mac("--mac", &m)).transpose()?;
            net.place_requested(&req.ips)?;
            runtime_shim::check_capabilities()?;
            let r = runtime_shim::setup(&net, &a.netns, &a.id, &a.ifname, &req)?;
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
        }
        Cmd::Teardown(a) => {
            let net = read_config(&a.config)?;
            runtime_shim::check_capabilities()?;
            runtime_shim::teardown(&net, a.netns.as_deref(), &a.id, &a.ifname)?;
        }
        Cmd::Check(a) => {
            let net = read_config(&a.config)?;
            runtime_shim::check_capabilities()?;
            runtime_shim::check(&net, &a.netns, &a.id, &a.ifname, None)?;
        }
        Cmd::Unmasq { config } => {
            let net = read_config(&config)?;
            runtime_shim::check_capabilities()?;
            let policy = runtime_shim::masq::Policy::of(&net);
            runtime_shim::masq::remove(&mut runtime_shim::nft::Nft::open()?, &net.name)?;
            runtime_shim::masq::remove_legacy(&net.name, &policy.subnets)?;
        }
        Cmd::Hook {
            config,
            ifname,
            stage,
            state_dir,
        } => {
            let stdin = read_stdin(MAX_STDIN_BYTES)?;
            let opts = runtime_shim::hook::Options {
                config,
                ifname,
                stage,
                state_dir: Some(state_dir),
            };
            // Runtimes ignore a hook's stdout; nothing is printed.
            runtime_shim::hook::run(&opts, &stdin)?;
        }
        Cmd::Join {
            sandbox,
            state_dir,
            bundle,
        } => {
            let sb = runtime_shim::join::Sandbox::parse(&sandbox)?;
            let t = runtime_shim::join::join(&bundle, &sb, &state_dir)?;
            let show = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
            println!(
                "{}",
                serde_json::json!({"network": t.net, "ipc": show(&t.ipc), "uts": show(&t.uts)})
            );
        }
        Cmd::Routes {
            nodes,
            node,
            cluster_cidr,
            node_cidr_mask,
            apply,
            backend,
            vxlan_device,
            vni,
            vxlan_port,
        } => {
            use runtime_shim::overlay;
            let bytes = read_input(&nodes, MAX_NODES_BYTES)?;
            let mut all = runtime_shim::routes::parse_nodes(&bytes)?;
            if let Some(c) = cluster_cidr {
                runtime_shim::routes::carve(&mut all, c, node_cidr_mask)?;
            }
            let mut routes = runtime_shim::routes::routes_for(&all, &node)?;
            let plan = match backend {
                Backend::HostGw => None,
                Backend::Vxlan => {
                    let p = overlay::plan(&all, &node, &vxlan_device, vni, vxlan_port)?;
                    routes = overlay::routes(&p);
                    Some(p)
                }
            };
            let mut changed = Vec::new();
            if apply {
                // Routes are installed only inside the cluster range, so it must be known.
                let cluster = cluster_cidr.ok_or_else(|| Error::Invalid {
                    what: "--apply",
                    value: "without --cluster-cidr".into(),
                    reason: "routes are applied only inside the cluster range: pass \
                             --cluster-cidr"
                        .into(),
                })?;
                runtime_shim::check_capabilities()?;
                let mut nl = runtime_shim::link::Netlink::open()?;
                changed = match &plan {
                    None => runtime_shim::routes::apply(&mut nl, &routes, cluster)?,
                    Some(p) => overlay::apply(&mut nl, p, cluster)?,
                };
            }
            let me = all.iter().find(|n| n.name == node);
            let mut out = serde_json::json!({
                "node": node,
                "backend": backend.name(),
                "podCIDRs": me.map(|n| n.pod_cidrs.clone()).unwrap_or_default(),
                "nodes": all,
                "routes": routes,
                "applied": apply,
                "changed": changed,
            });
            if let Some(p) = &plan {
                out["vxlan"] = serde_json::to_value(p).unwrap_or_default();
                out["annotations"] =
                    serde_json::to_value(overlay::annotations(p)).unwrap_or_default();
            }
            println!("{out}");
        }
        Cmd::Gc {
            config,
            valid,
            state_dir,
        } => {
            let net = read_config(&config)?;
            runtime_shim::check_capabilities()?;
            let mut set = std::collections::BTreeSet::new();
            for v in valid {
                let (id, ifname) = v.split_once('/').ok_or_else(|| Error::Invalid {
                    what: "--valid",
                    value: v.clone(),
                    reason: "expected CONTAINER_ID/IFNAME".into(),
                })?;
                set.insert((id.to_string(), ifname.to_string()));
            }
            let report = match &state_dir {
                Some(dir) => runtime_shim::gc::gc_with_hooks(&net, &set, dir)?,
                None => runtime_shim::gc::gc(&net, &set)?,
            };
            println!("{report}");
        }
    }
    Ok(())
}

fn read_stdin(max: u64) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    let io = |source| Error::Io {
        op: "read",
        path: "stdin".into(),
        source,
    };
    std::io::stdin()
        .take(max + 1)
        .read_to_end(&mut v)
        .map_err(io)?;
    if v.len() as u64 > max {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {max} bytes"),
        )));
    }
    Ok(v)
}

/// CNI plugin mode: the spec's environment in, result or error JSON out.
fn cni_main() -> ExitCode {
    use runtime_shim::cni;
    let req = match cni::Request::from_env(|k| std::env::var(k).ok()) {
        Ok(r) => r,
        Err(e) => {
            println!("{}", cni::error_json(None, cni::LATEST, &e));
            return ExitCode::from(1);
        }
    };
    // VERSION first and cheaply: podman asks around every ADD and DEL.
    if req.command == cni::Command::Version {
        println!("{}", cni::version_json());
        return ExitCode::SUCCESS;
    }
    let stdin = match runtime_shim::drop_capabilities().and_then(|()| read_stdin(MAX_STDIN_BYTES)) {
        Ok(s) => s,
        Err(e) => {
            println!("{}", cni::error_json(Some(req.command), cni::LATEST, &e));
            return ExitCode::from(1);
        }
    };
    match cni::run(&req, &stdin) {
        Ok(out) => {
            if let Some(out) = out {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("runtime-shim: {}", runtime_shim::chain(&e));
            let v = cni::requested_version(&stdin);
            println!("{}", cni::error_json(Some(req.command), &v, &e));
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() && std::env::args_os().len() == 1 {
        return cni_main();
    }
    let cli = Cli::parse();
    let extra: &[caps::Capability] = match cli.cmd {
        Cmd::Join { .. } => &runtime_shim::JOIN_CAPABILITIES,
        _ => &[],
    };
    if let Err(e) = runtime_shim::drop_capabilities_but(extra) {
        eprintln!("runtime-shim: {}", runtime_shim::chain(&e));
        return ExitCode::from(1);
    }
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runtime-shim: {}", runtime_shim::chain(&e));
            ExitCode::from(1)
        }
    }
}
