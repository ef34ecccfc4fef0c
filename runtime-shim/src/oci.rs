//! The parts of the OCI runtime spec (config.json) that `join` relies on, checked with
//! serde: a file must be a config a runtime takes before `join` rewrites it. Unknown
//! fields are allowed (and kept by `join`, which edits the JSON itself). This replaces the
//! `oci-spec` crate, which pulled ~20 crates and a second `syn` major for this one check.

use serde::Deserialize;

/// `config.json` as far as a runtime requires it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub oci_version: String,
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub root: Option<Root>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub mounts: Option<Vec<Mount>>,
    #[serde(default)]
    pub linux: Option<Linux>,
}

#[derive(Debug, Deserialize)]
pub struct Process {
    pub user: User,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    pub cwd: String,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub terminal: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    #[serde(default, rename = "additionalGids")]
    pub additional_gids: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize)]
pub struct Root {
    pub path: String,
    #[serde(default)]
    pub readonly: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub options: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Option<Vec<Namespace>>,
}

#[derive(Debug, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: NamespaceKind,
    #[serde(default)]
    pub path: Option<String>,
}

/// The namespace types of the runtime spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceKind {
    Pid,
    Network,
    Mount,
    Ipc,
    Uts,
    User,
    Cgroup,
    Time,
}

/// Parse `bytes` as a runtime config; the error names the field.
pub fn parse_config(bytes: &[u8]) -> Result<Config, String> {
    // An object, not the sequence form serde would also take for a struct.
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_configs_and_what_is_not_one() {
        let ok = r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["sh"],
            "cwd":"/","x-unknown":1},"root":{"path":"rootfs"},"hostname":"h",
            "mounts":[{"destination":"/proc","type":"proc"}],
            "linux":{"namespaces":[{"type":"network","path":"/run/netns/x"},{"type":"pid"}]}}"#;
        let c = parse_config(ok.as_bytes()).unwrap();
        assert_eq!(
            c.linux.unwrap().namespaces.unwrap()[0].kind,
            NamespaceKind::Network
        );
        for (bad, want) in [
            ("", "EOF"),
            ("[]", "not a JSON object"),
            (r#"["1.0.2"]"#, "not a JSON object"),
            (r#"{"ociVersion": 3}"#, "ociVersion"),
            (r#"{}"#, "ociVersion"),
            (r#"{"ociVersion":"1","process":{"cwd":"/"}}"#, "user"),
            (
                r#"{"ociVersion":"1","process":{"user":{"uid":0,"gid":0}}}"#,
                "cwd",
            ),
            (
                r#"{"ociVersion":"1","linux":{"namespaces":{"type":"network"}}}"#,
                "linux.namespaces",
            ),
            (
                r#"{"ociVersion":"1","linux":{"namespaces":[{"type":"net"}]}}"#,
                "linux.namespaces[0].type",
            ),
            (
                r#"{"ociVersion":"1","mounts":[{"type":"proc"}]}"#,
                "destination",
            ),
        ] {
            let e = parse_config(bad.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
