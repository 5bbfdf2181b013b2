use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build free of system packages.
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "proto/lathe/v1/admin.proto",
        "proto/lathe/v1/datasets.proto",
        "proto/lathe/v1/fine_tuning.proto",
        "proto/lathe/v1/models.proto",
        "proto/lathe/v1/graders.proto",
        "proto/lathe/v1/evals.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("lathe_descriptor.bin"))
        // Services not built yet answer UNIMPLEMENTED through default methods.
        .generate_default_stubs(true)
        // Chunks are handed on without copying.
        .bytes(".lathe.v1")
        // prost's codec, with a message that does not decode (too deep, too
        // broken) answered INVALID_ARGUMENT rather than INTERNAL.
        .codec_path("crate::proto::codec::Codec")
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
