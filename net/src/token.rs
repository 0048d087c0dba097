//! Bearer tokens and the identities behind them.
//!
//! A token is 32 random bytes, written `sft_` and 64 hex digits. The coordinator never
//! holds one: its tokens file keeps one line per identity with the SHA-256 of its token
//! (a token carries 256 bits of chance, so a plain hash is as strong as a slow one):
//!
//! ```text
//! # name   roles               hash                max priority (submitters; default 0)
//! alice    submitter           sha256:3f1c…        max-priority=10
//! render-1 worker              sha256:9a0b…
//! ops      admin               sha256:77d2…
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Largest tokens file read (about 10,000 identities).
pub const MAX_TOKENS_FILE: u64 = 1 << 20;
/// Largest token file a client reads, and the longest token a server looks at.
pub const MAX_TOKEN: usize = 256;
const PREFIX: &str = "sft_";

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    /// The worker service only.
    Worker,
    /// Submit, read and follow batches; cancel and retry its own.
    Submitter,
    /// Everything, other owners' batches included.
    Admin,
}

impl Role {
    /// The name in the tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Role::Worker, Role::Submitter, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Unique in its tokens file; batches it submits are owned by this name.
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// The highest priority it may submit at (admins: any).
    pub max_priority: i32,
}

impl Identity {
    /// Whether it may act as `role` (an admin may act as anyone).
    pub fn may(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.is_admin()
    }

    /// Whether it holds the admin role.
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }
}

/// Why a tokens file or a token file cannot be used. Messages name the file and line,
/// never a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading failed.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// Too large to be what it claims.
    #[error("{path} is {len} bytes; a {what} is at most {max}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
        /// "tokens file" or "token file".
        what: &'static str,
    },
    /// A line does not parse.
    #[error("{path} line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A token file holds no usable token.
    #[error("{path}: {reason}")]
    BadToken {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the content).
        reason: &'static str,
    },
    /// An identity name is already taken or not allowed.
    #[error("{0}")]
    Name(String),
    /// Writing failed.
    #[error("cannot write {path}: {cause}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// The identities of a tokens file, by the hash of their token.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Arc<Identity>>,
}

impl Tokens {
    /// Reads and checks a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        Self::parse(path, &read_tokens_file(path)?)
    }

    /// Parses the text of a tokens file (`path` only names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, TokenError> {
        let mut by_hash = HashMap::new();
        let mut names = HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| TokenError::Line {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            let (identity, hash) = parse_line(line).map_err(err)?;
            if !names.insert(identity.name.clone()) {
                return Err(err(format!("identity {:?} appears twice", identity.name)));
            }
            if by_hash.insert(hash, Arc::new(identity)).is_some() {
                return Err(err("this token hash is already another identity's".into()));
            }
        }
        Ok(Self { by_hash })
    }

    /// The identity a presented token belongs to.
    pub fn identify(&self, token: &str) -> Option<Arc<Identity>> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        self.by_hash.get(&hash(token)).cloned()
    }

    /// How many identities it holds.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// A set holding one identity with `token` (embedded coordinators).
    pub fn single(identity: Identity, token: &str) -> Self {
        Self {
            by_hash: HashMap::from([(hash(token), Arc::new(identity))]),
        }
    }
}

