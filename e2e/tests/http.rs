//! wasi:http handlers served from Wasm pods on the pod network (the test bed's CNI bridge):
//! each pod has its own network namespace and IP, and the tests reach the handler there, as a
//! Service or a kubelet probe would.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use wasmpod_e2e::http::{get, raise_open_files, read_until_closed, send_raw, Conn};
use wasmpod_e2e::*;

const HELLO: &str = "hello from a wasmpod http handler\n";

/// Held by the tests that load the CPU, so the CPU measurement is not disturbed.
static CPU: Mutex<()> = Mutex::const_new(());

struct Served {
    bed: Bed,
    cri: Cri,
    pod: Pod,
    id: String,
    addr: String,
}

/// A pod on the pod network serving the test handler; waits until it answers.
async fn serve(name: &str, env: &[(&str, &str)], resources: Option<Resources>) -> Served {
    let (bed, mut cri) = connect().await;
    let pod = cri
        .run_pod_networked(&bed, name, HANDLER)
        .await
        .expect("RunPodSandbox");
    let spec = ContainerSpec {
        name: "server".into(),
        image: HTTP_HANDLER.into(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        resources,
        ..Default::default()
    };
    let id = cri.run(&pod, spec).await.expect("create+start");
    let ip = cri.pod_ip(&pod).await.expect("pod IP");
    let addr = format!("{ip}:8080");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&addr, "/status/204").await.map(|r| r.status).ok() != Some(204) {
        assert!(
            Instant::now() < deadline,
            "{addr} never answered; log: {}",
            pod.log_text("server")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Served {
        bed,
        cri,
        pod,
        id,
        addr,
    }
}

impl Served {
    async fn stop(mut self) -> k8s_cri::v1::ContainerStatus {
        self.cri.stop(&self.id, 10).await.expect("StopContainer");
        let status = self.cri.status(&self.id).await.expect("status");
        self.cri.remove_pod(&self.pod).await.expect("remove pod");
        assert!(
            eventually(Duration::from_secs(10), || shim_processes(&self.pod.id)
                .is_empty())
            .await,
            "shim left running"
        );
        let _ = &self.bed;
        status
    }
}

#[tokio::test]
async fn serves_on_the_pod_ip_with_keep_alive() {
    let s = serve("http-hello", &[], None).await;
    assert!(!s.addr.starts_with("127."), "a pod address: {}", s.addr);
    let mut conn = Conn::open(&s.addr).await.unwrap();
    for _ in 0..3 {
        let r = conn.send("GET", "/", "").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, HELLO);
        assert_eq!(r.headers.get("x-wasmpod").unwrap(), "handler");
    }
    let st = s.stop().await;
    assert_eq!(st.exit_code, 0, "a drained server exits 0: {st:?}");
}

#[tokio::test]
async fn bodies_status_codes_and_env_reach_the_handler() {
    let s = serve("http-echo", &[("GREETING", "hi from the pod spec")], None).await;
    let mut conn = Conn::open(&s.addr).await.unwrap();
    let r = conn.send("POST", "/echo", "a body to echo").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "a body to echo"));
    assert_eq!(r.headers.get("x-method").unwrap(), "POST");
    let r = conn.send("GET", "/status/418", "").await.unwrap();
    assert_eq!(r.status, 418);
    let r = conn.send("GET", "/env/GREETING", "").await.unwrap();
    assert_eq!(r.body, "hi from the pod spec");
    let r = conn.send("GET", "/nowhere", "").await.unwrap();
    assert_eq!(r.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn a_trapping_request_gets_500_and_the_server_keeps_serving() {
    let s = serve("http-trap", &[], None).await;
    let r = get(&s.addr, "/trap").await.unwrap();
    assert_eq!(r.status, 500, "{}", r.body);
    let r = get(&s.addr, "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, HELLO));
    s.pod
        .wait_log("server", "wasm trap", Duration::from_secs(10))
        .await
        .unwrap();
    let log = s.pod.log_text("server");
    assert!(
        log.contains("[GET /trap #"),
        "the trap names its request: {log}"
    );
    s.stop().await;
}

#[tokio::test]
async fn guest_output_reaches_the_log_labelled_with_its_request() {
    let s = serve("http-print", &[], None).await;
    assert_eq!(get(&s.addr, "/print").await.unwrap().status, 200);
    s.pod
        .wait_log("server", "printed to stderr", Duration::from_secs(10))
        .await
        .unwrap();
    let log = s.pod.log("server");
    assert!(
        log.iter().any(|(stream, line)| stream == "stdout"
            && line.starts_with("[GET /print #")
            && line.ends_with("] printed to stdout by /print")),
        "{log:?}"
    );
    assert!(
        log.iter().any(
            |(stream, line)| stream == "stderr" && line.contains("printed to stderr by /print")
        ),
        "{log:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_requests_are_all_answered() {
    let _cores = CPU.lock().await;
    let s = serve("http-load", &[], None).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let addr = s.addr.clone();
        tasks.spawn(async move { get(&addr, "/").await.map(|r| (r.status, r.body)) });
    }
    let mut ok = 0;
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok((200, body)) if body == HELLO => ok += 1,
            other => failures.push(format!("{:?}", other.map(|(s, _)| s))),
        }
    }
    assert_eq!(
        ok,
        1000,
        "failures: {:?}",
        &failures[..failures.len().min(5)]
    );
    s.stop().await;
}

