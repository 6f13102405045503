//! A container's stdio, opened as containerd names it: FIFOs it reads from and writes to, or
//! `file://` paths.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use crate::error::Error;

type Result<T> = std::result::Result<T, Error>;

/// Strips the `file://` scheme containerd uses for log files; other schemes (logging
/// binaries) need a process to run and are refused.
fn io_path(uri: &str) -> Result<Option<&str>> {
    if uri.is_empty() {
        return Ok(None);
    }
    if let Some(p) = uri.strip_prefix("file://") {
        return Ok(Some(p));
    }
    if uri.contains("://") {
        return Err(Error::StdioScheme(uri.to_string()));
    }
    Ok(Some(uri))
}

fn cannot_open(path: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Stdio {
        path: path.to_string(),
        source,
    }
}

/// Opens stdout/stderr. A FIFO is opened read-write so the open never blocks waiting for a
/// reader; containerd's copier still sees EOF once the guest's handles close.
pub fn open_output(uri: &str) -> Result<Option<File>> {
    let Some(path) = io_path(uri)? else {
        return Ok(None);
    };
    let is_fifo = std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    let mut opts = OpenOptions::new();
    if is_fifo {
        opts.read(true).write(true);
    } else {
        opts.append(true).create(true);
    }
    opts.open(path).map(Some).map_err(cannot_open(path))
}

/// Opens stdin without waiting for a writer, then makes reads blocking again.
pub fn open_stdin(uri: &str) -> Result<Option<File>> {
    let Some(path) = io_path(uri)? else {
        return Ok(None);
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(cannot_open(path))?;
    let fcntl = |e: nix::errno::Errno| Error::Stdio {
        path: path.to_string(),
        source: e.into(),
    };
    let flags =
        nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(fcntl)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(fcntl)?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uris() {
        assert_eq!(io_path("").unwrap(), None);
        assert_eq!(io_path("/run/x/stdout").unwrap(), Some("/run/x/stdout"));
        assert_eq!(io_path("file:///var/log/x").unwrap(), Some("/var/log/x"));
        assert!(io_path("binary:///usr/bin/logger").is_err());
    }
}
