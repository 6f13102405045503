//! Reads what the pod host needs from a container's OCI runtime spec (the bundle's
//! `config.json`): what kind of container it is, the module to run, and the guest's view of
//! the world.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources};

use crate::error::Error;
use wasmpod_engine::{HttpConfig, HttpConfigError, Identity, Limits, Preopen};

/// The annotation CRI sets on every container; "sandbox" marks the pod's pause container.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The annotation CRI uses to group a pod's containers into one shim.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// What both hosts read alike (`wasmpod_oci::spec`).
pub use wasmpod_oci::spec::{args, cwd, env, image_name, open_files, Spec};

pub fn load(bundle: &Path) -> Result<Spec, Error> {
    wasmpod_oci::spec::load(bundle).map_err(Error::Spec)
}

pub fn is_sandbox(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(CONTAINER_TYPE))
        .is_some_and(|t| t == "sandbox")
}

/// Whether the container belongs to a CRI pod (rather than standing alone, as with `ctr run`).
pub fn in_pod(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(SANDBOX_ID))
}

/// The container's root filesystem on the host.
pub fn rootfs(spec: &Spec, bundle: &Path) -> PathBuf {
    let path = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    if path.is_absolute() {
        path
    } else {
        bundle.join(path)
    }
}

/// How an HTTP handler serves, from the container's environment.
pub fn http_config(env: &[(String, String)]) -> Result<HttpConfig, HttpConfigError> {
    HttpConfig::read(env)
}

/// The container's memory and CPU limits from `linux.resources`.
pub fn limits(spec: &Spec) -> Limits {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .map(resource_limits)
        .unwrap_or_default()
}

/// Limits from a resources block; zero or negative values mean "no limit", as in cgroups.
pub fn resource_limits(r: &LinuxResources) -> Limits {
    let memory = wasmpod_oci::spec::resources_memory_limit(r);
    let cpu = r.cpu().as_ref().and_then(|c| {
        let quota = c.quota().filter(|q| *q > 0)? as u64;
        let period = c.period().filter(|p| *p > 0).unwrap_or(100_000);
        Some((quota, period))
    });
    let cpu_shares = r.cpu().as_ref().and_then(|c| c.shares()).filter(|s| *s > 0);
    Limits {
        memory,
        cpu,
        cpu_shares,
    }
}

/// The network namespace the pod's guests should run in, when the spec names one. A pod on the
/// host network (or `ctr run --net-host`) has none.
pub fn netns(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)
        .and_then(|ns| ns.path().clone())
}

/// The directories the guest sees: the rootfs at `/` (read-only unless the spec explicitly
/// says `root.readonly: false`), and every bind mount of a directory at its destination,
/// read-only when its options say `ro`. File bind mounts (`/etc/hosts`, the termination log)
/// cannot be WASI preopens and are left out.
pub fn preopens(spec: &Spec, rootfs: &Path) -> Vec<Preopen> {
    let root_writable = spec.root().as_ref().and_then(|r| r.readonly()) == Some(false);
    let mut out = vec![Preopen {
        host: rootfs.to_path_buf(),
        guest: "/".into(),
        read_only: !root_writable,
    }];
    out.extend(
        wasmpod_oci::spec::bind_mounts(spec)
            .into_iter()
            .map(|m| Preopen {
                host: m.source,
                guest: m.destination.to_string_lossy().into_owned(),
                read_only: m.read_only,
            }),
    );
    out
}

/// The container's user (`process.user`: `runAsUser`, `runAsGroup`, supplementary groups),
/// whose file access its guest gets. A root container keeps root's file access; one that
/// asked to drop it (no `CAP_DAC_OVERRIDE`) is refused, since the pod host shares one
/// process's capabilities among the pod's guests and cannot take them from one guest.
pub fn identity(spec: &Spec) -> Result<Option<Identity>, Error> {
    let Some(process) = spec.process().as_ref() else {
        return Ok(None);
    };
    let user = process.user();
    let identity = Identity {
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
    };
    if user.uid() == 0 {
        let dropped = process
            .capabilities()
            .as_ref()
            .and_then(|c| c.effective().as_ref())
            .is_some_and(|e| !e.contains(&oci_spec::runtime::Capability::DacOverride));
        if dropped {
            return Err(Error::CapabilityDropped);
        }
    }
    Ok((!identity.is_root()).then_some(identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmpod_engine::{HTTP_ADDRESS, HTTP_REQUEST_TIMEOUT};

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn sandbox_is_recognized_by_cri_annotation() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"}
        }));
        assert!(is_sandbox(&s));
        let s = spec(serde_json::json!({"ociVersion": "1.0.2"}));
        assert!(!is_sandbox(&s));
    }

    #[test]
    fn bind_mounts_of_directories_become_preopens() {
        let dir = std::env::temp_dir();
        let file = std::env::current_exe().unwrap();
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": dir, "options": ["rbind", "ro"]},
                {"destination": "/out", "type": "bind", "source": dir, "options": ["rbind", "rw"]},
                {"destination": "/etc/hosts", "type": "bind", "source": file, "options": ["rbind"]}
            ]
        }));
        let p = preopens(&s, Path::new("/r"));
        let guests: Vec<_> = p.iter().map(|p| (p.guest.as_str(), p.read_only)).collect();
        assert_eq!(guests, vec![("/", true), ("/data", true), ("/out", false)]);
    }

    #[test]
    fn limits_come_from_linux_resources() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"resources": {
                "memory": {"limit": 33554432},
                "cpu": {"quota": 20000, "period": 100000, "shares": 204}
            }}
        }));
        assert_eq!(
            limits(&s),
            Limits {
                memory: Some(32 << 20),
                cpu: Some((20_000, 100_000)),
                cpu_shares: Some(204),
            }
        );
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"resources": {"memory": {"limit": -1}, "cpu": {"quota": -1, "period": 100000}}}
        }));
        assert_eq!(limits(&s), Limits::default());
    }

    #[test]
    fn http_config_from_the_environment() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = http_config(&[]).unwrap();
        assert_eq!(c.address.to_string(), "0.0.0.0:8080");
        assert_eq!(c.request_timeout.as_secs(), 60);
        let c = http_config(&env(&[
            (HTTP_ADDRESS, "127.0.0.1:9000"),
            (HTTP_REQUEST_TIMEOUT, "500ms"),
        ]))
        .unwrap();
        assert_eq!(c.address.to_string(), "127.0.0.1:9000");
        assert_eq!(c.request_timeout.as_millis(), 500);
        let c = http_config(&env(&[(HTTP_ADDRESS, "9090"), (HTTP_REQUEST_TIMEOUT, "2")])).unwrap();
        assert_eq!(c.address.to_string(), "0.0.0.0:9090");
        assert_eq!(c.request_timeout.as_secs(), 2);
        let e = http_config(&env(&[(HTTP_ADDRESS, "localhost")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("WASMPOD_HTTP_ADDRESS=localhost"), "{e}");
        let e = http_config(&env(&[(HTTP_REQUEST_TIMEOUT, "-1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a positive duration"), "{e}");
        // Too large for a deadline: an error, not a panic in the task service.
        for v in ["1e20", "1e300ms", "86401", "inf", "0.0000000001ms"] {
            let e = http_config(&env(&[(HTTP_REQUEST_TIMEOUT, v)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("not a positive duration of at most a day"),
                "{v}: {e}"
            );
        }
        let c = http_config(&env(&[(HTTP_REQUEST_TIMEOUT, "86400")])).unwrap();
        assert_eq!(c.request_timeout.as_secs(), 86400);
    }
}
