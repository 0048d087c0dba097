//! Links libtorch for the CLI's binary and tests, as the worker does: see worker/link.rs.
#[path = "../worker/link.rs"]
mod link;

fn main() {
    link::libtorch();
}
