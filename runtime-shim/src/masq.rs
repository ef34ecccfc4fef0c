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

use crate::{Error, Result};

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

/// Where a tool lives: `$PATH` first, then the sbin directories. OCI hooks run with
/// exactly the env their hook entry lists, often with no PATH at all, and exec's default
/// search path has no sbin (where Debian puts iptables).
pub fn find_tool(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.into())
}

/// Run iptables in the caller's network namespace; Ok(true) on exit 0, Ok(false) on 1.
fn iptables(op: &str, network: &str, subnet: &IpNet) -> Result<bool> {
    let bin = binary(subnet);
    let args = rule_args(network, subnet);
    let out = Command::new(find_tool(bin))
        .args(["-w", "5", "-t", "nat", op])
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Command {
            cmd: bin.to_string(),
            stderr: format!("cannot run {bin}: {e} (is the iptables package installed?)"),
        })?;
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
