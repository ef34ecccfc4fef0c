//! `make demo`: the Kubernetes networking walkthrough, live, in throwaway namespaces.
//!
//!   podwire-demo [--quiet] [--json] [--color=auto|always|never] [--on-host]
#![forbid(unsafe_code)]

use std::process::ExitCode;

mod walkthrough;

use walkthrough as demo;

fn main() -> ExitCode {
    let mut quiet = false;
    let mut json = false;
    let mut color: Option<bool> = None;
    let mut on_host = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--quiet" | "-q" => quiet = true,
            "--on-host" => on_host = true,
            "--json" => json = true,
            "--color=always" => color = Some(true),
            "--color=never" => color = Some(false),
            "--color=auto" => color = None,
            "-h" | "--help" => {
                println!(
                    "podwire-demo [--quiet] [--json] [--color=auto|always|never] [--on-host]\n\
                     The Kubernetes networking walkthrough in throwaway namespaces (root).\n\
                     --on-host: node-1 is this machine's own network namespace (creates cni0,\n\
                     pwnode0, KUBE-* chains; refused if any exist; all removed at the end)."
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("podwire-demo: unknown argument {other:?} (see --help)");
                return ExitCode::from(2);
            }
        }
    }
    demo::install_signal_watch();
    let mut opts = demo::Opts::for_terminal(quiet || json);
    if let Some(c) = color {
        opts.color = c;
    }
    opts.on_host = on_host;
    let s = demo::run(opts);
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        let pods: usize = s
            .steps
            .iter()
            .filter_map(|st| st.facts["pods_deleted"].as_u64())
            .sum::<u64>() as usize;
        if s.ok {
            println!(
                "\ndemo: all {} steps passed in {:.1} s; {pods} pods on 2 nodes, removed; nothing left behind",
                s.steps.len(),
                s.seconds
            );
        } else {
            println!(
                "\ndemo: FAILED after {:.1} s: {}{}",
                s.seconds,
                s.error.clone().unwrap_or_else(|| "a step failed".into()),
                if s.left_behind.is_empty() {
                    String::new()
                } else {
                    format!("; left behind: {}", s.left_behind.join(", "))
                }
            );
        }
    }
    if s.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
