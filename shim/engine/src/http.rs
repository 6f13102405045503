//! Serving `wasi:http/incoming-handler` components: a long-lived guest that answers HTTP/1.1
//! on a socket. The component is pre-instantiated once; every request gets a fresh instance
//! (from the pooling allocator) in its own store, with the container's memory limit and CPU
//! budget shared by all requests (one `Meter`), its own deadline, and stdout/stderr lines
//! labelled with the request they belong to.

use std::convert::Infallible;
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, OutputFile, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use super::meter::{self, Limiter, Meter, TaskClock};
use super::{fail, wasi_builder, ComponentState, Engine, Exit, GuestContext, Preopen};

/// Where and how an HTTP guest serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub address: SocketAddr,
    /// A request still running after this long is ended and answered 500.
    pub request_timeout: Duration,
}

/// The environment variable that sets where an HTTP handler listens: `HOST:PORT` or a port.
pub const HTTP_ADDRESS: &str = "WASMPOD_HTTP_ADDRESS";
/// The environment variable that bounds one HTTP request: seconds, or `500ms` / `30s`.
pub const HTTP_REQUEST_TIMEOUT: &str = "WASMPOD_HTTP_REQUEST_TIMEOUT";
/// The longest request timeout: longer than any request should take, and far from the end of
/// what a deadline (`Instant` plus the timeout) can hold.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl HttpConfig {
    /// How an HTTP handler serves, from the container's environment (defaults: `0.0.0.0:8080`,
    /// 60 s per request).
    pub fn from_env(env: &[(String, String)]) -> Result<HttpConfig, String> {
        let mut config = HttpConfig::default();
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.trim())
        };
        if let Some(v) = get(HTTP_ADDRESS).filter(|v| !v.is_empty()) {
            config.address = match v.parse::<u16>() {
                Ok(port) => std::net::SocketAddr::from(([0, 0, 0, 0], port)),
                Err(_) => v.parse().map_err(|e| {
                    format!("{HTTP_ADDRESS}={v}: not HOST:PORT (like 0.0.0.0:8080) or a port: {e}")
                })?,
            };
        }
        if let Some(v) = get(HTTP_REQUEST_TIMEOUT).filter(|v| !v.is_empty()) {
            let (number, scale) = match v.strip_suffix("ms") {
                Some(n) => (n, 1e-3),
                None => (v.strip_suffix('s').unwrap_or(v), 1.0),
            };
            config.request_timeout = number
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n > 0.0)
                .and_then(|n| Duration::try_from_secs_f64(n * scale).ok())
                .filter(|d| !d.is_zero() && *d <= MAX_REQUEST_TIMEOUT)
                .ok_or_else(|| {
                    format!(
                        "{HTTP_REQUEST_TIMEOUT}={v}: not a positive duration of at most a day \
                         (like 30, 30s or 500ms)"
                    )
                })?;
        }
        Ok(config)
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl Engine {
    /// Serves an HTTP handler until `drain` resolves, then stops accepting, lets the requests
    /// in flight finish and ends with status 0. Dropping the future instead ends everything at
    /// once, requests included.
    pub async fn serve(
        self: &Arc<Self>,
        pre: &ProxyPre<ComponentState>,
        ctx: GuestContext,
        meter: Arc<Meter>,
        config: HttpConfig,
        drain: impl Future<Output = ()>,
    ) -> Exit {
        let stderr = ctx.stderr.as_ref().and_then(|f| f.try_clone().ok());
        // Every request's instance runs under this meter: with the container's identity.
        if let Some(identity) = &ctx.identity {
            if let Err(e) = meter.set_identity(identity.clone()) {
                let _ = fail(stderr, format!("cannot run as the container's user: {e}"));
                return Exit::Code(1);
            }
        }
        // Checked once here so that a bad preopen fails the container, not every request.
        if let Err(e) = wasi_builder(GuestContext {
            preopens: ctx.preopens.clone(),
            ..Default::default()
        }) {
            return fail(stderr, e.to_string());
        }
        let listener = match TcpListener::bind(config.address).await {
            Ok(l) => l,
            Err(e) => {
                let _ = fail(stderr, format!("cannot listen on {}: {e}", config.address));
                return Exit::Code(1);
            }
        };
        if let Some(mut f) = stderr.as_ref() {
            let _ = writeln!(f, "wasmpod: serving HTTP on {}", config.address);
        }
        let (alive, alive_rx) = watch::channel(());
        let server = Arc::new(Server {
            engine: self.clone(),
            pre: pre.clone(),
            meter,
            template: Template::new(ctx),
            timeout: config.request_timeout,
            requests: AtomicU64::new(0),
            alive: alive_rx,
        });
        let (drain_tx, drain_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(drain);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(server.clone().connection(stream, drain_rx.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors, typically: back off instead of spinning.
                        tracing::warn!("accept on {}: {e}", config.address);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = &mut drain => break,
            }
        }
        drop(listener);
        let _ = drain_tx.send(true);
        // A connection ends once its last response body is sent, so this waits for every
        // request in flight.
        while connections.join_next().await.is_some() {}
        drop(alive);
        Exit::Code(0)
    }
}

struct Server {
    engine: Arc<Engine>,
    pre: ProxyPre<ComponentState>,
    meter: Arc<Meter>,
    template: Template,
    timeout: Duration,
    requests: AtomicU64,
    /// Closed when the server's future is dropped (a kill): request tasks end with it.
    alive: watch::Receiver<()>,
}

impl Server {
    async fn connection(self: Arc<Self>, stream: TcpStream, mut drain: watch::Receiver<bool>) {
        let _ = stream.set_nodelay(true);
        let server = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(req).await) }
        });
        let conn = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection: {e}");
                }
                return;
            }
            _ = drain.wait_for(|d| *d) => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }

    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<Incoming>,
    ) -> hyper::Response<HyperOutgoingBody> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let label: Arc<str> = format!("{} {} #{n}", req.method(), req.uri().path()).into();
        match self.clone().call(req, label.clone()).await {
            Ok(resp) => resp,
            Err(message) => {
                self.template.log(&label, &message);
                error_response(&label)
            }
        }
    }

    /// One request in a fresh instance, on its own task so the guest can keep writing the
    /// body after it has handed over the response head.
    async fn call(
        self: Arc<Self>,
        req: hyper::Request<Incoming>,
        label: Arc<str>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, String> {
        let state = ComponentState {
            wasi: self.template.wasi(&label),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter: Limiter::new(self.meter.clone()),
        };
        let clock = Arc::new(TaskClock::default());
        let mut store =
            self.engine
                .store(state, |s| &mut s.limiter, self.meter.clone(), clock.clone());
        let (tx, rx) = oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(|e| format!("{e:#}"))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(|e| format!("{e:#}"))?;
        let pre = self.pre.clone();
        let guest = async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        };
        let guest = meter::Metered::new(self.meter.clone(), clock, self.engine.cpu.clone(), guest);
        let timeout = self.timeout;
        let mut alive = self.alive.clone();
        let server = self.clone();
        let task_label = label.clone();
        let task = tokio::spawn(async move {
            let result = tokio::select! {
                r = tokio::time::timeout(timeout, guest) => match r {
                    Ok(r) => r.map_err(|e| format!("wasm trap: {e:?}")),
                    Err(_) => Err(format!("the request ran longer than {timeout:?} and was ended")),
                },
                _ = alive.changed() => Ok(()),
            };
            // Logged here, as it happens: after the response head is out, only the log sees it.
            if let Err(e) = &result {
                server.template.log(&task_label, e);
            }
            result
        });
        match rx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(format!("the handler answered with an error: {code:?}")),
            Err(_) => match task.await {
                Ok(Ok(())) => Err("the handler returned without setting a response".into()),
                // Already logged by the task; the client gets a 500.
                Ok(Err(_)) => Ok(error_response(&label)),
                Err(e) => Err(format!("the request task failed: {e}")),
            },
        }
    }
}

fn error_response(label: &str) -> hyper::Response<HyperOutgoingBody> {
    let body =
        format!("500 internal server error: the handler failed ({label}); see the container log\n");
    let mut resp = hyper::Response::new(
        Full::new(Bytes::from(body))
            .map_err(wasmtime_wasi_http::Error::from)
            .boxed_unsync(),
    );
    *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
    resp
}

/// What every request's WASI context is made of.
struct Template {
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
    fn new(ctx: GuestContext) -> Self {
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

    fn wasi(&self, label: &Arc<str>) -> WasiCtx {
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
    fn log(&self, label: &str, message: &str) {
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
