//! Outbound masquerade: one rule per network subnet in the node's nat POSTROUTING chain,
//! not one per pod as the reference bridge plugin does:
//!
//!   -A POSTROUTING -s SUBNET ! -d SUBNET -m comment --comment "podwire masq NET" -j MASQUERADE
//!
//! Adding is idempotent (`-C` first). The rule is removed only when asked (`unmasq`), never
//! by pod teardown. To keep per-pod setup free of iptables execs, setup records on the
//! bridge (its ifalias) that the rules are in place; the marker dies with the bridge.

use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::{Error, ExecError, Result};

/// The bridge alias that says "masquerade is installed for these subnets".
pub fn marker(subnets: &[IpNet]) -> String {
    let s: Vec<String> = subnets.iter().map(|s| s.to_string()).collect();
    format!("podwire-masq {}", s.join(","))
}

fn comment(network: &str) -> String {
    // The network name is validated to [A-Za-z0-9_.-]: no quotes or newlines can get in.
    format!("podwire masq {network}")
}

/// The rule's arguments after the operation flag (`-A`, `-C`, `-D`).
pub fn rule_args(network: &str, subnet: &IpNet) -> Vec<String> {
    let s = subnet.to_string();
    [
        "POSTROUTING",
        "-s",
        &s,
        "!",
        "-d",
        &s,
        "-m",
        "comment",
        "--comment",
        &comment(network),
        "-j",
        "MASQUERADE",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

fn binary(subnet: &IpNet) -> &'static str {
    if subnet.addr().is_ipv4() {
        "iptables"
    } else {
        "ip6tables"
    }
}

/// Where executed tools may live: fixed system directories, in this order. Never
/// `$PATH` (a hook's environment is the runtime's, a CNI plugin's the caller's) and never
/// the working directory.
pub const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The absolute path of a system tool.
pub fn find_tool(name: &str) -> Result<std::path::PathBuf> {
    TOOL_DIRS
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::ToolNotFound {
            tool: name.to_string(),
            dirs: TOOL_DIRS.join(", "),
        })
}

/// The capabilities iptables needs, and all an executed tool gets.
const TOOL_CAPS: [caps::Capability; 2] = [
    caps::Capability::CAP_NET_ADMIN,
    caps::Capability::CAP_NET_RAW,
];

/// Shrink the calling thread's capabilities to [`TOOL_CAPS`], the bounding set included
/// (a root exec's permitted set is the bounding set), so a tool it execs has no more.
/// Capabilities are per thread: callers run this on a thread of their own.
fn restrict_thread_to_tool_caps() -> std::result::Result<(), caps::errors::CapsError> {
    use caps::{CapSet, Capability, CapsHashSet};
    let want: CapsHashSet = TOOL_CAPS.into_iter().collect();
    if caps::has_cap(None, CapSet::Permitted, Capability::CAP_SETPCAP)? {
        caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP)?;
        for c in caps::read(None, CapSet::Bounding)? {
            if !want.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)?;
            }
        }
    }
    let now: CapsHashSet = caps::read(None, CapSet::Permitted)?
        .intersection(&want)
        .copied()
        .collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &now)?;
    caps::set(None, CapSet::Permitted, &now)
}

/// Run a system tool (absolute path, empty environment but a fixed PATH) with only the
/// capabilities it needs, from a thread of its own.
pub fn run_tool(name: &str, args: &[String]) -> Result<std::process::Output> {
    let path = find_tool(name)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            let exec = |source| Error::Exec {
                tool: name.to_string(),
                source,
            };
            restrict_thread_to_tool_caps().map_err(|e| exec(ExecError::Capabilities(e)))?;
            Command::new(&path)
                .args(args)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| exec(ExecError::Spawn(e)))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Exec {
                tool: name.to_string(),
                source: ExecError::Panicked,
            })
        })
    })
}

/// Run iptables in the caller's network namespace; Ok(true) on exit 0, Ok(false) on 1.
fn iptables(op: &str, network: &str, subnet: &IpNet) -> Result<bool> {
    let bin = binary(subnet);
    let args = rule_args(network, subnet);
    let mut all: Vec<String> = ["-w", "5", "-t", "nat", op].map(String::from).to_vec();
    all.extend(args.iter().cloned());
    let out = run_tool(bin, &all)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) if op == "-C" || op == "-D" => Ok(false),
        _ => Err(Error::Command {
            cmd: format!("{bin} -t nat {op} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

pub fn exists(network: &str, subnet: &IpNet) -> Result<bool> {
    iptables("-C", network, subnet)
}

/// Add the rule unless present; Ok(true) if this call added it.
pub fn ensure(network: &str, subnet: &IpNet) -> Result<bool> {
    if exists(network, subnet)? {
        return Ok(false);
    }
    iptables("-A", network, subnet)
}

/// Remove the rule (every copy); Ok(number removed).
pub fn remove(network: &str, subnet: &IpNet) -> Result<usize> {
    let mut n = 0;
    while iptables("-D", network, subnet)? {
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_text() {
        let s: IpNet = "10.244.1.0/24".parse().unwrap();
        assert_eq!(
            rule_args("pods", &s).join(" "),
            "POSTROUTING -s 10.244.1.0/24 ! -d 10.244.1.0/24 -m comment --comment podwire masq pods -j MASQUERADE"
        );
        assert_eq!(binary(&"fd00::/64".parse().unwrap()), "ip6tables");
        assert_eq!(
            marker(&[s, "fd00::/64".parse().unwrap()]),
            "podwire-masq 10.244.1.0/24,fd00::/64"
        );
    }
}
