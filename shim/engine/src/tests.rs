use super::*;
use std::io::Read;

fn engine() -> Engine {
    Engine::uncached().expect("engine")
}

fn wat(src: &str) -> Vec<u8> {
    wat::parse_str(src).expect("valid wat")
}

const EXIT_7: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 7))))"#;

const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hi from wat\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 12))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

const SPIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $l (br $l))))"#;

const TRAP: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") unreachable))"#;

fn run(e: &Engine, bytes: &[u8], ctx: GuestContext) -> Exit {
    let program = e.compile(bytes).expect("compile");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(e.run(&program, ctx, Arc::new(Meter::default())))
}

#[test]
fn proc_exit_gives_the_status() {
    assert_eq!(
        run(&engine(), &wat(EXIT_7), GuestContext::default()),
        Exit::Code(7)
    );
}

#[test]
fn stdout_goes_to_the_given_file() {
    let dir = tempdir();
    let path = dir.join("out");
    let file = File::create(&path).unwrap();
    let ctx = GuestContext {
        stdout: Some(file),
        ..Default::default()
    };
    assert_eq!(run(&engine(), &wat(HELLO), ctx), Exit::Code(0));
    let mut s = String::new();
    File::open(&path).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "hi from wat\n");
}

#[test]
fn trap_is_nonzero_and_reported_on_stderr() {
    let dir = tempdir();
    let path = dir.join("err");
    let ctx = GuestContext {
        stderr: Some(File::create(&path).unwrap()),
        ..Default::default()
    };
    let exit = run(&engine(), &wat(TRAP), ctx);
    assert_eq!(exit.status(), TRAP_EXIT_STATUS);
    let err = std::fs::read_to_string(&path).unwrap();
    assert!(err.contains("unreachable"), "{err}");
}

/// Sleeps 500 ms in `poll_oneoff` (one relative clock subscription), then exits 0.
const SLEEP: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; subscription at 0: userdata 0, tag 0 (clock), clock id 1 (monotonic) at 16,
    ;; timeout at 24 in ns, precision 0, flags 0 (relative)
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 500000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"#;

#[test]
fn an_idle_guest_costs_no_epoch_ticks() {
    let e = engine();
    let before = e.epoch_ticks();
    assert_eq!(run(&e, &wat(SLEEP), GuestContext::default()), Exit::Code(0));
    let ticks = e.epoch_ticks() - before;
    // 500 ms at a tick every 10 ms would be 50; a guest asleep in a host call needs none
    // (the few are instantiation and the tick under way when it fell asleep).
    assert!(ticks <= 5, "{ticks} ticks while the guest slept");
}

#[test]
fn spinning_guest_yields_so_it_can_be_cancelled() {
    let e = engine();
    let program = e.compile(&wat(SPIN)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let meter = Arc::new(Meter::default());
    let started = std::time::Instant::now();
    let out = rt.block_on(async {
        tokio::select! {
            _ = e.run(&program, GuestContext::default(), meter.clone()) => "finished",
            _ = tokio::time::sleep(Duration::from_millis(200)) => "cancelled",
        }
    });
    assert_eq!(out, "cancelled");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(meter.cpu_ns() > 50_000_000, "cpu {}", meter.cpu_ns());
}

#[test]
fn rejects_what_is_not_wasm() {
    let e = engine();
    assert!(matches!(
        e.compile(b"\x7fELF...."),
        Err(EngineError::NotWasm)
    ));
    let bad = b"\0asm\x01\0\0\0\x01\xff";
    assert!(matches!(e.compile(bad), Err(EngineError::Compile(_))));
}

#[test]
fn rejects_precompiled_artifacts() {
    let e = engine();
    let bytes = e.wasmtime().precompile_module(&wat(EXIT_7)).unwrap();
    assert!(matches!(e.compile(&bytes), Err(EngineError::Precompiled)));
}

#[test]
fn tells_modules_from_components() {
    assert_eq!(wasm_kind(b"\0asm\x01\0\0\0"), Some(WasmKind::Module));
    assert_eq!(wasm_kind(b"\0asm\x0d\0\x01\0"), Some(WasmKind::Component));
    assert_eq!(wasm_kind(b"\0asm"), None);
}

#[test]
fn read_only_preopen_refuses_writes() {
    // A guest that opens "f" for writing under the preopen and exits with the errno.
    const WRITE: &str = r#"(module
      (import "wasi_snapshot_preview1" "path_open"
        (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "f")
      (func (export "_start")
        (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 1)
          (i32.const 9) (i64.const 0x40) (i64.const 0) (i32.const 0) (i32.const 16)))))"#;
    let dir = tempdir();
    let e = engine();
    let ctx = |ro| GuestContext {
        preopens: vec![Preopen {
            host: dir.clone(),
            guest: "/".into(),
            read_only: ro,
        }],
        ..Default::default()
    };
    assert_eq!(
        run(&e, &wat(WRITE), ctx(false)),
        Exit::Code(0),
        "{}",
        dir.display()
    );
    assert!(dir.join("f").exists());
    std::fs::remove_file(dir.join("f")).unwrap();
    assert_ne!(run(&e, &wat(WRITE), ctx(true)), Exit::Code(0));
    assert!(!dir.join("f").exists());
}

