//! Where a container's module comes from. A file named by the command in the container's
//! root or its mounts (compat and wasi/wasm images, volumes) is read without asking containerd
//! anything; only when there is no such file is the image asked whether it is a Wasm
//! artifact, whose module is a layer in containerd's content store.

use std::path::Path;

use wasmpod_image::Containerd;
use wasmpod_oci::{LookupError, SizeBound, Tree};

use crate::error::Error;
use crate::spec::{self, Spec};

/// The module to run and its name for messages.
pub async fn find(
    containerd: &Containerd,
    id: &str,
    spec: &Spec,
    rootfs: &Path,
) -> Result<(String, Vec<u8>), Error> {
    // The shim holds the module (and its compiled code) for the container, in the pod's
    // cgroup: it may not be larger than the container may use.
    let bound = SizeBound::for_module(wasmpod_oci::spec::memory_limit(spec));
    let image_name = || containerd.image_name(id, spec::image_name(spec));
    let missing = match spec::module_path(spec) {
        Ok((name, path)) => match Tree::of_container(spec, rootfs).read_regular(&path, &bound) {
            Ok(bytes) if wasmpod_engine::wasm_kind(&bytes).is_some() => return Ok((name, bytes)),
            Ok(bytes) => {
                return Err(Error::NotWasm {
                    image: image_name().await,
                    name,
                    what: describe(&bytes),
                })
            }
            Err(LookupError::NotFound { .. }) => format!("{name} does not exist in the image"),
            Err(source) => {
                return Err(Error::Lookup {
                    image: image_name().await,
                    name,
                    source,
                })
            }
        },
        Err(e) => e.to_string(),
    };
    let image = image_name().await;
    let command = spec::args(spec).first().cloned().unwrap_or_default();
    match containerd
        .artifact_module(&image, &command, &missing, &bound)
        .await
    {
        Ok(layer) => Ok((layer.name, layer.bytes)),
        Err(e) => Err(Error::Image(e)),
    }
}

/// An exec's module: only a file of the container's root or mounts (an exec names a program
/// of the container, not of the image's artifact layers).
pub fn find_exec(spec: &Spec, rootfs: &Path) -> Result<(String, Vec<u8>), Error> {
    let bound = SizeBound::for_module(wasmpod_oci::spec::memory_limit(spec));
    let (name, path) = spec::module_path(spec)?;
    match Tree::of_container(spec, rootfs).read_regular(&path, &bound) {
        Ok(bytes) if wasmpod_engine::wasm_kind(&bytes).is_some() => Ok((name, bytes)),
        Ok(bytes) => Err(Error::ExecNotWasm {
            name,
            what: describe(&bytes),
        }),
        Err(LookupError::NotFound { .. }) => Err(Error::ExecMissing { name }),
        Err(source) => Err(Error::ExecLookup { name, source }),
    }
}

/// A short description of what a non-Wasm file is, for error messages.
fn describe(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x7fELF") {
        "it is a native ELF executable"
    } else if bytes.starts_with(b"#!") {
        "it is a script"
    } else if bytes.is_empty() {
        "it is empty"
    } else {
        "it does not start with the Wasm magic bytes"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_native_binaries() {
        assert_eq!(describe(b"\x7fELF\x02"), "it is a native ELF executable");
        assert_eq!(describe(b"#!/bin/sh"), "it is a script");
    }
}
