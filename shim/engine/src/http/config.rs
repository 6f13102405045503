//! How an HTTP handler serves, read from the container's environment. Every bound has a sane
//! default and a bad value is the container's StartError, never a panic.

use std::net::SocketAddr;
use std::time::Duration;

/// Where and how an HTTP guest serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub address: SocketAddr,
    /// A request still running after this long is ended and answered 500.
    pub request_timeout: Duration,
    /// A client must send a request's whole head within this long of its first byte (or of
    /// connecting), or the connection is closed: slow clients cannot hold connections open.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once; beyond it the server stops accepting (clients wait in the
    /// listen backlog) until one closes.
    pub max_connections: usize,
    /// Requests whose instances run at once; a request beyond it waits for a turn, and is
    /// answered 503 if it waited as long as the request timeout.
    pub max_requests: usize,
    /// The largest request head (request line and headers) in bytes; beyond it, 431.
    pub max_header_bytes: usize,
    /// The most header fields in a request; beyond it, 431.
    pub max_headers: usize,
}

/// The environment variable that sets where an HTTP handler listens: `HOST:PORT` or a port.
pub const HTTP_ADDRESS: &str = "WASMPOD_HTTP_ADDRESS";
/// The environment variable that bounds one HTTP request: seconds, or `500ms` / `30s`.
pub const HTTP_REQUEST_TIMEOUT: &str = "WASMPOD_HTTP_REQUEST_TIMEOUT";
pub const HTTP_HEADER_TIMEOUT: &str = "WASMPOD_HTTP_HEADER_TIMEOUT";
pub const HTTP_IDLE_TIMEOUT: &str = "WASMPOD_HTTP_IDLE_TIMEOUT";
pub const HTTP_MAX_CONNECTIONS: &str = "WASMPOD_HTTP_MAX_CONNECTIONS";
pub const HTTP_MAX_REQUESTS: &str = "WASMPOD_HTTP_MAX_REQUESTS";
pub const HTTP_MAX_HEADER_BYTES: &str = "WASMPOD_HTTP_MAX_HEADER_BYTES";
pub const HTTP_MAX_HEADERS: &str = "WASMPOD_HTTP_MAX_HEADERS";

/// The longest timeout: longer than any request should take, and far from the end of what a
/// deadline (`Instant` plus the timeout) can hold.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Counts beyond this are surely typos; the pooling allocator holds far fewer instances.
const MAX_COUNT: usize = 1 << 20;
/// hyper's smallest read buffer; a head limit below it would be a surprise nobody asked for.
const MIN_HEADER_BYTES: usize = 1024;
const MAX_HEADER_BYTES: usize = 1 << 20;

/// A setting in the container's environment that is not one an HTTP handler can serve with:
/// the container's StartError, so the text names the variable and what it should be.
#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    #[error("{HTTP_ADDRESS}={value}: not HOST:PORT (like 0.0.0.0:8080) or a port: {source}")]
    Address {
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("{name}={value}: not a positive duration of at most a day (like 30, 30s or 500ms)")]
    Duration { name: &'static str, value: String },
    #[error("{name}={value}: not a whole number from {min} to {max}")]
    Count {
        name: &'static str,
        value: String,
        min: usize,
        max: usize,
    },
}

impl HttpConfig {
    /// How an HTTP handler serves, from the container's environment (see [`Default`]).
    pub fn read(env: &[(String, String)]) -> Result<HttpConfig, HttpConfigError> {
        let mut config = HttpConfig::default();
        // The last definition wins, as in a shell.
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        };
        if let Some(v) = get(HTTP_ADDRESS) {
            config.address = match v.parse::<u16>() {
                Ok(port) => SocketAddr::from(([0, 0, 0, 0], port)),
                Err(_) => v.parse().map_err(|source| HttpConfigError::Address {
                    value: v.to_string(),
                    source,
                })?,
            };
        }
        let durations = [
            (HTTP_REQUEST_TIMEOUT, &mut config.request_timeout),
            (HTTP_HEADER_TIMEOUT, &mut config.header_timeout),
            (HTTP_IDLE_TIMEOUT, &mut config.idle_timeout),
        ];
        for (name, field) in durations {
            if let Some(v) = get(name) {
                *field = duration(v).ok_or_else(|| HttpConfigError::Duration {
                    name,
                    value: v.to_string(),
                })?;
            }
        }
        let counts = [
            (
                HTTP_MAX_CONNECTIONS,
                &mut config.max_connections,
                1,
                MAX_COUNT,
            ),
            (HTTP_MAX_REQUESTS, &mut config.max_requests, 1, MAX_COUNT),
            (
                HTTP_MAX_HEADER_BYTES,
                &mut config.max_header_bytes,
                MIN_HEADER_BYTES,
                MAX_HEADER_BYTES,
            ),
            (HTTP_MAX_HEADERS, &mut config.max_headers, 1, 10_000),
        ];
        for (name, field, min, max) in counts {
            if let Some(v) = get(name) {
                *field = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| HttpConfigError::Count {
                        name,
                        value: v.to_string(),
                        min,
                        max,
                    })?;
            }
        }
        Ok(config)
    }
}

