//! Traces over OTLP: the shim's lifecycle calls (create, start, kill, delete, exec, a process's
//! exit) and compiles become spans, exported as OTLP/HTTP JSON when an endpoint is configured
//! and not otherwise (no endpoint: no layer, no thread, no cost).
//!
//! The settings are OpenTelemetry's variables, read from the shim's environment (containerd's)
//! or, for a node where containerd's environment is not ours to change, from
//! `/etc/wasmpod/otel.env` (`NAME=value` lines; the environment wins):
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (plus
//! `/v1/traces`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`. Only
//! `http://` endpoints (a collector on the node or in the cluster network) are supported.
//!
//! Spans are handed to one exporter thread, batched (a second, or 256 spans) and posted; when
//! the collector is down they are dropped with one warning, and at most 4096 wait, so the pod
//! never waits for tracing. The shim flushes what is left before it exits.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Where a node's OTLP settings live when containerd's environment does not carry them.
pub const SETTINGS_FILE: &str = "/etc/wasmpod/otel.env";
const BATCH: usize = 256;
const MAX_QUEUED: usize = 4096;
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how spans are sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `host:port` to connect to, the `Host` header, and the request path.
    address: String,
    host: String,
    path: String,
    headers: Vec<(String, String)>,
    resource: Vec<(String, String)>,
}

