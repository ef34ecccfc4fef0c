//! The parts of kube-proxy's `KubeProxyConfiguration` (kubeproxy.config.k8s.io/v1alpha1)
//! this generator reads, typed. Unknown fields are accepted and ignored (a real config
//! has many); a known field of the wrong type is an error naming it.

use serde::Deserialize;

use crate::{Error, Result};

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    #[serde(default)]
    pub hostname_override: Option<String>,
    #[serde(default, rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    /// `iptables` or `nftables` (kube-proxy's `--proxy-mode`); others are refused.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub detect_local_mode: Option<String>,
    #[serde(default)]
    pub detect_local: DetectLocal,
    #[serde(default)]
    pub iptables: ModeSettings,
    #[serde(default)]
    pub nftables: ModeSettings,
    #[serde(default)]
    pub node_port_addresses: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DetectLocal {
    #[serde(default)]
    pub bridge_interface: Option<String>,
    #[serde(default)]
    pub interface_name_prefix: Option<String>,
}

/// `iptables:` and `nftables:` share these.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModeSettings {
    #[serde(default)]
    pub masquerade_all: Option<bool>,
    #[serde(default)]
    pub masquerade_bit: Option<u32>,
    #[serde(default)]
    pub localhost_node_ports: Option<bool>,
}

impl KubeProxyConfiguration {
    pub fn parse(bytes: &[u8]) -> Result<KubeProxyConfiguration> {
        let c: KubeProxyConfiguration = serde_json::from_slice(bytes).map_err(Error::Json)?;
        if let Some(m) = c.mode.as_deref() {
            if !matches!(m, "" | "iptables" | "nftables") {
                return Err(Error::Option {
                    option: "KubeProxyConfiguration mode".into(),
                    reason: format!("{m:?}: only iptables and nftables are written here"),
                });
            }
        }
        Ok(c)
    }

    /// The settings of the mode in use (kube-proxy reads `nftables:` in nftables mode).
    pub fn mode_settings(&self, nftables: bool) -> &ModeSettings {
        if nftables {
            &self.nftables
        } else {
            &self.iptables
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fields_and_unknown_ones() {
        let c = KubeProxyConfiguration::parse(
            br#"{"apiVersion":"kubeproxy.config.k8s.io/v1alpha1","kind":"KubeProxyConfiguration",
                 "mode":"nftables","clusterCIDR":"10.244.0.0/16","hostnameOverride":"n1",
                 "detectLocalMode":"BridgeInterface","detectLocal":{"bridgeInterface":"cni0"},
                 "iptables":{"masqueradeBit":13},"nftables":{"masqueradeAll":true,"masqueradeBit":12},
                 "nodePortAddresses":["primary"],"conntrack":{"maxPerCore":32768}}"#,
        )
        .unwrap();
        assert_eq!(c.mode.as_deref(), Some("nftables"));
        assert_eq!(c.mode_settings(true).masquerade_bit, Some(12));
        assert_eq!(c.mode_settings(false).masquerade_bit, Some(13));
        assert_eq!(c.detect_local.bridge_interface.as_deref(), Some("cni0"));
        let e = KubeProxyConfiguration::parse(br#"{"iptables":{"masqueradeBit":"x"}}"#)
            .unwrap_err()
            .to_string();
        assert!(!e.is_empty());
        assert!(KubeProxyConfiguration::parse(br#"{"mode":"ipvs"}"#).is_err());
    }
}
