//! Where the CLI tests find the fixtures and the real partial VGG19 weights (testkit's).
#![allow(dead_code)]

pub use stylefarm_testkit::fixtures::{real_weights as weights, shared};
