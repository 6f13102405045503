//! Wasm OCI artifacts: recognizing one from its manifest and choosing the layer to run.
//! Pure functions over parsed manifests, so the rules are unit-tested without containerd.

use oci_spec::image::{Descriptor, ImageManifest};
use wasmpod_oci::{LookupError, SizeBound};

/// The config media type that marks a manifest as a Wasm artifact.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// Layer media types that hold a core module or a component.
pub const WASM_LAYERS: &[&str] = &[
    "application/wasm",
    "application/vnd.w3c.wasm.module.v1+wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
];

const TITLE: &str = "org.opencontainers.image.title";

pub fn is_artifact(manifest: &ImageManifest) -> bool {
    manifest.config().media_type().as_ref() == WASM_CONFIG
}

/// The manifest's Wasm layers, in order.
pub fn wasm_layers(manifest: &ImageManifest) -> Vec<&Descriptor> {
    manifest
        .layers()
        .iter()
        .filter(|l| WASM_LAYERS.contains(&l.media_type().as_ref()))
        .collect()
}

/// A layer's name for messages: its title annotation, else its digest.
pub fn layer_name(layer: &Descriptor) -> String {
    title(layer).map_or_else(|| layer.digest().to_string(), str::to_string)
}

fn title(layer: &Descriptor) -> Option<&str> {
    layer.annotations().as_ref()?.get(TITLE).map(String::as_str)
}

/// Why an artifact has no layer to run for the container's command: the image's or the pod
/// spec's to fix, and the text (part of the container's StartError) says how.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(
        "the Wasm artifact has no Wasm layer (layer media types: [{}]; expected one of {})",
        .types.join(", "),
        WASM_LAYERS.join(", ")
    )]
    NoWasmLayer { types: Vec<String> },
    #[error(
        "the command names layer {digest}, which the artifact does not have; its Wasm \
         layers: {layers}"
    )]
    NoSuchDigest { digest: String, layers: String },
    #[error(
        "the Wasm artifact has {count} Wasm layers and the command '{command}' names none of \
         them: name one by its title or digest as the container's command; its Wasm \
         layers: {layers}"
    )]
    Unnamed {
        count: usize,
        command: String,
        layers: String,
    },
    #[error("{0}")]
    TooLarge(#[source] LookupError),
}

/// The layer to run. The container's command (`process.args[0]`) may name a layer by digest
/// or by its title (a path whose file name is the title also matches, so `/app.wasm` finds
/// the layer titled `app.wasm`). A command that names no layer runs the artifact's only Wasm
/// layer; with several, the choice must be explicit.
pub fn choose<'m>(
    manifest: &'m ImageManifest,
    command: &str,
) -> Result<&'m Descriptor, LayerError> {
    let layers = wasm_layers(manifest);
    if layers.is_empty() {
        let types: Vec<String> = manifest
            .layers()
            .iter()
            .map(|l| l.media_type().to_string())
            .collect();
        return Err(LayerError::NoWasmLayer { types });
    }
    if command.starts_with("sha256:") {
        return layers
            .iter()
            .find(|l| l.digest().to_string() == command)
            .copied()
            .ok_or_else(|| LayerError::NoSuchDigest {
                digest: command.to_string(),
                layers: list(&layers),
            });
    }
    let file = command.rsplit('/').next().unwrap_or(command);
    if let Some(l) = layers.iter().find(|l| title(l) == Some(file)) {
        return Ok(l);
    }
    match layers.as_slice() {
        [only] => Ok(only),
        _ => Err(LayerError::Unnamed {
            count: layers.len(),
            command: command.to_string(),
            layers: list(&layers),
        }),
    }
}

/// [`choose`], refusing a layer whose manifest size is above `bound` before anything is read
/// or allocated for it: the size is the image's word, and the shim would hold it all.
pub fn choose_within<'m>(
    manifest: &'m ImageManifest,
    command: &str,
    bound: &SizeBound,
) -> Result<&'m Descriptor, LayerError> {
    let layer = choose(manifest, command)?;
    bound
        .check(&format!("layer {}", layer_name(layer)), layer.size())
        .map_err(LayerError::TooLarge)?;
    Ok(layer)
}