/// Seconds (`30`, `30s`, `0.5`) or milliseconds (`500ms`), positive and at most a day.
fn duration(v: &str) -> Option<Duration> {
    let (number, scale) = match v.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (v.strip_suffix('s').unwrap_or(v), 1.0),
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .and_then(|n| Duration::try_from_secs_f64(n * scale).ok())
        .filter(|d| !d.is_zero() && *d <= MAX_TIMEOUT)
}

impl Default for HttpConfig {
    /// Like a reverse proxy's defaults: nginx waits 60 s for a head and keeps idle connections
    /// 75 s; the head timeout here is shorter because nothing but a slow attacker needs more.
    fn default() -> Self {
        HttpConfig {
            address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            request_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_connections: 1024,
            max_requests: 256,
            max_header_bytes: 64 << 10,
            max_headers: 100,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_bound_is_read_from_the_environment() {
        let c = HttpConfig::read(&env(&[
            (HTTP_ADDRESS, "9090"),
            (HTTP_REQUEST_TIMEOUT, "500ms"),
            (HTTP_HEADER_TIMEOUT, "2s"),
            (HTTP_IDLE_TIMEOUT, "3"),
            (HTTP_MAX_CONNECTIONS, "10"),
            (HTTP_MAX_REQUESTS, "4"),
            (HTTP_MAX_HEADER_BYTES, "8192"),
            (HTTP_MAX_HEADERS, "20"),
        ]))
        .unwrap();
        assert_eq!(
            c,
            HttpConfig {
                address: "0.0.0.0:9090".parse().unwrap(),
                request_timeout: Duration::from_millis(500),
                header_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(3),
                max_connections: 10,
                max_requests: 4,
                max_header_bytes: 8192,
                max_headers: 20,
            }
        );
        assert_eq!(HttpConfig::read(&[]).unwrap(), HttpConfig::default());
    }

    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        for (name, value) in [
            (HTTP_REQUEST_TIMEOUT, "1e20"),
            (HTTP_HEADER_TIMEOUT, "0"),
            (HTTP_IDLE_TIMEOUT, "-1s"),
            (HTTP_IDLE_TIMEOUT, "NaN"),
            (HTTP_MAX_CONNECTIONS, "0"),
            (HTTP_MAX_REQUESTS, "many"),
            (HTTP_MAX_HEADER_BYTES, "100"),
            (HTTP_MAX_HEADERS, "1e3"),
            (HTTP_ADDRESS, "localhost"),
        ] {
            let e = HttpConfig::read(&env(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("{name}={value}: ")), "{e}");
        }
        // The texts are StartErrors: kept to the byte as the typed errors replaced strings.
        let text = |name, value| {
            HttpConfig::read(&env(&[(name, value)]))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            text(HTTP_IDLE_TIMEOUT, "0"),
            "WASMPOD_HTTP_IDLE_TIMEOUT=0: not a positive duration of at most a day \
             (like 30, 30s or 500ms)"
        );
        assert_eq!(
            text(HTTP_MAX_HEADERS, "0"),
            "WASMPOD_HTTP_MAX_HEADERS=0: not a whole number from 1 to 10000"
        );
        assert_eq!(
            text(HTTP_ADDRESS, "localhost"),
            "WASMPOD_HTTP_ADDRESS=localhost: not HOST:PORT (like 0.0.0.0:8080) or a port: \
             invalid socket address syntax"
        );
        assert!(matches!(
            HttpConfig::read(&env(&[(HTTP_ADDRESS, "localhost")])),
            Err(HttpConfigError::Address { .. })
        ));
    }
}