#[tokio::test]
async fn the_memory_limit_bounds_each_request() {
    let limit = Resources {
        memory_bytes: 64 << 20,
        ..Default::default()
    };
    let s = serve("http-mem", &[], Some(limit)).await;
    let r = get(&s.addr, "/memory/16").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(&s.addr, "/memory/128").await.unwrap();
    assert_eq!(r.status, 500, "a request past the limit fails: {}", r.body);
    let r = get(&s.addr, "/").await.unwrap();
    assert_eq!(r.status, 200, "and the server lives on");
    s.stop().await;
}

/// What one request's instance can make the host hold (header maps, bodies, streams: entries
/// of its resource table) is capped at the container's descriptor limit (containerd's
/// default spec: 1024): 2,000 header maps of 1 KiB fail that request, not the server.
#[tokio::test]
async fn a_request_s_host_resources_are_capped_at_the_descriptor_limit() {
    let s = serve("http-fields", &[], None).await;
    let r = get(&s.addr, "/fields/500").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "held 500 fields"));
    let r = get(&s.addr, "/fields/2000").await.unwrap();
    assert_eq!(r.status, 500, "past the cap: {}", r.body);
    s.pod
        .wait_log("server", "resource table", Duration::from_secs(10))
        .await
        .unwrap();
    let r = get(&s.addr, "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, HELLO), "and serves on");
    s.stop().await;
}

