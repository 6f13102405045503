//! Wasm containers through plain containerd (`ctr run --runtime io.containerd.wasmtime.v1`),
//! the path without CRI: no sandbox, one shim per container.

use std::time::Duration;

use wasmpod_e2e::*;

const RUNTIME: &str = "io.containerd.wasmtime.v1";

async fn ctr_run(bed: &Bed, extra: &[&str], args: &[&str]) -> (i32, String, String) {
    let id = unique("ctr");
    let mut cmd = vec!["run", "--rm", "--runtime", RUNTIME];
    cmd.extend_from_slice(extra);
    cmd.push(WORKLOADS);
    cmd.push(&id);
    cmd.extend_from_slice(args);
    let out = bed.ctr("default", &cmd).expect("ctr");
    // containerd asks the shim to shut down after the delete; it exits right after.
    assert!(
        eventually(Duration::from_secs(5), || shim_processes(&id).is_empty()).await,
        "shim of {id} outlived ctr run --rm"
    );
    out
}

#[tokio::test]
async fn hello_prints_and_exits_zero() {
    let bed = Bed::from_env();
    let (code, stdout, stderr) = ctr_run(&bed, &[], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "hello from wasmpod\n");
}

#[tokio::test]
async fn exit_status_becomes_ctr_exit_code() {
    let bed = Bed::from_env();
    let (code, stdout, _) = ctr_run(&bed, &[], &["/exit.wasm", "42"]).await;
    assert_eq!(code, 42);
    assert_eq!(stdout, "exiting with 42\n");
}

#[tokio::test]
async fn component_runs() {
    let bed = Bed::from_env();
    let (code, stdout, stderr) = ctr_run(&bed, &[], &["/hello-p2.wasm"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "hello from wasmpod\n");
}

#[tokio::test]
async fn bind_mounts_honour_ro() {
    let bed = Bed::from_env();
    let dir = bed.scratch("ctr-mount");
    std::fs::write(dir.join("in.txt"), "mounted\n").unwrap();
    let ro = format!("type=bind,src={},dst=/data,options=rbind:ro", dir.display());
    let rw = format!("type=bind,src={},dst=/data,options=rbind:rw", dir.display());

    let (code, stdout, _) =
        ctr_run(&bed, &["--mount", &ro], &["/readfile.wasm", "/data/in.txt"]).await;
    assert_eq!((code, stdout.as_str()), (0, "mounted\n"));

    let (code, _, _) = ctr_run(
        &bed,
        &["--mount", &ro],
        &["/writefile.wasm", "/data/x", "no"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(!dir.join("x").exists());

    let (code, _, _) = ctr_run(
        &bed,
        &["--mount", &rw],
        &["/writefile.wasm", "/data/x", "yes"],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(dir.join("x")).unwrap(), "yes");
}

#[tokio::test]
async fn task_kill_stops_a_sleeping_guest() {
    let bed = Bed::from_env();
    let id = unique("ctr-kill");
    let (code, _, err) = bed
        .ctr(
            "default",
            &[
                "run",
                "-d",
                "--runtime",
                RUNTIME,
                WORKLOADS,
                &id,
                "/sleep.wasm",
                "3600",
            ],
        )
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = bed.ctr("default", &["task", "kill", &id]).unwrap();
    assert_eq!(code, 0, "{err}");
    let stopped = eventually(Duration::from_secs(5), || {
        let (_, out, _) = bed.ctr("default", &["task", "ls"]).unwrap();
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
    })
    .await;
    assert!(stopped, "task did not stop after SIGTERM");
    bed.ctr("default", &["task", "delete", &id]).unwrap();
    bed.ctr("default", &["container", "delete", &id]).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || shim_processes(&id).is_empty()).await,
        "shim outlived its only task"
    );
}

#[tokio::test]
async fn stdin_reaches_the_guest() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let bed = Bed::from_env();
    let id = unique("ctr-stdin");
    let mut child = Command::new(&bed.ctr)
        .arg("-a")
        .arg(&bed.socket)
        .args([
            "-n",
            "default",
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            WORKLOADS,
            &id,
            "/cat.wasm",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped into the guest\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "piped into the guest\nread 21 bytes\n"
    );
}
