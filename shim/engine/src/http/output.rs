//! What a request's guest sees of the container: its WASI context, and stdout/stderr lines
//! labelled with the request they belong to.

use std::fs::File;
use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, OutputFile, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use crate::{GuestContext, Preopen};

/// What every request's WASI context is made of.
pub(super) struct Template {
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    preopens: Vec<Preopen>,
    stdout: Option<Arc<File>>,
    stderr: Option<Arc<File>>,
    /// File operations on the request's own thread, which has the container's identity.
    as_user: bool,
}

impl Template {
    pub fn new(ctx: GuestContext) -> Self {
        Template {
            args: ctx.args,
            env: ctx.env,
            cwd: ctx.cwd,
            preopens: ctx.preopens,
            stdout: ctx.stdout.map(Arc::new),
            stderr: ctx.stderr.map(Arc::new),
            as_user: ctx.identity.is_some_and(|i| !i.is_root()),
        }
    }

    pub fn wasi(&self, label: &Arc<str>) -> WasiCtx {
        let mut b = WasiCtxBuilder::new();
        b.allow_blocking_current_thread(self.as_user);
        b.args(&self.args);
        b.envs(&self.env);
        if let Some(cwd) = &self.cwd {
            b.initial_cwd(cwd);
        }
        if let Some(f) = &self.stdout {
            b.stdout(Labelled::new(f, label));
        }
        if let Some(f) = &self.stderr {
            b.stderr(Labelled::new(f, label));
        }
        for p in &self.preopens {
            let perms = if p.read_only {
                wasmtime_wasi::FsPerms::ReadOnly
            } else {
                wasmtime_wasi::FsPerms::ReadWrite
            };
            // Opened at start already; a directory gone since leaves this request without it.
            let _ = b.preopened_dir(&p.host, &p.guest, perms);
        }
        b.build()
    }

    /// A line about a request on the container's stderr.
    pub fn log(&self, label: &str, message: &str) {
        if let Some(f) = &self.stderr {
            let _ = writeln!(f.as_ref(), "[{label}] {message}");
        }
    }
}

/// A guest's stdout or stderr during one request: whole lines, each prefixed with the request
/// (`[GET /path #17] ...`), so concurrent requests' output can be told apart in the log. A line
/// is written with one write, so lines of concurrent requests do not interleave.
#[derive(Clone)]
struct Labelled {
    file: Arc<File>,
    label: Arc<str>,
}

impl Labelled {
    fn new(file: &Arc<File>, label: &Arc<str>) -> Self {
        Labelled {
            file: file.clone(),
            label: label.clone(),
        }
    }
}

impl IsTerminal for Labelled {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Labelled {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            out: self.clone(),
            pending: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASI preview 3 guests ask for this; they get the output unlabelled.
        match self.file.try_clone() {
            Ok(f) => Box::new(OutputFile::new(f)),
            Err(_) => Box::new(tokio::io::sink()),
        }
    }
}

struct LineWriter {
    out: Labelled,
    pending: Vec<u8>,
}

impl LineWriter {
    fn write_lines(&mut self, all: bool) {
        let end = if all {
            self.pending.len()
        } else {
            match self.pending.iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                None => return,
            }
        };
        if end == 0 {
            return;
        }
        let mut buf = Vec::with_capacity(end + 64);
        for line in self.pending[..end].split_inclusive(|b| *b == b'\n') {
            buf.push(b'[');
            buf.extend_from_slice(self.out.label.as_bytes());
            buf.extend_from_slice(b"] ");
            buf.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                buf.push(b'\n');
            }
        }
        let _ = self.out.file.as_ref().write_all(&buf);
        self.pending.drain(..end);
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.pending.extend_from_slice(&bytes);
        self.write_lines(false);
        // A guest that never ends its line still gets it out, a page at a time.
        if self.pending.len() >= 4096 {
            self.write_lines(true);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.write_lines(true);
    }
}
