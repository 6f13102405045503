//! Serving `wasi:http/incoming-handler` components: a long-lived guest that answers HTTP/1.1
//! on a socket. The component is pre-instantiated once; every request gets a fresh instance
//! (from the pooling allocator) in its own store, with the container's memory limit and CPU
//! budget shared by all requests (one `Meter`), its own deadline, and stdout/stderr lines
//! labelled with the request they belong to.
//!
//! The socket faces the internet: clients are bounded in how long they may take over a head
//! and idle (`conn`), in how many connections and running requests they hold, and in the size
//! of what they send (`config`).

mod config;
mod conn;
mod output;

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

pub use config::*;
use conn::{Watch, Watched};
use output::Template;

use super::meter::{self, Limiter, Meter, TaskClock};
use super::{fail, wasi_builder, ComponentState, Engine, Exit, GuestContext};

/// What the host holds for one open connection (hyper's buffers and state, the task), charged
/// to the container's memory limit so that connections cannot grow the shim past it. A
/// typical figure: heads are bounded by `max_header_bytes` on top of it.
const CONNECTION_BYTES: u64 = 16 << 10;

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
        let table_capacity = crate::table_capacity(crate::descriptor_limit(ctx.open_files));
        let server = Arc::new(Server {
            table_capacity,
            engine: self.clone(),
            pre: pre.clone(),
            template: Template::new(ctx, meter.clone()),
            meter,
            turns: Arc::new(Semaphore::new(config.max_requests)),
            requests: AtomicU64::new(0),
            alive: alive_rx,
            config,
        });
        let (drain_tx, drain_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut full = false;
        tokio::pin!(drain);
        loop {
            let room = connections.len() < server.config.max_connections;
            tokio::select! {
                accepted = listener.accept(), if room => match accepted {
                    Ok((stream, _)) => {
                        let mut charge = Limiter::new(server.meter.clone());
                        if charge.reserve(CONNECTION_BYTES) {
                            connections.spawn(server.clone().connection(
                                stream,
                                charge,
                                drain_rx.clone(),
                            ));
                        } else {
                            tracing::debug!("connection refused: the memory limit is reached");
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors, typically: back off instead of spinning.
                        tracing::warn!("accept on {}: {e}", server.config.address);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = &mut drain => break,
            }
            // Said once per spell of being full, not once per connection.
            let was_full = full;
            full = connections.len() >= server.config.max_connections;
            if full && !was_full {
                server.template.log(
                    "wasmpod",
                    &format!(
                        "{} connections open ({HTTP_MAX_CONNECTIONS}): new ones wait",
                        server.config.max_connections
                    ),
                );
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
    config: HttpConfig,
    /// Each instance's resource table cap: the container's descriptor limit and the slack.
    table_capacity: usize,
    /// One permit per request whose instance may run now.
    turns: Arc<Semaphore>,
    requests: AtomicU64,
    /// Closed when the server's future is dropped (a kill): request tasks end with it.
    alive: watch::Receiver<()>,
}

impl Server {
    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        // Released when the connection ends.
        _charge: Limiter,
        mut drain: watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        let clock = Watch::new(self.config.header_timeout, self.config.idle_timeout);
        let server = self.clone();
        let service_clock = clock.clone();
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            let serving = service_clock.serving();
            async move { Ok::<_, Infallible>(server.handle(req).await.map(|b| until_sent(b, serving))) }
        });
        let conn = http1::Builder::new()
            .keep_alive(true)
            .max_headers(self.config.max_headers)
            .max_header_size(self.config.max_header_bytes)
            .max_buf_size(self.config.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(Watched::new(stream, clock.clone())), service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection: {e}");
                }
                return;
            }
            // Too slow a head or too long idle: closed, as a proxy would.
            _ = clock.expired() => return,
            _ = drain.wait_for(|d| *d) => {}
        }
        // Draining: a connection with no request in flight has nothing worth waiting for,
        // whatever half a head it holds.
        if !clock.idle() {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<Incoming>,
    ) -> hyper::Response<HyperOutgoingBody> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let label: Arc<str> = format!("{} {} #{n}", req.method(), req.uri().path()).into();
        // A flood beyond the cap queues; a request that waited as long as it may run is
        // answered 503 rather than left queued without end.
        let wait = self.config.request_timeout;
        let turn = match tokio::time::timeout(wait, self.turns.clone().acquire_owned()).await {
            Ok(Ok(turn)) => turn,
            _ => {
                self.template.log(
                    &label,
                    &format!(
                        "no turn within {wait:?}: {} requests running ({HTTP_MAX_REQUESTS}); \
                         answered 503",
                        self.config.max_requests
                    ),
                );
                return busy_response();
            }
        };
        match self.clone().call(req, label.clone(), turn).await {
            Ok(resp) => resp,
            Err(message) => {
                self.template.log(&label, &message);
                error_response(&label)
            }
        }
    }

    /// One request in a fresh instance, on its own task so the guest can keep writing the
    /// body after it has handed over the response head. The turn is held until the instance
    /// is gone.
    async fn call(
        self: Arc<Self>,
        req: hyper::Request<Incoming>,
        label: Arc<str>,
        turn: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<hyper::Response<HyperOutgoingBody>, String> {
        // The cap bounds what one instance can make the host hold too: its fields, bodies
        // and streams are table entries.
        let state = ComponentState::new(
            self.template.wasi(&label),
            self.table_capacity,
            self.meter.clone(),
        );
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
        let guest = meter::Metered::new(self.meter.clone(), clock, self.engine.group(), guest);
        let timeout = self.config.request_timeout;
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
            drop(turn);
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

/// The body, holding `serving` until hyper has sent it (or given up on it) and drops it.
fn until_sent(body: HyperOutgoingBody, serving: conn::Serving) -> HyperOutgoingBody {
    body.map_frame(move |frame| {
        let _ = &serving;
        frame
    })
    .boxed_unsync()
}

fn text_response(status: hyper::StatusCode, body: String) -> hyper::Response<HyperOutgoingBody> {
    let mut resp = hyper::Response::new(
        Full::new(Bytes::from(body))
            .map_err(wasmtime_wasi_http::Error::from)
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}

fn error_response(label: &str) -> hyper::Response<HyperOutgoingBody> {
    text_response(
        hyper::StatusCode::INTERNAL_SERVER_ERROR,
        format!("500 internal server error: the handler failed ({label}); see the container log\n"),
    )
}

fn busy_response() -> hyper::Response<HyperOutgoingBody> {
    let mut resp = text_response(
        hyper::StatusCode::SERVICE_UNAVAILABLE,
        "503 service unavailable: too many requests are running; retry later\n".into(),
    );
    resp.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    resp
}
