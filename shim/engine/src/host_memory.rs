//! What the host allocates when a component asks for it, charged to the container's memory
//! limit. A guest's own memory is held by the store's limiter, but wasi:http keeps header maps
//! (`fields`) and outgoing bodies' buffers in the host: without this a handler under a 64 MiB
//! limit could make the shim hold a thousand 128 KiB header maps. The calls that make or
//! change these are shadowed here (wasmtime-wasi-http's own implementation does the work) so
//! each one settles its resource's charge, and the resources' destructors give it back. A
//! charge the limit refuses is the guest's out-of-memory: it traps as an `OOMKilled`.

use std::collections::HashMap;

use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime::StoreContextMut;
use wasmtime_wasi_http::p2::bindings::http::types::{self as wit, Host as _, HostFields};
use wasmtime_wasi_http::p2::body::HostOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostOutgoingRequest, HostOutgoingResponse};
use wasmtime_wasi_http::p2::{HeaderResult, HttpResult};
use wasmtime_wasi_http::{FieldMap, WasiHttpHooks, WasiHttpView as _};

use crate::ComponentState;

/// The `wasi:http/types` version wasmtime-wasi-http defines (the linker serves older 0.2
/// imports from it too). The shadows must use the same name or they would not replace the
/// originals; a test fails if they do not.
const TYPES: &str = "wasi:http/types@0.2.12";

/// An outgoing body's buffer: wasmtime-wasi-http's default (two 1 MiB chunks) is lowered so
/// the charge for a body that is never drained stays small.
pub(crate) const BODY_CHUNK: usize = 64 << 10;
/// What one outgoing body may hold: a chunk being written and one in the channel, plus the
/// stream's own state.
const BODY_BYTES: u64 = 2 * BODY_CHUNK as u64 + 1024;
/// A header map's own allocation and table entry, beyond its entries.
const FIELDS_BYTES: u64 = 256;
/// One header's entry in the map, beyond its name and value bytes.
const ENTRY_BYTES: u64 = 64;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Fields,
    Body,
}

/// The bytes charged for each live host resource of one store, by table slot.
#[derive(Default)]
pub(crate) struct Charges(HashMap<(Kind, u32), u64>);

/// The hooks the component state hands wasmtime-wasi-http: its defaults, with smaller
/// outgoing body buffers.
#[derive(Default)]
pub(crate) struct Hooks;

impl WasiHttpHooks for Hooks {
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK
    }
}

fn fields_bytes(fields: &FieldMap) -> u64 {
    let entries: u64 = fields
        .iter()
        .map(|(name, value)| ENTRY_BYTES + (name.as_str().len() + value.len()) as u64)
        .sum();
    FIELDS_BYTES + entries
}

/// Makes `(kind, rep)`'s charge `bytes`. A slot left charged by a resource the host consumed
/// (fields moved into a request) is taken over by the new resource in it.
fn settle(state: &mut ComponentState, kind: Kind, rep: u32, bytes: u64) -> wasmtime::Result<()> {
    let old = state.charges.0.get(&(kind, rep)).copied().unwrap_or(0);
    if bytes > old {
        if !state.limiter.grow_host(bytes - old) {
            return Err(wasmtime::format_err!(
                "the container's memory limit does not leave room for {bytes} bytes of \
                 wasi:http {kind:?} held by the host"
            ));
        }
    } else {
        state.limiter.release(old - bytes);
    }
    state.charges.0.insert((kind, rep), bytes);
    Ok(())
}

fn release(state: &mut ComponentState, kind: Kind, rep: u32) {
    if let Some(bytes) = state.charges.0.remove(&(kind, rep)) {
        state.limiter.release(bytes);
    }
}

fn settle_fields(state: &mut ComponentState, rep: u32) -> wasmtime::Result<()> {
    let bytes = fields_bytes(state.table.get(&Resource::<FieldMap>::new_borrow(rep))?);
    settle(state, Kind::Fields, rep, bytes)
}

