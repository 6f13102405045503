//! Where a container's Wasm module comes from. Images that carry the module as a file
//! (`module.wasm.image/variant=compat` images, `wasi/wasm` platform images) have it in the
//! container's rootfs, read by the pod host. Wasm OCI artifacts have no filesystem at all: their
//! module is a layer in containerd's content store, read here through containerd's API.

pub mod artifact;

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, ReadContentRequest};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;
use tonic::Request;
use wasmpod_oci::SizeBound;

/// How long one lookup in containerd may take before the container fails to start, rather
/// than hanging its StartContainer.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Manifests and indexes are small; a larger "manifest" is not one.
const MAX_MANIFEST: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// containerd could not be asked (the socket, a timeout, an API error).
    #[error("containerd at {address}: {message}")]
    Containerd { address: String, message: String },
    /// What the image holds cannot be run.
    #[error("{0}")]
    Invalid(String),
    /// Whether the image holds a module could not be found out.
    #[error("{0}")]
    Unanswered(String),
}

/// containerd's API, as the shim was told to reach it (`-address`, `-namespace`).
#[derive(Debug, Clone)]
pub struct Containerd {
    address: PathBuf,
    namespace: String,
}

/// The module a Wasm artifact runs.
#[derive(Debug)]
pub struct Layer {
    /// The layer's title or digest, for messages.
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Containerd {
    pub fn new(address: &Path, namespace: &str) -> Self {
        Containerd {
            address: address.to_path_buf(),
            namespace: namespace.to_string(),
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> ImageError {
        ImageError::Containerd {
            address: self.address.display().to_string(),
            message: message.to_string(),
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        if let Ok(ns) = self.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", ns);
        }
        req
    }

    async fn channel(&self) -> Result<Channel, ImageError> {
        containerd_client::connect(&self.address)
            .await
            .map_err(|e| self.error(format!("cannot connect: {e}")))
    }

    /// The image containerd recorded for a container (what `ctr run` or CRI created it from).
    #[tracing::instrument(skip(self))]
    pub async fn image_of(&self, container: &str) -> Result<String, ImageError> {
        let lookup = async {
            let mut client = ContainersClient::new(self.channel().await?);
            let resp = client
                .get(self.request(GetContainerRequest {
                    id: container.to_string(),
                }))
                .await
                .map_err(|s| self.error(format!("container {container}: {}", s.message())))?;
            Ok(resp
                .into_inner()
                .container
                .map(|c| c.image)
                .unwrap_or_default())
        };
        self.timed(lookup).await
    }

    /// A container's image name for messages and content lookups: CRI puts it in an
    /// annotation (`annotated`); for other clients (`ctr run`) containerd knows it.
    pub async fn image_name(&self, container: &str, annotated: Option<String>) -> String {
        if let Some(name) = annotated.filter(|n| !n.is_empty()) {
            return name;
        }
        match self.image_of(container).await {
            Ok(name) if !name.is_empty() => name,
            Ok(_) => format!("of container {container}"),
            Err(e) => {
                tracing::warn!("cannot look up the image of {container}: {e}");
                format!("of container {container}")
            }
        }
    }

    /// The module of a container whose `command` names no file in `image` (`missing` says
    /// how): the image may be a Wasm artifact. Anything else is `Invalid` (the image has no
    /// module) or `Unanswered` (containerd could not tell). A layer larger than `bound` is
    /// refused before it is read.
    pub async fn artifact_module(
        &self,
        image: &str,
        command: &str,
        missing: &str,
        bound: &SizeBound,
    ) -> Result<Layer, ImageError> {
        match self.artifact_layer(image, command, bound).await {
            Ok(Some(layer)) => Ok(layer),
            Ok(None) => Err(ImageError::Invalid(format!(
                "image {image} has no Wasm module: {missing}"
            ))),
            Err(ImageError::Containerd { address, message }) => {
                Err(ImageError::Unanswered(format!(
                    "image {image}: {missing}, and asking containerd whether the image is a \
                     Wasm artifact failed: {}",
                    ImageError::Containerd { address, message }
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// The module of a Wasm artifact: `None` when the image is an ordinary container image
    /// (its module, if any, is a file in the rootfs). `command` chooses among several layers.
    #[tracing::instrument(skip(self))]
    pub async fn artifact_layer(
        &self,
        image: &str,
        command: &str,
        bound: &SizeBound,
    ) -> Result<Option<Layer>, ImageError> {
        self.timed(self.artifact_layer_inner(image, command, bound))
            .await
    }

    async fn artifact_layer_inner(
        &self,
        image: &str,
        command: &str,
        bound: &SizeBound,
    ) -> Result<Option<Layer>, ImageError> {
        let channel = self.channel().await?;
        let target = ImagesClient::new(channel.clone())
            .get(self.request(GetImageRequest {
                name: image.to_string(),
            }))
            .await
            .map_err(|s| self.error(format!("image {image}: {}", s.message())))?
            .into_inner()
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| self.error(format!("image {image} has no target")))?;
        let mut content = ContentClient::new(channel);
        let mut digest = target.digest;
        let mut media_type = target.media_type;
        if is_index(&media_type) {
            let bytes = self
                .read(&mut content, &digest, MAX_MANIFEST, 0, &mut |_| {})
                .await?;
            let index = ImageIndex::from_reader(bytes.as_slice())
                .map_err(|e| ImageError::Invalid(format!("image {image}: bad index: {e}")))?;
            let chosen = choose_manifest(&index).ok_or_else(|| {
                ImageError::Invalid(format!(
                    "image {image}: its index has no manifest for wasm or this node's platform"
                ))
            })?;
            digest = chosen.digest().to_string();
            media_type = chosen.media_type().to_string();
        }
        if is_index(&media_type) {
            return Err(ImageError::Invalid(format!(
                "image {image}: nested indexes are not supported"
            )));
        }
        let bytes = self
            .read(&mut content, &digest, MAX_MANIFEST, 0, &mut |_| {})
            .await?;
        let manifest = ImageManifest::from_reader(bytes.as_slice())
            .map_err(|e| ImageError::Invalid(format!("image {image}: bad manifest: {e}")))?;
        if !artifact::is_artifact(&manifest) {
            return Ok(None);
        }
        let layer = artifact::choose_within(&manifest, command, bound)
            .map_err(|e| ImageError::Invalid(format!("image {image}: {e}")))?;
        let bytes = self.read_verified(&mut content, layer).await?;
        Ok(Some(Layer {
            name: artifact::layer_name(layer),
            bytes,
        }))
    }

    async fn timed<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, ImageError>>,
    ) -> Result<T, ImageError> {
        tokio::time::timeout(TIMEOUT, work)
            .await
            .unwrap_or_else(|_| Err(self.error(format!("no answer within {TIMEOUT:?}"))))
    }

    /// Reads a blob of at most `max` bytes (refused as soon as it has more), handing every
    /// chunk to `observe` as it arrives. `expected` is the size the manifest gives, already
    /// bounded: the bytes go into one allocation of that size, copied once out of the gRPC
    /// messages.
    async fn read(
        &self,
        content: &mut ContentClient<Channel>,
        digest: &str,
        max: u64,
        expected: u64,
        observe: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Vec<u8>, ImageError> {
        let mut stream = content
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| self.error(format!("reading {digest}: {}", s.message())))?
            .into_inner();
        let mut out = Vec::with_capacity(expected.min(max) as usize);
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| self.error(format!("reading {digest}: {}", s.message())))?
        {
            if (out.len() + chunk.data.len()) as u64 > max {
                return Err(ImageError::Invalid(format!(
                    "{digest} is larger than {max} bytes"
                )));
            }
            observe(&chunk.data);
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Reads a layer and checks it against its descriptor: the content store's files can be
    /// damaged after the pull verified them, and a module that is not the image's must never
    /// run.
    async fn read_verified(
        &self,
        content: &mut ContentClient<Channel>,
        layer: &Descriptor,
    ) -> Result<Vec<u8>, ImageError> {
        let digest = layer.digest().to_string();
        let mut hash = Sha256::new();
        let bytes = self
            .read(content, &digest, layer.size(), layer.size(), &mut |c| {
                hash.update(c)
            })
            .await?;
        verify_hashed(&digest, layer.size(), bytes.len() as u64, hash).map_err(|e| {
            ImageError::Invalid(format!("layer {}: {e}", artifact::layer_name(layer)))
        })?;
        Ok(bytes)
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// Bytes that are not what their descriptor says: the image is damaged (or was never
/// sha256), and the text says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("unsupported digest algorithm in {digest} (only sha256)")]
    Algorithm { digest: String },
    #[error(
        "the content store holds {len} bytes, the manifest says {size}; the image is \
         damaged, remove and pull it again"
    )]
    Size { len: u64, size: u64 },
    #[error(
        "content does not match its digest {digest} (it hashes to sha256:{actual}); the \
         image is damaged, remove and pull it again"
    )]
    Mismatch { digest: String, actual: String },
}

/// Checks bytes against a descriptor's digest and size.
pub fn verify(digest: &str, size: u64, bytes: &[u8]) -> Result<(), DigestError> {
    let mut hash = Sha256::new();
    hash.update(bytes);
    verify_hashed(digest, size, bytes.len() as u64, hash)
}

/// `verify` for bytes hashed as they were read (`len` of them).
fn verify_hashed(digest: &str, size: u64, len: u64, hash: Sha256) -> Result<(), DigestError> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(DigestError::Algorithm {
            digest: digest.to_string(),
        });
    };
    if len != size {
        return Err(DigestError::Size { len, size });
    }
    let actual = format!("{:x}", hash.finalize());
    if actual != hex {
        return Err(DigestError::Mismatch {
            digest: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

/// From a multi-platform index, the manifest to read: a Wasm one, else this node's.
fn choose_manifest(index: &ImageIndex) -> Option<&Descriptor> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let wasm = |d: &&Descriptor| {
        d.platform().as_ref().is_none_or(|p| {
            p.architecture().to_string() == "wasm" || p.os().to_string().starts_with("wasi")
        })
    };
    let native = |d: &&Descriptor| {
        d.platform()
            .as_ref()
            .is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == arch)
    };
    let manifests = index.manifests();
    manifests
        .iter()
        .find(wasm)
        .or_else(|| manifests.iter().find(native))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_checks_size_and_digest() {
        let bytes = b"\0asm\x01\0\0\0";
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        assert!(verify(&digest, 8, bytes).is_ok());
        let e = verify(&digest, 9, bytes).unwrap_err().to_string();
        assert_eq!(
            e,
            "the content store holds 8 bytes, the manifest says 9; the image is damaged, \
             remove and pull it again"
        );
        let e = verify(&format!("sha256:{}", "0".repeat(64)), 8, bytes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match its digest"), "{e}");
        assert_eq!(
            verify("sha512:00", 8, bytes).unwrap_err().to_string(),
            "unsupported digest algorithm in sha512:00 (only sha256)"
        );
    }

    #[test]
    fn index_prefers_the_wasm_manifest() {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "digest": format!("sha256:{}", "a".repeat(64)), "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "digest": format!("sha256:{}", "b".repeat(64)), "size": 1,
                 "platform": {"os": "wasip1", "architecture": "wasm"}},
            ]
        });
        let index = ImageIndex::from_reader(index.to_string().as_bytes()).unwrap();
        let chosen = choose_manifest(&index).unwrap();
        assert!(chosen.digest().to_string().ends_with("bbbb"));
    }
}
