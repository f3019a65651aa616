//! `paretoserve_onnx`: a Triton backend that serves a ParetoServe variant's ONNX graph in ONNX Runtime from
//! inside the tritonserver process.
//!
//! Why it exists: with Triton's Python backend every model instance is a stub process, so each instance a
//! knob change adds (and each instance of a batching reload) starts a Python interpreter, imports numpy and
//! ONNX Runtime and opens a session: 0.15-0.5 CPU-seconds that a saturated node takes from the requests it is
//! serving (`paretoserve bench knobs`, docs/data-plane.md). Here an instance is an ONNX Runtime session made
//! on one of Triton's threads: the graph is parsed and optimised (milliseconds for these graphs), nothing
//! else starts. It also skips the stub's shared-memory round trip on every batch.
//!
//! The served contract is the Python backend's, defined in [`served`] and checked against it by the
//! integration tests (`tests/integration/test_native_backend.py`). ONNX Runtime is loaded at run time from
//! `ORT_DYLIB_PATH` (the onnxruntime wheel's `libonnxruntime.so`, set by `workers/triton/server.py` and the
//! worker image), so the build needs neither ONNX Runtime nor Triton, and both stay the versions the Python
//! side already ships.

// The `extern "C"` entry points take Triton's handles as raw pointers by Triton's contract; they are passed on, never
// dereferenced here.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod served;
mod triton;

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorRef;

use served::{Prediction, Settings};
use triton::{Failure, Model, ModelInstance, Request, TritonError};

/// ONNX Runtime's environment, made once per process at the first model load.
static ORT_ENV: OnceLock<Result<Environment, String>> = OnceLock::new();

fn ort_environment() -> Result<&'static Environment, Failure> {
    ORT_ENV
        .get_or_init(|| {
            let path = std::env::var("ORT_DYLIB_PATH").map_err(|_| {
                "ORT_DYLIB_PATH is not set: it must name the onnxruntime wheel's libonnxruntime.so".to_owned()
            })?;
            if !Path::new(&path).is_file() {
                return Err(format!("ORT_DYLIB_PATH={path}: no such file"));
            }
            let builder = ort::init_from(&path).map_err(|e| format!("cannot load ONNX Runtime from {path}: {e}"))?;
            // One environment per process, kept until the process exits.
            builder.with_name("paretoserve_onnx").build().map_err(|e| format!("ONNX Runtime: {e}"))
        })
        .as_ref()
        .map_err(|message| Failure::internal(message.clone()))
}

/// One instance: its own session (Triton never runs two batches on one instance at once).
struct Instance {
    settings: Settings,
    session: Session,
}

fn open_session(settings: &Settings) -> Result<Session, Failure> {
    let failed =
        |e: ort::Error| Failure::internal(format!("variant {:?}: {}: {e}", settings.variant, settings.graph.display()));
    if !settings.graph.is_file() {
        return Err(Failure::invalid(format!(
            "no ONNX graph at {}: export the variant first (paretoserve models export)",
            settings.graph.display()
        )));
    }
    let builder = Session::builder(ort_environment()?).map_err(failed)?;
    let builder = builder.with_intra_threads(settings.cpu_threads).map_err(|e| failed(e.into()))?;
    let mut builder = builder.with_inter_threads(1).map_err(|e| failed(e.into()))?;
    builder.commit_from_file(&settings.graph).map_err(failed)
}

/// Run `guarded` and turn an error or a panic into the `TRITONSERVER_Error*` Triton expects (null: success).
fn guarded(what: &str, body: impl FnOnce() -> Result<(), Failure>) -> *mut TritonError {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(failure)) => failure.into_raw(),
        Err(_) => Failure::internal(format!("paretoserve_onnx: {what} panicked")).into_raw(),
    }
}

#[no_mangle]
pub extern "C" fn TRITONBACKEND_Initialize(_backend: *mut c_void) -> *mut TritonError {
    guarded("initialize", || {
        let (mut major, mut minor) = (0u32, 0u32);
        triton::check(unsafe { triton::TRITONBACKEND_ApiVersion(&mut major, &mut minor) }, "backend API version")?;
        if major != triton::BACKEND_API_MAJOR || minor < triton::BACKEND_API_MINOR {
            return Err(Failure {
                code: triton::ERROR_UNSUPPORTED,
                message: format!(
                    "paretoserve_onnx needs Triton backend API {}.{}+, the server has {major}.{minor}",
                    triton::BACKEND_API_MAJOR,
                    triton::BACKEND_API_MINOR
                ),
            });
        }
        Ok(())
    })
}

