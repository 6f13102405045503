//! The engine: one wasmtime `Engine` per shim process and everything needed to run a WASI
//! command or serve a wasi:http handler on it. It knows nothing of containerd: callers hand it
//! module bytes, arguments, environment, stdio files and preopened directories, and get an
//! exit status back.

pub mod cache;
mod descriptors;
mod host_memory;
mod http;
mod identity;
mod meter;
mod stop;
mod ticker;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Linker, Module, Store, UpdateDeadline};
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream, InputFile, OutputFile};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub use cache::Outcome;
pub use http::{HttpConfig, HttpConfigError, HTTP_ADDRESS, HTTP_REQUEST_TIMEOUT};
pub use identity::Identity;
pub use meter::{host_reserve, Limits, MemorySource, Meter, ProcessMemory, PROCESS_MARGIN};
use meter::{TaskClock, Turn};
pub use stop::{signal_status, Ended, Stop, StopSignal, OOM_EXIT_STATUS};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// How often the epoch advances. At each tick a running guest's CPU is accounted and it may
/// pause (quota), step aside (shares) or yield (a kill, or every tenth tick): what lets a kill
/// interrupt a spinning guest and keeps one guest from starving the others.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Exit status of a guest that trapped, the same as the `wasmtime` CLI reports (128 + SIGABRT).
pub const TRAP_EXIT_STATUS: i32 = signal_status(libc::SIGABRT);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot configure wasmtime: {0}")]
    Config(String),
    #[error("not a WebAssembly module or component (no \\0asm header)")]
    NotWasm,
    #[error("precompiled wasmtime artifacts are not accepted; ship the .wasm module instead")]
    Precompiled,
    #[error("invalid WebAssembly: {0}")]
    Compile(String),
    #[error("compile cache: {0}")]
    Cache(#[from] cache::CacheError),
    #[error("cannot open preopened directory {path}: {reason}")]
    Preopen { path: PathBuf, reason: String },
    #[error("cannot use the container's stdio FIFO: {0}")]
    Stdio(#[source] std::io::Error),
}

/// A compiled guest: a core module (a WASI preview 1 command), a component that is a WASI
/// preview 2 command, or a component that handles HTTP requests (`wasi:http/proxy`).
#[derive(Clone)]
pub enum Program {
    Module(Module),
    Component(CommandPre<ComponentState>),
    Http(ProxyPre<ComponentState>),
}

impl Program {
    pub fn kind(&self) -> &'static str {
        match self {
            Program::Module(_) => "module",
            Program::Component(_) => "component",
            Program::Http(_) => "wasi:http component",
        }
    }
}

/// A directory the guest can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// Everything a guest sees of the world besides its code.
#[derive(Debug, Default)]
pub struct GuestContext {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    pub preopens: Vec<Preopen>,
    /// The container's `RLIMIT_NOFILE` (soft); None: [`DEFAULT_OPEN_FILES`].
    pub open_files: Option<u64>,
    /// The container's user: the guest's file access is theirs. None: the host's own.
    pub identity: Option<Identity>,
}

/// The descriptor limit of a container whose spec sets none, as containerd's default spec.
pub const DEFAULT_OPEN_FILES: u64 = 1024;

/// A guest's descriptors are entries of its resource table, as are the short-lived streams
/// and pollables of its calls: the table holds the container's limit plus these. A module
/// that opens past the limit gets EMFILE (`descriptors`), a component a trap naming the full
/// table; either way the shim's own descriptors, shared by the pod, are never used up by one
/// guest.
const TABLE_SLACK: usize = 64;

/// The container's descriptor limit in resource table entries.
fn descriptor_limit(open_files: Option<u64>) -> usize {
    let files = open_files.unwrap_or(DEFAULT_OPEN_FILES);
    usize::try_from(files)
        .unwrap_or(usize::MAX)
        .min(usize::MAX - TABLE_SLACK)
}

/// A guest's resource table cap: its descriptor limit and the slack.
fn table_capacity(limit: usize) -> usize {
    limit + TABLE_SLACK
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `proc_exit(n)`, `wasi:cli/exit`, or returning from `_start` (0).
    Code(i32),
    /// The guest trapped or the host failed it; the message is already on its stderr.
    Trap(String),
    /// The guest failed after a grow was denied by its memory limit: to users this is the
    /// kernel's OOM kill (status 137, reason OOMKilled).
    OutOfMemory,
}

