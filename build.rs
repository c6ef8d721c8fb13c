//! Generates the admin API (`proto/portcullis/admin/v1/sessions.proto`) with protox, which
//! parses `.proto` files in Rust: building portcullis needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/portcullis/admin/v1/sessions.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