fn parse_line(line: &str) -> Result<(Identity, [u8; 32]), String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [name, roles, digest, rest @ ..] = fields.as_slice() else {
        return Err("expected `NAME ROLES sha256:HEX [max-priority=N]`".into());
    };
    check_name(name)?;
    let roles = roles
        .split(',')
        .map(|r| {
            Role::parse(r).ok_or_else(|| format!("unknown role {r:?} (worker, submitter, admin)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let hex_digest = digest
        .strip_prefix("sha256:")
        .ok_or("the hash must read sha256:HEX")?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut hash)
        .map_err(|_| "the hash must be 64 hex digits after sha256:".to_owned())?;
    let mut max_priority = 0;
    for option in rest {
        match option.split_once('=') {
            Some(("max-priority", n)) => {
                max_priority = n
                    .parse()
                    .map_err(|_| format!("max-priority {} is not an integer", shown(n)))?;
            }
            _ => return Err(format!("unknown option {} (max-priority=N)", shown(option))),
        }
    }
    Ok((
        Identity {
            name: (*name).to_owned(),
            roles,
            max_priority,
        },
        hash,
    ))
}

/// A field of a tokens file as an error shows it: quoted, unless it could be a token
/// pasted into the wrong column (errors are logged).
fn shown(field: &str) -> String {
    if field.contains(PREFIX) || field.len() > 40 {
        "(a value that looks like a token, not shown)".to_owned()
    } else {
        format!("{field:?}")
    }
}

/// Names the coordinator gives callers itself: without a tokens file (`anonymous`) and
/// inside `stylefarm run` (`local`).
pub const RESERVED: [&str; 2] = ["anonymous", "local"];

/// Identity names: 1 to 64 of `A-Z a-z 0-9 . _ -`, so they print and log safely.
pub fn check_name(name: &str) -> Result<(), String> {
    if RESERVED.contains(&name) {
        return Err(format!(
            "identity name {name:?} is reserved (it owns what a coordinator without tokens, or stylefarm run, did)"
        ));
    }
    if name.starts_with(PREFIX) {
        return Err("an identity name must not look like a token (sft_...)".into());
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "identity name {name:?} must be 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    // The operating system's generator; without it there is no safe token to give.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    format!("{PREFIX}{}", hex::encode(bytes))
}

/// The tokens-file line for an identity holding `token`.
pub fn line(identity: &Identity, token: &str) -> String {
    let roles: Vec<&str> = identity.roles.iter().map(|r| r.as_str()).collect();
    let mut l = format!(
        "{} {} sha256:{}",
        identity.name,
        roles.join(","),
        hex::encode(hash(token))
    );
    if identity.max_priority != 0 {
        l.push_str(&format!(" max-priority={}", identity.max_priority));
    }
    l
}

/// Adds an identity with a fresh token to the tokens file at `path` (created, readable by
/// its owner only, when missing) and returns the token: the only time it is shown.
pub fn add(path: &Path, identity: &Identity) -> Result<String, TokenError> {
    check_name(&identity.name).map_err(TokenError::Name)?;
    let existing = match std::fs::metadata(path) {
        Ok(_) => read_bounded(path, MAX_TOKENS_FILE, "tokens file")?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(cause) => {
            return Err(TokenError::Read {
                path: path.to_owned(),
                cause,
            })
        }
    };
    let tokens = Tokens::parse(path, &existing)?;
    if tokens.by_hash.values().any(|i| i.name == identity.name) {
        return Err(TokenError::Name(format!(
            "{} already has an identity named {:?}",
            path.display(),
            identity.name
        )));
    }
    let token = generate();
    let mut text = line(identity, &token);
    text.push('\n');
    if !existing.is_empty() && !existing.ends_with('\n') {
        text.insert(0, '\n');
    }
    let write = |cause| TokenError::Write {
        path: path.to_owned(),
        cause,
    };
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(write)?;
    file.write_all(text.as_bytes()).map_err(write)?;
    file.sync_all().map_err(write)?;
    Ok(token)
}

/// The text of a tokens file, refused when larger than [`MAX_TOKENS_FILE`].
pub fn read_tokens_file(path: &Path) -> Result<String, TokenError> {
    read_bounded(path, MAX_TOKENS_FILE, "tokens file")
}

/// Reads a client's token file: one token, surrounding whitespace ignored.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let text = read_bounded(path, MAX_TOKEN as u64 + 64, "token file")?;
    let token = text.trim();
    let bad = |reason| TokenError::BadToken {
        path: path.to_owned(),
        reason,
    };
    if token.is_empty() {
        return Err(bad("the token file is empty"));
    }
    if token.len() > MAX_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "the token file must hold one token (printable ASCII, no spaces, at most 256 bytes)",
        ));
    }
    Ok(token.to_owned())
}

fn read_bounded(path: &Path, max: u64, what: &'static str) -> Result<String, TokenError> {
    use std::io::Read;
    let read = |cause| TokenError::Read {
        path: path.to_owned(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    // Read one byte past the limit, so a file that grew since any check is still caught.
    file.take(max + 1).read_to_string(&mut text).map_err(read)?;
    let len = text.len() as u64;
    if len > max {
        return Err(TokenError::TooLarge {
            path: path.to_owned(),
            len,
            max,
            what,
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_identity_is_found_by_its_token_and_only_its_hash_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        let alice = Identity {
            name: "alice".into(),
            roles: vec![Role::Submitter],
            max_priority: 10,
        };
        let token = add(&path, &alice).expect("add");
        assert!(token.starts_with(PREFIX) && token.len() == 68, "{token}");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains(&token), "the file holds the token itself");
        assert!(text.contains(&hex::encode(hash(&token))));
        let worker = Identity {
            name: "w".into(),
            roles: vec![Role::Worker],
            max_priority: 0,
        };
        let worker_token = add(&path, &worker).expect("add");
        let tokens = Tokens::load(&path).expect("load");
        assert_eq!(tokens.identify(&token).as_deref(), Some(&alice));
        assert_eq!(tokens.identify(&worker_token).as_deref(), Some(&worker));
        assert_eq!(tokens.identify("sft_00"), None);
        assert!(add(&path, &alice).is_err(), "a second alice");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "the tokens file is readable by others: {mode:o}"
            );
        }
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        let h = "0".repeat(64);
        for (text, want) in [
            ("alice".to_owned(), "line 1: expected"),
            (
                format!("# c\n\nalice boss sha256:{h}"),
                "line 3: unknown role \"boss\"",
            ),
            (format!("alice worker md5:{h}"), "sha256:HEX"),
            (format!("a/b worker sha256:{h}"), "identity name"),
            (
                format!("a worker sha256:{h}\na admin sha256:{}", "1".repeat(64)),
                "line 2: identity \"a\" appears twice",
            ),
            (
                format!("a worker sha256:{h}\nb admin sha256:{h}"),
                "line 2: this token hash",
            ),
            (
                format!("a submitter sha256:{h} max-priority=x"),
                "max-priority \"x\"",
            ),
            (
                format!("a submitter sha256:{h} colour=red"),
                "unknown option",
            ),
        ] {
            let err = Tokens::parse(Path::new("t"), &text)
                .expect_err(&text)
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_token_file_holds_one_printable_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        std::fs::write(&path, "  sft_abc\n").expect("write");
        assert_eq!(read_token(&path).expect("read"), "sft_abc");
        for bad in ["", "\n", "a b", &"x".repeat(300)] {
            std::fs::write(&path, bad).expect("write");
            let err = read_token(&path).expect_err(bad).to_string();
            assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
            if bad.trim().len() > 1 {
                assert!(
                    !err.contains(bad.trim()),
                    "the error shows the content: {err}"
                );
            }
        }
    }
}
