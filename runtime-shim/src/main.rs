//! `runtime-shim`: the protocol adapter. argv/stdin -> library -> stdout JSON + exit code.
//! Logs and errors go to stderr; stdout carries only results (a runtime parses it).
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

#[derive(Subcommand)]
enum Cmd {
    /// Wire a pod: bridge, veth, address, routes, masquerade. Prints the CNI result JSON.
    Setup(PodArgs),
    /// Unwire a pod by container id (idempotent; the namespace may be gone).
    Teardown(TeardownArgs),
    /// Verify the pod's interface, addresses, routes and masquerade rule.
    Check(PodArgs),
    /// Remove the network's masquerade rules (pod teardown never does).
    Unmasq {
        #[arg(long)]
        config: PathBuf,
    },
}

fn read_config(path: &Path) -> Result<config::Network> {
    let bytes = if path == Path::new("-") {
        let mut v = Vec::new();
        std::io::stdin()
            .read_to_end(&mut v)
            .map_err(|e| Error::Io {
                op: "read config from",
                path: "stdin".into(),
                source: e,
            })?;
        v
    } else {
        std::fs::read(path).map_err(|e| Error::Io {
            op: "read config",
            path: path.into(),
            source: e,
        })?
    };
    Ok(config::load(&bytes)?.1)
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup(a) => {
            let net = read_config(&a.config)?;
            runtime_shim::check_capabilities()?;
            let r = runtime_shim::setup(&net, &a.netns, &a.id, &a.ifname)?;
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
            runtime_shim::check(&net, &a.netns, &a.id, &a.ifname)?;
        }
        Cmd::Unmasq { config } => {
            let net = read_config(&config)?;
            runtime_shim::check_capabilities()?;
            for s in net.range_sets.iter().flatten() {
                runtime_shim::masq::remove(&net.name, &s.subnet)?;
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runtime-shim: {e}");
            ExitCode::from(1)
        }
    }
}
