/work/main/native/onnx_backend/target/release/deps/cfg_if-d898e16aab9e6d82.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg-if-1.0.5/src/lib.rs

/work/main/native/onnx_backend/target/release/deps/libcfg_if-d898e16aab9e6d82.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg-if-1.0.5/src/lib.rs

/work/main/native/onnx_backend/target/release/deps/libcfg_if-d898e16aab9e6d82.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg-if-1.0.5/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg-if-1.0.5/src/lib.rs:
