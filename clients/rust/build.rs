//! Compiles drsn.v1 from the repository's `proto/` (the one source of truth, shared with the server) with the
//! vendored protoc: the messages and the client stub. Sample bytes as `Bytes`, as on the server.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    #[allow(unsafe_code)]
    if std::env::var_os("PROTOC").is_none() {
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    tonic_prost_build::configure()
        .build_server(false)
        .bytes(".")
        .compile_protos(&["../../proto/drsn/v1/diagnosis.proto"], &["../../proto"])?;
    println!("cargo:rerun-if-changed=../../proto/drsn");
    Ok(())
}
