//! Compiles `broker/v1/*.proto` with protox (pure Rust: no protoc on the build machine) and generates
//! the tonic code plus the descriptor set that server reflection serves.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "broker/v1/agent.proto",
        "broker/v1/audit.proto",
        "broker/v1/killswitch.proto",
        "broker/v1/approval.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let fds_path = out.join("broker_descriptor.bin");
    std::fs::write(&fds_path, fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&fds_path)
        .skip_protoc_run()
        .compile_protos(&files, &["."])?;
    Ok(())
}
