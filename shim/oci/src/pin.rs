//! Pinned modules: a pod may say which module a container must run, by its SHA-256, and the
//! shim checks the bytes it is about to compile against it. An image tag can be moved and a
//! registry can be compromised; a digest in the pod spec cannot be changed by either.
//!
//! The pin comes from the pod annotation `wasmpod.dev/module-sha256.<container>` (passed into
//! the container's spec by containerd's `pod_annotations`, which the installer sets for the
//! wasmpod handlers) or from the container's environment variable `WASM_MODULE_HASH`, the
//! name deployments already carry. Both forms are `sha256:<64 hex>` or the bare hex; when both
//! are given, both must match.

use sha2::{Digest, Sha256};

use crate::spec::Spec;

/// The annotation CRI sets to the container's name in its pod.
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// The pod annotation that pins a container's module, followed by the container's name.
pub const ANNOTATION_PREFIX: &str = "wasmpod.dev/module-sha256.";
/// The environment variable that pins the container's module.
pub const ENV: &str = "WASM_MODULE_HASH";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinError {
    #[error("{origin} is {value}, not a SHA-256 digest (sha256:<64 hex digits>)")]
    Malformed { origin: String, value: String },
    #[error(
        "module {module} is not the one {origin} pins: its digest is sha256:{actual}, \
         the pin is sha256:{expected}"
    )]
    Mismatch {
        module: String,
        origin: String,
        expected: String,
        actual: String,
    },
}

/// One digest a container's module must have, and where it was given (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Lower-case hex.
    digest: String,
    origin: String,
}

/// The pins a container's spec carries (none, one, or the annotation and the variable).
pub fn pins(spec: &Spec) -> Result<Vec<Pin>, PinError> {
    let mut pins = Vec::new();
    let annotations = spec.annotations().as_ref();
    if let Some(container) = annotations.and_then(|a| a.get(CONTAINER_NAME)) {
        let key = format!("{ANNOTATION_PREFIX}{container}");
        if let Some(value) = annotations.and_then(|a| a.get(&key)) {
            pins.push(Pin::parse(format!("annotation {key}"), value)?);
        }
    }
    if let Some((_, value)) = crate::spec::env(spec).into_iter().find(|(k, _)| k == ENV) {
        pins.push(Pin::parse(format!("environment variable {ENV}"), &value)?);
    }
    Ok(pins)
}

/// Checks the module's bytes against every pin.
pub fn check(pins: &[Pin], module: &str, bytes: &[u8]) -> Result<(), PinError> {
    if pins.is_empty() {
        return Ok(());
    }
    let actual = hex(&Sha256::digest(bytes));
    match pins.iter().find(|p| p.digest != actual) {
        None => Ok(()),
        Some(p) => Err(PinError::Mismatch {
            module: module.to_string(),
            origin: p.origin.clone(),
            expected: p.digest.clone(),
            actual,
        }),
    }
}

impl Pin {
    fn parse(origin: String, value: &str) -> Result<Pin, PinError> {
        let trimmed = value.trim();
        let hex = trimmed.strip_prefix("sha256:").unwrap_or(trimmed);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PinError::Malformed {
                origin,
                value: value.to_string(),
            });
        }
        Ok(Pin {
            digest: hex.to_ascii_lowercase(),
            origin,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn spec(annotations: &str, env: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "process": {{"cwd": "/", "env": [{env}],
                 "user": {{"uid": 0, "gid": 0}}}}, "annotations": {{{annotations}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn no_pin_lets_any_module_run() {
        let pins = pins(&spec("", "")).unwrap();
        assert!(pins.is_empty());
        check(&pins, "/app.wasm", b"anything").unwrap();
    }

    #[test]
    fn the_annotation_for_this_container_pins_it() {
        let s = spec(
            &format!(
                r#""io.kubernetes.cri.container-name": "app",
                   "wasmpod.dev/module-sha256.app": "sha256:{}",
                   "wasmpod.dev/module-sha256.other": "sha256:{}""#,
                HELLO.to_uppercase(),
                "0".repeat(64)
            ),
            "",
        );
        let pins = pins(&s).unwrap();
        assert_eq!(pins.len(), 1, "only this container's annotation counts");
        check(&pins, "/app.wasm", b"hello").unwrap();
        let e = check(&pins, "/app.wasm", b"hello!").unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("annotation wasmpod.dev/module-sha256.app")
                && message.contains(&format!("the pin is sha256:{HELLO}"))
                && message.contains("its digest is sha256:ce06"),
            "{message}"
        );
    }

    #[test]
    fn the_environment_variable_pins_too_and_both_must_match() {
        let s = spec("", &format!(r#""WASM_MODULE_HASH={HELLO}""#));
        check(&pins(&s).unwrap(), "/app.wasm", b"hello").unwrap();
        let s = spec(
            &format!(
                r#""io.kubernetes.cri.container-name": "app",
                   "wasmpod.dev/module-sha256.app": "sha256:{HELLO}""#
            ),
            &format!(r#""WASM_MODULE_HASH=sha256:{}""#, "a".repeat(64)),
        );
        let e = check(&pins(&s).unwrap(), "/app.wasm", b"hello").unwrap_err();
        assert!(
            e.to_string()
                .contains("environment variable WASM_MODULE_HASH"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_pin_is_an_error_naming_it() {
        let s = spec("", r#""WASM_MODULE_HASH=sha256:1234""#);
        assert_eq!(
            pins(&s).unwrap_err(),
            PinError::Malformed {
                origin: "environment variable WASM_MODULE_HASH".into(),
                value: "sha256:1234".into()
            }
        );
    }
}
