//! Compiles the APIs (proto/drsn/v1, and the Open Inference Protocol in proto/kserve/v2) with the vendored protoc,
//! so a build needs no system protoc; their descriptor sets serve reflection.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    #[allow(unsafe_code)]
    if std::env::var_os("PROTOC").is_none() {
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    // The ONNX Runtime release is pinned in one place, the hash-checked wheel `make ort` installs.
    let pin = std::fs::read_to_string("deploy/ort/onnxruntime-cpu.txt")?;
    let version = pin
        .lines()
        .find_map(|l| l.trim().strip_prefix("onnxruntime=="))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or("deploy/ort/onnxruntime-cpu.txt pins no onnxruntime==<version>")?;
    println!("cargo:rustc-env=DRSN_ORT_VERSION={version}");
    println!("cargo:rerun-if-changed=deploy/ort");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // drsn.v1's messages and client are the client crate's (drsn-client, built from the same proto/): the server
    // stub is generated over those very types, so one type stands for each message on both ends.
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".drsn.v1", "::drsn_client::proto")
        .file_descriptor_set_path(out.join("drsn_descriptor.bin"))
        .compile_protos(&["proto/drsn/v1/diagnosis.proto"], &["proto"])?;
    tonic_prost_build::configure()
        // Tensor bytes as `Bytes`: decoded as slices of the received buffer rather than copied out of it.
        .bytes(".")
        .file_descriptor_set_path(out.join("kserve_descriptor.bin"))
        .compile_protos(&["proto/kserve/v2/grpc_predict_v2.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
