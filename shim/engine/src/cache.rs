//! The node's cache of compiled modules, shared by every pod on the node.
//!
//! An entry is keyed by the module's SHA-256 and the engine's compatibility fingerprint
//! (wasmtime version and settings), so a shim upgrade never loads stale code. Entries are
//! written by the shim alone, atomically (temporary file, then rename), with a SHA-256 of the
//! artifact in a header: a corrupted or foreign entry is detected, removed and recompiled,
//! never loaded. Shims compiling the same module at once serialize on a per-entry file lock,
//! so the module is compiled once. The directory is bounded in size; the least recently used
//! entries go first.

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"WASMPOD1";
const HEADER: usize = MAGIC.len() + 32;

/// Default location; `WASMPOD_CACHE_DIR` overrides it.
pub const DEFAULT_DIR: &str = "/var/lib/wasmpod/cache";
/// Default size bound; `WASMPOD_CACHE_MAX_BYTES` overrides it.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// Whether a lookup was served from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Compiled,
}

pub struct Cache {
    dir: PathBuf,
    fingerprint: String,
    max_bytes: u64,
}

impl Cache {
    /// The cache configured by the environment, or none when its directory cannot be used
    /// (a read-only host): then every start compiles.
    pub fn from_env(engine: &wasmtime::Engine) -> Option<Cache> {
        let dir = std::env::var_os("WASMPOD_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        let max_bytes = std::env::var("WASMPOD_CACHE_MAX_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_BYTES);
        match Cache::open(&dir, engine, max_bytes) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("compile cache disabled: {}: {e}", dir.display());
                None
            }
        }
    }

    pub fn open(dir: &Path, engine: &wasmtime::Engine, max_bytes: u64) -> std::io::Result<Cache> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(Cache {
            dir: dir.to_path_buf(),
            fingerprint: format!("{:016x}", h.finish()),
            max_bytes,
        })
    }

    fn entry(&self, bytes: &[u8]) -> PathBuf {
        let digest = hex(&Sha256::digest(bytes));
        self.dir
            .join(format!("{digest}-{}.cwasm", self.fingerprint))
    }

    /// Returns the compiled artifact for `bytes`, from the cache or by running `compile`
    /// (which returns the serialized artifact) and storing the result. `load` turns verified
    /// artifact bytes into a program.
    pub fn get<T>(
        &self,
        bytes: &[u8],
        compile: impl FnOnce() -> Result<(T, Vec<u8>), super::EngineError>,
        load: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<(T, Outcome), super::EngineError> {
        let path = self.entry(bytes);
        if let Some(t) = self.read(&path).and_then(|a| load(&a)) {
            return Ok((t, Outcome::Hit));
        }
        // Another shim may be compiling this very module: wait for it, then look again.
        let _lock = lock(&path.with_extension("lock"));
        if let Some(t) = self.read(&path).and_then(|a| load(&a)) {
            return Ok((t, Outcome::Hit));
        }
        let (t, artifact) = compile()?;
        if let Err(e) = self.write(&path, &artifact) {
            tracing::warn!("cannot store {} in the compile cache: {e}", path.display());
        }
        self.evict();
        Ok((t, Outcome::Compiled))
    }

    /// The verified artifact of an entry, or `None` (and the entry removed) when it is
    /// missing, truncated or does not match its checksum.
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let data = fs::read(path).ok()?;
        let valid = data.len() > HEADER
            && &data[..MAGIC.len()] == MAGIC
            && data[MAGIC.len()..HEADER] == Sha256::digest(&data[HEADER..])[..];
        if !valid {
            tracing::warn!(
                "compile cache entry {} is corrupt; recompiling",
                path.display()
            );
            let _ = fs::remove_file(path);
            return None;
        }
        // Mark it recently used, for eviction.
        if let Ok(f) = File::options().write(true).open(path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(data[HEADER..].to_vec())
    }

    fn write(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&Sha256::digest(artifact))?;
        f.write_all(artifact)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    }

    /// Removes least recently used entries until the cache fits its bound.
    fn evict(&self) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = dir
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                let _ = fs::remove_file(path.with_extension("lock"));
                total -= len;
            }
        }
    }
}

/// An exclusive `flock` on `path`, released when the returned file is dropped.
fn lock(path: &Path) -> Option<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .ok()?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    (rc == 0).then_some(f)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
