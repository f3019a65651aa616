/work/main/native/onnx_backend/target/release/deps/triton_paretoserve_onnx-19bbf91f97a9db40.d: src/lib.rs src/served.rs src/triton.rs

/work/main/native/onnx_backend/target/release/deps/triton_paretoserve_onnx-19bbf91f97a9db40: src/lib.rs src/served.rs src/triton.rs

src/lib.rs:
src/served.rs:
src/triton.rs:
