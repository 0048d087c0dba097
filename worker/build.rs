//! Links libtorch for the worker's binaries, tests and benches: see stylefarm-link.
fn main() {
    stylefarm_link::libtorch();
}
