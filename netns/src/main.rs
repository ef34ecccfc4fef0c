//! `netns`: a small `ip netns` work-alike on top of the library.
//!
//! Exit codes: 0 success; 1 an operation failed (message on stderr); 2 usage error;
//! `exec` returns the command's own status, or 127 (not found) / 126 (cannot execute).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "netns",
    version,
    about = "Create, pin, enter and remove network namespaces (ip netns compatible)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a persistent namespace /run/netns/NAME (like `ip netns add`).
    Add { name: String },
    /// Remove named namespaces (like `ip netns del`).
    #[command(alias = "delete")]
    Del {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List the namespaces under /run/netns.
    #[command(alias = "ls")]
    List,
    /// Run a command inside a namespace (like `ip netns exec`).
    Exec {
        name: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Pin the namespace of process PID as /run/netns/NAME (like `ip netns attach`).
    #[command(alias = "attach")]
    Pin { name: String, pid: i32 },
    /// Print the names under /run/netns that refer to PID's namespace.
    Identify { pid: i32 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netns: {}", netns::error_chain(&e));
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Cmd) -> netns::Result<ExitCode> {
    match cmd {
        Cmd::Add { name } => {
            netns::create(&name)?;
        }
        Cmd::Del { names } => {
            // Validate all names before removing any.
            for n in &names {
                netns::validate_name(n)?;
            }
            for n in &names {
                netns::remove(n)?;
            }
        }
        Cmd::List => {
            for n in netns::list()? {
                println!("{n}");
            }
        }
        Cmd::Exec { name, command } => {
            let ns = netns::NetNs::from_name(&name)?;
            let (program, args) = command.split_first().expect("clap requires a command");
            let err = netns::exec_in(&ns, program, args);
            eprintln!("netns: {}", netns::error_chain(&err));
            let code = match &err {
                netns::Error::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    127
                }
                netns::Error::Io { .. } | netns::Error::Permission { op: "exec", .. } => 126,
                _ => 1,
            };
            return Ok(ExitCode::from(code));
        }
        Cmd::Pin { name, pid } => {
            let ns = netns::NetNs::from_pid(pid)?;
            netns::pin(&name, &ns)?;
        }
        Cmd::Identify { pid } => {
            for n in netns::identify(pid)? {
                println!("{n}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
