/work/main/native/onnx_backend/target/release/deps/triton_paretoserve_onnx.d: src/lib.rs src/served.rs src/triton.rs

/work/main/native/onnx_backend/target/release/deps/libtriton_paretoserve_onnx.so: src/lib.rs src/served.rs src/triton.rs

/work/main/native/onnx_backend/target/release/deps/libtriton_paretoserve_onnx.rlib: src/lib.rs src/served.rs src/triton.rs

src/lib.rs:
src/served.rs:
src/triton.rs:
