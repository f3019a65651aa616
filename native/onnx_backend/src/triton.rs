//! The part of Triton's C API this backend calls (`tritonserver.h`, `tritonbackend.h`, API 1.x), declared
//! by hand, and the few safe wrappers the rest of the crate uses.
//!
//! The symbols are resolved when tritonserver loads the library (they live in `libtritonserver.so`, already
//! in the process); nothing here links against Triton at build time. Only the functions and enum values
//! below are used; their values follow the headers of triton-inference-server/core (r24.10 onwards).

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr;

/// Opaque Triton handles (only ever behind pointers Triton gives out).
macro_rules! opaque {
    ($($name:ident),+) => {$(
        #[repr(C)]
        pub struct $name {
            _private: [u8; 0],
        }
    )+};
}
opaque!(TritonError, TritonMessage, Model, ModelInstance, Request, Input, Response, Output);

/// `TRITONSERVER_DataType` values this backend reads or writes.
pub const TYPE_FP32: u32 = 11;
pub const TYPE_INT64: u32 = 9;
/// `TRITONSERVER_MemoryType`.
pub const MEMORY_CPU: u32 = 0;
pub const MEMORY_CPU_PINNED: u32 = 1;
/// `TRITONSERVER_Error_Code`.
pub const ERROR_INTERNAL: u32 = 1;
pub const ERROR_INVALID_ARG: u32 = 3;
pub const ERROR_UNSUPPORTED: u32 = 5;
/// `TRITONSERVER_RESPONSE_COMPLETE_FINAL`, `TRITONSERVER_REQUEST_RELEASE_ALL`.
pub const RESPONSE_COMPLETE_FINAL: u32 = 1;
pub const REQUEST_RELEASE_ALL: u32 = 1;
/// The backend API this crate is written against (major must match, minor is the least it needs).
pub const BACKEND_API_MAJOR: u32 = 1;
pub const BACKEND_API_MINOR: u32 = 10;

extern "C" {
    fn TRITONSERVER_ErrorNew(code: u32, msg: *const c_char) -> *mut TritonError;
    fn TRITONSERVER_ErrorDelete(error: *mut TritonError);
    fn TRITONSERVER_ErrorMessage(error: *mut TritonError) -> *const c_char;
    fn TRITONSERVER_MessageSerializeToJson(
        message: *mut TritonMessage,
        base: *mut *const c_char,
        byte_size: *mut usize,
    ) -> *mut TritonError;
    fn TRITONSERVER_MessageDelete(message: *mut TritonMessage) -> *mut TritonError;

    pub fn TRITONBACKEND_ApiVersion(major: *mut u32, minor: *mut u32) -> *mut TritonError;
    fn TRITONBACKEND_ModelConfig(
        model: *mut Model,
        config_version: u32,
        config: *mut *mut TritonMessage,
    ) -> *mut TritonError;
    fn TRITONBACKEND_ModelRepository(
        model: *mut Model,
        artifact_type: *mut u32,
        location: *mut *const c_char,
    ) -> *mut TritonError;
    fn TRITONBACKEND_ModelVersion(model: *mut Model, version: *mut u64) -> *mut TritonError;
    fn TRITONBACKEND_ModelSetState(model: *mut Model, state: *mut c_void) -> *mut TritonError;
    fn TRITONBACKEND_ModelState(model: *mut Model, state: *mut *mut c_void) -> *mut TritonError;
    fn TRITONBACKEND_ModelInstanceModel(instance: *mut ModelInstance, model: *mut *mut Model) -> *mut TritonError;
    fn TRITONBACKEND_ModelInstanceSetState(instance: *mut ModelInstance, state: *mut c_void) -> *mut TritonError;
    fn TRITONBACKEND_ModelInstanceState(instance: *mut ModelInstance, state: *mut *mut c_void) -> *mut TritonError;
    fn TRITONBACKEND_RequestInput(
        request: *mut Request,
        name: *const c_char,
        input: *mut *mut Input,
    ) -> *mut TritonError;
    fn TRITONBACKEND_InputProperties(
        input: *mut Input,
        name: *mut *const c_char,
        datatype: *mut u32,
        shape: *mut *const i64,
        dims_count: *mut u32,
        byte_size: *mut u64,
        buffer_count: *mut u32,
    ) -> *mut TritonError;
    fn TRITONBACKEND_InputBuffer(
        input: *mut Input,
        index: u32,
        buffer: *mut *const c_void,
        buffer_byte_size: *mut u64,
        memory_type: *mut u32,
        memory_type_id: *mut i64,
    ) -> *mut TritonError;
    fn TRITONBACKEND_RequestOutputCount(request: *mut Request, count: *mut u32) -> *mut TritonError;
    fn TRITONBACKEND_RequestOutputName(request: *mut Request, index: u32, name: *mut *const c_char)
        -> *mut TritonError;
    fn TRITONBACKEND_ResponseNew(response: *mut *mut Response, request: *mut Request) -> *mut TritonError;
    fn TRITONBACKEND_ResponseOutput(
        response: *mut Response,
        output: *mut *mut Output,
        name: *const c_char,
        datatype: u32,
        shape: *const i64,
        dims_count: u32,
    ) -> *mut TritonError;
    fn TRITONBACKEND_OutputBuffer(
        output: *mut Output,
        buffer: *mut *mut c_void,
        buffer_byte_size: u64,
        memory_type: *mut u32,
        memory_type_id: *mut i64,
    ) -> *mut TritonError;
    fn TRITONBACKEND_ResponseSend(
        response: *mut Response,
        send_flags: u32,
        error: *mut TritonError,
    ) -> *mut TritonError;
    fn TRITONBACKEND_ResponseDelete(response: *mut Response) -> *mut TritonError;
    fn TRITONBACKEND_RequestRelease(request: *mut Request, release_flags: u32) -> *mut TritonError;
    fn TRITONBACKEND_ModelInstanceReportStatistics(
        instance: *mut ModelInstance,
        request: *mut Request,
        success: bool,
        exec_start_ns: u64,
        compute_start_ns: u64,
        compute_end_ns: u64,
        exec_end_ns: u64,
    ) -> *mut TritonError;
    fn TRITONBACKEND_ModelInstanceReportBatchStatistics(
        instance: *mut ModelInstance,
        batch_size: u64,
        exec_start_ns: u64,
        compute_start_ns: u64,
        compute_end_ns: u64,
        exec_end_ns: u64,
    ) -> *mut TritonError;
}