/// Opens "f" in the preopen without end, keeping every descriptor; on the first error it
/// writes "refused after NN\n" (the files it held, two digits) and exits with the errno.
const FD_LEAK: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "f")
  (data (i32.const 32) "refused after NN\n")
  (func (export "_start") (local $n i32) (local $errno i32)
    (block $done
      (loop $again
        (local.set $errno (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 1)
          (i32.const 0) (i64.const 0x2) (i64.const 0) (i32.const 0) (i32.const 16)))
        (br_if $done (local.get $errno))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $again)))
    (i32.store8 (i32.const 46) (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $n) (i32.const 10)) (i32.const 10))))
    (i32.store8 (i32.const 47) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
    (i32.store (i32.const 64) (i32.const 32))
    (i32.store (i32.const 68) (i32.const 17))
    (drop (call $w (i32.const 1) (i32.const 64) (i32.const 1) (i32.const 72)))
    (call $exit (local.get $errno))))"#;

/// A module past its descriptor limit gets EMFILE (33) where the kernel would give it, and can
/// still write (the table's slack serves its streams), instead of trapping on a full table.
#[test]
fn a_module_past_its_descriptor_limit_gets_emfile() {
    let dir = tempdir();
    std::fs::write(dir.join("f"), b"x").unwrap();
    let out = dir.join("out");
    let ctx = GuestContext {
        preopens: vec![Preopen {
            host: dir.clone(),
            guest: "/".into(),
            read_only: true,
        }],
        stdout: Some(File::create(&out).unwrap()),
        open_files: Some(32),
        ..Default::default()
    };
    let exit = run(&engine(), &wat(FD_LEAK), ctx);
    let said = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        exit,
        Exit::Code(33),
        "EMFILE, not a trap; the guest said {said:?}"
    );
    let held: usize = said
        .trim_end()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said:?}"));
    // The limit counts stdio and the preopen too, as the kernel counts 0, 1 and 2.
    assert!(
        (24..32).contains(&held),
        "{held} files held under a limit of 32"
    );
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "wasmpod-engine-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A directory the cache accepts: created by the cache itself (0700) in a fresh parent.
fn cache_dir() -> PathBuf {
    tempdir().join("cache")
}

#[test]
fn second_compile_comes_from_the_cache() {
    let dir = cache_dir();
    let e = Engine::with_cache_dir(&dir).unwrap();
    let bytes = wat(EXIT_7);
    let (_, first) = e.compile_cached(&bytes).unwrap();
    assert_eq!(first, Outcome::Compiled);
    // A second shim process on the node: a fresh engine, same directory.
    let e2 = Engine::with_cache_dir(&dir).unwrap();
    let (program, second) = e2.compile_cached(&bytes).unwrap();
    assert_eq!(second, Outcome::Hit);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exit = rt.block_on(e2.run(
        &program,
        GuestContext::default(),
        Arc::new(Meter::default()),
    ));
    assert_eq!(exit, Exit::Code(7));
}

