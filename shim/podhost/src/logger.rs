//! The shim's log, written to the `log` FIFO containerd reads from the bundle (and copies into
//! its own log), in containerd's logfmt. Every line carries the fields of the spans it happened
//! in, so a line says which container it is about (`id=…`) without each call site repeating
//! it. Records of crates that use `log` (containerd-shim, cranelift) come through the same way.
//!
//! The level is containerd's: `-debug` when containerd logs at debug, else info; the
//! environment variable `WASMPOD_LOG` (`error`, `warn`, `info`, `debug`, `trace`) overrides it.
//! wasmtime's and cranelift's chatter is kept to warnings and up: at debug they emit thousands
//! of lines per compiled module, which made a compile several times slower.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The variable that sets the shim's log level.
pub const LOG_LEVEL_VAR: &str = "WASMPOD_LOG";

/// Crates whose records are shown only from warning up.
const QUIET: &[&str] = &[
    "cranelift",
    "wasmtime",
    "regalloc",
    "wasmparser",
    "wiggle",
    "pulley",
];

/// Installs the logger for the shim daemon (not for the `start`/`delete` commands), and the
/// OTLP exporter when one is configured (`traces.rs`); `pod` are the resource attributes of
/// the pod the shim serves.
pub fn init(debug: bool, pod: Vec<(String, String)>) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open("log")?;
    let level = level(std::env::var(LOG_LEVEL_VAR).ok().as_deref(), debug);
    // The exporter's settings are read before the subscriber exists: a bad one is said in
    // the log once it does.
    let (otlp, otlp_error) = match crate::traces::settings() {
        Ok(Some(config)) => match crate::traces::Otlp::start(config, pod) {
            Ok(layer) => (Some(layer), None),
            Err(e) => (None, Some(format!("cannot start the OTLP exporter: {e}"))),
        },
        Ok(None) => (None, None),
        Err(e) => (None, Some(format!("traces are not exported: {e}"))),
    };
    let traced = Targets::new().with_target("wasmpod_shim", Level::INFO);
    tracing_subscriber::registry()
        .with(Logfmt::new(file).with_filter(filter(level)))
        .with(otlp.with_filter(traced))
        .try_init()
        .map_err(std::io::Error::other)?;
    if let Some(e) = otlp_error {
        tracing::warn!("{e}");
    }
    Ok(())
}

/// The level the environment asks for, else containerd's.
fn level(var: Option<&str>, debug: bool) -> LevelFilter {
    match var.and_then(|v| v.trim().parse().ok()) {
        Some(level) => level,
        None if debug => LevelFilter::DEBUG,
        None => LevelFilter::INFO,
    }
}

fn filter(level: LevelFilter) -> Targets {
    QUIET
        .iter()
        .fold(Targets::new().with_default(level), |t, q| {
            t.with_target(*q, level.min(LevelFilter::WARN))
        })
}

/// Writes each event as one logfmt line.
pub struct Logfmt<W> {
    out: Mutex<W>,
}

impl<W: Write> Logfmt<W> {
    pub fn new(out: W) -> Self {
        Logfmt {
            out: Mutex::new(out),
        }
    }
}

/// A span's fields, as ` key=value` pairs, kept in the span's extensions.
struct SpanFields(String);

impl<S, W> Layer<S> for Logfmt<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: Write + Send + 'static,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.pairs));
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            if let Some(f) = span.extensions_mut().get_mut::<SpanFields>() {
                f.0.push_str(&fields.pairs);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = format!(
            "time=\"{}\" level={} msg={}",
            rfc3339(SystemTime::now()),
            level_name(*event.metadata().level()),
            quote(fields.message.as_deref().unwrap_or_default())
        );
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    line.push_str(&f.0);
                }
            }
        }
        line.push_str(&fields.pairs);
        line.push('\n');
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
        }
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    pairs: String,
}

impl Fields {
    fn add(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = Some(value),
            // Where a `log` record came from; the line says what happened, not where.
            name if name.starts_with("log.") => {}
            name => {
                let _ = write!(self.pairs, " {name}={}", quote(&value));
            }
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.add(field, format!("{value:?}"));
    }
}

/// A logfmt value: bare when it is one plain word, else quoted with `"` and `\` escaped.
fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=' && c != '\\');
    if plain {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// UTC time as RFC 3339 with nanoseconds, without pulling in a date crate.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `f` logs at `level`, through the shim's layer and filter.
    fn logged(level: LevelFilter, f: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(Logfmt::new(buffer.clone()).with_filter(filter(level)));
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| l.split_once(' ').unwrap().1.to_string())
            .collect()
    }

    #[test]
    fn every_line_says_which_container_it_is_about() {
        let lines = logged(LevelFilter::INFO, || {
            let span = tracing::info_span!("kill", id = "app-1", signal = 15);
            let _in = span.enter();
            tracing::info!(status = 143, "container exited");
            tracing::warn!("cannot publish \"/tasks/exit\": broken pipe");
        });
        assert_eq!(
            lines,
            [
                "level=info msg=\"container exited\" id=app-1 signal=15 status=143",
                "level=warning msg=\"cannot publish \\\"/tasks/exit\\\": broken pipe\" \
                 id=app-1 signal=15",
            ]
        );
    }

    #[test]
    fn polled_calls_and_engine_chatter_stay_out_at_info() {
        let lines = logged(LevelFilter::INFO, || {
            let span = tracing::debug_span!("state", id = "app-1");
            let _in = span.enter();
            tracing::debug!("polled");
            tracing::debug!(target: "cranelift_codegen::machinst", "lowering");
            tracing::warn!(target: "wasmtime::runtime", "a warning stays");
        });
        assert_eq!(lines, ["level=warning msg=\"a warning stays\""]);
        let lines = logged(LevelFilter::DEBUG, || {
            tracing::debug!(target: "cranelift_codegen::machinst", "lowering");
            tracing::debug!("shown");
        });
        assert_eq!(lines, ["level=debug msg=shown"]);
    }

    #[test]
    fn the_level_comes_from_the_environment_or_containerd() {
        assert_eq!(level(None, false), LevelFilter::INFO);
        assert_eq!(level(None, true), LevelFilter::DEBUG);
        assert_eq!(level(Some("warn"), true), LevelFilter::WARN);
        assert_eq!(level(Some("trace"), false), LevelFilter::TRACE);
        assert_eq!(level(Some("nonsense"), false), LevelFilter::INFO);
    }

    #[test]
    fn formats_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_750_800, 5);
        assert_eq!(rfc3339(t), "2026-11-27T03:40:00.000000005Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
    }
}