/// A Triton error as an owned Rust value: code and message (the handle is taken apart and deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u32,
    pub message: String,
}

impl Failure {
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure { code: ERROR_INVALID_ARG, message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Failure { code: ERROR_INTERNAL, message: message.into() }
    }

    /// A new `TRITONSERVER_Error*` Triton takes ownership of.
    pub fn into_raw(self) -> *mut TritonError {
        let text = CString::new(self.message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: Triton copies the message; the CString outlives the call.
        unsafe { TRITONSERVER_ErrorNew(self.code, text.as_ptr()) }
    }
}

/// `Ok` for a null error, else the error's message (and the handle deleted).
pub fn check(error: *mut TritonError, what: &str) -> Result<(), Failure> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null error returned by Triton is ours to read and delete.
    let message = unsafe { CStr::from_ptr(TRITONSERVER_ErrorMessage(error)).to_string_lossy().into_owned() };
    unsafe { TRITONSERVER_ErrorDelete(error) };
    Err(Failure::internal(format!("{what}: {message}")))
}

/// The state a backend keeps on a model or an instance, as Triton stores it (`*mut c_void`, null until set).
pub fn model_state(model: *mut Model) -> Result<*mut c_void, Failure> {
    let mut state: *mut c_void = ptr::null_mut();
    check(unsafe { TRITONBACKEND_ModelState(model, &mut state) }, "model state").map(|()| state)
}

pub fn set_model_state(model: *mut Model, state: *mut c_void) -> Result<(), Failure> {
    check(unsafe { TRITONBACKEND_ModelSetState(model, state) }, "set model state")
}

pub fn instance_state(instance: *mut ModelInstance) -> Result<*mut c_void, Failure> {
    let mut state: *mut c_void = ptr::null_mut();
    check(unsafe { TRITONBACKEND_ModelInstanceState(instance, &mut state) }, "instance state").map(|()| state)
}

pub fn set_instance_state(instance: *mut ModelInstance, state: *mut c_void) -> Result<(), Failure> {
    check(unsafe { TRITONBACKEND_ModelInstanceSetState(instance, state) }, "set instance state")
}