fn cache_entries(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect()
}

#[test]
fn corrupt_or_foreign_entries_are_recompiled_not_loaded() {
    use sha2::Digest;
    let dir = cache_dir();
    let e = Engine::with_cache_dir(&dir).unwrap();
    let bytes = wat(EXIT_7);
    e.compile_cached(&bytes).unwrap();
    let entry = cache_entries(&dir).pop().expect("one entry");

    // Flipped bits in the artifact: its authentication catches it.
    let mut data = std::fs::read(&entry).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&entry, &data).unwrap();
    assert_eq!(e.compile_cached(&bytes).unwrap().1, Outcome::Compiled);

    // An entry in the old format (a plain checksum anyone could compute) is not loaded.
    let junk = b"not a compiled module at all".to_vec();
    let mut forged = b"WASMPOD1".to_vec();
    forged.extend_from_slice(&sha2::Sha256::digest(&junk));
    forged.extend_from_slice(&junk);
    std::fs::write(&entry, &forged).unwrap();
    let (program, outcome) = e.compile_cached(&bytes).unwrap();
    assert_eq!(outcome, Outcome::Compiled);
    assert_eq!(run_program(&e, &program), Exit::Code(7));
    assert_eq!(
        e.compile_cached(&bytes).unwrap().1,
        Outcome::Hit,
        "rewritten"
    );
}

#[test]
fn concurrent_starts_compile_once() {
    let dir = cache_dir();
    let bytes = wat(HELLO);
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.clone();
                let bytes = bytes.clone();
                s.spawn(move || {
                    let e = Engine::with_cache_dir(&dir).unwrap();
                    e.compile_cached(&bytes).unwrap().1
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let compiled = outcomes.iter().filter(|o| **o == Outcome::Compiled).count();
    assert_eq!(compiled, 1, "{outcomes:?}");
}

fn run_program(e: &Engine, program: &Program) -> Exit {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(e.run(program, GuestContext::default(), Arc::new(Meter::default())))
}

#[test]
fn precompiled_artifacts_run_in_another_engine() {
    let dir = cache_dir();
    let shim = Engine::with_cache_dir(&dir).unwrap();
    let (first, outcome) = shim.precompile(&wat(EXIT_7)).unwrap();
    assert_eq!(outcome, Outcome::Compiled);
    // The second time the artifact comes from the cache, byte for byte the same.
    let (second, outcome) = shim.precompile(&wat(EXIT_7)).unwrap();
    assert_eq!(outcome, Outcome::Hit);
    assert_eq!(first, second);
    // The container's process: an engine of its own, no cache.
    let guest = engine();
    // SAFETY: made by `precompile` in this same binary.
    let program = unsafe { guest.load_precompiled(&second) }.unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exit = rt.block_on(guest.run(&program, GuestContext::default(), Arc::default()));
    assert_eq!(exit, Exit::Code(7));
    // Anything else is refused.
    let e = unsafe { guest.load_precompiled(&wat(EXIT_7)) }
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a wasmtime artifact"), "{e}");
    assert!(matches!(
        shim.precompile(b"nope"),
        Err(EngineError::NotWasm)
    ));
}

/// Writes 4 KiB to stdout without end.
const FLOOD: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 4096))
    (loop $l
      (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $l))))"#;

/// Reads stdin until it ends.
const DRAIN_STDIN: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1024))
    (loop $l
      (drop (call $r (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br_if $l (i32.load (i32.const 8))))))"#;

fn fifo(dir: &std::path::Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let path = dir.join("fifo");
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    path
}

/// Runs the guest on a runtime of one thread and stops it after a moment, as a kill does
/// (the future is dropped). If the guest's stdio blocked that thread, the stop could never
/// run: the test then fails instead of hanging.
fn stopped_on_one_thread(bytes: &[u8], ctx: GuestContext) {
    let e = engine();
    let program = e.compile(bytes).expect("compile");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = rt.block_on(async {
            tokio::select! {
                exit = e.run(&program, ctx, Arc::new(Meter::default())) => format!("{exit:?}"),
                _ = tokio::time::sleep(Duration::from_millis(300)) => "stopped".to_string(),
            }
        });
        let _ = tx.send(outcome);
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20)).as_deref(),
        Ok("stopped"),
        "the guest's stdio held the executor's only thread"
    );
}

#[test]
fn a_guest_writing_to_an_undrained_fifo_parks_no_thread() {
    let dir = tempdir();
    // Read-write, as the pod host opens containerd's stdout FIFO: a reader exists (this very
    // descriptor), and nobody reads, so the pipe fills.
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fifo(&dir))
        .unwrap();
    let ctx = GuestContext {
        stdout: Some(out),
        ..Default::default()
    };
    stopped_on_one_thread(&wat(FLOOD), ctx);
}

#[test]
fn a_guest_reading_a_silent_stdin_parks_no_thread() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempdir();
    let path = fifo(&dir);
    let stdin = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    // A writer that never writes, as containerd holds stdin open with nothing attached.
    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let ctx = GuestContext {
        stdin: Some(stdin),
        ..Default::default()
    };
    stopped_on_one_thread(&wat(DRAIN_STDIN), ctx);
    drop(writer);
}

/// Runs `bytes` to its end on a runtime of one thread (so a guest holding its poll would hold
/// the stop too), sending `signal` from another thread after 200 ms if given.
fn run_stopped(bytes: &[u8], meter: Meter, http: HttpConfig, signal: Option<i32>) -> Ended {
    let e = Arc::new(engine());
    let program = e.compile(bytes).expect("compile");
    let meter = Arc::new(meter);
    let (stop, stopped) = Stop::new(&program, meter.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let killer = signal.map(|signal| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stop.send(signal);
        })
    });
    let started = std::time::Instant::now();
    let ended = rt.block_on(e.run_to_end(&program, GuestContext::default(), meter, http, stopped));
    assert!(started.elapsed() < Duration::from_secs(5), "{ended:?}");
    if let Some(k) = killer {
        k.join().unwrap();
    }
    ended
}

#[test]
fn a_spinning_command_ends_at_once_on_sigterm_and_sigkill() {
    for (signal, status) in [
        (libc::SIGTERM, 143),
        (libc::SIGKILL, 137),
        (libc::SIGINT, 130),
    ] {
        let ended = run_stopped(
            &wat(SPIN),
            Meter::default(),
            HttpConfig::default(),
            Some(signal),
        );
        assert_eq!(
            ended,
            Ended {
                status,
                oom: false,
                signal: Some(signal)
            }
        );
    }
}

#[test]
fn a_command_that_exits_by_itself_gives_its_own_status() {
    const EXIT_3: &str = r#"(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") (call $exit (i32.const 3))))"#;
    let ended = run_stopped(&wat(EXIT_3), Meter::default(), HttpConfig::default(), None);
    assert_eq!(
        ended,
        Ended {
            status: 3,
            oom: false,
            signal: None
        }
    );
    let ended = run_stopped(&wat(TRAP), Meter::default(), HttpConfig::default(), None);
    assert_eq!(ended.status, TRAP_EXIT_STATUS);
    assert_eq!(TRAP_EXIT_STATUS, 134);
}

#[test]
fn a_denied_grow_ends_as_an_oom_kill() {
    // Grows by 160 pages (10 MiB) under a 4 MiB limit and traps when refused, as a guest
    // whose allocator aborts does.
    const GROW: &str = r#"(module
      (memory (export "memory") 1)
      (func (export "_start")
        (if (i32.eq (memory.grow (i32.const 160)) (i32.const -1)) (then unreachable))))"#;
    let meter = Meter::new(Limits {
        memory: Some(4 << 20),
        ..Default::default()
    });
    let ended = run_stopped(&wat(GROW), meter, HttpConfig::default(), None);
    assert_eq!(
        ended,
        Ended {
            status: 137,
            oom: true,
            signal: None
        }
    );
}

