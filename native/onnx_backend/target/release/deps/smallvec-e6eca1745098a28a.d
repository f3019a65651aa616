/work/main/native/onnx_backend/target/release/deps/smallvec-e6eca1745098a28a.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/smallvec-1.16.6/src/lib.rs

/work/main/native/onnx_backend/target/release/deps/libsmallvec-e6eca1745098a28a.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/smallvec-1.16.6/src/lib.rs

/work/main/native/onnx_backend/target/release/deps/libsmallvec-e6eca1745098a28a.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/smallvec-1.16.6/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/smallvec-1.16.6/src/lib.rs:
