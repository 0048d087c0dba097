//! README.md checked against what the binaries and the protocol say, so its tables
//! cannot drift: every flag a table lists exists in its binary's `--help` with the
//! default the table gives, every command of the CLI is in the command table, and the
//! RPCs named are the protocol's.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use stylefarm_testkit::process::workspace_bin;

mod common;

use common::flag_help;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("README.md")
}

/// The lines of the section under `heading` (up to the next heading of its level).
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    let level = heading.split(' ').next().unwrap_or("##");
    text.lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| !(l.starts_with(level) && l[level.len()..].starts_with(' ')))
        .collect()
}

/// Table rows (cells trimmed) of the first table in `lines`, header and rule skipped.
fn table_rows(lines: &[&str]) -> Vec<Vec<String>> {
    lines
        .iter()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// The `--flag` names in backticks in a cell.
fn flags(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("--"))
        .map(|s| s.split_whitespace().next().unwrap_or(s).to_owned())
        .collect()
}

fn help(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{} {args:?} --help failed",
        bin.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `512`, `1.0` and `1` compare as numbers; anything else as text.
fn same_default(readme: &str, help: &str) -> bool {
    match (readme.parse::<f64>(), help.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => readme == help,
    }
}

fn check_flag_table(text: &str, heading: &str, bin: &Path, args: &[&str], default_col: usize) {
    let help = help(bin, args);
    let rows = table_rows(&section(text, heading));
    assert!(!rows.is_empty(), "no table under {heading}");
    for row in rows {
        let listed = flags(&row[0]);
        assert!(
            !listed.is_empty(),
            "{heading}: a row without flags: {row:?}"
        );
        for flag in &listed {
            let Some(h) = flag_help(&help, flag) else {
                panic!(
                    "{heading}: README lists {flag}, which `{} {args:?} --help` does not have",
                    bin.display()
                );
            };
            // A single flag with a single default: it must be the binary's.
            let default = row[default_col].trim_matches('`');
            if listed.len() == 1 && !default.contains([' ', '/', ',']) {
                if let Some(d) = h
                    .split("[default: ")
                    .nth(1)
                    .and_then(|r| r.split(']').next())
                {
                    assert!(
                        same_default(default, d),
                        "{heading}: README says {flag} defaults to {default}, --help says {d}"
                    );
                }
            }
        }
    }
}

fn cli() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_stylefarm"))
}

#[test]
fn render_flags_match_the_binary() {
    check_flag_table(&readme(), "## Rendering one image", cli(), &["render"], 1);
}

#[test]
fn coordinator_flags_match_the_binary() {
    check_flag_table(
        &readme(),
        "## The coordinator",
        &workspace_bin("stylefarm-coordinator"),
        &[],
        2,
    );
}

#[test]
fn worker_flags_match_the_binary() {
    check_flag_table(
        &readme(),
        "## Workers and storage",
        &workspace_bin("stylefarm-worker"),
        &[],
        2,
    );
}

#[test]
fn web_flags_match_the_binary() {
    check_flag_table(
        &readme(),
        "## The web interface",
        &workspace_bin("stylefarm-web"),
        &[],
        2,
    );
}

/// The subcommands clap lists under `Commands:` (help excluded).
fn commands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn the_command_table_lists_every_command() {
    let text = readme();
    let rows = table_rows(&section(&text, "## Batches: manifests and the CLI"));
    let mut documented = BTreeSet::new();
    for row in &rows {
        for cmd in row[0].split('`').skip(1).step_by(2) {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            if words.first() == Some(&"stylefarm") && words.len() > 1 {
                documented.insert(words[1].to_owned());
                if words[1] == "weights" {
                    if let Some(sub) = words.get(2) {
                        for s in sub.split("\\|") {
                            documented.insert(format!("weights {s}"));
                        }
                    }
                }
            }
        }
    }
    let mut actual = commands(&help(cli(), &[]));
    // `render` has a section of its own.
    actual.remove("render");
    for sub in commands(&help(cli(), &["weights"])) {
        actual.insert(format!("weights {sub}"));
    }
    documented.retain(|c| c != "render");
    assert_eq!(
        documented, actual,
        "README's command table and `stylefarm --help` differ"
    );
}

#[test]
fn the_rpcs_named_are_the_protocols() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/stylefarm/v1");
    let mut rpcs = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("proto folder") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("proto");
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("rpc ") {
                rpcs.insert(rest.split('(').next().unwrap_or_default().trim().to_owned());
            }
        }
    }
    let text = readme();
    let para: String = section(&text, "## The coordinator")
        .iter()
        .take_while(|l| !l.starts_with("```"))
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    // The names in parentheses: "(SubmitBatch, GetBatch, ...)".
    let named: BTreeSet<String> = para
        .split('(')
        .skip(1)
        .filter_map(|group| group.split(')').next())
        .flat_map(|group| group.split(','))
        .map(str::trim)
        .filter(|w| {
            w.chars().next().is_some_and(char::is_uppercase) && w.chars().all(char::is_alphanumeric)
        })
        .map(str::to_owned)
        .collect();
    assert_eq!(
        named, rpcs,
        "the RPCs README names and the .proto files differ"
    );
}
