//! Copies the shims onto the host without ever writing over a running binary: each version
//! goes into its own directory (`<bin-dir>/.versions/<sha256>/`), written to a temp file and
//! renamed, and the stable path (`<bin-dir>/containerd-shim-wasmtime-v1`, and
//! `…-isolated-v1` for the isolated host) is a symlink swapped atomically. Running shims keep their old file; new pods get the new one; containerd's
//! config (which names the stable path) does not change on upgrade, so no restart either.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::info;

use crate::{host_path, io_err, Error, Result, SHIM_BINARIES, SHIM_BINARY};

pub const VERSIONS_DIR: &str = ".versions";

/// What `install` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Host path containerd runs (the symlink).
    pub path: PathBuf,
    /// The sha256 of the binary (its version directory's name).
    pub digest: String,
    pub changed: bool,
}

pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a file, read in pieces: a debug shim is hundreds of MiB and the installer
/// runs under a memory limit (the chart's is 128 MiB).
fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// Writes to `path` through a temp file in the same directory and a rename: what `fill`
/// writes into the temp file, with `mode`.
fn replace_atomic(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = dir.join(format!(
        ".{}.wasmpod-tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        fill(&mut f).map_err(io_err(&tmp))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    replace_atomic(path, mode, |f| f.write_all(bytes))
}

/// Installs `source` as the shim `binary` (one of [`SHIM_BINARIES`]) under the host's `bin_dir`.
#[tracing::instrument(skip_all, fields(source = %source.display(), bin_dir = %bin_dir.display()))]
pub fn install(host_root: &Path, bin_dir: &Path, source: &Path, binary: &str) -> Result<Installed> {
    let digest = file_digest(source).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::ShimMissing {
            path: source.to_path_buf(),
            flag: flag_for(binary),
        },
        _ => Error::Io {
            path: source.to_path_buf(),
            source: e,
        },
    })?;
    let dir = host_path(host_root, bin_dir);
    let rel = Path::new(VERSIONS_DIR).join(&digest).join(binary);
    let versioned = dir.join(&rel);
    let mut changed = false;
    // The name is the content's digest, so a file there with that digest is this binary.
    if file_digest(&versioned).ok().as_deref() != Some(digest.as_str()) {
        replace_atomic(&versioned, 0o755, |f| {
            std::io::copy(&mut std::fs::File::open(source)?, f).map(drop)
        })?;
        changed = true;
    }
    let link = dir.join(binary);
    let previous = std::fs::read_link(&link).ok();
    if previous.as_deref() != Some(rel.as_path()) {
        if let Ok(meta) = std::fs::symlink_metadata(&link) {
            if !meta.file_type().is_symlink() {
                return Err(Error::Invalid(format!(
                    "{} exists and is not wasmpod's symlink; move it away or choose another --bin-dir",
                    link.display()
                )));
            }
        }
        let tmp = dir.join(format!(".{binary}.wasmpod-link-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&rel, &tmp).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &link).map_err(io_err(&link))?;
        changed = true;
        info!(shim = %link.display(), version = %digest, "shim installed");
    }
    prune(&dir);
    Ok(Installed {
        path: bin_dir.join(binary),
        digest,
        changed,
    })
}

/// The installer's option that names `binary`'s source.
pub fn flag_for(binary: &str) -> &'static str {
    if binary == SHIM_BINARY {
        "--shim"
    } else {
        "--isolated-shim"
    }
}

/// The version directory a link points into.
fn version_of(link: &Path) -> Option<String> {
    Some(link.parent()?.file_name()?.to_str()?.to_string())
}

/// Removes the version directories no longer needed. Kept, for each shim binary: the version
/// its link names and the newest other one, the version it replaced (pods started from it
/// still run it; the kernel would keep a deleted binary running, but its path is how an
/// operator sees which version a pod runs). Decided per binary from what is on disk, so that
/// installing one shim never prunes the version the other one just replaced.
fn prune(dir: &Path) {
    let versions = dir.join(VERSIONS_DIR);
    let Ok(entries) = std::fs::read_dir(&versions) else {
        return;
    };
    let entries: Vec<_> = entries.flatten().collect();
    let mut keep = Vec::new();
    for binary in SHIM_BINARIES {
        let current = std::fs::read_link(dir.join(binary))
            .ok()
            .and_then(|l| version_of(&l));
        let replaced = entries
            .iter()
            .filter(|e| e.path().join(binary).exists())
            .filter(|e| Some(e.file_name().to_string_lossy().into_owned()) != current)
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        keep.extend(current);
        keep.extend(replaced.map(|e| e.file_name().to_string_lossy().into_owned()));
    }
    for e in &entries {
        if !keep.iter().any(|k| *k == *e.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The digest of the installed shim `binary`, if wasmpod's symlink is there.
pub fn installed(host_root: &Path, bin_dir: &Path, binary: &str) -> Option<String> {
    version_of(&std::fs::read_link(host_path(host_root, bin_dir).join(binary)).ok()?)
}

/// Removes the symlinks and the version directories (and the bin dir, if then empty).
#[tracing::instrument(skip_all, fields(bin_dir = %bin_dir.display()))]
pub fn remove(host_root: &Path, bin_dir: &Path) -> Result<bool> {
    let dir = host_path(host_root, bin_dir);
    let mut changed = false;
    for binary in SHIM_BINARIES {
        let link = dir.join(binary);
        if std::fs::symlink_metadata(&link)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            std::fs::remove_file(&link).map_err(io_err(&link))?;
            changed = true;
        }
    }
    let versions = dir.join(VERSIONS_DIR);
    if versions.exists() {
        std::fs::remove_dir_all(&versions).map_err(io_err(&versions))?;
        changed = true;
    }
    let _ = std::fs::remove_dir(&dir); // only if empty
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ISOLATED_SHIM_BINARY;

    #[test]
    fn upgrade_swaps_the_link_and_keeps_the_running_file() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("src");
        std::fs::write(&src, b"v1").unwrap();
        let bin = Path::new("/opt/wasmpod/bin");
        let a = install(root.path(), bin, &src, SHIM_BINARY).unwrap();
        assert!(a.changed);
        assert_eq!(
            a.path,
            PathBuf::from("/opt/wasmpod/bin/containerd-shim-wasmtime-v1")
        );
        let link = host_path(root.path(), &a.path);
        assert_eq!(std::fs::read(&link).unwrap(), b"v1");
        // a running shim holds the old file open
        let old = std::fs::canonicalize(&link).unwrap();
        assert!(
            !install(root.path(), bin, &src, SHIM_BINARY)
                .unwrap()
                .changed
        );
        std::fs::write(&src, b"v2").unwrap();
        let b = install(root.path(), bin, &src, SHIM_BINARY).unwrap();
        assert!(b.changed);
        assert_eq!(std::fs::read(&link).unwrap(), b"v2");
        assert_eq!(
            std::fs::read(&old).unwrap(),
            b"v1",
            "old version kept, never overwritten"
        );
        assert_eq!(installed(root.path(), bin, SHIM_BINARY).unwrap(), b.digest);
        assert!(remove(root.path(), bin).unwrap());
        assert!(!host_path(root.path(), bin).exists());
    }

    #[test]
    fn the_two_shims_keep_each_others_versions() {
        let root = tempfile::tempdir().unwrap();
        let (pod, iso) = (root.path().join("pod"), root.path().join("iso"));
        let bin = Path::new("/opt/wasmpod/bin");
        std::fs::write(&pod, b"pod v1").unwrap();
        std::fs::write(&iso, b"isolated v1").unwrap();
        install(root.path(), bin, &pod, SHIM_BINARY).unwrap();
        let i = install(root.path(), bin, &iso, ISOLATED_SHIM_BINARY).unwrap();
        // Two upgrades of the pod host's shim prune its old versions, never the other's.
        for v in [b"pod v2", b"pod v3"] {
            std::fs::write(&pod, v).unwrap();
            install(root.path(), bin, &pod, SHIM_BINARY).unwrap();
        }
        let link = host_path(root.path(), &i.path);
        assert_eq!(std::fs::read(&link).unwrap(), b"isolated v1");
        assert_eq!(
            installed(root.path(), bin, ISOLATED_SHIM_BINARY),
            Some(i.digest)
        );
        let versions = std::fs::read_dir(host_path(root.path(), bin).join(VERSIONS_DIR))
            .unwrap()
            .count();
        assert_eq!(versions, 3, "pod v3, pod v2 (may still run), isolated v1");
        assert!(remove(root.path(), bin).unwrap());
        assert!(!host_path(root.path(), bin).exists());
    }

    #[test]
    fn upgrading_both_shims_keeps_both_replaced_versions() {
        // The installer installs the pod host's shim, then the isolated one: the second
        // install must not prune the version the first one replaced (running pods use it).
        let root = tempfile::tempdir().unwrap();
        let (pod, iso) = (root.path().join("pod"), root.path().join("iso"));
        let bin = Path::new("/opt/wasmpod/bin");
        let mut old = Vec::new();
        for v in ["v1", "v2"] {
            std::fs::write(&pod, format!("pod {v}")).unwrap();
            std::fs::write(&iso, format!("isolated {v}")).unwrap();
            let p = install(root.path(), bin, &pod, SHIM_BINARY).unwrap();
            let i = install(root.path(), bin, &iso, ISOLATED_SHIM_BINARY).unwrap();
            old.push((p.digest, i.digest));
        }
        let versions = host_path(root.path(), bin).join(VERSIONS_DIR);
        for (p, i) in &old {
            assert!(versions.join(p).join(SHIM_BINARY).exists(), "pod {p}");
            assert!(
                versions.join(i).join(ISOLATED_SHIM_BINARY).exists(),
                "isolated {i}"
            );
        }
    }
}