impl Exit {
    /// The exit status users see (see [`Ended`], which also says how a stop ended a guest).
    pub fn status(&self) -> i32 {
        match self {
            Exit::Code(c) => *c,
            Exit::Trap(_) => TRAP_EXIT_STATUS,
            Exit::OutOfMemory => OOM_EXIT_STATUS,
        }
    }
}

pub struct ModuleState {
    wasi: WasiP1Ctx,
    limiter: meter::Limiter,
    descriptors: descriptors::Descriptors,
}

pub struct ComponentState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: host_memory::Hooks,
    table: ResourceTable,
    limiter: meter::Limiter,
    charges: host_memory::Charges,
}

impl ComponentState {
    /// A component's state, its resource table capped at `table_capacity` entries and what
    /// it holds charged to `meter`'s limits.
    fn new(wasi: WasiCtx, table_capacity: usize, meter: Arc<Meter>) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(table_capacity);
        ComponentState {
            wasi,
            http: WasiHttpCtx::new(),
            hooks: host_memory::Hooks,
            table,
            limiter: meter::Limiter::new(meter),
            charges: host_memory::Charges::default(),
        }
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// The process-wide engine with its linkers and epoch ticker.
pub struct Engine {
    engine: wasmtime::Engine,
    modules: Linker<ModuleState>,
    components: wasmtime::component::Linker<ComponentState>,
    cache: Option<cache::Cache>,
    ticker: ticker::Ticker,
    /// The guests running on this engine, sharing its threads by `cpu.shares`.
    cpu: Arc<meter::CpuGroup>,
}

impl Engine {
    /// The engine with the node's compile cache (`WASMPOD_CACHE_DIR`, default
    /// `/var/lib/wasmpod/cache`).
    pub fn new() -> Result<Self, EngineError> {
        let mut e = Engine::uncached()?;
        e.cache = cache::Cache::from_env(&e.engine);
        Ok(e)
    }

    /// The engine with its compile cache in `dir`. The hosts take the node's
    /// (`Engine::new`); a cache of its own is for tests, which must not share the node's.
    #[cfg(any(test, feature = "testing"))]
    pub fn with_cache_dir(dir: &std::path::Path) -> Result<Self, EngineError> {
        let mut e = Engine::uncached()?;
        e.cache = Some(cache::Cache::open(
            dir,
            &e.engine,
            cache::DEFAULT_MAX_BYTES,
        )?);
        Ok(e)
    }

    /// The engine without a compile cache: every module is compiled.
    pub fn uncached() -> Result<Self, EngineError> {
        let engine = build_engine()?;
        let mut modules = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut modules, |s: &mut ModuleState| &mut s.wasi)
            .map_err(|e| EngineError::Config(format!("{e:?}")))?;
        descriptors::add_to_linker(&mut modules)
            .map_err(|e| EngineError::Config(format!("{e:?}")))?;
        let mut components = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut components)
            .map_err(|e| EngineError::Config(format!("{e:?}")))?;
        // Commands may make outgoing requests too, not only HTTP handlers.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut components)
            .map_err(|e| EngineError::Config(format!("{e:?}")))?;
        host_memory::add_to_linker(&mut components)
            .map_err(|e| EngineError::Config(format!("{e:?}")))?;

