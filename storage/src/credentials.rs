//! Which S3 credentials a process uses, decided once at start from its flags and its
//! environment, so the CLI, the worker and `stylefarm run` follow the same rules.
//!
//! In order:
//! 1. `--s3-access-key` with `--s3-secret-key` or `--s3-secret-key-file` (or their
//!    `STYLEFARM_S3_*` variables): those keys.
//! 2. `--s3-aws-chain` (`STYLEFARM_S3_AWS_CHAIN`), `AWS_PROFILE`, or the variables a
//!    platform sets for web identity (EKS) or container credentials (ECS): the AWS
//!    default chain, which may ask the EC2 instance metadata service.
//! 3. `AWS_ACCESS_KEY_ID` with `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`): those
//!    keys, without the rest of the chain.
//! 4. None: an error when S3 is used, naming what was looked at
//!    ([`crate::S3Options::check`]).
//!
//! Half a pair in either convention (an access key without a secret key, or the
//! reverse) is an error whatever else is set: the two conventions are never mixed.
//! The environment is a parameter, so tests pass a map instead of setting variables.

use std::path::Path;

use crate::StorageError;

/// Where the flags' own credentials came from, as the command line gives them
/// (clap has already merged each flag with its `STYLEFARM_S3_*` variable).
#[derive(Debug, Clone, Copy, Default)]
pub struct Given<'a> {
    /// `--s3-access-key` / `STYLEFARM_S3_ACCESS_KEY`.
    pub access_key: Option<&'a str>,
    /// `--s3-secret-key` / `STYLEFARM_S3_SECRET_KEY`.
    pub secret_key: Option<&'a str>,
    /// `--s3-secret-key-file` / `STYLEFARM_S3_SECRET_KEY_FILE`.
    pub secret_key_file: Option<&'a Path>,
    /// `--s3-aws-chain` / `STYLEFARM_S3_AWS_CHAIN`.
    pub aws_chain: bool,
}

/// The credentials to use.
#[derive(Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Keys given outright.
    Keys {
        /// Access key id.
        access_key: String,
        /// Secret key.
        secret_key: String,
        /// Session token of temporary credentials (`AWS_SESSION_TOKEN`).
        session_token: Option<String>,
        /// Which flags or variables they came from, for messages.
        from: &'static str,
    },
    /// The AWS default chain, asked for by `because`.
    AwsChain {
        /// The flag or variable that asked for it.
        because: String,
    },
    /// Nothing given.
    None,
}

impl std::fmt::Debug for Resolved {
    // Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Keys {
                access_key, from, ..
            } => write!(f, "Keys {{ access_key: {access_key:?}, from: {from:?} }}"),
            Self::AwsChain { because } => write!(f, "AwsChain {{ because: {because:?} }}"),
            Self::None => write!(f, "None"),
        }
    }
}

/// Variables whose presence asks for the AWS default chain, with what each means.
pub const CHAIN_VARIABLES: [&str; 4] = [
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
];

/// The flags and variables of both conventions, for messages.
pub const HOW_TO_GIVE: &str = "give both halves in one convention: --s3-access-key \
(STYLEFARM_S3_ACCESS_KEY) with --s3-secret-key (STYLEFARM_S3_SECRET_KEY) or \
--s3-secret-key-file (STYLEFARM_S3_SECRET_KEY_FILE); or AWS_ACCESS_KEY_ID with \
AWS_SECRET_ACCESS_KEY, the variables the AWS credential chain reads";

/// What an error says when no credentials were given.
pub const NONE_FOUND: &str = "none given: looked for --s3-access-key with --s3-secret-key \
or --s3-secret-key-file (STYLEFARM_S3_ACCESS_KEY, STYLEFARM_S3_SECRET_KEY, \
STYLEFARM_S3_SECRET_KEY_FILE), then AWS_ACCESS_KEY_ID with AWS_SECRET_ACCESS_KEY; the AWS \
credential chain (profiles, SSO, web identity, containers, EC2 instance metadata) is \
used only when asked for, with --s3-aws-chain (STYLEFARM_S3_AWS_CHAIN) or AWS_PROFILE";

