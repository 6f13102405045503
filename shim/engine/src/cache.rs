//! The node's cache of compiled modules, shared by every pod on the node.
//!
//! An entry is keyed by the module's SHA-256 and the engine's compatibility fingerprint
//! (wasmtime version and settings), so a shim upgrade never loads stale code. What an entry
//! holds is native code the shim runs as root, so the cache trusts nothing it did not write
//! itself:
//!
//! - the directory must be owned by the shim's user (root) with mode 0700, in a parent only
//!   that user (or root) can change; otherwise the cache is not used at all;
//! - every entry carries an HMAC-SHA256 over its name and artifact, keyed with a node-local
//!   secret (`key`, 0600, created at first use): a plain checksum could be recomputed by
//!   anyone who can write a file, the key cannot be read by anyone but root;
//! - entries are opened without following links; temporary files get unpredictable names
//!   and are created exclusively (never through a planted link), then renamed into place;
//!   lock files are opened without following links.
//!
//! A corrupt, forged or foreign entry is removed and recompiled, never loaded. Shims compiling
//! the same module at once serialize on a per-entry file lock, so it is compiled once. The
//! directory is bounded in size, least recently used entries first; eviction never removes a
//! lock another shim holds, and it removes temporary files a dead shim left behind.

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"WASMPOD2";
const TAG_LEN: usize = 32;
const HEADER: usize = MAGIC.len() + TAG_LEN;
/// The node-local secret entries are authenticated with.
const KEY_FILE: &str = "key";
const KEY_LEN: usize = 32;
/// A temporary file this old was left by a shim that died while writing it.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Default location; `WASMPOD_CACHE_DIR` overrides it.
pub const DEFAULT_DIR: &str = "/var/lib/wasmpod/cache";
/// Default size bound; `WASMPOD_CACHE_MAX_BYTES` overrides it.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Someone other than the shim's user could change what is in the directory.
    #[error("{} {problem}: only its owner, the shim's user (uid {uid}), may be able to change it", path.display())]
    Unsafe {
        path: PathBuf,
        problem: String,
        uid: u32,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

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
    key: [u8; KEY_LEN],
}

impl Cache {
    /// The cache configured by the environment, or none when its directory cannot be used
    /// (a read-only host, or one others could write): then every start compiles. Called once
    /// per engine, so the warning is given once per shim.
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
                tracing::warn!("compile cache disabled, every module is compiled: {e}");
                None
            }
        }
    }

    pub fn open(
        dir: &Path,
        engine: &wasmtime::Engine,
        max_bytes: u64,
    ) -> Result<Cache, CacheError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Cache::open_with(dir, format!("{:016x}", h.finish()), max_bytes)
    }

    fn open_with(dir: &Path, fingerprint: String, max_bytes: u64) -> Result<Cache, CacheError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        check_dir(dir)?;
        Ok(Cache {
            dir: dir.to_path_buf(),
            fingerprint,
            max_bytes,
            key: key(dir)?,
        })
    }

    fn entry(&self, bytes: &[u8]) -> (PathBuf, String) {
        let name = format!("{}-{}.cwasm", hex(&Sha256::digest(bytes)), self.fingerprint);
        (self.dir.join(&name), name)
    }

    /// Returns the compiled artifact for `bytes`, from the cache or by running `compile`
    /// (which returns the serialized artifact) and storing the result. `load` turns
    /// authenticated artifact bytes into a program.
    pub fn get<T>(
        &self,
        bytes: &[u8],
        compile: impl FnOnce() -> Result<(T, Vec<u8>), super::EngineError>,
        load: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<(T, Outcome), super::EngineError> {
        let (path, name) = self.entry(bytes);
        if let Some(t) = self.read(&path, &name).and_then(|e| load(&e[HEADER..])) {
            return Ok((t, Outcome::Hit));
        }
        // Another shim may be compiling this very module: wait for it, then look again.
        // Without the lock (it could not be taken) the module is compiled here too, which
        // costs time, not safety: entries are renamed into place whole.
        let _lock = lock(&path.with_extension("lock"));
        if let Some(t) = self.read(&path, &name).and_then(|e| load(&e[HEADER..])) {
            return Ok((t, Outcome::Hit));
        }
        let (t, artifact) = compile()?;
        if let Err(e) = self.write(&path, &name, &artifact) {
            tracing::warn!("cannot store {} in the compile cache: {e}", path.display());
        }
        self.evict();
        Ok((t, Outcome::Compiled))
    }

    /// The whole entry (header included) when it is the shim's own, or `None` (and the entry
    /// removed) when it is missing, not a plain file of the shim's, truncated or fails its
    /// authentication.
    fn read(&self, path: &Path, name: &str) -> Option<Vec<u8>> {
        let reject = |why: &str| {
            tracing::warn!(
                "compile cache entry {} {why}; removed, recompiling",
                path.display()
            );
            let _ = fs::remove_file(path);
            None
        };
        let mut file = match open_nofollow(path, false) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return None,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return reject("is a symbolic link, not followed")
            }
            Err(e) => {
                tracing::warn!("cannot open {}: {e}", path.display());
                return None;
            }
        };
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.uid() != euid() {
            return reject("is not a file the shim wrote");
        }
        if meta.len() > self.max_bytes.max(HEADER as u64) {
            return reject("is larger than the whole cache may be");
        }
        let mut data = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut data).ok()?;
        let valid = data.len() > HEADER
            && &data[..MAGIC.len()] == MAGIC
            && same(
                &data[MAGIC.len()..HEADER],
                &tag(&self.key, name, &data[HEADER..]),
            );
        if !valid {
            return reject("is corrupt or was not written by this node's shim");
        }
        // Mark it recently used, for eviction.
        let _ = file.set_modified(SystemTime::now());
        Some(data)
    }

    fn write(&self, path: &Path, name: &str, artifact: &[u8]) -> Result<(), CacheError> {
        let (tmp, mut f) = create_temp(&self.dir, "entry")?;
        let written = (|| {
            f.write_all(MAGIC)?;
            f.write_all(&tag(&self.key, name, artifact))?;
            f.write_all(artifact)?;
            f.sync_all()?;
            // Replaces whatever is at `path`, a planted link included, without following it.
            fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(io(path))
    }

    /// Removes least recently used entries until the cache fits its bound, and temporary
    /// files a dead shim left.
    fn evict(&self) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for e in dir.flatten() {
            let path = e.path();
            // The entry itself, not what a link points to.
            let Ok(m) = fs::symlink_metadata(&path) else {
                continue;
            };
            let Ok(modified) = m.modified() else { continue };
            if is_temp(&path) {
                if now.duration_since(modified).unwrap_or_default() > STALE_TEMP {
                    let _ = fs::remove_file(&path);
                }
            } else if m.is_file() && path.extension().is_some_and(|x| x == "cwasm") {
                entries.push((modified, m.len(), path));
            } else if path.extension().is_some_and(|x| x == "lock")
                && !path.with_extension("cwasm").exists()
            {
                // The lock of an entry evicted while it was held.
                remove_unheld_lock(&path);
            }
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                remove_unheld_lock(&path.with_extension("lock"));
                total -= len;
            }
        }
    }
}

