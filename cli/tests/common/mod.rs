//! Where the CLI tests find the fixtures and the real partial VGG19 weights (testkit's).
#![allow(dead_code)]

#[allow(unused_imports)] // each test file uses its own part of this module
pub use stylefarm_testkit::fixtures::{real_weights as weights, shared};

/// A finished command's exit code, stdout and stderr, for failure messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The text clap's `--help` gives for `flag`: the line that declares it (`--flag <V>` or
/// `-x, --flag`) and its description, up to the next line that declares a flag. Other
/// flags' descriptions that merely mention it do not count.
pub fn flag_help<'a>(help: &'a str, flag: &str) -> Option<&'a str> {
    let declares = |line: &str| {
        if !is_flag_line(line) {
            return false;
        }
        let t = line.trim_start();
        let t = match t.split_once(", ") {
            Some((short, rest)) if short.starts_with('-') && !short.starts_with("--") => rest,
            _ => t,
        };
        t.strip_prefix(flag)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '<', '=', '\n']))
    };
    let mut start = None;
    let mut offset = 0;
    for line in help.split_inclusive('\n') {
        match start {
            None if declares(line) => start = Some(offset),
            Some(s) if is_flag_line(line) => return Some(&help[s..offset]),
            _ => {}
        }
        offset += line.len();
    }
    start.map(|s| &help[s..])
}

/// A line that declares a flag: clap indents those by 2 (`  -x, --flag`) or 6
/// (`      --flag`), and a value list (`          - lbfgs: …`) deeper.
fn is_flag_line(line: &str) -> bool {
    let t = line.trim_start();
    line.len() - t.len() <= 6 && t.starts_with('-')
}
