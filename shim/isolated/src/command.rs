//! What a container's command is: a WebAssembly module or a native executable. Decided once in
//! the shim against the container's root filesystem, so a command that is neither fails
//! StartContainer with a message (the shim decides in containerd's task create, which the CRI
//! makes at StartContainer, not at CreateContainer), and the container process only follows
//! the decision.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use wasmpod_oci::LookupError;

/// How the container's process runs its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// On the engine, inside the container's process.
    Wasm,
    /// Executed as it is (sidecars, the pause container).
    Native,
}

/// The PATH a container gets when its environment has none, as runc's.
pub use wasmpod_oci::spec::{args, cwd, env, open_files};

/// Why a container's command cannot run: the image or the pod spec got it wrong. The texts
/// are the container's StartError, so each says what to fix; a cause's text is part of it,
/// as users see nothing else.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the container has no command (set command or args, or an image entrypoint)")]
    NoCommand,
    #[error("the command {name}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: LookupError,
    },
    #[error("cannot read the command {name} in the image: {source}")]
    Read {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the command {name} is neither a WebAssembly module nor a native executable \
         (no \\0asm, ELF or #! header)"
    )]
    Neither { name: String },
    #[error(
        "the command {name} is a native executable in the working directory, not on \
         PATH; name it with a path (./{name})"
    )]
    NativeOffPath { name: String },
}

/// The file a container's command names and what it is.
#[derive(Debug)]
pub struct Command {
    /// The command as the spec gives it, for messages.
    pub name: String,
    /// Its file inside the container it was looked for in, open (see `wasmpod_oci::Tree`).
    pub file: File,
    /// The file's size.
    pub size: u64,
    pub kind: Kind,
}

/// Decides how the command runs, looking at the file it names inside `root` (the container's
/// root filesystem), found the way `execvp` would in the container: a name with a slash
/// relative to the working directory, a bare name along the container's PATH. A bare name
/// not on PATH is looked for in the working directory too, as the pod host finds modules;
/// only a module may be found that way (`execvp` would not run a native one). `None`: the
/// command names no file in `root` (a Wasm OCI artifact has none: its module is a layer in
/// containerd's content store).
pub fn classify(spec: &Spec, root: &Path) -> Result<Option<Command>, CommandError> {
    let Some((name, mut file, size, on_path)) = find(spec, root)? else {
        return Ok(None);
    };
    let kind = match sniff(&mut file) {
        Ok(Some(kind)) => kind,
        Ok(None) => return Err(CommandError::Neither { name }),
        Err(source) => return Err(CommandError::Read { name, source }),
    };
    if !on_path && kind == Kind::Native {
        return Err(CommandError::NativeOffPath { name });
    }
    Ok(Some(Command {
        name,
        file,
        size,
        kind,
    }))
}

/// The kind a file's first bytes say, if any; the file is left at its start.
fn sniff(file: &mut File) -> std::io::Result<Option<Kind>> {
    let mut head = [0u8; 4];
    let n = file.read(&mut head)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(match &head[..n] {
        b"\0asm" => Some(Kind::Wasm),
        [0x7f, b'E', b'L', b'F'] | [b'#', b'!', ..] => Some(Kind::Native),
        _ => None,
    })
}

