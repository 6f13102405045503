//! The shim's log, written to the `log` FIFO containerd reads from the bundle (and copies into
//! its own log), in containerd's logfmt. Unlike containerd-shim's default logger it keeps
//! wasmtime's and cranelift's debug chatter out: at debug level they emit thousands of lines
//! per compiled module, which made a compile several times slower.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Crates whose records are shown only from warning up.
const QUIET: &[&str] = &[
    "cranelift",
    "wasmtime",
    "regalloc",
    "wasmparser",
    "wiggle",
    "pulley",
];

pub struct FifoLogger {
    file: Mutex<File>,
    level: LevelFilter,
}

/// Installs the logger for the shim daemon (not for the `start`/`delete` commands).
pub fn init(debug: bool) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open("log")?;
    let level = if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    log::set_max_level(level);
    log::set_boxed_logger(Box::new(FifoLogger {
        file: Mutex::new(file),
        level,
    }))
    .map_err(std::io::Error::other)
}

fn quiet(target: &str) -> bool {
    QUIET.iter().any(|q| target.starts_with(q))
}

impl Log for FifoLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level && (m.level() <= Level::Warn || !quiet(m.target()))
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "time=\"{}\" level={} msg=\"{}\"\n",
            rfc3339(SystemTime::now()),
            record.level().as_str().to_lowercase(),
            record.args().to_string().replace('"', "\\\"")
        );
        if let Ok(mut f) = self.file.lock() {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
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
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_750_800, 5);
        assert_eq!(rfc3339(t), "2026-11-27T03:40:00.000000005Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn engine_chatter_is_quiet() {
        assert!(quiet("cranelift_codegen::machinst"));
        assert!(quiet("wasmtime::runtime"));
        assert!(!quiet("wasmpod_shim::podhost"));
    }
}
