//! Applying and reading the kernel's rules: the tools (run from fixed system
//! directories only), iptables-restore with kube-proxy's jump rules, `nft -f`, what each
//! backend has in the kernel, removing either backend's rules, and clearing stale UDP
//! conntrack entries after a sync.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{Config, Error, Family, Result, model, nftables};

pub fn tools(f: Family) -> (&'static str, &'static str, &'static str) {
    match f {
        Family::V4 => ("iptables", "iptables-restore", "iptables-save"),
        Family::V6 => ("ip6tables", "ip6tables-restore", "ip6tables-save"),
    }
}

/// Where executed tools may live: fixed system directories, never `$PATH` or the working
/// directory (this runs as root).
pub const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

pub fn tool(name: &str) -> Result<String> {
    TOOL_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .ok_or_else(|| Error::Command {
            cmd: name.into(),
            status: "not found".into(),
            stderr: format!("{name} is not installed in {}", TOOL_DIRS.join(", ")),
        })
}

/// The per-service chains and affinity sets of this family's nftables table (none if
/// there is no table).
pub fn nft_existing(f: Family) -> Result<BTreeSet<String>> {
    let x = if f == Family::V4 { "ip" } else { "ip6" };
    let nft = tool("nft")?;
    let mut out = BTreeSet::new();
    for what in ["chains", "sets"] {
        let text = match run_cmd(&nft, &["list", what, x], None) {
            Ok(t) => t,
            Err(_) => continue,
        };
        let mut in_table = false;
        for l in text.lines() {
            let l = l.trim();
            if let Some(rest) = l.strip_prefix("table ") {
                in_table = rest.trim_end_matches(" {") == format!("{x} {}", nftables::TABLE);
            } else if in_table {
                let name = l
                    .strip_prefix("chain ")
                    .or_else(|| l.strip_prefix("set "))
                    .map(|n| n.trim_end_matches(" {"));
                if let Some(n) = name {
                    if nftables::is_service_chain(n)
                        || nftables::is_select_chain(n)
                        || n.starts_with("affinity-")
                    {
                        out.insert(n.to_string());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The chains the iptables backend writes (besides the per-service ones).
pub const IPTABLES_CHAINS: [(&str, &str); 9] = [
    ("filter", "KUBE-SERVICES"),
    ("filter", "KUBE-EXTERNAL-SERVICES"),
    ("filter", "KUBE-FORWARD"),
    ("filter", "KUBE-NODEPORTS"),
    ("filter", "KUBE-PROXY-FIREWALL"),
    ("nat", "KUBE-SERVICES"),
    ("nat", "KUBE-NODEPORTS"),
    ("nat", "KUBE-POSTROUTING"),
    ("nat", "KUBE-MARK-MASQ"),
];

/// Remove the iptables backend's rules: the jumps to its chains, then the chains, one
/// `iptables-restore --noflush` per table (all or nothing). `KUBE-FIREWALL` goes only if
/// it holds nothing but our localhost-NodePort rule (the kubelet writes one of that name).
pub fn iptables_cleanup(f: Family) -> Result<()> {
    let (_, restore, save) = tools(f);
    let (restore, save) = (tool(restore)?, tool(save)?);
    for table in ["filter", "nat"] {
        let text = run_cmd(&save, &["-t", table], None)?;
        let firewall_ours = table == "filter"
            && text
                .lines()
                .filter(|l| l.starts_with("-A KUBE-FIREWALL "))
                .all(|l| l.contains("block incoming localnet connections"));
        let ours = |c: &str| {
            IPTABLES_CHAINS.iter().any(|(t, n)| *t == table && *n == c)
                || (c == "KUBE-FIREWALL" && firewall_ours)
                || crate::names::SERVICE_CHAIN_PREFIXES
                    .iter()
                    .any(|p| c.starts_with(p))
        };
        let chains: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split(' ').next())
            .filter(|c| ours(c))
            .collect();
        if chains.is_empty() {
            continue;
        }
        let mut input = format!("*{table}\n");
        for l in text.lines().filter(|l| l.starts_with("-A ")) {
            let mut w = l.split_whitespace();
            let from = w.nth(1).unwrap_or("");
            let to = l
                .split(" -j ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or("");
            if !ours(from) && ours(to) {
                input.push_str("-D ");
                input.push_str(&l[3..]);
                input.push('\n');
            }
        }
        for c in &chains {
            input.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &chains {
            input.push_str(&format!("-X {c}\n"));
        }
        input.push_str("COMMIT\n");
        run_cmd(&restore, &["-w", "5", "--noflush"], Some(input.as_bytes()))?;
    }
    Ok(())
}

/// After a successful apply: delete UDP conntrack entries that still lead to endpoints a
/// Service no longer has (see `conntrack.rs`). Best effort: a failure is reported, the
/// rules stay applied.
pub fn clear_stale_udp_flows(cfg: &Config, objs: &model::Objects) {
    use crate::conntrack;
    let f = conntrack::Frontends::of(cfg, objs);
    if f.is_empty() {
        return;
    }
    let Ok(ct) = tool("conntrack") else {
        eprintln!("iptables-gen: conntrack not installed: stale UDP flows are not cleared");
        return;
    };
    let fam = if cfg.family == Family::V4 {
        "ipv4"
    } else {
        "ipv6"
    };
    let list = match run_cmd(&ct, &["-L", "-p", "udp", "-f", fam], None) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "iptables-gen: listing conntrack entries: {}",
                crate::error_chain(&e)
            );
            return;
        }
    };
    for filter in conntrack::stale(&f, &conntrack::parse_list(&list)) {
        let args = conntrack::delete_args(cfg.family, &filter);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Exit 1: the entry went meanwhile.
        let _ = Command::new(&ct)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Remove the nftables backend's table of family `f` (absent: nothing to do).
pub fn nft_cleanup(f: Family) -> Result<()> {
    let x = if f == Family::V4 { "ip" } else { "ip6" };
    let text = format!(
        "add table {x} {t}\ndelete table {x} {t}\n",
        t = nftables::TABLE
    );
    run_cmd(&tool("nft")?, &["-f", "-"], Some(text.as_bytes())).map(|_| ())
}

/// iptables >= 1.6.2 has --random-fully (kube-proxy's HasRandomFully).
pub fn host_has_random_fully(f: Family) -> bool {
    let Ok(bin) = tool(tools(f).0) else {
        return false;
    };
    let Ok(out) = Command::new(bin).arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(v) = text.split_whitespace().find(|w| w.starts_with('v')) else {
        return false;
    };
    let nums: Vec<u32> = v[1..].split('.').filter_map(|x| x.parse().ok()).collect();
    nums >= vec![1, 6, 2]
}

/// This host's addresses, from `ip -o addr` (only needed for nodePortAddresses).
pub fn host_addresses() -> Vec<IpAddr> {
    let Ok(ip) = tool("ip") else {
        return Vec::new();
    };
    let Ok(out) = Command::new(ip).args(["-o", "addr", "show"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet" || *x == "inet6")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

pub fn run_cmd(cmd: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Command {
            cmd: cmd.into(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        // A restore that fails early closes its stdin: the exit status tells why.
        let _ = w.write_all(input);
    }
    let out = child.wait_with_output().map_err(|e| Error::Command {
        cmd: cmd.into(),
        status: "wait failed".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: format!("{cmd} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The jump rules from the built-in chains (spec §3.2), ensured exactly once each.
pub const JUMPS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "filter",
        "INPUT",
        "KUBE-EXTERNAL-SERVICES",
        "-m conntrack --ctstate NEW",
        "kubernetes externally-visible service portals",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-EXTERNAL-SERVICES",
        "-m conntrack --ctstate NEW",
        "kubernetes externally-visible service portals",
    ),
    (
        "filter",
        "INPUT",
        "KUBE-NODEPORTS",
        "",
        "kubernetes health check service ports",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-SERVICES",
        "-m conntrack --ctstate NEW",
        "kubernetes service portals",
    ),
    (
        "filter",
        "OUTPUT",
        "KUBE-SERVICES",
        "-m conntrack --ctstate NEW",
        "kubernetes service portals",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-FORWARD",
        "",
        "kubernetes forwarding rules",
    ),
    (
        "filter",
        "INPUT",
        "KUBE-PROXY-FIREWALL",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
    ),
    (
        "filter",
        "OUTPUT",
        "KUBE-PROXY-FIREWALL",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-PROXY-FIREWALL",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
    ),
    (
        "nat",
        "OUTPUT",
        "KUBE-SERVICES",
        "",
        "kubernetes service portals",
    ),
    (
        "nat",
        "PREROUTING",
        "KUBE-SERVICES",
        "",
        "kubernetes service portals",
    ),
    (
        "nat",
        "POSTROUTING",
        "KUBE-POSTROUTING",
        "",
        "kubernetes postrouting rules",
    ),
];

pub fn ensure_jumps(cfg: &Config) -> Result<()> {
    let ipt = tool(tools(cfg.family).0)?;
    let ipt = ipt.as_str();
    let mut jumps: Vec<(&str, &str, &str, &str, &str)> = JUMPS.to_vec();
    if cfg.family == Family::V4 && cfg.localhost_nodeports {
        jumps.push(("filter", "INPUT", "KUBE-FIREWALL", "", ""));
        jumps.push(("filter", "OUTPUT", "KUBE-FIREWALL", "", ""));
    }
    for (table, from, to, extra, comment) in jumps {
        // The chain must exist before a rule can jump to it (exit 1: it already does).
        let _ = Command::new(ipt)
            .args(["-w", "5", "-t", table, "-N", to])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let mut rule: Vec<&str> = extra.split_whitespace().collect();
        if !comment.is_empty() {
            rule.extend(["-m", "comment", "--comment", comment]);
        }
        rule.extend(["-j", to]);
        let mut check = vec!["-w", "5", "-t", table, "-C", from];
        check.extend(&rule);
        let exists = Command::new(ipt)
            .args(&check)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !exists {
            let mut insert = vec!["-w", "5", "-t", table, "-I", from];
            insert.extend(&rule);
            run_cmd(ipt, &insert, None)?;
        }
    }
    Ok(())
}

/// Per-service chains the kernel's nat table holds (kube-proxy's basis for `-X`).
pub fn kernel_service_chains(f: Family) -> Result<BTreeSet<String>> {
    let text = run_cmd(&tool(tools(f).2)?, &["-t", "nat"], None)?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split(' ').next())
        .filter(|c| {
            crate::names::SERVICE_CHAIN_PREFIXES
                .iter()
                .any(|p| c.starts_with(p))
        })
        .map(str::to_string)
        .collect())
}
