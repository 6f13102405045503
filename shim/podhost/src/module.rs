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
    let missing = match read_command(spec, rootfs, &bound) {
        Ok(Found::File { name, bytes }) if wasmpod_engine::wasm_kind(&bytes).is_some() => {
            return Ok((name, bytes))
        }
        Ok(Found::File { name, bytes }) => {
            return Err(Error::NotWasm {
                image: image_name().await,
                name,
                what: describe(&bytes),
            })
        }
        Ok(Found::Missing { name }) => format!("{name} does not exist in the image"),
        Err(Unreadable::NoCommand) => Error::NoCommand.to_string(),
        Err(Unreadable::Lookup { name, source }) => {
            return Err(Error::Lookup {
                image: image_name().await,
                name,
                source,
            })
        }
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
    match read_command(spec, rootfs, &bound) {
        Ok(Found::File { name, bytes }) if wasmpod_engine::wasm_kind(&bytes).is_some() => {
            Ok((name, bytes))
        }
        Ok(Found::File { name, bytes }) => Err(Error::ExecNotWasm {
            name,
            what: describe(&bytes),
        }),
        Ok(Found::Missing { name }) => Err(Error::ExecMissing { name }),
        Err(Unreadable::NoCommand) => Err(Error::NoCommand),
        Err(Unreadable::Lookup { name, source }) => Err(Error::ExecLookup { name, source }),
    }
}

enum Found {
    File { name: String, bytes: Vec<u8> },
    Missing { name: String },
}

enum Unreadable {
    NoCommand,
    Lookup { name: String, source: LookupError },
}

/// The command's file, looked up as both hosts do (`wasmpod_oci::spec::command`: a path, or
/// `PATH` then the working directory) inside the container's root and mounts. Along `PATH`
/// what is not a readable regular file is passed over, as execvp does; if nothing is found,
/// the first such refusal is the answer rather than "no such file".
fn read_command(spec: &Spec, rootfs: &Path, bound: &SizeBound) -> Result<Found, Unreadable> {
    let command = wasmpod_oci::spec::command(spec).ok_or(Unreadable::NoCommand)?;
    let tree = Tree::of_container(spec, rootfs);
    let mut refused = None;
    for path in &command.candidates {
        match tree.read_regular(path, bound) {
            Ok(bytes) => {
                return Ok(Found::File {
                    name: command.name,
                    bytes,
                })
            }
            Err(LookupError::NotFound { .. }) => {}
            Err(source) => {
                refused.get_or_insert(source);
            }
        }
    }
    match refused {
        Some(source) => Err(Unreadable::Lookup {
            name: command.name,
            source,
        }),
        None => Ok(Found::Missing { name: command.name }),
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