        let ticker = ticker::Ticker::start(engine.clone(), EPOCH_TICK)
            .map_err(|e| EngineError::Config(format!("cannot start epoch thread: {e}")))?;
        Ok(Engine {
            engine,
            modules,
            components,
            cache: None,
            ticker,
            cpu: Arc::default(),
        })
    }

    /// Compiles module or component bytes, or loads them from the compile cache. Precompiled
    /// artifacts are refused: the shim only runs code it compiled itself.
    pub fn compile(&self, bytes: &[u8]) -> Result<Program, EngineError> {
        self.compile_cached(bytes).map(|(p, _)| p)
    }

    /// `compile`, also telling whether the cache served it.
    pub fn compile_cached(&self, bytes: &[u8]) -> Result<(Program, Outcome), EngineError> {
        self.compile_observed(bytes, &|_| {})
    }

    /// Compiles module or component bytes (or finds them in the compile cache) into an
    /// artifact for [`Engine::load_precompiled`] in another process of this same binary: the
    /// isolated host compiles in its shim, where the node's cache is, and runs the guest in
    /// the container's process, which cannot reach it.
    pub fn precompile(&self, bytes: &[u8]) -> Result<(Vec<u8>, Outcome), EngineError> {
        let artifact = std::cell::RefCell::new(Vec::new());
        let (_, outcome) =
            self.compile_observed(bytes, &|a| *artifact.borrow_mut() = a.to_vec())?;
        Ok((artifact.into_inner(), outcome))
    }

    /// Loads what [`Engine::precompile`] returned.
    ///
    /// # Safety
    /// `artifact` must come from `precompile` in a process of this same binary: wasmtime
    /// checks that the artifact matches this engine's settings, not that its code is sound.
    pub unsafe fn load_precompiled(&self, artifact: &[u8]) -> Result<Program, EngineError> {
        let compiled = match wasmtime::Engine::detect_precompiled(artifact) {
            Some(wasmtime::Precompiled::Module) => {
                Module::deserialize(&self.engine, artifact).map(Compiled::Module)
            }
            Some(wasmtime::Precompiled::Component) => {
                Component::deserialize(&self.engine, artifact).map(Compiled::Component)
            }
            None => return Err(EngineError::Compile("not a wasmtime artifact".into())),
        }
        .map_err(|e| EngineError::Compile(format!("{e:#}")))?;
        self.program(compiled)
    }

    /// `compile_cached`, handing the compiled artifact (fresh or from the cache) to `observe`.
    #[tracing::instrument(level = "debug", skip_all, fields(len = bytes.len()))]
    fn compile_observed(
        &self,
        bytes: &[u8],
        observe: &dyn Fn(&[u8]),
    ) -> Result<(Program, Outcome), EngineError> {
        if wasmtime::Engine::detect_precompiled(bytes).is_some() {
            return Err(EngineError::Precompiled);
        }
        let kind = wasm_kind(bytes).ok_or(EngineError::NotWasm)?;
        let compile = || {
            let compiled = match kind {
                WasmKind::Module => Module::new(&self.engine, bytes).map(Compiled::Module),
                WasmKind::Component => Component::new(&self.engine, bytes).map(Compiled::Component),
            }
            .map_err(|e| EngineError::Compile(format!("{e:#}")))?;
            let artifact = compiled
                .serialize()
                .map_err(|e| EngineError::Compile(format!("{e:#}")))?;
            observe(&artifact);
            Ok((self.program(compiled)?, artifact))
        };
        match &self.cache {
            None => compile().map(|(p, _)| (p, Outcome::Compiled)),
            Some(cache) => cache.get(bytes, compile, |artifact| {
                // SAFETY: the artifact was written by a shim of this node into a directory only
                // root can write, and its HMAC under the node's secret key checked; wasmtime
                // itself checks it matches this engine's settings.
                let compiled = unsafe {
                    match kind {
                        WasmKind::Module => {
                            Module::deserialize(&self.engine, artifact).map(Compiled::Module)
                        }
                        WasmKind::Component => {
                            Component::deserialize(&self.engine, artifact).map(Compiled::Component)
                        }
                    }
                };
                let program = self.program(compiled.ok()?).ok()?;
                observe(artifact);
                Some(program)
            }),
        }
    }

    fn program(&self, compiled: Compiled) -> Result<Program, EngineError> {
        match compiled {
            Compiled::Module(m) => Ok(Program::Module(m)),
            Compiled::Component(c) => {
                let pre = self
                    .components
                    .instantiate_pre(&c)
                    .map_err(|e| EngineError::Compile(format!("{e:#}")))?;
                // An HTTP handler is served even if it also exports wasi:cli/run (a Rust binary
                // built with the proxy world's export!, say), as `wasmtime serve` would.
                if let Ok(proxy) = ProxyPre::new(pre.clone()) {
                    return Ok(Program::Http(proxy));
                }
                CommandPre::new(pre).map(Program::Component).map_err(|e| {
                    EngineError::Compile(format!(
                        "the component is neither a WASI command (wasi:cli/run) nor an HTTP \
                         handler (wasi:http/incoming-handler): {e:#}"
                    ))
                })
            }
        }
    }

    /// Runs a guest to completion. The returned future yields to the executor at least every
    /// tenth epoch tick, and at the next tick after `meter.interrupt()`, so a kill (interrupt,
    /// then drop the future) stops even a guest that never calls the host within one tick.
    pub async fn run(&self, program: &Program, ctx: GuestContext, meter: Arc<Meter>) -> Exit {
        let stderr = ctx.stderr.as_ref().and_then(|f| f.try_clone().ok());
        let files = descriptor_limit(ctx.open_files);
        if let Some(identity) = &ctx.identity {
            if let Err(e) = meter.set_identity(identity.clone()) {
                return fail(stderr, format!("cannot run as the container's user: {e}"));
            }
        }
        // The preopens themselves are opened with the shim's access: their paths on the node
        // (containerd's bundle directories) are not the container's to search. What the guest
        // opens inside them is checked with its own identity.
        let builder = match wasi_builder(ctx) {
            Ok(b) => b,
            Err(e) => return fail(stderr, e.to_string()),
        };
        let clock = Arc::new(TaskClock::default());
        let call = self.call(program, builder, files, meter.clone(), clock.clone());
        let result = meter::Metered::new(meter.clone(), clock, self.group(), call).await;
        let exit = match result {
            Ok(code) => Exit::Code(code),
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => Exit::Code(exit.0),
                None if meter.out_of_memory() => {
                    fail(stderr, format!("out of memory: {e:?}"));
                    Exit::OutOfMemory
                }
                None => fail(stderr, format!("wasm trap: {e:?}")),
            },
        };
        // A guest that reports an allocation failure and exits non-zero was OOM-killed too,
        // as far as its users can tell.
        match exit {
            Exit::Code(c) if c != 0 && meter.out_of_memory() => Exit::OutOfMemory,
            other => other,
        }
    }

    async fn call(
        &self,
        program: &Program,
        mut builder: WasiCtxBuilder,
        files: usize,
        meter: Arc<Meter>,
        clock: Arc<TaskClock>,
    ) -> wasmtime::Result<i32> {
        match program {
            Program::Module(module) => {
                let mut wasi = builder.build_p1();
                wasi.ctx().table.set_max_capacity(table_capacity(files));
                let state = ModuleState {
                    wasi,
                    limiter: meter::Limiter::new(meter.clone()),
                    descriptors: descriptors::Descriptors::new(files),
                };
                let mut store = self.store(state, |s| &mut s.limiter, meter, clock);
                let instance = self.modules.instantiate_async(&mut store, module).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await?;
                Ok(0)
            }
            Program::Component(pre) => {
                let state =
                    ComponentState::new(builder.build(), table_capacity(files), meter.clone());
                let mut store = self.store(state, |s| &mut s.limiter, meter, clock);
                let command = pre.instantiate_async(&mut store).await?;
                match command.wasi_cli_run().call_run(&mut store).await? {
                    Ok(()) => Ok(0),
                    Err(()) => Ok(1),
                }
            }
            Program::Http(_) => Err(wasmtime::format_err!(
                "an HTTP handler is served (Engine::serve), not run"
            )),
        }
    }

    fn store<T: Send + 'static>(
        &self,
        state: T,
        limiter: fn(&mut T) -> &mut meter::Limiter,
        meter: Arc<Meter>,
        clock: Arc<TaskClock>,
    ) -> Store<T> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(move |s| limiter(s) as &mut dyn wasmtime::ResourceLimiter);
        store.set_epoch_deadline(1);
        // Every tick yields to the executor (so kills and other guests get their turn), and
        // sleeps first when the CPU quota is spent.
        let mut throttle = meter::Throttle::new(meter.clone(), clock, self.cpu.clone());
        let group = self.cpu.clone();
        store.epoch_deadline_callback(move |_| {
            Ok(match throttle.turn() {
                Turn::Run => UpdateDeadline::Continue(1),
                Turn::Continue => UpdateDeadline::Yield(1),
                Turn::Pause(pause) => {
                    UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause)))
                }
                Turn::StepAside => UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(group.clone().step_aside(meter.clone())),
                ),
            })
        });
        store
    }

    /// Epoch ticks so far (the ticker's own tests, and the engine's).
    #[cfg(test)]
    fn epoch_ticks(&self) -> u64 {
        self.ticker.ticks().count()
    }

    /// What a guest's future needs of the engine: its CPU group and its epoch.
    fn group(&self) -> meter::Group {
        meter::Group {
            cpu: self.cpu.clone(),
            ticks: self.ticker.ticks(),
        }
    }

    /// The wasmtime engine underneath, for tests that make what the engine itself must refuse
    /// (precompiled artifacts); hosts reach wasmtime only through this crate's API.
    #[cfg(any(test, feature = "testing"))]
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.engine
    }
}

