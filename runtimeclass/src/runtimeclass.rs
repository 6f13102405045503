//! The RuntimeClass objects: one per handler, scheduled only on nodes whose installer verified
//! the handler (`wasmpod.dev/wasmtime=ready`), never on the target of an install that failed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::api::node::v1::{Overhead, RuntimeClass, Scheduling};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{Error, Result, READY_LABEL_KEY, READY_LABEL_VALUE};

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub handlers: Vec<String>,
    pub tolerations: Vec<Toleration>,
    /// `overhead.podFixed.cpu`, e.g. `10m`.
    pub overhead_cpu: Option<String>,
    /// `overhead.podFixed.memory`, e.g. `1Mi`.
    pub overhead_memory: Option<String>,
}

/// Parses `key[=value]:Effect` (operator Equal, or Exists without a value); an empty key with
/// `:Effect` or `*` tolerates everything.
pub fn parse_toleration(s: &str) -> Result<Toleration> {
    if s == "*" {
        return Ok(Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        });
    }
    let (kv, effect) = match s.rsplit_once(':') {
        Some((kv, e)) => (kv, Some(e.to_string())),
        None => (s, None),
    };
    if let Some(e) = &effect {
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e.as_str()) {
            return Err(Error::Invalid(format!(
                "toleration {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
            )));
        }
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    Ok(Toleration {
        key: (!key.is_empty()).then(|| key.to_string()),
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.into()),
        value,
        effect,
        ..Default::default()
    })
}

pub fn build(opts: &Options) -> Vec<RuntimeClass> {
    let mut pod_fixed = BTreeMap::new();
    if let Some(c) = &opts.overhead_cpu {
        pod_fixed.insert("cpu".to_string(), Quantity(c.clone()));
    }
    if let Some(m) = &opts.overhead_memory {
        pod_fixed.insert("memory".to_string(), Quantity(m.clone()));
    }
    opts.handlers
        .iter()
        .map(|h| RuntimeClass {
            metadata: ObjectMeta {
                name: Some(h.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_string(),
                    "wasmpod".to_string(),
                )])),
                ..Default::default()
            },
            handler: h.clone(),
            scheduling: Some(Scheduling {
                node_selector: Some(BTreeMap::from([(
                    READY_LABEL_KEY.to_string(),
                    READY_LABEL_VALUE.to_string(),
                )])),
                tolerations: (!opts.tolerations.is_empty()).then(|| opts.tolerations.clone()),
            }),
            overhead: (!pod_fixed.is_empty()).then(|| Overhead {
                pod_fixed: Some(pod_fixed.clone()),
            }),
        })
        .collect()
}

/// YAML documents separated by `---`.
pub fn to_yaml(classes: &[RuntimeClass]) -> Result<String> {
    let mut out = String::new();
    for c in classes {
        // k8s-openapi's Serialize writes apiVersion and kind.
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(c).map_err(|source| Error::Yaml {
            context: "serializing a RuntimeClass".into(),
            source,
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_select_ready_nodes_and_carry_overhead() {
        let y = to_yaml(&build(&Options {
            handlers: vec!["wasmtime".into(), "wasmtime-isolated".into()],
            tolerations: vec![parse_toleration("wasm=true:NoSchedule").unwrap()],
            overhead_cpu: Some("10m".into()),
            overhead_memory: Some("1Mi".into()),
        }))
        .unwrap();
        assert!(
            y.contains("apiVersion: node.k8s.io/v1\nkind: RuntimeClass"),
            "{y}"
        );
        assert!(y.contains("wasmpod.dev/wasmtime: ready"));
        assert!(y.contains("handler: wasmtime-isolated"));
        assert!(
            y.contains("podFixed:\n    cpu: 10m\n    memory: 1Mi"),
            "{y}"
        );
        assert!(y.contains("effect: NoSchedule"));
        let back: Vec<RuntimeClass> = serde_yaml::Deserializer::from_str(&y)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn tolerations_parse() {
        let t = parse_toleration("node-role.kubernetes.io/control-plane:NoSchedule").unwrap();
        assert_eq!(t.operator.as_deref(), Some("Exists"));
        assert_eq!(
            t.key.as_deref(),
            Some("node-role.kubernetes.io/control-plane")
        );
        assert!(parse_toleration("a=b:Sometimes").is_err());
        assert_eq!(parse_toleration("*").unwrap().key, None);
    }
}