type MadeBody = Result<Resource<HostOutgoingBody>, ()>;

/// A request's or response's new outgoing body, charged its buffer.
fn charge_body(state: &mut ComponentState, body: MadeBody) -> wasmtime::Result<(MadeBody,)> {
    if let Ok(b) = &body {
        settle(state, Kind::Body, b.rep(), BODY_BYTES)?;
    }
    Ok((body,))
}

/// Lowers a header error as the guest sees it (a trap stays a trap).
fn header_result<T>(
    state: &mut ComponentState,
    r: HeaderResult<T>,
) -> wasmtime::Result<Result<T, wit::HeaderError>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) => Ok(Err(state.http().convert_header_error(e)?)),
    }
}

/// A fields method that changes the map: run it, then settle the map's charge.
fn change_fields(
    mut store: StoreContextMut<'_, ComponentState>,
    fields: Resource<FieldMap>,
    change: impl FnOnce(&mut ComponentState, Resource<FieldMap>) -> HeaderResult<()>,
) -> wasmtime::Result<(Result<(), wit::HeaderError>,)> {
    let state = store.data_mut();
    let rep = fields.rep();
    let r = change(state, fields);
    let r = header_result(state, r)?;
    if r.is_ok() {
        settle_fields(state, rep)?;
    }
    Ok((r,))
}

fn new_fields(
    mut store: StoreContextMut<'_, ComponentState>,
    (): (),
) -> wasmtime::Result<(Resource<FieldMap>,)> {
    let state = store.data_mut();
    let fields = HostFields::new(&mut state.http())?;
    settle_fields(state, fields.rep())?;
    Ok((fields,))
}

