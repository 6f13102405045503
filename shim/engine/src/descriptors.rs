//! A WASI p1 guest that opens past its container's `RLIMIT_NOFILE` gets `EMFILE`, as it would
//! from the kernel, and can go on (close something, report, exit cleanly).
//!
//! wasmtime-wasi keeps a guest's descriptors in its resource table and turns a full table into
//! a trap. The table's cap is the container's limit plus some slack, because reading, writing
//! and polling put short-lived streams and pollables in the same table: a guest whose files
//! took the whole table could not even print that it failed. So the calls that make a
//! descriptor (`path_open`, `sock_accept`) are wrapped: while one runs, the table is capped at
//! the limit itself, and a full table there is the guest's `EMFILE`, not a trap. The wrappers
//! call wasmtime-wasi's own implementations (the generated `wasi_snapshot_preview1` functions,
//! pinned with wasmtime) on the guest's memory, as its linker functions do.
//!
//! Components keep the trap: `wasi:filesystem`'s error codes have no "too many open files".

use wasmtime::component::ResourceTableError;
use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1, WasiSnapshotPreview1};
use wasmtime_wasi::WasiView;

use crate::ModuleState;

const P1: &str = "wasi_snapshot_preview1";
/// `errno::mfile` of WASI p1.
const EMFILE: i32 = 33;

type PathOpenArgs = (i32, i32, i32, i32, i32, i64, i64, i32, i32);
type SockAcceptArgs = (i32, i32, i32);

/// A guest's descriptor limit, in resource table entries (the container's limit); outside
/// the wrapped calls the table's cap is this and the slack (`crate::table_capacity`).
pub(crate) struct Descriptors {
    limit: usize,
}

impl Descriptors {
    pub(crate) fn new(limit: usize) -> Self {
        Descriptors { limit }
    }
}

/// Puts the wrappers in place of wasmtime-wasi's `path_open` and `sock_accept`; call after
/// `wasmtime_wasi::p1::add_to_linker_async`.
pub(crate) fn add_to_linker(linker: &mut Linker<ModuleState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        P1,
        "path_open",
        |mut caller: Caller<'_, ModuleState>,
         (fd, dirflags, path, len, oflags, base, inheriting, fdflags, out): PathOpenArgs| {
            Box::new(async move {
                let (mut bytes, state) = limited(&mut caller)?;
                let result = p1::path_open(
                    &mut state.wasi,
                    &mut bytes,
                    fd,
                    dirflags,
                    path,
                    len,
                    oflags,
                    base,
                    inheriting,
                    fdflags,
                    out,
                )
                .await;
                cap(state, Cap::Capacity);
                emfile_if_full(result)
            })
        },
    )?;
    linker.func_wrap_async(
        P1,
        "sock_accept",
        |mut caller: Caller<'_, ModuleState>, (fd, flags, out): SockAcceptArgs| {
            Box::new(async move {
                let (mut bytes, state) = limited(&mut caller)?;
                let result = p1::sock_accept(&mut state.wasi, &mut bytes, fd, flags, out);
                cap(state, Cap::Capacity);
                emfile_if_full(result)
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The guest's memory and state for a descriptor-making call, set up as wasmtime-wasi's own
/// linker functions do (memory export, hostcall fuel), with the table capped at the limit.
fn limited<'a>(
    caller: &'a mut Caller<'_, ModuleState>,
) -> wasmtime::Result<(wiggle::GuestMemory<'a>, &'a mut ModuleState)> {
    // What the guest may make the host allocate in this call.
    let fuel = caller.as_context_mut().hostcall_fuel();
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(wasmtime::format_err!("missing required memory export"));
    };
    let (bytes, state) = memory.data_and_store_mut(caller);
    state.wasi.set_hostcall_fuel(fuel);
    cap(state, Cap::Limit);
    Ok((wiggle::GuestMemory::Unshared(bytes), state))
}

enum Cap {
    Limit,
    Capacity,
}

fn cap(state: &mut ModuleState, cap: Cap) {
    let max = match cap {
        Cap::Limit => state.descriptors.limit,
        Cap::Capacity => crate::table_capacity(state.descriptors.limit),
    };
    state.wasi.ctx().table.set_max_capacity(max);
}

fn emfile_if_full(result: wiggle::error::Result<i32>) -> wasmtime::Result<i32> {
    match result {
        Err(e) if matches!(e.downcast_ref(), Some(ResourceTableError::Full)) => Ok(EMFILE),
        other => other,
    }
}