/// Decides which credentials `given` and `env` name. Reads the secret key file.
pub fn resolve(
    given: &Given<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, StorageError> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let access = given.access_key.filter(|v| !v.trim().is_empty());
    let secret = given.secret_key.filter(|v| !v.trim().is_empty());
    let file = given.secret_key_file.filter(|p| !p.as_os_str().is_empty());
    let aws_access = env("AWS_ACCESS_KEY_ID");
    let aws_secret = env("AWS_SECRET_ACCESS_KEY");

    // Name a value by the variable when the variable holds it, else by the flag.
    let named = |flag: &'static str, var: &'static str, value: &str| -> &'static str {
        if env(var).as_deref() == Some(value) {
            var
        } else {
            flag
        }
    };
    let mixed = |other: &str| {
        if other.is_empty() {
            String::new()
        } else {
            format!("; {other} is set, but the two conventions are not mixed")
        }
    };
    let half = |has: String, lacks: &str, other: String| StorageError::Credentials {
        reason: format!(
            "half a credential: {has} is set, but no {lacks}{}; {HOW_TO_GIVE}",
            mixed(&other)
        ),
    };

    match (access, secret.is_some() || file.is_some()) {
        (Some(a), false) => {
            let other = if aws_secret.is_some() {
                "AWS_SECRET_ACCESS_KEY"
            } else {
                ""
            };
            return Err(half(
                format!(
                    "an access key ({})",
                    named("--s3-access-key", "STYLEFARM_S3_ACCESS_KEY", a)
                ),
                "secret key (--s3-secret-key, STYLEFARM_S3_SECRET_KEY, --s3-secret-key-file or STYLEFARM_S3_SECRET_KEY_FILE)",
                other.into(),
            ));
        }
        (None, true) => {
            let which = match (secret, file) {
                (Some(s), _) => named("--s3-secret-key", "STYLEFARM_S3_SECRET_KEY", s),
                (None, Some(f)) => named(
                    "--s3-secret-key-file",
                    "STYLEFARM_S3_SECRET_KEY_FILE",
                    &f.display().to_string(),
                ),
                (None, None) => unreachable!("one of them is set"),
            };
            let other = if aws_access.is_some() {
                "AWS_ACCESS_KEY_ID"
            } else {
                ""
            };
            return Err(half(
                format!("a secret key ({which})"),
                "access key (--s3-access-key or STYLEFARM_S3_ACCESS_KEY)",
                other.into(),
            ));
        }
        _ => {}
    }
    match (&aws_access, &aws_secret) {
        (Some(_), None) => {
            return Err(half(
                "an access key (AWS_ACCESS_KEY_ID)".into(),
                "AWS_SECRET_ACCESS_KEY",
                String::new(),
            ))
        }
        (None, Some(_)) => {
            return Err(half(
                "a secret key (AWS_SECRET_ACCESS_KEY)".into(),
                "AWS_ACCESS_KEY_ID",
                String::new(),
            ))
        }
        _ => {}
    }

    if let Some(access) = access {
        let secret = match (secret, file) {
            (Some(s), _) => s.trim().to_owned(),
            (None, Some(f)) => read_secret(f)?,
            (None, None) => unreachable!("checked above"),
        };
        return Ok(Resolved::Keys {
            access_key: access.trim().to_owned(),
            secret_key: secret,
            session_token: None,
            from: "--s3-access-key/--s3-secret-key[-file] or STYLEFARM_S3_*",
        });
    }
    if given.aws_chain {
        return Ok(Resolved::AwsChain {
            because: "--s3-aws-chain (STYLEFARM_S3_AWS_CHAIN)".into(),
        });
    }
    if let Some(var) = CHAIN_VARIABLES.iter().find(|v| env(v).is_some()) {
        return Ok(Resolved::AwsChain {
            because: format!("{var} is set"),
        });
    }
    if let (Some(access), Some(secret)) = (aws_access, aws_secret) {
        return Ok(Resolved::Keys {
            access_key: access.trim().to_owned(),
            secret_key: secret.trim().to_owned(),
            session_token: env("AWS_SESSION_TOKEN").map(|t| t.trim().to_owned()),
            from: "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        });
    }
    Ok(Resolved::None)
}

/// The secret key in `path`, without surrounding whitespace.
fn read_secret(path: &Path) -> Result<String, StorageError> {
    let secret = std::fs::read_to_string(path)
        .map_err(|cause| StorageError::Io {
            path: format!("S3 secret key file {}", path.display()),
            cause,
        })?
        .trim()
        .to_owned();
    if secret.is_empty() {
        return Err(StorageError::Credentials {
            reason: format!(
                "the S3 secret key file {} is empty (--s3-secret-key-file, STYLEFARM_S3_SECRET_KEY_FILE)",
                path.display()
            ),
        });
    }
    Ok(secret)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// An environment of `pairs` alone, for the lookups that take one.
    pub(crate) fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn keys(r: &Resolved) -> (&str, &str, Option<&str>) {
        match r {
            Resolved::Keys {
                access_key,
                secret_key,
                session_token,
                ..
            } => (access_key, secret_key, session_token.as_deref()),
            other => panic!("expected keys, got {other:?}"),
        }
    }

    fn error(given: &Given<'_>, pairs: &[(&str, &str)]) -> String {
        match resolve(given, &env(pairs)) {
            Err(e @ StorageError::Credentials { .. }) => e.to_string(),
            other => panic!("expected a credentials error, got {other:?}"),
        }
    }

    /// Every half-credential message names both halves of both conventions.
    fn names_everything(msg: &str) {
        for name in [
            "--s3-access-key",
            "STYLEFARM_S3_ACCESS_KEY",
            "--s3-secret-key",
            "STYLEFARM_S3_SECRET_KEY",
            "--s3-secret-key-file",
            "STYLEFARM_S3_SECRET_KEY_FILE",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(msg.contains(name), "{name} missing from: {msg}");
        }
    }

    #[test]
    fn half_credentials_in_either_convention_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").expect("write");
        let file_s = file.display().to_string();

        // The case: the access key the AWS way, the secret key the stylefarm way.
        let msg = error(
            &Given {
                secret_key_file: Some(&file),
                ..Given::default()
            },
            &[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("STYLEFARM_S3_SECRET_KEY_FILE", &file_s),
            ],
        );
        names_everything(&msg);
        assert!(
            msg.contains("a secret key (STYLEFARM_S3_SECRET_KEY_FILE)"),
            "{msg}"
        );
        assert!(msg.contains("AWS_ACCESS_KEY_ID is set"), "{msg}");

        let msg = error(
            &Given {
                secret_key: Some("s"),
                ..Given::default()
            },
            &[],
        );
        names_everything(&msg);
        assert!(msg.contains("a secret key (--s3-secret-key)"), "{msg}");

        let msg = error(
            &Given {
                access_key: Some("a"),
                ..Given::default()
            },
            &[
                ("STYLEFARM_S3_ACCESS_KEY", "a"),
                ("AWS_SECRET_ACCESS_KEY", "x"),
            ],
        );
        names_everything(&msg);
        assert!(
            msg.contains("an access key (STYLEFARM_S3_ACCESS_KEY)"),
            "{msg}"
        );

        // Half the AWS pair is an error even with a whole stylefarm pair beside it.
        let whole = Given {
            access_key: Some("a"),
            secret_key: Some("s"),
            ..Given::default()
        };
        for pair in [("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x")] {
            let msg = error(&whole, &[pair]);
            names_everything(&msg);
            assert!(msg.contains(&format!("({})", pair.0)), "{msg}");
        }
        // ... and an explicit chain does not excuse it either.
        let msg = error(
            &Given {
                aws_chain: true,
                ..Given::default()
            },
            &[("AWS_ACCESS_KEY_ID", "x")],
        );
        names_everything(&msg);
    }

    #[test]
    fn precedence_of_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret");
        std::fs::write(&file, "  from-file \n").expect("write");
        let aws = [
            ("AWS_ACCESS_KEY_ID", "AWSKEY"),
            ("AWS_SECRET_ACCESS_KEY", "AWSSECRET"),
            ("AWS_SESSION_TOKEN", "TOKEN"),
        ];

        // Flags (or STYLEFARM_*) first, the file trimmed, a secret flag over the file.
        let r = resolve(
            &Given {
                access_key: Some("A"),
                secret_key_file: Some(&file),
                ..Given::default()
            },
            &env(&aws),
        )
        .expect("resolve");
        assert_eq!(keys(&r), ("A", "from-file", None));
        let r = resolve(
            &Given {
                access_key: Some("A"),
                secret_key: Some("S"),
                secret_key_file: Some(&file),
                aws_chain: true,
            },
            &env(&[]),
        )
        .expect("resolve");
        assert_eq!(keys(&r), ("A", "S", None));

        // AWS_* variables as keys, with the session token.
        let r = resolve(&Given::default(), &env(&aws)).expect("resolve");
        assert_eq!(keys(&r), ("AWSKEY", "AWSSECRET", Some("TOKEN")));

        // The chain only when asked: the flag, a profile or a platform's variables.
        let chain = Given {
            aws_chain: true,
            ..Given::default()
        };
        assert!(matches!(
            resolve(&chain, &env(&aws)).expect("resolve"),
            Resolved::AwsChain { .. }
        ));
        for var in CHAIN_VARIABLES {
            match resolve(&Given::default(), &env(&[(var, "x")])).expect("resolve") {
                Resolved::AwsChain { because } => assert!(because.contains(var), "{because}"),
                other => panic!("{var}: {other:?}"),
            }
        }

        // Nothing (empty values count as nothing).
        assert_eq!(
            resolve(&Given::default(), &env(&[])).expect("resolve"),
            Resolved::None
        );
        assert_eq!(
            resolve(
                &Given {
                    access_key: Some(""),
                    ..Given::default()
                },
                &env(&[("AWS_PROFILE", " ")])
            )
            .expect("resolve"),
            Resolved::None
        );
    }

    #[test]
    fn unreadable_or_empty_secret_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let err = resolve(
            &Given {
                access_key: Some("A"),
                secret_key_file: Some(&missing),
                ..Given::default()
            },
            &env(&[]),
        )
        .expect_err("missing file");
        assert!(err.to_string().contains("S3 secret key file"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let err = resolve(
            &Given {
                access_key: Some("A"),
                secret_key_file: Some(&empty),
                ..Given::default()
            },
            &env(&[]),
        )
        .expect_err("empty file");
        assert!(err.to_string().contains("is empty"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let r = Resolved::Keys {
            access_key: "A".into(),
            secret_key: "TOPSECRET".into(),
            session_token: Some("TOKEN".into()),
            from: "x",
        };
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("TOPSECRET") && !shown.contains("TOKEN"),
            "{shown}"
        );
    }
}