/// (the command, its open file and size, whether it was found as `execvp` finds it), `None`
/// if it names no file.
fn find(spec: &Spec, root: &Path) -> Result<Option<(String, File, u64, bool)>, CommandError> {
    // The container's mounts are not in `root` yet (runc mounts them in the container's
    // mount namespace); a command on a volume is looked up in the volume's directory.
    let tree = wasmpod_oci::Tree::of_container(spec, root);
    let command = wasmpod_oci::spec::command(spec).ok_or(CommandError::NoCommand)?;
    if command.by_path {
        // Named by a path: anything there but a regular file (a FIFO, a device, a
        // directory, a link loop) is an error rather than "no such command".
        return match tree.open_regular(&command.candidates[0]) {
            Ok((f, size)) => Ok(Some((command.name, f, size, true))),
            Err(LookupError::NotFound { .. }) => Ok(None),
            Err(source) => Err(CommandError::Lookup {
                name: command.name,
                source,
            }),
        };
    }
    // As execvp, a PATH entry that holds no regular file of that name is passed over.
    Ok(command.candidates.iter().enumerate().find_map(|(i, c)| {
        let (f, size) = tree.open_regular(c).ok()?;
        Some((command.name.clone(), f, size, command.on_path(i)))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{ProcessBuilder, SpecBuilder};
    use std::os::unix::fs::symlink;

    fn spec(args: &[&str], env: &[&str], cwd: &str) -> Spec {
        SpecBuilder::default()
            .process(
                ProcessBuilder::default()
                    .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .cwd(cwd)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn image() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in ["bin", "app", "usr/local/bin"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("bin/busybox"), b"\x7fELF....").unwrap();
        symlink("/bin/busybox", r.join("bin/sh")).unwrap();
        std::fs::write(r.join("app/hello.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(r.join("usr/local/bin/run.sh"), b"#!/bin/sh\n").unwrap();
        std::fs::write(r.join("app/notes.txt"), b"hello").unwrap();
        symlink("../../../../etc/passwd", r.join("app/escape")).unwrap();
        root
    }

    fn kind(spec: &Spec, root: &Path) -> Result<Kind, String> {
        match classify(spec, root).map_err(|e| e.to_string())? {
            Some(c) => Ok(c.kind),
            None => Err("no such file".into()),
        }
    }

    #[test]
    fn modules_and_executables_are_told_apart() {
        let root = image();
        let r = root.path();
        let path = "PATH=/usr/local/bin:/bin";
        assert_eq!(
            kind(&spec(&["/app/hello.wasm"], &[], "/"), r),
            Ok(Kind::Wasm)
        );
        // A bare module name is found in the working directory, as in the pod host; a bare
        // native name only along PATH, as execvp finds it.
        assert_eq!(kind(&spec(&["hello.wasm"], &[], "/app"), r), Ok(Kind::Wasm));
        let e = kind(&spec(&["busybox"], &["PATH=/usr/local/bin"], "/bin"), r).unwrap_err();
        // The messages are StartErrors users (and the e2e tests) read: pinned to the byte.
        assert_eq!(
            e,
            "the command busybox is a native executable in the working directory, not on \
             PATH; name it with a path (./busybox)"
        );
        assert_eq!(
            kind(&spec(&["./hello.wasm"], &[], "/app"), r),
            Ok(Kind::Wasm)
        );
        assert_eq!(
            kind(&spec(&["sh", "-c", "true"], &[path], "/"), r),
            Ok(Kind::Native)
        );
        assert_eq!(kind(&spec(&["run.sh"], &[path], "/"), r), Ok(Kind::Native));
        // The default PATH applies when the image sets none.
        assert_eq!(kind(&spec(&["busybox"], &[], "/"), r), Ok(Kind::Native));
        let e = kind(&spec(&["/app/notes.txt"], &[], "/"), r).unwrap_err();
        assert_eq!(
            e,
            "the command /app/notes.txt is neither a WebAssembly module nor a native \
             executable (no \\0asm, ELF or #! header)"
        );
        // No such file: the shim then asks containerd whether the image is a Wasm artifact.
        assert!(classify(&spec(&["missing"], &[path], "/"), r)
            .unwrap()
            .is_none());
        let e = classify(&spec(&[], &[], "/"), r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the container has no command (set command or args, or an image entrypoint)"
        );
    }

    #[test]
    fn commands_are_looked_up_inside_the_image() {
        let root = image();
        let r = root.path();
        // The link leads to the image's busybox.
        assert_eq!(kind(&spec(&["/bin/sh"], &[], "/"), r), Ok(Kind::Native));
        // ../ above the image's root stays at its root: the image has no /etc/passwd.
        assert!(classify(&spec(&["/app/escape"], &[], "/"), r)
            .unwrap()
            .is_none());
        symlink("/dev/zero", r.join("app/zero")).unwrap();
        assert!(classify(&spec(&["/app/zero"], &[], "/"), r)
            .unwrap()
            .is_none());
        symlink("loop", r.join("app/loop")).unwrap();
        let e = classify(&spec(&["/app/loop"], &[], "/"), r)
            .unwrap_err()
            .to_string();
        assert!(e.contains("levels of symbolic links"), "{e}");
        let e = classify(&spec(&["/app"], &[], "/"), r)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is not a regular file (it is a directory)"),
            "{e}"
        );
    }
}