fn build_engine() -> Result<wasmtime::Engine, EngineError> {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // The pooling allocator makes instantiation a matter of microseconds, but it reserves
    // address space up front; hosts with a tight `ulimit -v` or overcommit policy refuse that,
    // and then the on-demand allocator is the right fallback.
    let mut pooling = wasmtime::PoolingAllocationConfig::default();
    pooling
        .total_memories(1000)
        .total_tables(1000)
        .total_core_instances(1000)
        .total_component_instances(1000)
        .total_stacks(1000)
        .max_memory_size(4 << 30)
        // Resetting a slot with madvise flushes the TLB of every thread of the process (an
        // IPI per reset): an HTTP guest resets one instance per request. Zeroing the first
        // pages instead, and returning the rest in batches, keeps that off the request path.
        .linear_memory_keep_resident(64 << 10)
        .table_keep_resident(16 << 10)
        .async_stack_keep_resident(64 << 10)
        .decommit_batch_size(32);
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
    match wasmtime::Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(e) => {
            tracing::warn!("pooling allocator unavailable ({e:#}); using on-demand allocation");
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
            wasmtime::Engine::new(&config).map_err(|e| EngineError::Config(format!("{e:#}")))
        }
    }
}

fn wasi_builder(ctx: GuestContext) -> Result<WasiCtxBuilder, EngineError> {
    let mut b = WasiCtxBuilder::new();
    // File operations on the guest's thread, so they are checked with the identity it has
    // while it runs, not on a pool thread with root's (see `identity`).
    b.allow_blocking_current_thread(ctx.identity.as_ref().is_some_and(|i| !i.is_root()));
    b.args(&ctx.args);
    b.envs(&ctx.env);
    if let Some(cwd) = &ctx.cwd {
        b.initial_cwd(cwd);
    }
    if let Some(f) = ctx.stdin {
        if is_fifo(&f) {
            let rx = tokio::net::unix::pipe::Receiver::from_file(f).map_err(EngineError::Stdio)?;
            b.stdin(AsyncStdinStream::new(rx));
        } else {
            b.stdin(InputFile::new(f));
        }
    }
    if let Some(f) = ctx.stdout {
        match output(f)? {
            Output::Fifo(s) => b.stdout(s),
            Output::File(s) => b.stdout(s),
        };
    }
    if let Some(f) = ctx.stderr {
        match output(f)? {
            Output::Fifo(s) => b.stderr(s),
            Output::File(s) => b.stderr(s),
        };
    }
    for p in &ctx.preopens {
        let perms = if p.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&p.host, &p.guest, perms)
            .map_err(|e| EngineError::Preopen {
                path: p.host.clone(),
                reason: format!("{e:#}"),
            })?;
    }
    Ok(b)
}