/// The model an instance belongs to.
pub fn instance_model(instance: *mut ModelInstance) -> Result<*mut Model, Failure> {
    let mut model: *mut Model = ptr::null_mut();
    check(unsafe { TRITONBACKEND_ModelInstanceModel(instance, &mut model) }, "instance model").map(|()| model)
}

/// Monotonic nanoseconds: the clock Triton's own statistics use (`steady_clock`).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The model's configuration (`ModelConfig` as JSON, the form Triton serializes it to).
pub fn model_config_json(model: *mut Model) -> Result<String, Failure> {
    let mut message: *mut TritonMessage = ptr::null_mut();
    check(unsafe { TRITONBACKEND_ModelConfig(model, 1, &mut message) }, "model config")?;
    let mut base: *const c_char = ptr::null();
    let mut size: usize = 0;
    let serialized =
        check(unsafe { TRITONSERVER_MessageSerializeToJson(message, &mut base, &mut size) }, "config json");
    let text = serialized.map(|()| {
        // SAFETY: Triton returns `size` bytes at `base`, valid until the message is deleted.
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(base.cast::<u8>(), size) }).into_owned()
    });
    check(unsafe { TRITONSERVER_MessageDelete(message) }, "config message")?;
    text
}

/// The model's directory (`<repository>/<model>`) and the version being loaded.
pub fn model_location(model: *mut Model) -> Result<(String, u64), Failure> {
    let mut artifact: u32 = 0;
    let mut location: *const c_char = ptr::null();
    check(unsafe { TRITONBACKEND_ModelRepository(model, &mut artifact, &mut location) }, "model repository")?;
    if artifact != 0 {
        return Err(Failure { code: ERROR_UNSUPPORTED, message: "only file-system model repositories".into() });
    }
    let mut version: u64 = 0;
    check(unsafe { TRITONBACKEND_ModelVersion(model, &mut version) }, "model version")?;
    // SAFETY: a NUL-terminated path owned by Triton for the model's lifetime.
    Ok((unsafe { CStr::from_ptr(location) }.to_string_lossy().into_owned(), version))
}

/// One request's input tensor: data type, shape, and its bytes gathered from every buffer (CPU memory only).
pub struct InputTensor {
    pub datatype: u32,
    pub shape: Vec<i64>,
    pub bytes: Vec<u8>,
}

pub fn request_input(request: *mut Request, name: &CStr) -> Result<InputTensor, Failure> {
    let mut input: *mut Input = ptr::null_mut();
    check(unsafe { TRITONBACKEND_RequestInput(request, name.as_ptr(), &mut input) }, "input")
        .map_err(|f| Failure::invalid(f.message))?;
    let (mut datatype, mut shape_ptr, mut dims, mut byte_size, mut buffers) = (0u32, ptr::null(), 0u32, 0u64, 0u32);
    let mut input_name: *const c_char = ptr::null();
    check(
        unsafe {
            TRITONBACKEND_InputProperties(
                input,
                &mut input_name,
                &mut datatype,
                &mut shape_ptr,
                &mut dims,
                &mut byte_size,
                &mut buffers,
            )
        },
        "input properties",
    )?;
    // SAFETY: `dims` int64 values at `shape_ptr`, valid while the request lives.
    let shape =
        if dims == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(shape_ptr, dims as usize) }.to_vec() };
    let mut bytes = Vec::with_capacity(byte_size as usize);
    for index in 0..buffers {
        let (mut buffer, mut size, mut memory, mut memory_id) = (ptr::null(), 0u64, MEMORY_CPU, 0i64);
        check(
            unsafe { TRITONBACKEND_InputBuffer(input, index, &mut buffer, &mut size, &mut memory, &mut memory_id) },
            "input buffer",
        )?;
        if memory != MEMORY_CPU && memory != MEMORY_CPU_PINNED {
            return Err(Failure {
                code: ERROR_UNSUPPORTED,
                message: "input in GPU memory: this backend runs on CPU".into(),
            });
        }
        if size > 0 {
            // SAFETY: `size` readable bytes at `buffer` in CPU memory.
            bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), size as usize) });
        }
    }
    Ok(InputTensor { datatype, shape, bytes })
}

