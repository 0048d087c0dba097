//! Where an object is: `s3://bucket/key` or a local path (`file://` optional).

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::StorageError;

/// An object's (or a prefix's) address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectUrl {
    /// An S3 object or prefix.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key (or prefix) inside it, without a leading slash; may be empty.
        key: String,
    },
    /// A local file or directory.
    File(PathBuf),
}

impl ObjectUrl {
    /// Parses `s3://bucket[/key]`, `file:///path` or a plain path.
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidUrl {
            url: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.trim().is_empty() {
            return Err(invalid("is empty"));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("names no bucket (s3://BUCKET/KEY)"));
            }
            let bucket_ok = bucket.len() >= 3
                && bucket.len() <= 63
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !bucket_ok {
                return Err(invalid(
                    "bucket names are 3-63 characters of a-z, 0-9, '-' and '.'",
                ));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                key: key.trim_start_matches('/').to_owned(),
            });
        }
        if let Some((scheme, _)) = s.split_once("://") {
            if scheme != "file" {
                return Err(invalid(&format!(
                    "scheme {scheme}:// is not supported (use s3:// or a path)"
                )));
            }
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        Ok(Self::File(PathBuf::from(path)))
    }

    /// This address taken as a prefix (or directory) with `rel` below it. `rel` is a
    /// relative key of `/`-separated parts without `.` or `..`.
    pub fn join(&self, rel: &str) -> Result<Self, StorageError> {
        let bad = rel.is_empty()
            || rel.starts_with('/')
            || rel
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..");
        if bad {
            return Err(StorageError::InvalidUrl {
                url: rel.to_owned(),
                reason: format!("is not a relative key below {self}"),
            });
        }
        Ok(match self {
            Self::S3 { bucket, key } => Self::S3 {
                bucket: bucket.clone(),
                key: if key.is_empty() {
                    rel.to_owned()
                } else {
                    format!("{}/{rel}", key.trim_end_matches('/'))
                },
            },
            Self::File(dir) => Self::File(dir.join(rel)),
        })
    }

    /// Whether this address lies below `prefix` (a directory, or a key prefix ending at a
    /// `/`), judged on the text: an address with a `.` or `..` part, or an empty S3 key
    /// part, is never below anything.
    pub fn is_within(&self, prefix: &ObjectUrl) -> bool {
        match (self, prefix) {
            (
                Self::S3 { bucket, key },
                Self::S3 {
                    bucket: pb,
                    key: pk,
                },
            ) => {
                let clean = !key.is_empty()
                    && key
                        .split('/')
                        .all(|p| !p.is_empty() && p != "." && p != "..");
                let pk = pk.trim_end_matches('/');
                clean
                    && bucket == pb
                    && (pk.is_empty() || key.strip_prefix(pk).is_some_and(|r| r.starts_with('/')))
            }
            (Self::File(path), Self::File(dir)) => {
                let clean = path
                    .components()
                    .all(|c| !matches!(c, Component::ParentDir | Component::CurDir));
                clean && path != dir && path.starts_with(dir)
            }
            _ => false,
        }
    }

    /// True for local paths.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::File(_))
    }
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// True when `p` has no `..` that could climb out of a directory.
pub(crate) fn stays_inside(p: &Path) -> bool {
    !p.components().any(|c| matches!(c, Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_joins() {
        let root = ObjectUrl::parse("s3://studio-farm/renders").expect("s3");
        assert_eq!(
            root.join("batches/b1/out.png").expect("join").to_string(),
            "s3://studio-farm/renders/batches/b1/out.png"
        );
        let bare = ObjectUrl::parse("s3://bkt").expect("bucket only");
        assert_eq!(bare.join("a/b").expect("join").to_string(), "s3://bkt/a/b");
        assert_eq!(
            ObjectUrl::parse("file:///tmp/x").expect("file"),
            ObjectUrl::File("/tmp/x".into())
        );
        assert!(ObjectUrl::parse("rel/dir").expect("path").is_local());
        for bad in [
            "",
            "s3://",
            "s3:///key",
            "s3://Upper/key",
            "http://x/y",
            "s3://ab/k",
        ] {
            assert!(ObjectUrl::parse(bad).is_err(), "{bad}");
        }
        for bad in ["", "/abs", "a/../b", "a//b", "./a"] {
            assert!(root.join(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod within_tests {
    use super::ObjectUrl;

    fn url(s: &str) -> ObjectUrl {
        ObjectUrl::parse(s).expect(s)
    }

    #[test]
    fn only_addresses_below_the_prefix_are_within_it() {
        let s3 = url("s3://farm/studio/inputs");
        let dir = url("/srv/farm/inputs");
        for inside in [
            "s3://farm/studio/inputs/sha256/ab",
            "s3://farm/studio/inputs/x",
        ] {
            assert!(url(inside).is_within(&s3), "{inside}");
        }
        for outside in [
            "s3://farm/studio/inputsx/a",
            "s3://farm/studio/inputs",
            "s3://farm/studio/inputs/",
            "s3://farm/studio/inputs/../secrets/k",
            "s3://farm/studio/inputs//a",
            "s3://other/studio/inputs/a",
            "s3://farm/studio/outputs/a",
            "/srv/farm/inputs/a",
        ] {
            assert!(!url(outside).is_within(&s3), "{outside}");
        }
        assert!(url("/srv/farm/inputs/sha256/ab").is_within(&dir));
        // A `.` inside a path names the same place (paths drop it when read).
        assert!(url("/srv/farm/inputs/./a").is_within(&dir));
        for outside in [
            "/srv/farm/inputs",
            "/srv/farm/inputs/../secret",
            "/srv/farm/inputsx/a",
            "/dev/zero",
            "/proc/self/environ",
            "s3://farm/srv/farm/inputs/a",
        ] {
            assert!(!url(outside).is_within(&dir), "{outside}");
        }
        assert!(url("s3://farm/any/key").is_within(&url("s3://farm")));
    }
}