/// Bytes of a guest's output the host holds while the reader catches up.
const OUTPUT_BUDGET: usize = 64 << 10;

/// containerd hands a guest FIFOs for its stdio. They are read and written through the
/// executor without ever blocking a thread: a guest waiting on a stdin nobody writes, or on a
/// stdout nobody drains, then waits like any other I/O, can be stopped, and leaves the threads
/// to the pod's other guests. Regular files (`file://` logs) never block for long and are
/// written directly.
fn is_fifo(f: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    f.metadata().is_ok_and(|m| m.file_type().is_fifo())
}

enum Output {
    Fifo(AsyncStdoutStream),
    File(OutputFile),
}

fn output(f: File) -> Result<Output, EngineError> {
    if is_fifo(&f) {
        let tx = tokio::net::unix::pipe::Sender::from_file(f).map_err(EngineError::Stdio)?;
        Ok(Output::Fifo(AsyncStdoutStream::new(OUTPUT_BUDGET, tx)))
    } else {
        Ok(Output::File(OutputFile::new(f)))
    }
}

/// Writes the reason a guest failed to its stderr, where `kubectl logs` shows it.
fn fail(stderr: Option<File>, message: String) -> Exit {
    use std::io::Write;
    if let Some(mut f) = stderr {
        let _ = writeln!(f, "{message}");
    }
    Exit::Trap(message)
}

enum Compiled {
    Module(Module),
    Component(Component),
}

impl Compiled {
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Compiled::Module(m) => m.serialize(),
            Compiled::Component(c) => c.serialize(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    Module,
    Component,
}

/// Tells a core module from a component by the binary header (magic, then version and layer).
pub fn wasm_kind(bytes: &[u8]) -> Option<WasmKind> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return None;
    }
    match bytes[6..8] {
        [0, 0] => Some(WasmKind::Module),
        [1, 0] => Some(WasmKind::Component),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
