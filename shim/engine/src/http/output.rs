//! What a request's guest sees of the container: its WASI context, and stdout/stderr lines
//! labelled with the request they belong to.

use std::fs::File;
use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, OutputFile, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use crate::meter::{Limiter, Meter};
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
    /// The container's: what the output streams buffer is charged to its memory limit.
    meter: Arc<Meter>,
}

impl Template {
    pub fn new(ctx: GuestContext, meter: Arc<Meter>) -> Self {
        Template {
            meter,
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
            b.stdout(Labelled::new(f, label, &self.meter));
        }
        if let Some(f) = &self.stderr {
            b.stderr(Labelled::new(f, label, &self.meter));
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
    meter: Arc<Meter>,
}

impl Labelled {
    fn new(file: &Arc<File>, label: &Arc<str>, meter: &Arc<Meter>) -> Self {
        Labelled {
            file: file.clone(),
            label: label.clone(),
            meter: meter.clone(),
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
            charge: Limiter::new(self.meter.clone()),
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
    /// The part of a line not yet written, up to a page and one write (`check_write`).
    pending: Vec<u8>,
    /// `pending`'s memory, charged to the container's limit; released with the stream.
    charge: Limiter,
}

impl LineWriter {
    /// Charges what `pending` holds now. A container whose limit has no room for it gets its
    /// output written at once instead, as it comes, never held uncharged.
    fn charge_pending(&mut self) {
        let held = self.pending.capacity() as u64;
        if held > self.charge.held() && !self.charge.reserve(held - self.charge.held()) {
            self.write_lines(true);
            self.pending = Vec::new();
        }
    }

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
        self.charge_pending();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Limits;

    fn stream(meter: &Arc<Meter>, file: &Arc<File>) -> Box<dyn OutputStream> {
        let label: Arc<str> = "GET / #1".into();
        Labelled::new(file, &label, meter).p2_stream()
    }

    fn out_file() -> (Arc<File>, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("wasmpod-output-{}", std::process::id()));
        (Arc::new(File::create(&path).unwrap()), path)
    }

    /// What a stream buffers of a line counts against the container's limit while the stream
    /// lives; a container without room for it gets its output unbuffered, nothing lost.
    #[test]
    fn buffered_output_is_charged_to_the_container() {
        let (file, path) = out_file();
        let meter = Arc::new(Meter::new(Limits {
            memory: Some(64 << 20),
            ..Default::default()
        }));
        let mut out = stream(&meter, &file);
        out.write(Bytes::from_static(b"half a line, ")).unwrap();
        assert!(meter.memory_bytes() > 0, "the pending line is charged");
        out.write(Bytes::from_static(b"and the rest\n")).unwrap();
        drop(out);
        assert_eq!(meter.memory_bytes(), 0, "released with the stream");

        // A limit whose guest cap is all taken already: nothing may be buffered.
        let full = Arc::new(Meter::new(Limits {
            memory: Some(4 << 20),
            ..Default::default()
        }));
        let mut hog = Limiter::new(full.clone());
        while hog.reserve(64 << 10) {}
        let mut out = stream(&full, &file);
        let used = full.memory_bytes();
        out.write(Bytes::from_static(b"no room, ")).unwrap();
        assert_eq!(full.memory_bytes(), used, "nothing held uncharged");
        out.write(Bytes::from_static(b"still written\n")).unwrap();
        drop(out);
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            text,
            "[GET / #1] half a line, and the rest\n[GET / #1] no room, \n[GET / #1] still written\n"
        );
    }
}
