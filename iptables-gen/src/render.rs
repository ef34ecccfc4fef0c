//! kube-proxy's test normalisation of iptables-restore text (spec §7,
//! `sortIPTablesRules`): what "equal" means when comparing with kube-proxy's goldens, and
//! a readable, order-independent form for diffs (`iptables-gen --normalize`).

use std::collections::BTreeMap;

use crate::{Error, Result};

#[derive(Default)]
struct Table {
    chains: Vec<String>,
    rules: BTreeMap<String, Vec<String>>,
    deleted: Vec<String>,
}

/// The sort key of a chain: KUBE-NODEPORTS, KUBE-SERVICES, other KUBE-*, the rest.
fn chain_rank(c: &str) -> (u8, &str) {
    match c {
        "KUBE-NODEPORTS" => (0, c),
        "KUBE-SERVICES" => (1, c),
        _ if c.starts_with("KUBE-") => (2, c),
        _ => (3, c),
    }
}

/// The "service name" of a rule: its --comment value up to the first space or colon.
fn service_name(rule: &str) -> String {
    let Some(i) = rule.find("--comment ") else {
        return String::new();
    };
    let rest = &rule[i + "--comment ".len()..];
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    rest.split([' ', ':', '"']).next().unwrap_or("").to_string()
}

/// Parse restore text and re-render it in kube-proxy's normalised order.
pub fn normalize(text: &str) -> Result<String> {
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Error::Parse {
            line: n + 1,
            reason: why.to_string(),
        };
        if let Some(t) = line.strip_prefix('*') {
            current = Some(t.to_string());
            tables.entry(t.to_string()).or_default();
        } else if line == "COMMIT" {
            current = None;
        } else {
            let t = current
                .as_ref()
                .ok_or_else(|| bad("rule outside a table"))?;
            let table = tables.entry(t.clone()).or_default();
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split(' ').next().unwrap_or("").to_string();
                if !table.chains.contains(&name) {
                    table.chains.push(name);
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest.split(' ').next().unwrap_or("").to_string();
                if !table.chains.contains(&chain) {
                    return Err(bad(&format!("rule for undeclared chain {chain}")));
                }
                table.rules.entry(chain).or_default().push(line.to_string());
            } else if let Some(chain) = line.strip_prefix("-X ") {
                if !table.chains.contains(&chain.to_string()) {
                    return Err(bad(&format!("-X of undeclared chain {chain}")));
                }
                table.deleted.push(chain.to_string());
            } else {
                return Err(bad("unrecognised line"));
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    for (name, mut t) in tables {
        t.chains.sort_by(|a, b| chain_rank(a).cmp(&chain_rank(b)));
        out.push('*');
        out.push_str(&name);
        out.push('\n');
        for c in &t.chains {
            out.push(':');
            out.push_str(c);
            out.push_str(" - [0:0]\n");
        }
        for c in &t.chains {
            let Some(rules) = t.rules.get_mut(c) else {
                continue;
            };
            let sorted = c == "KUBE-NODEPORTS" || c == "KUBE-SERVICES";
            if sorted {
                let last_rule = name == "nat" && c == "KUBE-SERVICES";
                rules.sort_by_key(|r| {
                    (
                        last_rule && r.contains("must be the last rule"),
                        service_name(r),
                    )
                });
            }
            for r in rules.iter() {
                out.push_str(r);
                out.push('\n');
            }
        }
        t.deleted.sort_by(|a, b| chain_rank(a).cmp(&chain_rank(b)));
        for c in &t.deleted {
            out.push_str("-X ");
            out.push_str(c);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    Ok(out)
}

/// kube-proxy's consistency check: every jumped-to KUBE chain is declared and has rules.
pub fn check_jumps(text: &str) -> Result<()> {
    let mut declared = std::collections::BTreeSet::new();
    let mut nonempty = std::collections::BTreeSet::new();
    let mut targets = Vec::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix(':') {
            declared.insert(d.split(' ').next().unwrap_or("").to_string());
        } else if let Some(r) = line.strip_prefix("-A ") {
            nonempty.insert(r.split(' ').next().unwrap_or("").to_string());
            if let Some(t) = r.split(" -j ").nth(1) {
                let t = t.split(' ').next().unwrap_or("");
                if t.starts_with("KUBE-") {
                    targets.push(t.to_string());
                }
            }
        }
    }
    for t in targets {
        if !declared.contains(&t) || (t != "KUBE-NODEPORTS" && !nonempty.contains(&t)) {
            return Err(Error::Parse {
                line: 0,
                reason: format!("jump to {t}, which is undeclared or empty"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_like_kube_proxy() {
        let raw = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-SVC-B - [0:0]\n:KUBE-SVC-A - [0:0]\n\
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -j KUBE-NODEPORTS\n\
-A KUBE-SERVICES -m comment --comment \"ns2/b cluster IP\" -j KUBE-SVC-B\n\
-A KUBE-SERVICES -m comment --comment \"ns1/a cluster IP\" -j KUBE-SVC-A\n\
-A KUBE-SVC-B -j DROP\n-A KUBE-SVC-A -j DROP\n-X KUBE-SVC-B\nCOMMIT\n*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n";
        let n = normalize(raw).unwrap();
        let want = "*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n*nat\n:KUBE-NODEPORTS - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SVC-B - [0:0]\n\
-A KUBE-SERVICES -m comment --comment \"ns1/a cluster IP\" -j KUBE-SVC-A\n\
-A KUBE-SERVICES -m comment --comment \"ns2/b cluster IP\" -j KUBE-SVC-B\n\
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -j KUBE-NODEPORTS\n\
-A KUBE-SVC-A -j DROP\n-A KUBE-SVC-B -j DROP\n-X KUBE-SVC-B\nCOMMIT\n";
        assert_eq!(n, want);
        assert!(normalize("*nat\n-A KUBE-X -j DROP\nCOMMIT\n").is_err());
        assert_eq!(
            service_name("-A X -m comment --comment ns2/svc2:p80 -j Y"),
            "ns2/svc2"
        );
    }
}
