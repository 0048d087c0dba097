//! Compiles proto/stylefarm/v1/*.proto with protox (a Rust protobuf compiler, so no
//! `protoc` needs installing) and generates the tonic services.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "stylefarm/v1/types.proto",
        "stylefarm/v1/client.proto",
        "stylefarm/v1/worker.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
