//! Checks rendered manifests (the chart's output, `deploy/`): each YAML document must parse
//! into its k8s-openapi type, and serializing that type back must give the same object, so a
//! misspelt or misplaced field (which serde would otherwise ignore) is caught too.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn roundtrip<T: DeserializeOwned + Serialize>(v: &serde_json::Value) -> Result<serde_json::Value> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|source| Error::Json {
        context: "parsing into its k8s-openapi type".into(),
        source,
    })?;
    serde_json::to_value(&typed).map_err(|source| Error::Json {
        context: "serializing back".into(),
        source,
    })
}

/// Removes nulls (YAML `key:` with no value) so they compare equal to absent fields.
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// First path where two JSON values differ.
fn diff(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value::*;
    match (a, b) {
        (Object(x), Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => {
                        if let Some(d) = diff(p, q, &format!("{at}.{k}")) {
                            return Some(d);
                        }
                    }
                    (Some(_), None) => return Some(format!("{at}.{k}: not a field of this type")),
                    (None, Some(_)) => return Some(format!("{at}.{k}: added by the type")),
                    _ => {}
                }
            }
            None
        }
        (Array(x), Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| diff(p, q, &format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{at}: {a} became {b}")),
    }
}

/// Checks every document of a multi-document YAML text; returns `(kind, name)` of each.
pub fn check(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let yaml = serde_yaml::Value::deserialize(doc).map_err(|source| Error::Yaml {
            context: "reading a YAML document".into(),
            source,
        })?;
        if yaml.is_null() {
            continue; // an empty document (a template that rendered nothing)
        }
        let mut v = serde_json::to_value(&yaml).map_err(|source| Error::Json {
            context: "converting YAML to JSON".into(),
            source,
        })?;
        strip_nulls(&mut v);
        let kind = v["kind"].as_str().unwrap_or("").to_string();
        let api = v["apiVersion"].as_str().unwrap_or("").to_string();
        let name = v
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        let back = match (api.as_str(), kind.as_str()) {
            ("node.k8s.io/v1", "RuntimeClass") => roundtrip::<RuntimeClass>(&v),
            ("apps/v1", "DaemonSet") => roundtrip::<DaemonSet>(&v),
            ("apps/v1", "Deployment") => roundtrip::<Deployment>(&v),
            ("batch/v1", "Job") => roundtrip::<Job>(&v),
            ("v1", "Pod") => roundtrip::<Pod>(&v),
            ("v1", "ServiceAccount") => roundtrip::<ServiceAccount>(&v),
            ("v1", "ConfigMap") => roundtrip::<ConfigMap>(&v),
            ("v1", "Namespace") => roundtrip::<Namespace>(&v),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => roundtrip::<ClusterRole>(&v),
            ("rbac.authorization.k8s.io/v1", "Role") => roundtrip::<Role>(&v),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => roundtrip::<RoleBinding>(&v),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                roundtrip::<ClusterRoleBinding>(&v)
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
                roundtrip::<ValidatingAdmissionPolicy>(&v)
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
                roundtrip::<ValidatingAdmissionPolicyBinding>(&v)
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "{api} {kind} {name:?}: not a kind this check knows"
                )))
            }
        }
        .map_err(|e| Error::Invalid(format!("{kind} {name:?}: {e}")))?;
        if let Some(d) = diff(&v, &back, "") {
            return Err(Error::Invalid(format!("{kind} {name:?}: {d}")));
        }
        out.push((kind, name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_unknown_fields() {
        let ok = "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: wasmtime\nhandler: wasmtime\n";
        assert_eq!(
            check(ok).unwrap(),
            vec![("RuntimeClass".into(), "wasmtime".into())]
        );
        let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    imag: x\n";
        let e = check(bad).unwrap_err().to_string();
        assert!(e.contains(".spec.containers[0].imag: not a field"), "{e}");
        assert!(check("apiVersion: x/v1\nkind: Foo\n").is_err());
    }
}
