//! Links libtorch for the CLI's binary and tests, as the worker does: see stylefarm-link.
fn main() {
    stylefarm_link::libtorch();
}
