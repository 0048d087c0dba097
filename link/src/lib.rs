//! How the binaries link libtorch: a build-dependency of every crate with binaries or
//! tests that run the engine (worker, cli). Link arguments do not pass from a library to
//! its dependents, so each such crate's build.rs calls [`libtorch`].

/// Emits the link arguments:
/// - an rpath to the libtorch that torch-sys found, so binaries and tests run without
///   LD_LIBRARY_PATH;
/// - libtorch_cuda.so as always needed, where that libtorch has it (a CPU-only one has
///   not). PyTorch's CUDA backend registers itself from that library's static
///   initialisers and nothing calls into it by name, so the linker's default
///   --as-needed drops it and CUDA looks absent on a GPU node.
///
/// Sets `STYLEFARM_LIBTORCH_CUDA` (1 or 0) for the crate's code, which says at startup
/// whether the backend should be there, and `STYLEFARM_LIBTORCH_LIB`, the folder linked
/// against (`stylefarm doctor` reports it and its version).
pub fn libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let dir = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    let cuda = !dir.is_empty() && std::path::Path::new(&dir).join("libtorch_cuda.so").exists();
    if !dir.is_empty() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    println!("cargo:rustc-env=STYLEFARM_LIBTORCH_CUDA={}", u8::from(cuda));
    println!("cargo:rustc-env=STYLEFARM_LIBTORCH_LIB={dir}");
}