/// Refuses a cache directory anyone but the shim's user could change, directly or by
/// replacing it through its parent.
fn check_dir(dir: &Path) -> Result<(), CacheError> {
    let uid = euid();
    let unsafe_dir = |path: &Path, problem: String| CacheError::Unsafe {
        path: path.to_path_buf(),
        problem,
        uid,
    };
    let m = fs::symlink_metadata(dir).map_err(io(dir))?;
    if !m.is_dir() {
        return Err(unsafe_dir(dir, "is not a directory (a link?)".into()));
    }
    if m.uid() != uid {
        return Err(unsafe_dir(dir, format!("is owned by uid {}", m.uid())));
    }
    if m.mode() & 0o077 != 0 {
        return Err(unsafe_dir(
            dir,
            format!("has mode {:04o}, not 0700", m.mode() & 0o7777),
        ));
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let p = fs::metadata(parent).map_err(io(parent))?;
    let sticky = p.mode() & 0o1000 != 0;
    if (p.uid() != uid && p.uid() != 0) || (p.mode() & 0o022 != 0 && !sticky) {
        return Err(unsafe_dir(
            parent,
            format!(
                "(the cache's parent, uid {}, mode {:04o}) lets others replace the cache",
                p.uid(),
                p.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The node's secret: read, or created at first use (by one shim; the others use its key).
fn key(dir: &Path) -> Result<[u8; KEY_LEN], CacheError> {
    let path = dir.join(KEY_FILE);
    match read_key(&path) {
        Err(CacheError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        read => return read,
    }
    let mut key = [0u8; KEY_LEN];
    random(&mut key).map_err(io(&path))?;
    let (tmp, mut f) = create_temp(dir, "key")?;
    let made = f.write_all(&key).and_then(|_| f.sync_all());
    // A link fails if the key exists: then another shim made it first, and its key counts.
    let linked = made.and_then(|_| fs::hard_link(&tmp, &path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key(&path),
        Err(e) => Err(io(&path)(e)),
    }
}

fn read_key(path: &Path) -> Result<[u8; KEY_LEN], CacheError> {
    let mut f = open_nofollow(path, false).map_err(io(path))?;
    let m = f.metadata().map_err(io(path))?;
    if !m.is_file() || m.uid() != euid() || m.mode() & 0o077 != 0 || m.len() != KEY_LEN as u64 {
        return Err(CacheError::Unsafe {
            path: path.to_path_buf(),
            problem: format!(
                "is not a {KEY_LEN}-byte file of mode 0600 (uid {}, mode {:04o}, {} bytes)",
                m.uid(),
                m.mode() & 0o7777,
                m.len()
            ),
            uid: euid(),
        });
    }
    let mut key = [0u8; KEY_LEN];
    f.read_exact(&mut key).map_err(io(path))?;
    Ok(key)
}

/// HMAC-SHA256 (RFC 2104) with the node's key over the entry's name and artifact: binding the
/// name means an artifact cannot be moved to another module's entry either.
fn tag(key: &[u8; KEY_LEN], name: &str, artifact: &[u8]) -> [u8; TAG_LEN] {
    const BLOCK: usize = 64;
    let mut inner_pad = [0x36u8; BLOCK];
    let mut outer_pad = [0x5cu8; BLOCK];
    for (i, k) in key.iter().enumerate() {
        inner_pad[i] ^= k;
        outer_pad[i] ^= k;
    }
    let inner = Sha256::new()
        .chain_update(inner_pad)
        .chain_update((name.len() as u64).to_le_bytes())
        .chain_update(name.as_bytes())
        .chain_update(artifact)
        .finalize();
    Sha256::new()
        .chain_update(outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Compares without an early exit, so timing tells nothing about the tag.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn open_nofollow(path: &Path, write: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// A new file with an unpredictable name in `dir`, created exclusively: nobody can have put
/// a link there for the shim to write through.
fn create_temp(dir: &Path, stem: &str) -> Result<(PathBuf, File), CacheError> {
    let mut nonce = [0u8; 16];
    random(&mut nonce).map_err(io(dir))?;
    let path = dir.join(format!(".{stem}.{}.tmp", hex(&nonce)));
    let f = create_new(&path).map_err(io(&path))?;
    Ok((path, f))
}

fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn is_temp(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

/// An exclusive `flock` on `path`, released when the returned file is dropped; `None` if no
/// lock file of the shim's can be had there.
fn lock(path: &Path) -> Option<File> {
    // Eviction may remove the lock file between the open and the flock; a lock on a file no
    // longer at `path` excludes nobody, so then it is taken again.
    for _ in 0..8 {
        let f = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot lock {}: {e}", path.display());
                return None;
            }
        };
        let m = f.metadata().ok()?;
        if !m.is_file() || m.uid() != euid() {
            tracing::warn!("{} is not a lock file of the shim's", path.display());
            return None;
        }
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return None;
        }
        let still_there = fs::symlink_metadata(path)
            .is_ok_and(|now| now.ino() == m.ino() && now.dev() == m.dev());
        if still_there {
            return Some(f);
        }
    }
    None
}

/// Removes a lock file unless a shim holds it (it is compiling that module right now).
fn remove_unheld_lock(path: &Path) {
    let Ok(f) = open_nofollow(path, false) else {
        return;
    };
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        // Removed while held, so whoever opened it meanwhile sees it gone and takes anew.
        let _ = fs::remove_file(path);
    }
}

fn random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most the given length into the buffer we own.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const MODULE: &[u8] = b"\0asm module A";
    const OTHER: &[u8] = b"\0asm module B";

    fn cache(dir: &Path) -> Cache {
        Cache::open_with(dir, "f1".into(), DEFAULT_MAX_BYTES).unwrap()
    }

    fn tempdir() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("cache");
        (t, dir)
    }

    /// Looks `module` up; "compiling" gives `artifact`. What was loaded, and how.
    fn get(c: &Cache, module: &[u8], artifact: &[u8]) -> (Vec<u8>, Outcome) {
        c.get(
            module,
            || Ok((artifact.to_vec(), artifact.to_vec())),
            |a| Some(a.to_vec()),
        )
        .unwrap()
    }

    #[test]
    fn entries_are_served_once_written() {
        let (_t, dir) = tempdir();
        let c = cache(&dir);
        assert_eq!(
            get(&c, MODULE, b"code A"),
            (b"code A".to_vec(), Outcome::Compiled)
        );
        assert_eq!(
            get(&c, MODULE, b"unused"),
            (b"code A".to_vec(), Outcome::Hit)
        );
        // Another shim on the node (the same key) is served too.
        assert_eq!(get(&cache(&dir), MODULE, b"unused").1, Outcome::Hit);
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    }

    #[test]
    fn a_forged_entry_is_never_loaded() {
        let (_t, dir) = tempdir();
        let c = cache(&dir);
        get(&c, MODULE, b"code A");
        let (path, _) = c.entry(MODULE);
        // What anyone could compute: the old plain checksum header, and a tag of another key.
        let evil = b"evil code".as_slice();
        let mut plain = MAGIC.to_vec();
        plain.extend_from_slice(&Sha256::digest(evil));
        plain.extend_from_slice(evil);
        let (_, name) = c.entry(MODULE);
        let mut other_key = MAGIC.to_vec();
        other_key.extend_from_slice(&tag(&[7; KEY_LEN], &name, evil));
        other_key.extend_from_slice(evil);
        for forged in [plain, other_key] {
            fs::write(&path, forged).unwrap();
            let (loaded, outcome) = get(&c, MODULE, b"code A");
            assert_eq!(
                (loaded.as_slice(), outcome),
                (b"code A".as_slice(), Outcome::Compiled)
            );
        }
        // Module B's genuine entry under module A's name is not A's code.
        get(&c, OTHER, b"code B");
        fs::copy(c.entry(OTHER).0, &path).unwrap();
        assert_eq!(
            get(&c, MODULE, b"code A"),
            (b"code A".to_vec(), Outcome::Compiled)
        );
    }

    #[test]
    fn a_symlinked_entry_is_not_followed() {
        let (t, dir) = tempdir();
        let c = cache(&dir);
        get(&c, MODULE, b"code A");
        // The genuine entry, moved out and linked back in: valid bytes, but not the shim's
        // file in the shim's directory.
        let (path, _) = c.entry(MODULE);
        let outside = t.path().join("entry");
        fs::rename(&path, &outside).unwrap();
        symlink(&outside, &path).unwrap();
        assert_eq!(get(&c, MODULE, b"code A").1, Outcome::Compiled);
        assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
    }

    #[test]
    fn a_symlinked_lock_or_temporary_file_writes_nothing_through_the_link() {
        let (t, dir) = tempdir();
        let c = cache(&dir);
        let victim = t.path().join("victim");
        let (path, _) = c.entry(MODULE);
        symlink(&victim, path.with_extension("lock")).unwrap();
        assert_eq!(get(&c, MODULE, b"code A").1, Outcome::Compiled);
        assert!(!victim.exists(), "the lock was taken through the link");
        assert_eq!(get(&c, MODULE, b"code A").1, Outcome::Hit);
        // Temporary files are created exclusively: a link planted at the name is refused.
        let planted = dir.join(".entry.planted.tmp");
        symlink(&victim, &planted).unwrap();
        assert!(create_new(&planted).is_err());
        assert!(!victim.exists());
        // And their names cannot be guessed.
        let (a, _) = create_temp(&dir, "entry").unwrap();
        let (b, _) = create_temp(&dir, "entry").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.file_name().unwrap().len(), ".entry..tmp".len() + 32);
    }

    #[test]
    fn a_directory_others_can_change_is_refused() {
        let (t, dir) = tempdir();
        cache(&dir);
        for mode in [0o777, 0o770, 0o705] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let e = Cache::open_with(&dir, "f1".into(), 1).err().unwrap();
            assert!(matches!(e, CacheError::Unsafe { .. }), "{mode:o}: {e}");
            assert!(e.to_string().contains("not 0700"), "{e}");
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let link = t.path().join("link");
        symlink(&dir, &link).unwrap();
        assert!(Cache::open_with(&link, "f1".into(), 1).is_err());
        if euid() == 0 {
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let e = Cache::open_with(&dir, "f1".into(), 1).err().unwrap();
            assert!(e.to_string().contains("is owned by uid 65534"), "{e}");
            std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
        }
        // A key others can read is no secret.
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let e = Cache::open_with(&dir, "f1".into(), 1).err().unwrap();
        assert!(e.to_string().contains("mode 0600"), "{e}");
    }

    #[test]
    fn eviction_cleans_stale_temporary_files_and_keeps_held_locks() {
        let (_t, dir) = tempdir();
        // A bound of 0 evicts every entry once written, and its lock unless it is held.
        let c = Cache::open_with(&dir, "f1".into(), 0).unwrap();
        let (stale, f) = create_temp(&dir, "entry").unwrap();
        f.set_modified(SystemTime::now() - 2 * STALE_TEMP).unwrap();
        let (fresh, _) = create_temp(&dir, "entry").unwrap();
        let lock_of = |m: &[u8]| c.entry(m).0.with_extension("lock");
        // Another shim compiling module A holds its lock.
        let held = lock(&lock_of(MODULE)).unwrap();
        get(&c, OTHER, b"code B");
        assert!(!stale.exists() && fresh.exists());
        assert!(!c.entry(OTHER).0.exists());
        assert!(lock_of(MODULE).exists());
        drop(held);
        get(&c, OTHER, b"code B");
        assert!(!lock_of(MODULE).exists());
    }
}