/// What the host holds for a request's instance is charged to the container's memory limit:
/// header maps by their size, outgoing bodies by their buffer (64 KiB chunks, so a body
/// nobody drains holds at most two of them). Under 32 MiB, ten 64 KiB header maps and twenty
/// undrained bodies fit; a thousand of either is that request's out-of-memory (a 500), and the
/// server serves on. Without the charges a thousand maps would fit the descriptor limit and
/// hold 70 MiB of the shim's memory.
#[tokio::test]
async fn what_the_host_holds_for_a_request_is_charged_to_the_memory_limit() {
    let limit = Resources {
        memory_bytes: 32 << 20,
        ..Default::default()
    };
    let s = serve("http-held", &[], Some(limit)).await;
    let r = get(&s.addr, "/fields/10/64").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "held 10 fields"));
    let r = get(&s.addr, "/fields/1000/64").await.unwrap();
    assert_eq!(r.status, 500, "past the limit: {}", r.body);
    s.pod
        .wait_log(
            "server",
            "memory limit does not leave room",
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let r = get(&s.addr, "/bodies/20").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let bytes: usize = r
        .body
        .strip_prefix("held 20 bodies of ")
        .and_then(|b| b.strip_suffix(" bytes"))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reply: {}", r.body));
    assert!(
        (1..=20 * (128 << 10)).contains(&bytes),
        "an undrained body holds at most two 64 KiB chunks: {bytes} bytes in 20"
    );
    let r = get(&s.addr, "/bodies/1000").await.unwrap();
    assert_eq!(r.status, 500, "past the limit: {}", r.body);

    let r = get(&s.addr, "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, HELLO), "and serves on");
    s.stop().await;
}

/// The CPU limit holds for all the requests together, not per request.
#[tokio::test]
async fn the_cpu_limit_bounds_all_requests_together() {
    let _cores = CPU.lock().await;
    let limit = Resources {
        cpu_millis: 200,
        ..Default::default()
    };
    let mut s = serve(
        "http-cpu",
        &[("WASMPOD_HTTP_REQUEST_TIMEOUT", "5s")],
        Some(limit),
    )
    .await;
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let addr = s.addr.clone();
            tokio::spawn(async move { get(&addr, "/spin").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let used = s
        .cri
        .cpu_share(&[&s.id], Duration::from_secs(3))
        .await
        .unwrap()[0];
    eprintln!("two spinning requests under a 200m limit: {used:.3} cores");
    assert!((0.12..0.30).contains(&used), "used {used:.3} cores");
    for t in spinners {
        assert_eq!(t.await.unwrap().unwrap().status, 500);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_request_that_runs_too_long_gets_500() {
    let s = serve(
        "http-timeout",
        &[("WASMPOD_HTTP_REQUEST_TIMEOUT", "1s")],
        None,
    )
    .await;
    let t = Instant::now();
    let r = get(&s.addr, "/spin").await.unwrap();
    assert_eq!(r.status, 500);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let r = get(&s.addr, "/").await.unwrap();
    assert_eq!(r.status, 200);
    let log = s.pod.log_text("server");
    assert!(log.contains("ran longer than 1s"), "{log}");
    s.stop().await;
}

#[tokio::test]
async fn outgoing_requests_work() {
    let s = serve("http-fetch", &[], None).await;
    let r = get(&s.addr, &format!("/fetch/{}/", s.addr)).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, HELLO));
    s.stop().await;
}

/// StopContainer sends SIGTERM: the server stops accepting, the request in flight finishes,
/// and the container exits 0 long before the grace period's SIGKILL.
#[tokio::test]
async fn stop_drains_requests_in_flight() {
    let s = serve("http-drain", &[], None).await;
    let addr = s.addr.clone();
    let slow = tokio::spawn(async move { get(&addr, "/sleep/1500").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let Served {
        bed: _,
        mut cri,
        pod,
        id,
        addr,
    } = s;
    cri.stop(&id, 10).await.unwrap();
    let stopped_after = t.elapsed();
    let r = slow.await.unwrap().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slept 1500"));
    let st = cri.status(&id).await.unwrap();
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert!(
        stopped_after < Duration::from_secs(5),
        "drained without waiting for SIGKILL: {stopped_after:?}"
    );
    assert!(get(&addr, "/").await.is_err(), "no longer accepting");
    cri.remove_pod(&pod).await.unwrap();
}

/// The resident memory of the pod's shim, in KiB (0 if unknown).
fn shim_rss_kib(pod: &Pod) -> u64 {
    let Some(pid) = shim_processes(&pod.id).first().copied() else {
        return 0;
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A thousand clients that connect and send half a head (slowloris) hold no turn from a
/// normal client, and SIGTERM still drains at once: connections without a request in flight
/// are closed, not waited for.
#[tokio::test]
async fn a_slowloris_flood_neither_starves_requests_nor_holds_up_stop() {
    raise_open_files(1000).unwrap();
    let s = serve("http-slowloris", &[], None).await;
    let before = shim_rss_kib(&s.pod);
    let mut flood = Vec::new();
    for _ in 0..1000 {
        flood.push(
            send_raw(&s.addr, b"GET / HTTP/1.1\r\nHost: flood\r\nX-Slow: ")
                .await
                .unwrap(),
        );
    }
    let r = get(&s.addr, "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, HELLO));
    // A figure for the notes (the charge per connection is an estimate of this).
    eprintln!(
        "pod host RSS: {before} KiB, with 1000 half-open connections {} KiB",
        shim_rss_kib(&s.pod)
    );
    let t = Instant::now();
    let Served {
        bed: _,
        mut cri,
        pod,
        id,
        addr: _,
    } = s;
    cri.stop(&id, 30).await.unwrap();
    let stopped_after = t.elapsed();
    let st = cri.status(&id).await.unwrap();
    assert_eq!(st.exit_code, 0, "drained, not killed: {st:?}");
    assert!(
        stopped_after < Duration::from_secs(10),
        "drained without waiting for SIGKILL: {stopped_after:?}"
    );
    let open = {
        let mut open = 0;
        for c in flood.iter_mut() {
            if read_until_closed(c, Duration::from_millis(100))
                .await
                .is_none()
            {
                open += 1;
            }
        }
        open
    };
    assert_eq!(
        open, 0,
        "the flood's connections are closed once the server drained"
    );
    cri.remove_pod(&pod).await.unwrap();
}

/// A head must arrive within the head timeout of its first byte; an idle keep-alive
/// connection lives for the (longer) idle timeout, and not beyond.
#[tokio::test]
async fn slow_heads_and_idle_connections_are_closed() {
    let s = serve(
        "http-timeouts",
        &[
            ("WASMPOD_HTTP_HEADER_TIMEOUT", "1s"),
            ("WASMPOD_HTTP_IDLE_TIMEOUT", "4s"),
        ],
        None,
    )
    .await;
    let mut slow = send_raw(&s.addr, b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        use tokio::io::AsyncWriteExt;
        let mut s2 = send_raw(&s.addr, b"GET / HTTP/1.1\r\n").await.unwrap();
        // A byte every 200 ms keeps no connection alive past the head timeout.
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s2.write_all(b"X").await.is_err() {
                return true;
            }
        }
        false
    };
    assert!(trickle.await, "a trickled head is cut off");
    let answer = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(
        answer.is_some(),
        "a half head is closed after the head timeout"
    );

    let mut conn = Conn::open(&s.addr).await.unwrap();
    assert_eq!(conn.send("GET", "/", "").await.unwrap().status, 200);
    // Idle longer than the head timeout, shorter than the idle one: still open.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(conn.send("GET", "/", "").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(6000)).await;
    assert!(
        conn.send("GET", "/", "").await.is_err(),
        "an idle keep-alive connection is closed after the idle timeout"
    );
    s.stop().await;
}

/// Heads beyond the size or header count limits get 431, and the server goes on.
#[tokio::test]
async fn oversized_heads_get_431() {
    let s = serve(
        "http-431",
        &[("WASMPOD_HTTP_MAX_HEADER_BYTES", "16384")],
        None,
    )
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let many: String = std::iter::once("GET / HTTP/1.1\r\nHost: x\r\n".to_string())
        .chain((0..150).map(|i| format!("X-H{i}: {i}\r\n")))
        .chain(std::iter::once("\r\n".to_string()))
        .collect();
    for head in [big, many] {
        let mut c = send_raw(&s.addr, head.as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut c, Duration::from_secs(10))
            .await
            .expect("answered and closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }
    let r = get(&s.addr, "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, HELLO));
    s.stop().await;
}

/// Beyond the cap on running requests, a request waits for a turn; one that waited as long as
/// the request timeout gets 503 with Retry-After.
#[tokio::test]
async fn requests_beyond_the_cap_wait_their_turn_or_get_503() {
    let s = serve(
        "http-turns",
        &[
            ("WASMPOD_HTTP_MAX_REQUESTS", "1"),
            ("WASMPOD_HTTP_REQUEST_TIMEOUT", "2s"),
        ],
        None,
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let addr = s.addr.clone();
        tasks.push(tokio::spawn(
            async move { get(&addr, "/sleep/10000").await },
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        if r.status == 503 {
            assert_eq!(r.headers.get("retry-after").unwrap(), "1");
        }
        statuses.push(r.status);
    }
    // The first runs out its time (500); the second waits 1.7 s of its 2 for the turn, then
    // runs out its time; the third would have waited 3.4 s.
    assert_eq!(statuses, [500, 500, 503]);
    let log = s.pod.log_text("server");
    assert!(log.contains("WASMPOD_HTTP_MAX_REQUESTS"), "{log}");
    assert_eq!(get(&s.addr, "/").await.unwrap().status, 200);
    s.stop().await;
}

/// Beyond the cap on connections the server stops accepting: a new client waits in the
/// listen backlog until a connection closes, then is answered.
#[tokio::test]
async fn connections_beyond_the_cap_wait_for_one_to_close() {
    let s = serve("http-conns", &[("WASMPOD_HTTP_MAX_CONNECTIONS", "2")], None).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Conn::open(&s.addr).await.unwrap();
        assert_eq!(c.send("GET", "/", "").await.unwrap().status, 200);
        held.push(c);
    }
    let addr = s.addr.clone();
    let waiting = tokio::spawn(async move { get(&addr, "/").await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "not answered while two connections are open"
    );
    drop(held.pop());
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered once a connection closed")
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    let log = s.pod.log_text("server");
    assert!(log.contains("2 connections open"), "{log}");
    s.stop().await;
}

/// Open connections are charged to the container's memory limit: under an 8 MiB limit (7 MiB
/// for the guest after the host reserve, 16 KiB a connection) a flood of 600 connections is
/// cut to what fits, at once, and the server serves again once the flood is gone.
#[tokio::test]
async fn connections_are_charged_to_the_memory_limit() {
    raise_open_files(600).unwrap();
    let limit = Resources {
        memory_bytes: 8 << 20,
        ..Default::default()
    };
    let s = serve("http-conn-mem", &[], Some(limit)).await;
    let mut flood = Vec::new();
    for _ in 0..600 {
        flood.push(send_raw(&s.addr, b"GET / HTTP/1.1\r\n").await.unwrap());
    }
    // Accepted after the whole flood, so once it is refused the flood has been dealt with.
    let mut probe = send_raw(&s.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut probe, Duration::from_secs(10)).await;
    assert_eq!(
        answer.as_deref(),
        Some(&b""[..]),
        "refused while the limit is taken"
    );
    let mut closed = 0;
    for c in flood.iter_mut() {
        if read_until_closed(c, Duration::from_millis(20))
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    // 448 fit in an empty limit; the engine and the guest's instance hold some of it too, and
    // how much varies from run to run (201 closed was seen once), so the bound only says that
    // the flood was cut, and not far below what the limit allows.
    assert!((100..=350).contains(&closed), "{closed} of 600 closed");
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match get(&s.addr, "/").await {
            Ok(r) if r.status == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "not serving after the flood: {:?}",
                other.map(|r| r.status)
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}
