/work/main/native/onnx_backend/target/release/deps/triton_paretoserve_onnx-9c4805debe272022.d: src/lib.rs src/served.rs src/triton.rs Cargo.toml

/work/main/native/onnx_backend/target/release/deps/libtriton_paretoserve_onnx-9c4805debe272022.rmeta: src/lib.rs src/served.rs src/triton.rs Cargo.toml

src/lib.rs:
src/served.rs:
src/triton.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# env-dep:CLIPPY_CONF_DIR
