//! podwire-cri: one CRI v1 call per invocation, over a runtime's unix socket, printing
//! JSON. The tests and the demo compose these into kubelet's sequence (RunPodSandbox,
//! CreateContainer, StartContainer, ExecSync, StopPodSandbox, RemovePodSandbox).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use serde_json::json;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("connect to {socket}: {source}")]
    Connect {
        socket: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {call}: {status}")]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("{0}")]
    Other(String),
}

#[derive(Parser)]
#[command(
    name = "podwire-cri",
    about = "A minimal CRI v1 client (crictl stand-in)"
)]
struct Cli {
    /// The runtime's CRI socket (containerd's grpc.address).
    #[arg(long)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runtime name and version.
    Version,
    /// Is the image present in the runtime's store?
    ImageStatus { image: String },
    /// RunPodSandbox (network namespace: pod). Prints {"id", "ip"}.
    RunPod {
        name: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        log_dir: PathBuf,
    },
    /// CreateContainer + StartContainer in a sandbox. Prints {"id"}.
    RunContainer {
        pod_id: String,
        /// The sandbox's name and namespace, as given to run-pod (CRI wants the config).
        #[arg(long)]
        pod_name: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        log_dir: PathBuf,
        name: String,
        image: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// ExecSync. Prints {"exit_code", "stdout", "stderr"}; exits with the command's code.
    Exec {
        container_id: String,
        #[arg(long, default_value_t = 10)]
        timeout: i64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// StopPodSandbox (CNI DEL).
    StopPod { pod_id: String },
    /// RemovePodSandbox (CNI DEL again, without a netns).
    RemovePod { pod_id: String },
    /// Ids of every sandbox the runtime knows.
    ListPods,
}

fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Call {
        call,
        status: Box::new(status),
    }
}

async fn channel(socket: &Path) -> Result<Channel, Error> {
    let sock = socket.to_path_buf();
    // The URI is a placeholder: the connector dials the unix socket.
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = sock.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .map_err(|source| Error::Connect {
            socket: socket.display().to_string(),
            source,
        })
}

fn sandbox_config(name: &str, namespace: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("{namespace}-{name}-uid"),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.join(name).display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run(cli: Cli) -> Result<serde_json::Value, Error> {
    let ch = channel(&cli.socket).await?;
    let mut rt = RuntimeServiceClient::new(ch.clone());
    Ok(match cli.cmd {
        Cmd::Version => {
            let v = rt
                .version(VersionRequest {
                    version: "v1".into(),
                })
                .await
                .map_err(call("Version"))?
                .into_inner();
            json!({"runtime": v.runtime_name, "version": v.runtime_version,
                   "api": v.runtime_api_version})
        }
        Cmd::ImageStatus { image } => {
            let mut img = ImageServiceClient::new(ch);
            let s = img
                .image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .map_err(call("ImageStatus"))?
                .into_inner();
            json!({"present": s.image.is_some(),
                   "id": s.image.map(|i| i.id).unwrap_or_default()})
        }
        Cmd::RunPod {
            name,
            namespace,
            log_dir,
        } => {
            let cfg = sandbox_config(&name, &namespace, &log_dir);
            std::fs::create_dir_all(&cfg.log_directory)
                .map_err(|e| Error::Other(format!("mkdir {}: {e}", cfg.log_directory)))?;
            let id = rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(cfg),
                    runtime_handler: String::new(),
                })
                .await
                .map_err(call("RunPodSandbox"))?
                .into_inner()
                .pod_sandbox_id;
            let st = rt
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id.clone(),
                    verbose: false,
                })
                .await
                .map_err(call("PodSandboxStatus"))?
                .into_inner();
            let ip = st
                .status
                .and_then(|s| s.network)
                .map(|n| n.ip)
                .unwrap_or_default();
            json!({"id": id, "ip": ip})
        }
        Cmd::RunContainer {
            pod_id,
            pod_name,
            namespace,
            log_dir,
            name,
            image,
            command,
        } => {
            let cfg = ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.clone(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image,
                    ..Default::default()
                }),
                command,
                log_path: format!("{name}.log"),
                ..Default::default()
            };
            let id = rt
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod_id,
                    config: Some(cfg),
                    sandbox_config: Some(sandbox_config(&pod_name, &namespace, &log_dir)),
                })
                .await
                .map_err(call("CreateContainer"))?
                .into_inner()
                .container_id;
            rt.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(call("StartContainer"))?;
            json!({"id": id})
        }
        Cmd::Exec {
            container_id,
            timeout,
            command,
        } => {
            let r = rt
                .exec_sync(ExecSyncRequest {
                    container_id,
                    cmd: command,
                    timeout,
                })
                .await
                .map_err(call("ExecSync"))?
                .into_inner();
            json!({"exit_code": r.exit_code,
                   "stdout": String::from_utf8_lossy(&r.stdout),
                   "stderr": String::from_utf8_lossy(&r.stderr)})
        }
        Cmd::StopPod { pod_id } => {
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_id,
            })
            .await
            .map_err(call("StopPodSandbox"))?;
            json!({})
        }
        Cmd::RemovePod { pod_id } => {
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod_id,
            })
            .await
            .map_err(call("RemovePodSandbox"))?;
            json!({})
        }
        Cmd::ListPods => {
            let items = rt
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
                .map_err(call("ListPodSandbox"))?
                .into_inner()
                .items;
            json!(items.into_iter().map(|p| p.id).collect::<Vec<_>>())
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("podwire-cri: tokio: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(v) => {
            println!("{v}");
            match v.get("exit_code").and_then(|c| c.as_i64()) {
                Some(0) | None => ExitCode::SUCCESS,
                Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1).max(1)),
            }
        }
        Err(e) => {
            eprintln!("podwire-cri: {e}");
            ExitCode::from(1)
        }
    }
}