/// A `wasi:http` handler that never gets a request here: what matters is how it stops.
const HANDLER: &str = r#"(component
  (import "wasi:http/types@0.2.12" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))))
  (alias export $types "incoming-request" (type $request))
  (alias export $types "response-outparam" (type $out))
  (core module $m (func (export "handle") (param i32 i32)))
  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $request)) (param "response-out" (own $out))
    (canon lift (core func $i "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.12" (instance $handler)))"#;

fn local_http() -> HttpConfig {
    HttpConfig {
        address: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    }
}

#[test]
fn an_http_handler_drains_on_sigterm_and_ends_on_sigkill() {
    let program = engine().compile(&wat(HANDLER)).expect("compile");
    assert!(matches!(program, Program::Http(_)), "{}", program.kind());
    let ended = run_stopped(
        &wat(HANDLER),
        Meter::default(),
        local_http(),
        Some(libc::SIGTERM),
    );
    assert_eq!(
        ended,
        Ended {
            status: 0,
            oom: false,
            signal: Some(libc::SIGTERM)
        }
    );
    let ended = run_stopped(
        &wat(HANDLER),
        Meter::default(),
        local_http(),
        Some(libc::SIGKILL),
    );
    assert_eq!(
        ended,
        Ended {
            status: 137,
            oom: false,
            signal: Some(libc::SIGKILL)
        }
    );
}

#[test]
fn a_stop_interrupts_the_guest_unless_it_drains() {
    let e = engine();
    let command = e.compile(&wat(SPIN)).unwrap();
    let handler = e.compile(&wat(HANDLER)).unwrap();
    let meter = Arc::new(Meter::default());
    let (stop, _signal) = Stop::new(&command, meter.clone());
    stop.send(libc::SIGTERM);
    assert!(meter.is_interrupted(), "a command ends at once");
    let meter = Arc::new(Meter::default());
    let (stop, signal) = Stop::new(&handler, meter.clone());
    stop.send(libc::SIGTERM);
    assert!(
        !meter.is_interrupted(),
        "a handler keeps serving while it drains"
    );
    stop.send(libc::SIGKILL);
    assert!(meter.is_interrupted());
    // Once killed, a later SIGTERM cannot turn the kill back into a drain.
    stop.send(libc::SIGTERM);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ended = rt.block_on(Arc::new(e).run_to_end(
        &handler,
        GuestContext::default(),
        meter,
        local_http(),
        signal,
    ));
    assert_eq!(ended.signal, Some(libc::SIGKILL));
}

#[test]
fn a_stop_sent_before_the_guest_starts_ends_it_as_it_starts() {
    let e = Arc::new(engine());
    let program = e.compile(&wat(SPIN)).unwrap();
    let meter = Arc::new(Meter::default());
    let (stop, signal) = Stop::new(&program, meter.clone());
    stop.send(libc::SIGTERM);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ended = rt.block_on(e.run_to_end(
        &program,
        GuestContext::default(),
        meter,
        HttpConfig::default(),
        signal,
    ));
    assert_eq!(ended.status, 143);
}

#[test]
fn a_dropped_stop_lets_the_guest_run_to_its_own_end() {
    let e = Arc::new(engine());
    let program = e.compile(&wat(EXIT_7)).unwrap();
    let meter = Arc::new(Meter::default());
    let (stop, signal) = Stop::new(&program, meter.clone());
    drop(stop);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ended = rt.block_on(e.run_to_end(
        &program,
        GuestContext::default(),
        meter,
        HttpConfig::default(),
        signal,
    ));
    assert_eq!(
        ended,
        Ended {
            status: 7,
            oom: false,
            signal: None
        }
    );
}