/// Hand `value` to Triton as a model's or an instance's state (`set`); dropped again if Triton refuses it.
fn attach<T>(value: T, set: impl FnOnce(*mut c_void) -> Result<(), Failure>) -> Result<(), Failure> {
    let raw = Box::into_raw(Box::new(value)).cast::<c_void>();
    // SAFETY: `raw` came from Box::into_raw just above and Triton did not keep it.
    set(raw).inspect_err(|_| drop(unsafe { Box::from_raw(raw.cast::<T>()) }))
}

/// Drop a state [`attach`] handed over (null: never set, e.g. a failed initialize).
fn release<T>(state: Result<*mut c_void, Failure>) -> Result<(), Failure> {
    let raw = state?;
    if !raw.is_null() {
        // SAFETY: set by `attach` with the same `T`; Triton calls finalize once.
        drop(unsafe { Box::from_raw(raw.cast::<T>()) });
    }
    Ok(())
}

#[no_mangle]
pub extern "C" fn TRITONBACKEND_ModelInitialize(model: *mut Model) -> *mut TritonError {
    guarded("model initialize", || {
        let (dir, version) = triton::model_location(model)?;
        let config = triton::model_config_json(model)?;
        let settings = served::settings(&config, Path::new(&dir), version).map_err(Failure::invalid)?;
        ort_environment()?;
        attach(settings, |raw| triton::set_model_state(model, raw))
    })
}

#[no_mangle]
pub extern "C" fn TRITONBACKEND_ModelFinalize(model: *mut Model) -> *mut TritonError {
    guarded("model finalize", || release::<Settings>(triton::model_state(model)))
}

#[no_mangle]
pub extern "C" fn TRITONBACKEND_ModelInstanceInitialize(instance: *mut ModelInstance) -> *mut TritonError {
    guarded("instance initialize", || {
        let state = triton::model_state(triton::instance_model(instance)?)?;
        // SAFETY: set by ModelInitialize, freed only by ModelFinalize, after every instance is finalized.
        let settings = unsafe { &*state.cast::<Settings>() }.clone();
        let session = open_session(&settings)?;
        attach(Instance { settings, session }, |raw| triton::set_instance_state(instance, raw))
    })
}

#[no_mangle]
pub extern "C" fn TRITONBACKEND_ModelInstanceFinalize(instance: *mut ModelInstance) -> *mut TritonError {
    guarded("instance finalize", || release::<Instance>(triton::instance_state(instance)))
}

/// Every request gets exactly one response and is released, whatever fails: a bad request fails alone,
/// a failed run fails the batch's requests, and only a failure before any request was touched (no instance
/// state) is returned to Triton, which then fails the requests itself.
#[no_mangle]
pub extern "C" fn TRITONBACKEND_ModelInstanceExecute(
    instance: *mut ModelInstance,
    requests: *mut *mut Request,
    request_count: u32,
) -> *mut TritonError {
    let state = match triton::instance_state(instance) {
        Ok(state) if !state.is_null() => state,
        Ok(_) => return Failure::internal("paretoserve_onnx: instance has no state").into_raw(),
        Err(failure) => return failure.into_raw(),
    }; // SAFETY: Triton passes `request_count` request handles and runs one Execute per instance at a time.
    let requests = unsafe { std::slice::from_raw_parts(requests, request_count as usize) };
    let state = unsafe { &mut *state.cast::<Instance>() };
    // Not caught: after some requests are released no error returned to Triton could be handled safely, so a
    // panic here ends the process (Rust aborts on a panic leaving an `extern "C"` function).
    execute(instance, state, requests);
    std::ptr::null_mut()
}

