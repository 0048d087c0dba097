//! Links libtorch for the worker's binaries, tests and benches: see link.rs.
#[path = "link.rs"]
mod link;

fn main() {
    link::libtorch();
}
