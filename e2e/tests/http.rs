//! wasi:http handlers served from Wasm pods on the pod network (the test bed's CNI bridge):
//! each pod has its own network namespace and IP, and the tests reach the handler there, as a
//! Service or a kubelet probe would.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use wasmpod_e2e::http::{get, Conn};
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