impl Config {
    /// The settings `get` gives (the environment, then the file); `Ok(None)` when tracing is
    /// not configured or is turned off.
    pub fn from(get: impl Fn(&str) -> Option<String>) -> Result<Option<Config>, String> {
        let on = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if on("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || on("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
        {
            return Ok(None);
        }
        let url = match (
            on("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            on("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => url.trim().to_string(),
            (None, Some(base)) => format!("{}/v1/traces", base.trim().trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "OTLP endpoint {url}: only http:// endpoints are supported (a collector on the \
                 node or in the cluster network)"
            ));
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() {
            return Err(format!("OTLP endpoint {url} names no host"));
        }
        let address = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let mut resource = vec![(
            "service.name".to_string(),
            on("OTEL_SERVICE_NAME").unwrap_or_else(|| "wasmpod-shim".into()),
        )];
        resource.extend(pairs(&on("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default()));
        Ok(Some(Config {
            address,
            host: host.to_string(),
            path: path.to_string(),
            headers: pairs(&on("OTEL_EXPORTER_OTLP_HEADERS").unwrap_or_default()),
            resource,
        }))
    }
}

/// `k=v,k=v` lists, as OpenTelemetry's variables write them.
fn pairs(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// The settings: the environment first, then the node's file.
pub fn settings() -> Result<Option<Config>, String> {
    let file: HashMap<String, String> = std::fs::read_to_string(SETTINGS_FILE)
        .map(|text| {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| {
                    let v = v.trim().trim_matches('"');
                    (k.trim().to_string(), v.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    Config::from(|name| std::env::var(name).ok().or_else(|| file.get(name).cloned()))
}

/// A span being recorded.
struct Open {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    start: SystemTime,
    attributes: Vec<(String, Value)>,
    error: Option<String>,
}

/// Spans waiting for the exporter thread.
#[derive(Default)]
struct Queue {
    state: Mutex<Pending>,
    wake: Condvar,
    done: Condvar,
}

#[derive(Default)]
struct Pending {
    spans: Vec<Value>,
    dropped: u64,
    /// A flush is asked for: send what there is now.
    flush: bool,
    /// The exporter is posting a batch.
    posting: bool,
}

static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();

/// The layer that turns the shim's spans into OTLP spans.
pub struct Otlp {
    queue: Arc<Queue>,
}

impl Otlp {
    /// Starts the exporter thread for `config`; `pod` are resource attributes of the pod the
    /// shim serves (its sandbox id, and its Kubernetes name, namespace and uid when known).
    pub fn start(config: Config, pod: Vec<(String, String)>) -> std::io::Result<Otlp> {
        let queue = Arc::new(Queue::default());
        let mut resource = config.resource.clone();
        resource.extend(pod);
        let exporter = Exporter {
            config,
            resource: attributes(resource.into_iter().map(|(k, v)| (k, json!(v)))),
            queue: queue.clone(),
        };
        std::thread::Builder::new()
            .name("wasmpod-otlp".into())
            .spawn(move || exporter.run())?;
        let _ = QUEUE.set(queue.clone());
        Ok(Otlp { queue })
    }
}

/// Sends what is queued and waits for it, a few seconds at most: called before the shim exits.
pub fn flush() {
    let Some(queue) = QUEUE.get() else { return };
    let deadline = Instant::now() + TIMEOUT;
    let mut state = queue.state.lock().unwrap_or_else(|e| e.into_inner());
    state.flush = true;
    queue.wake.notify_one();
    while (!state.spans.is_empty() || state.posting) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        state = match queue.done.wait_timeout(state, left) {
            Ok((s, _)) => s,
            Err(e) => e.into_inner().0,
        };
    }
}

impl<S> Layer<S> for Otlp
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span.parent().and_then(|p| {
            p.extensions()
                .get::<Open>()
                .map(|o| (o.trace_id, o.span_id))
        });
        let mut fields = Attributes::default();
        attrs.record(&mut fields);
        let (trace_id, parent) = match parent {
            Some((trace, span)) => (trace, Some(span)),
            None => (random(), None),
        };
        span.extensions_mut().insert(Open {
            trace_id,
            span_id: random(),
            parent,
            start: SystemTime::now(),
            attributes: fields.0,
            error: None,
        });
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Attributes::default();
        values.record(&mut fields);
        let mut extensions = span.extensions_mut();
        if let Some(open) = extensions.get_mut::<Open>() {
            for (k, v) in fields.0 {
                open.attributes.retain(|(key, _)| *key != k);
                open.attributes.push((k, v));
            }
        }
    }

    /// A warning or error inside a span is the span's failure (a create that failed says why).
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if *event.metadata().level() > Level::WARN {
            return;
        }
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut message = Message::default();
        event.record(&mut message);
        let mut extensions = span.extensions_mut();
        if let Some(open) = extensions.get_mut::<Open>() {
            open.error = Some(message.0);
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        let mut value = json!({
            "traceId": hex(&open.trace_id),
            "spanId": hex(&open.span_id),
            "name": span.name(),
            "kind": 1,
            "startTimeUnixNano": unix_nanos(open.start).to_string(),
            "endTimeUnixNano": unix_nanos(SystemTime::now()).to_string(),
            "attributes": attributes(open.attributes),
            "status": match &open.error {
                Some(m) => json!({"code": 2, "message": m}),
                None => json!({"code": 1}),
            },
        });
        if let Some(parent) = open.parent {
            value["parentSpanId"] = json!(hex(&parent));
        }
        let mut state = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.spans.len() >= MAX_QUEUED {
            state.dropped += 1;
            return;
        }
        state.spans.push(value);
        if state.spans.len() >= BATCH {
            self.queue.wake.notify_one();
        }
    }
}

/// A span's fields as OTLP attributes. The container's id is `container.id`, as
/// OpenTelemetry's conventions name it; the others keep the shim's names.
#[derive(Default)]
struct Attributes(Vec<(String, Value)>);

impl Attributes {
    fn add(&mut self, field: &Field, value: Value) {
        let key = match field.name() {
            "id" => "container.id",
            "exec" | "exec_id" => "wasmpod.exec.id",
            name => name,
        };
        if value.as_str().is_some_and(str::is_empty) {
            return;
        }
        self.0.push((key.to_string(), value));
    }
}

impl Visit for Attributes {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.add(field, json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.add(field, json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.add(field, json!(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.add(field, json!(format!("{value:?}")));
    }
}

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// OTLP's JSON attributes: integers are strings (they are 64-bit), as the protobuf mapping
/// writes them.
fn attributes(pairs: impl IntoIterator<Item = (String, Value)>) -> Value {
    Value::Array(
        pairs
            .into_iter()
            .map(|(key, v)| {
                let value = match v {
                    Value::Bool(b) => json!({"boolValue": b}),
                    Value::Number(n) if n.is_i64() || n.is_u64() => {
                        json!({"intValue": n.to_string()})
                    }
                    Value::Number(n) => json!({"doubleValue": n}),
                    Value::String(s) => json!({"stringValue": s}),
                    other => json!({"stringValue": other.to_string()}),
                };
                json!({"key": key, "value": value})
            })
            .collect(),
    )
}

struct Exporter {
    config: Config,
    resource: Value,
    queue: Arc<Queue>,
}

impl Exporter {
    fn run(self) {
        let mut warned = false;
        loop {
            let (spans, dropped) = {
                let mut state = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.spans.len() < BATCH && !state.flush {
                    state = match self.queue.wake.wait_timeout(state, INTERVAL) {
                        Ok((s, _)) => s,
                        Err(e) => e.into_inner().0,
                    };
                }
                state.flush = false;
                state.posting = !state.spans.is_empty();
                (
                    std::mem::take(&mut state.spans),
                    std::mem::take(&mut state.dropped),
                )
            };
            if dropped > 0 {
                tracing::warn!(dropped, "OTLP: spans dropped, the exporter fell behind");
            }
            if !spans.is_empty() {
                match self.post(spans) {
                    Ok(()) => warned = false,
                    // One warning while the collector stays away, not one per batch.
                    Err(e) if !warned => {
                        tracing::warn!("OTLP: cannot send spans to {}: {e}", self.config.address);
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
            let mut state = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
            state.posting = false;
            self.queue.done.notify_all();
        }
    }

    fn post(&self, spans: Vec<Value>) -> std::io::Result<()> {
        let body = json!({
            "resourceSpans": [{
                "resource": {"attributes": self.resource},
                "scopeSpans": [{
                    "scope": {"name": "wasmpod-shim", "version": env!("CARGO_PKG_VERSION")},
                    "spans": spans,
                }],
            }],
        })
        .to_string();
        let address = self
            .config
            .address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            self.config.path,
            self.config.host,
            body.len()
        );
        for (k, v) in &self.config.headers {
            let _ = write!(head, "{k}: {v}\r\n");
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut status = [0u8; 12];
        stream.read_exact(&mut status)?;
        let line = String::from_utf8_lossy(&status);
        match line.get(9..12) {
            Some(code) if code.starts_with('2') => Ok(()),
            _ => Err(std::io::Error::other(format!(
                "the collector answered {line}"
            ))),
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // SAFETY: getrandom writes at most `N` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        // No entropy (never on Linux past early boot): ids only need to be unique enough.
        let t = unix_nanos(SystemTime::now()).to_le_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = t[i % t.len()] ^ (i as u8);
        }
    }
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<Config>, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from(|name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_configured_is_no_exporter() {
        assert_eq!(config(&[]), Ok(None));
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")];
        assert!(config(&on).unwrap().is_some());
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(config(&[on[0], off]), Ok(None), "{off:?}");
        }
    }

    #[test]
    fn the_endpoint_and_resource_come_from_opentelemetry_s_variables() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.obs:4318/"),
            ("OTEL_SERVICE_NAME", "node-7"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.node.name=n7, deployment.environment=prod",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer x"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.address, "collector.obs:4318");
        assert_eq!(c.host, "collector.obs:4318");
        assert_eq!(c.path, "/v1/traces");
        assert_eq!(c.headers, [("authorization".into(), "Bearer x".into())]);
        let keys: Vec<&str> = c.resource.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["service.name", "k8s.node.name", "deployment.environment"]
        );
        assert_eq!(c.resource[0].1, "node-7");
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://10.0.0.5/otlp/traces",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.address.as_str(), c.path.as_str()),
            ("10.0.0.5:80", "/otlp/traces")
        );
        let e = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")]).unwrap_err();
        assert!(e.contains("only http:// endpoints"), "{e}");
    }

    #[test]
    fn integers_are_strings_in_otlp_json() {
        let a = attributes([
            ("n".to_string(), json!(5)),
            ("s".to_string(), json!("x")),
            ("b".to_string(), json!(true)),
        ]);
        assert_eq!(
            a,
            json!([
                {"key": "n", "value": {"intValue": "5"}},
                {"key": "s", "value": {"stringValue": "x"}},
                {"key": "b", "value": {"boolValue": true}},
            ])
        );
    }
}