fn list(layers: &[&Descriptor]) -> String {
    layers
        .iter()
        .map(|l| match title(l) {
            Some(t) => format!("{t} ({})", l.digest()),
            None => l.digest().to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(config: &str, layers: &[(&str, &str, Option<&str>)]) -> ImageManifest {
        sized(config, layers, 10)
    }

    fn sized(config: &str, layers: &[(&str, &str, Option<&str>)], size: u64) -> ImageManifest {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(mt, hex, t)| {
                let mut l = serde_json::json!({
                    "mediaType": mt,
                    "digest": format!("sha256:{}", hex.repeat(64 / hex.len())),
                    "size": size,
                });
                if let Some(t) = t {
                    l["annotations"] = serde_json::json!({ TITLE: t });
                }
                l
            })
            .collect();
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config, "digest": format!("sha256:{}", "c".repeat(64)), "size": 2},
            "layers": layers,
        });
        ImageManifest::from_reader(m.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn recognizes_artifacts_by_config_media_type() {
        assert!(is_artifact(&manifest(WASM_CONFIG, &[])));
        assert!(!is_artifact(&manifest(
            "application/vnd.oci.image.config.v1+json",
            &[]
        )));
    }

    #[test]
    fn a_single_wasm_layer_runs_whatever_the_command() {
        let m = manifest(
            WASM_CONFIG,
            &[
                ("application/vnd.wasm.content.layer.v1+data", "d", None),
                ("application/wasm", "a", Some("hello.wasm")),
            ],
        );
        assert_eq!(layer_name(choose(&m, "anything").unwrap()), "hello.wasm");
        assert_eq!(layer_name(choose(&m, "/hello.wasm").unwrap()), "hello.wasm");
    }

    #[test]
    fn several_layers_need_the_command_to_name_one() {
        let m = manifest(
            WASM_CONFIG,
            &[
                ("application/wasm", "a", Some("hello.wasm")),
                (
                    "application/vnd.w3c.wasm.module.v1+wasm",
                    "b",
                    Some("exit.wasm"),
                ),
                (
                    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
                    "e",
                    None,
                ),
            ],
        );
        assert_eq!(layer_name(choose(&m, "exit.wasm").unwrap()), "exit.wasm");
        assert_eq!(
            layer_name(choose(&m, "/app/exit.wasm").unwrap()),
            "exit.wasm"
        );
        let by_digest = format!("sha256:{}", "e".repeat(64));
        assert_eq!(
            choose(&m, &by_digest).unwrap().digest().to_string(),
            by_digest
        );
        let e = choose(&m, "other.wasm").unwrap_err().to_string();
        assert!(
            e.contains("3 Wasm layers") && e.contains("exit.wasm (sha256:bbbb"),
            "{e}"
        );
        let e = choose(&m, &format!("sha256:{}", "f".repeat(64)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not have"), "{e}");
    }

    #[test]
    fn an_artifact_without_wasm_layers_says_what_it_has() {
        let m = manifest(WASM_CONFIG, &[("text/plain", "a", None)]);
        let e = choose(&m, "x").unwrap_err().to_string();
        assert_eq!(
            e,
            "the Wasm artifact has no Wasm layer (layer media types: [text/plain]; expected \
             one of application/wasm, application/vnd.w3c.wasm.module.v1+wasm, \
             application/vnd.bytecodealliance.wasm.component.layer.v0+wasm)"
        );
    }

    #[test]
    fn a_layer_larger_than_the_bound_is_refused_by_its_manifest_size() {
        let layers = [("application/wasm", "a", Some("huge.wasm"))];
        let bound = SizeBound {
            bytes: 256 << 20,
            reason: "a module may have",
        };
        let m = sized(WASM_CONFIG, &layers, 10 << 30);
        let e = choose_within(&m, "huge.wasm", &bound).unwrap_err();
        assert_eq!(
            e.to_string(),
            "layer huge.wasm is 10737418240 bytes, more than the 268435456 bytes a module may have"
        );
        let m = sized(WASM_CONFIG, &layers, 256 << 20);
        assert!(choose_within(&m, "huge.wasm", &bound).is_ok());
    }
}
