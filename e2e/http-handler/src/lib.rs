//! The HTTP test handler: a `wasi:http/incoming-handler` with one route per behaviour the
//! shim's HTTP serving must get right.
//!
//! | route | reply |
//! |---|---|
//! | `/` | 200 `hello from a wasmpod http handler`, header `x-wasmpod: handler` |
//! | `/echo` | the request body, with the request's method in `x-method` |
//! | `/status/N` | status N |
//! | `/env/NAME` | the value of environment variable NAME |
//! | `/print` | prints a line to stdout and one to stderr, replies `printed` |
//! | `/sleep/MS` | waits MS milliseconds (a WASI timer), replies `slept MS` |
//! | `/memory/MIB` | allocates and touches MIB MiB, replies `allocated MIB MiB` |
//! | `/fetch/HOST:PORT/PATH` | GET http://HOST:PORT/PATH through wasi:http/outgoing-handler, relays status and body |
//! | `/fields/N[/KIB]` | makes and holds N header maps (`fields`) of KIB KiB each (default 1), replies `held N fields` |
//! | `/bodies/N` | makes N responses and writes into each one's body until it would block, holding them all; replies `held N bodies of B bytes` |
//! | `/trap` | traps before replying |
//! | `/spin` | spins forever |

use std::io::{Read as _, Write as _};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Handler);

struct Handler;

impl wasip2::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let parts: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
        let (status, headers, body) = match parts.as_slice() {
            [""] => (
                200,
                vec![("x-wasmpod", "handler")],
                b"hello from a wasmpod http handler\n".to_vec(),
            ),
            ["echo"] => {
                let method = match request.method() {
                    Method::Get => "GET".to_string(),
                    Method::Post => "POST".to_string(),
                    Method::Put => "PUT".to_string(),
                    other => format!("{other:?}"),
                };
                let body = read_body(&request);
                return reply(out, 200, &[("x-method", &method)], &body);
            }
            ["status", n] => (n.parse().unwrap_or(400), vec![], Vec::new()),
            ["env", name] => (
                200,
                vec![],
                std::env::var(name).unwrap_or_default().into_bytes(),
            ),
            ["print"] => {
                println!("printed to stdout by {path}");
                eprintln!("printed to stderr by {path}");
                (200, vec![], b"printed".to_vec())
            }
            ["sleep", ms] => {
                let ms: u64 = ms.parse().unwrap_or(0);
                wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                (200, vec![], format!("slept {ms}").into_bytes())
            }
            ["memory", mib] => {
                let mib: usize = mib.parse().unwrap_or(0);
                let mut v = vec![0u8; mib << 20];
                for i in (0..v.len()).step_by(4096) {
                    v[i] = 1;
                }
                let touched = v.iter().step_by(4096).filter(|b| **b == 1).count();
                (
                    200,
                    vec![],
                    format!("allocated {mib} MiB ({touched} pages)").into_bytes(),
                )
            }
            ["fetch", target] => fetch(target),
            ["fields", rest] => {
                let (n, kib) = rest.split_once('/').unwrap_or((rest, "1"));
                let n: usize = n.parse().unwrap_or(0);
                let kib: usize = kib.parse().unwrap_or(1);
                // Values of at most 8 KiB each, as a real header map would have them.
                let value = vec![b'x'; 1024];
                let held: Vec<Fields> = (0..n)
                    .map(|_| {
                        let f = Fields::new();
                        for i in 0..kib {
                            let _ = f.append(&format!("x-held-{}", i / 8), &value);
                        }
                        f
                    })
                    .collect();
                (
                    200,
                    vec![],
                    format!("held {} fields", held.len()).into_bytes(),
                )
            }
            ["bodies", n] => {
                let n: usize = n.parse().unwrap_or(0);
                let mut bytes = 0;
                let held: Vec<_> = (0..n)
                    .map(|_| {
                        let resp = OutgoingResponse::new(Fields::new());
                        let body = resp.body().expect("response body");
                        let stream = body.write().expect("body stream");
                        let chunk = vec![b'b'; 4096];
                        // Nobody drains these bodies: write while the host takes more
                        // (up to 4 MiB each).
                        let mut written = 0;
                        while written < 4 << 20 {
                            match stream.check_write() {
                                Ok(0) | Err(_) => break,
                                Ok(room) => {
                                    let len = (room as usize).min(chunk.len());
                                    if stream.write(&chunk[..len]).is_err() {
                                        break;
                                    }
                                    written += len;
                                }
                            }
                        }
                        bytes += written;
                        // Dropped in this order: a stream before its body.
                        (stream, body, resp)
                    })
                    .collect();
                (
                    200,
                    vec![],
                    format!("held {} bodies of {bytes} bytes", held.len()).into_bytes(),
                )
            }
            ["trap"] => panic!("the handler was asked to trap"),
            ["spin"] => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            _ => (404, vec![], b"no such route\n".to_vec()),
        };
        reply(out, status, &headers, &body);
    }
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut body = Vec::new();
    if let Ok(incoming) = request.consume() {
        if let Ok(mut stream) = incoming.stream() {
            let _ = stream.read_to_end(&mut body);
        }
    }
    body
}

fn reply(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let fields = Fields::new();
    for (k, v) in headers {
        let _ = fields.append(k, v.as_bytes());
    }
    let resp = OutgoingResponse::new(fields);
    let _ = resp.set_status_code(status);
    let outgoing = resp.body().expect("response body");
    ResponseOutparam::set(out, Ok(resp));
    {
        let mut stream = outgoing.write().expect("body stream");
        // The stream takes at most 4 KiB per write; write_all loops.
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

fn fetch(target: &str) -> (u16, Vec<(&'static str, &'static str)>, Vec<u8>) {
    let (authority, path) = target.split_once('/').unwrap_or((target, ""));
    let req = OutgoingRequest::new(Fields::new());
    let _ = req.set_method(&Method::Get);
    let _ = req.set_scheme(Some(&Scheme::Http));
    let _ = req.set_authority(Some(authority));
    let _ = req.set_path_with_query(Some(&format!("/{path}")));
    let response = match outgoing_handler::handle(req, None) {
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(r))) => r,
                other => return (502, vec![], format!("fetch failed: {other:?}").into_bytes()),
            }
        }
        Err(e) => return (502, vec![], format!("fetch refused: {e:?}").into_bytes()),
    };
    let status = response.status();
    let mut body = Vec::new();
    if let Ok(incoming) = response.consume() {
        if let Ok(mut stream) = incoming.stream() {
            let _ = stream.read_to_end(&mut body);
        }
    }
    (status, vec![], body)
}