/// Shadows wasmtime-wasi-http's definitions; they must be in `linker` already.
pub(crate) fn add_to_linker(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    // Defined without shadowing first: that only succeeds if there was nothing to shadow,
    // i.e. wasmtime-wasi-http now defines another version of the interface.
    linker.allow_shadowing(false);
    if linker
        .instance(TYPES)?
        .func_wrap("[constructor]fields", new_fields)
        .is_ok()
    {
        return Err(wasmtime::format_err!(
            "{TYPES} is not what wasmtime-wasi-http defines: update host_memory::TYPES"
        ));
    }
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES)?;
    types.func_wrap("[constructor]fields", new_fields)?;
    types.resource(
        "fields",
        ResourceType::host::<FieldMap>(),
        |mut store, rep| {
            let state = store.data_mut();
            HostFields::drop(&mut state.http(), Resource::new_own(rep))?;
            release(state, Kind::Fields, rep);
            Ok(())
        },
    )?;
    types.func_wrap(
        "[static]fields.from-list",
        |mut store: StoreContextMut<'_, ComponentState>, (entries,): (Vec<(String, Vec<u8>)>,)| {
            let state = store.data_mut();
            let r = HostFields::from_list(&mut state.http(), entries);
            let r = header_result(state, r)?;
            if let Ok(fields) = &r {
                settle_fields(state, fields.rep())?;
            }
            Ok((r,))
        },
    )?;
    types.func_wrap(
        "[method]fields.clone",
        |mut store: StoreContextMut<'_, ComponentState>, (fields,): (Resource<FieldMap>,)| {
            let state = store.data_mut();
            let copy = HostFields::clone(&mut state.http(), fields)?;
            settle_fields(state, copy.rep())?;
            Ok((copy,))
        },
    )?;
    types.func_wrap(
        "[method]fields.set",
        |store: StoreContextMut<'_, ComponentState>,
         (fields, name, values): (Resource<FieldMap>, String, Vec<Vec<u8>>)| {
            change_fields(store, fields, |s, f| {
                HostFields::set(&mut s.http(), f, name, values)
            })
        },
    )?;
    types.func_wrap(
        "[method]fields.append",
        |store: StoreContextMut<'_, ComponentState>,
         (fields, name, value): (Resource<FieldMap>, String, Vec<u8>)| {
            change_fields(store, fields, |s, f| {
                HostFields::append(&mut s.http(), f, name, value)
            })
        },
    )?;
    types.func_wrap(
        "[method]fields.delete",
        |store: StoreContextMut<'_, ComponentState>,
         (fields, name): (Resource<FieldMap>, String)| {
            change_fields(store, fields, |s, f| {
                HostFields::delete(&mut s.http(), f, name)
            })
        },
    )?;

    types.resource(
        "outgoing-body",
        ResourceType::host::<HostOutgoingBody>(),
        |mut store, rep| {
            let state = store.data_mut();
            wit::HostOutgoingBody::drop(&mut state.http(), Resource::new_own(rep))?;
            release(state, Kind::Body, rep);
            Ok(())
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.body",
        |mut store: StoreContextMut<'_, ComponentState>,
         (request,): (Resource<HostOutgoingRequest>,)| {
            let state = store.data_mut();
            let body = wit::HostOutgoingRequest::body(&mut state.http(), request)?;
            charge_body(state, body)
        },
    )?;
    types.func_wrap(
        "[method]outgoing-response.body",
        |mut store: StoreContextMut<'_, ComponentState>,
         (response,): (Resource<HostOutgoingResponse>,)| {
            let state = store.data_mut();
            let body = wit::HostOutgoingResponse::body(&mut state.http(), response)?;
            charge_body(state, body)
        },
    )?;
    types.func_wrap(
        "[static]outgoing-body.finish",
        |mut store: StoreContextMut<'_, ComponentState>,
         (body, trailers): (Resource<HostOutgoingBody>, Option<Resource<FieldMap>>)| {
            let state = store.data_mut();
            let rep = body.rep();
            let r: HttpResult<()> =
                wit::HostOutgoingBody::finish(&mut state.http(), body, trailers);
            release(state, Kind::Body, rep);
            let r = match r {
                Ok(()) => Ok(()),
                Err(e) => Err(state.http().convert_error_code(e)?),
            };
            Ok((r,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::{Limits, Meter};

    fn state(limit: u64) -> (ComponentState, Arc<Meter>) {
        let meter = Arc::new(Meter::new(Limits {
            memory: Some(limit),
            ..Default::default()
        }));
        let state = ComponentState::new(
            wasmtime_wasi::WasiCtxBuilder::new().build(),
            64,
            meter.clone(),
        );
        (state, meter)
    }

    #[test]
    fn a_resource_s_charge_follows_its_size_and_is_given_back() {
        let (mut s, meter) = state(8 << 20);
        settle(&mut s, Kind::Fields, 3, 1000).unwrap();
        settle(&mut s, Kind::Body, 3, 500).unwrap();
        assert_eq!(meter.memory_bytes(), 1500);
        settle(&mut s, Kind::Fields, 3, 200).unwrap();
        assert_eq!(meter.memory_bytes(), 700);
        release(&mut s, Kind::Fields, 3);
        release(&mut s, Kind::Fields, 3);
        assert_eq!(meter.memory_bytes(), 500);
        drop(s);
        assert_eq!(meter.memory_bytes(), 0);
    }

    #[test]
    fn a_charge_past_the_limit_is_the_guest_s_out_of_memory() {
        // 8 MiB less the host reserve (1 MiB) is the guest's.
        let (mut s, meter) = state(8 << 20);
        settle(&mut s, Kind::Fields, 1, 6 << 20).unwrap();
        assert!(!meter.out_of_memory());
        let e = settle(&mut s, Kind::Body, 2, 2 << 20).unwrap_err();
        assert!(format!("{e}").contains("memory limit"), "{e}");
        assert!(meter.out_of_memory());
        assert_eq!(meter.memory_bytes(), 6 << 20);
    }
}