/// The outputs a request asked for (Triton fills in every output when a request names none).
pub fn requested_outputs(request: *mut Request) -> Result<Vec<String>, Failure> {
    let mut count: u32 = 0;
    check(unsafe { TRITONBACKEND_RequestOutputCount(request, &mut count) }, "output count")?;
    (0..count)
        .map(|index| {
            let mut name: *const c_char = ptr::null();
            check(unsafe { TRITONBACKEND_RequestOutputName(request, index, &mut name) }, "output name")?;
            // SAFETY: a NUL-terminated name owned by the request.
            Ok(unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// One output tensor of a response: name, data type, shape and little-endian bytes.
pub struct OutputTensor<'a> {
    pub name: &'a str,
    pub datatype: u32,
    pub shape: [i64; 2],
    pub bytes: &'a [u8],
}

/// Send a request's one and final response: its outputs, or `failure`.
pub fn respond(request: *mut Request, outcome: Result<&[OutputTensor<'_>], Failure>) -> Result<(), Failure> {
    let mut response: *mut Response = ptr::null_mut();
    check(unsafe { TRITONBACKEND_ResponseNew(&mut response, request) }, "response")?;
    let error = match outcome.and_then(|outputs| outputs.iter().try_for_each(|output| add_output(response, output))) {
        Ok(()) => ptr::null_mut(),
        Err(failure) => failure.into_raw(),
    };
    let sent = unsafe { TRITONBACKEND_ResponseSend(response, RESPONSE_COMPLETE_FINAL, error) };
    if !sent.is_null() {
        // Not sent: the response is still ours (and so is the error we meant to send with it).
        unsafe { TRITONBACKEND_ResponseDelete(response) };
        if !error.is_null() {
            unsafe { TRITONSERVER_ErrorDelete(error) };
        }
    }
    check(sent, "send response")
}

fn add_output(response: *mut Response, tensor: &OutputTensor<'_>) -> Result<(), Failure> {
    let name = CString::new(tensor.name).map_err(|_| Failure::internal("output name with NUL"))?;
    let mut output: *mut Output = ptr::null_mut();
    check(
        unsafe {
            TRITONBACKEND_ResponseOutput(
                response,
                &mut output,
                name.as_ptr(),
                tensor.datatype,
                tensor.shape.as_ptr(),
                2,
            )
        },
        "response output",
    )?;
    let (mut buffer, mut memory, mut memory_id) = (ptr::null_mut(), MEMORY_CPU, 0i64);
    check(
        unsafe {
            TRITONBACKEND_OutputBuffer(output, &mut buffer, tensor.bytes.len() as u64, &mut memory, &mut memory_id)
        },
        "output buffer",
    )?;
    if memory != MEMORY_CPU && memory != MEMORY_CPU_PINNED {
        return Err(Failure::internal("Triton gave an output buffer outside CPU memory"));
    }
    if !tensor.bytes.is_empty() {
        // SAFETY: Triton allocated `bytes.len()` writable bytes at `buffer`.
        unsafe { ptr::copy_nonoverlapping(tensor.bytes.as_ptr(), buffer.cast::<u8>(), tensor.bytes.len()) };
    }
    Ok(())
}

/// Execution timestamps of one batch, in [`now_ns`] nanoseconds.
#[derive(Clone, Copy)]
pub struct Timing {
    pub exec_start: u64,
    pub compute_start: u64,
    pub compute_end: u64,
    pub exec_end: u64,
}

/// Report a request's statistics, then release it (Triton's order: statistics need a live request).
pub fn finish_request(instance: *mut ModelInstance, request: *mut Request, success: bool, timing: Timing) {
    let t = timing;
    let reported = unsafe {
        TRITONBACKEND_ModelInstanceReportStatistics(
            instance,
            request,
            success,
            t.exec_start,
            t.compute_start,
            t.compute_end,
            t.exec_end,
        )
    };
    let _ = check(reported, "report statistics");
    let _ = check(unsafe { TRITONBACKEND_RequestRelease(request, REQUEST_RELEASE_ALL) }, "release request");
}

pub fn report_batch(instance: *mut ModelInstance, rows: u64, t: Timing) {
    let reported = unsafe {
        TRITONBACKEND_ModelInstanceReportBatchStatistics(
            instance,
            rows,
            t.exec_start,
            t.compute_start,
            t.compute_end,
            t.exec_end,
        )
    };
    let _ = check(reported, "report batch statistics");
}
