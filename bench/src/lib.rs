//! What the benchmark binaries share: the synthetic cluster iptables-gen is measured on.

use iptables_gen::model::{
    Conditions, EndpointSlice, Meta, Objects, PortSpec, Service, SliceEndpoint, SlicePort,
};

/// `n` ClusterIP services (10.96.0.0 upwards, port 80) of `eps` endpoints each (10.128.0.0
/// upwards, port 8080), as `kubectl get -o json` gives them: each object with a
/// `resourceVersion` when `versioned`.
pub fn objects(n: usize, eps: usize, versioned: bool) -> Objects {
    objects_on_nodes(n, eps, versioned, 0)
}

/// [`objects`] with each endpoint's `nodeName` set, as the EndpointSlice controller does:
/// endpoint `k` runs on `node-{k % nodes}` (none when `nodes` is 0).
pub fn objects_on_nodes(n: usize, eps: usize, versioned: bool, nodes: usize) -> Objects {
    let mut o = Objects::default();
    for i in 0..n {
        let name = format!("svc-{i}");
        let mut s = Service {
            metadata: Meta {
                name: name.clone(),
                namespace: "bench".into(),
                // As in `kubectl get -o json` output.
                resource_version: versioned.then(|| format!("{}", 1000 + 2 * i)),
                ..Default::default()
            },
            ..Default::default()
        };
        s.spec.cluster_ip = Some(format!(
            "10.{}.{}.{}",
            96 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
        s.spec.ports = Some(vec![PortSpec {
            name: Some("http".into()),
            port: 80,
            protocol: None,
            node_port: None,
        }]);
        o.services.push(s);
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("kubernetes.io/service-name".to_string(), name.clone());
        o.slices.push(EndpointSlice {
            metadata: Meta {
                name: format!("{name}-1"),
                namespace: "bench".into(),
                labels,
                resource_version: versioned.then(|| format!("{}", 1001 + 2 * i)),
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                (0..eps)
                    .map(|e| {
                        let k = i * eps + e;
                        SliceEndpoint {
                            addresses: vec![format!(
                                "10.{}.{}.{}",
                                128 + k / 65536,
                                (k / 256) % 256,
                                k % 256
                            )],
                            conditions: Some(Conditions::default()),
                            node_name: (nodes > 0).then(|| format!("node-{}", k % nodes)),
                        }
                    })
                    .collect(),
            ),
            ports: Some(vec![SlicePort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: None,
            }]),
        });
    }
    o
}