fn execute(instance: *mut ModelInstance, state: &mut Instance, requests: &[*mut Request]) {
    let exec_start = triton::now_ns();
    // Gather each request's rows; a request whose input is wrong is answered now, alone.
    let mut accepted: Vec<(*mut Request, usize)> = Vec::with_capacity(requests.len());
    let mut batch: Vec<f32> = Vec::new();
    for &request in requests {
        let rows = triton::request_input(request, served::INPUT).and_then(|tensor| {
            served::input_rows(tensor.datatype, &tensor.shape, &tensor.bytes, &state.settings)
                .map(|values| (tensor.shape[0] as usize, values))
                .map_err(|message| Failure::invalid(format!("variant {:?}: {message}", state.settings.variant)))
        });
        match rows {
            Ok((count, values)) => {
                batch.extend_from_slice(&values);
                accepted.push((request, count));
            }
            Err(failure) => {
                let _ = triton::respond(request, Err(failure));
                let now = triton::now_ns();
                let timing = triton::Timing { exec_start, compute_start: now, compute_end: now, exec_end: now };
                triton::finish_request(instance, request, false, timing);
            }
        }
    }
    if accepted.is_empty() {
        return;
    }
    let total: usize = accepted.iter().map(|(_, rows)| rows).sum();
    let compute_start = triton::now_ns();
    let predictions = run(state, &batch, total);
    let compute_end = triton::now_ns();
    let mut start = 0usize;
    let mut ok_rows = 0u64;
    let mut results = Vec::with_capacity(accepted.len());
    for &(request, rows) in &accepted {
        let sent = match &predictions {
            Ok(by_task) => respond_rows(request, by_task, start, rows),
            Err(failure) => triton::respond(request, Err(failure.clone())).and(Err(failure.clone())),
        };
        start += rows;
        results.push((request, sent.is_ok()));
        if sent.is_ok() {
            ok_rows += rows as u64;
        }
    }
    let exec_end = triton::now_ns();
    let timing = triton::Timing { exec_start, compute_start, compute_end, exec_end };
    for (request, success) in results {
        triton::finish_request(instance, request, success, timing);
    }
    if ok_rows > 0 {
        triton::report_batch(instance, ok_rows, timing);
    }
}

/// Run the graph on `rows` rows; one prediction per task (`""` for a single-task variant).
fn run(state: &mut Instance, batch: &[f32], rows: usize) -> Result<Vec<(String, Prediction)>, Failure> {
    let settings = &state.settings;
    let failed = |e: ort::Error| Failure::internal(format!("variant {:?}: {e}", settings.variant));
    let mut shape = vec![rows as i64];
    shape.extend_from_slice(&settings.row_shape);
    let input = TensorRef::from_array_view((shape, batch)).map_err(failed)?;
    let outputs = state.session.run(ort::inputs![input]).map_err(failed)?;
    let names: Vec<String> = if settings.tasks.is_empty() { vec![String::new()] } else { settings.tasks.clone() };
    if outputs.len() != names.len() {
        return Err(Failure::internal(format!(
            "variant {:?}: the graph has {} outputs for tasks {:?}",
            settings.variant,
            outputs.len(),
            names
        )));
    }
    names
        .into_iter()
        .enumerate()
        .map(|(index, task)| {
            let (shape, logits) = outputs[index].try_extract_tensor::<f32>().map_err(failed)?;
            let classes = shape.get(1).copied().unwrap_or(0).max(0) as usize;
            if shape.len() != 2 || shape[0] as usize != rows {
                return Err(Failure::internal(format!("variant {:?}: logits of shape {shape:?}", settings.variant)));
            }
            served::predict(logits, classes).map(|p| (task, p)).map_err(Failure::internal)
        })
        .collect()
}

fn respond_rows(
    request: *mut Request,
    by_task: &[(String, Prediction)],
    start: usize,
    rows: usize,
) -> Result<(), Failure> {
    let wanted = triton::requested_outputs(request)?;
    let slices: Vec<(String, u32, [i64; 2], Vec<u8>)> = by_task
        .iter()
        .flat_map(|(task, prediction)| {
            served::request_slices(prediction, start, rows)
                .into_iter()
                .map(move |(kind, datatype, shape, bytes)| (served::output_name(kind, task), datatype, shape, bytes))
        })
        .filter(|(name, ..)| wanted.iter().any(|w| w == name))
        .collect();
    if let Some(unknown) = wanted.iter().find(|w| !slices.iter().any(|(name, ..)| name == *w)) {
        let failure = Failure::invalid(format!("unknown output {unknown:?}"));
        triton::respond(request, Err(failure.clone()))?;
        return Err(failure);
    }
    let tensors: Vec<triton::OutputTensor<'_>> = slices
        .iter()
        .map(|(name, datatype, shape, bytes)| triton::OutputTensor { name, datatype: *datatype, shape: *shape, bytes })
        .collect();
    triton::respond(request, Ok(&tensors))
}
