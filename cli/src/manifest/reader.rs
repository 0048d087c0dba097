//! The manifest file as it is read: typed scalars, mappings and sequences with the line
//! each came from, known-key checks, and image references with `${NAME}` expanded.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use stylefarm_core::frames::{parse_frames, FramePattern};

use super::{Env, ImageRef, ManifestError};

/// The file being read and the folder its relative paths start from.
pub(super) struct Reader<'a> {
    pub(super) file: &'a Path,
    pub(super) base: &'a Path,
    pub(super) env: Env<'a>,
    /// Local image files whose header was checked already.
    pub(super) checked: RefCell<HashSet<PathBuf>>,
}

impl Reader<'_> {
    pub(super) fn at(&self, span: &Span, field: &str, message: &str) -> ManifestError {
        ManifestError {
            file: self.file.to_owned(),
            line: span.start().map_or(0, marked_yaml::Marker::line),
            field: field.to_owned(),
            message: message.to_owned(),
        }
    }

    pub(super) fn load_error(&self, e: &marked_yaml::LoadError) -> ManifestError {
        use marked_yaml::LoadError as E;
        let (marker, what) = match e {
            E::TopLevelMustBeMapping(m) | E::TopLevelMustBeSequence(m) => (
                Some(*m),
                "the manifest must be a mapping (batch:, defaults:, jobs:, wedges:)".to_owned(),
            ),
            E::DuplicateKey(k) => (
                k.key.span().start().copied(),
                format!("key {:?} appears twice", k.key.as_str()),
            ),
            E::ScanError(m, s) => (Some(*m), format!("not valid YAML: {s}")),
            other => (None, format!("not valid YAML: {other}")),
        };
        ManifestError {
            file: self.file.to_owned(),
            line: marker.map_or(0, |m| m.line()),
            field: String::new(),
            message: what,
        }
    }

    pub(super) fn mapping<'n>(
        &self,
        node: &'n Node,
        field: &str,
    ) -> Result<&'n MarkedMappingNode, ManifestError> {
        node.as_mapping()
            .ok_or_else(|| self.at(node.span(), field, "expected a mapping (key: value lines)"))
    }

    pub(super) fn sequence<'n>(
        &self,
        node: &'n Node,
        field: &str,
    ) -> Result<&'n [Node], ManifestError> {
        node.as_sequence().map(|s| &s[..]).ok_or_else(|| {
            self.at(
                node.span(),
                field,
                "expected a list (lines starting with -)",
            )
        })
    }

    pub(super) fn scalar<'n>(
        &self,
        node: &'n Node,
        field: &str,
    ) -> Result<&'n MarkedScalarNode, ManifestError> {
        node.as_scalar()
            .ok_or_else(|| self.at(node.span(), field, "expected a single value"))
    }

    pub(super) fn string(&self, node: &Node, field: &str) -> Result<String, ManifestError> {
        Ok(self.scalar(node, field)?.as_str().to_owned())
    }

    pub(super) fn integer(
        &self,
        node: &Node,
        field: &str,
        min: i64,
        max: i64,
    ) -> Result<i64, ManifestError> {
        let s = self.scalar(node, field)?.as_str();
        let v: i64 = s
            .parse()
            .map_err(|_| self.at(node.span(), field, &format!("{s:?} is not a whole number")))?;
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(self.at(node.span(), field, &format!("{v} is outside {min}..={max}")))
        }
    }

    pub(super) fn float(&self, node: &Node, field: &str) -> Result<f64, ManifestError> {
        let s = self.scalar(node, field)?.as_str();
        s.parse()
            .map_err(|_| self.at(node.span(), field, &format!("{s:?} is not a number")))
    }

    pub(super) fn known_keys(
        &self,
        m: &MarkedMappingNode,
        field: &str,
        allowed: &[&str],
    ) -> Result<(), ManifestError> {
        for key in m.keys() {
            if !allowed.contains(&key.as_str()) {
                let at = if field.is_empty() {
                    key.as_str().to_owned()
                } else {
                    format!("{field}.{}", key.as_str())
                };
                return Err(self.at(
                    key.span(),
                    &at,
                    &format!("unknown key; allowed here: {}", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// An image reference's text, `${STYLEFARM_*}` expanded.
    fn reference(&self, node: &Node, field: &str) -> Result<String, ManifestError> {
        expand_env(&self.string(node, field)?, self.env)
            .map_err(|e| self.at(node.span(), field, &e))
    }

    /// A content reference: one image, or a numbered sequence (`plate.####.exr`,
    /// `plate.%04d.exr`) over `frames`. Every frame of a local sequence must exist: the
    /// missing ones are named, before anything is uploaded.
    pub(super) fn content(
        &self,
        node: &Node,
        field: &str,
        frames: Option<&Frames>,
    ) -> Result<Content, ManifestError> {
        let s = self.reference(node, field)?;
        let pattern = FramePattern::find(&s).map_err(|e| self.at(node.span(), field, &e.0))?;
        let (pattern, frames) = match (pattern, frames) {
            (None, _) => return Ok(Content::Still(self.image(node, field)?)),
            (Some(_), None) => {
                return Err(self.at(
                    node.span(),
                    field,
                    &format!("{s:?} numbers its frames; say which with `frames` (1001-1100, 1001-1100x2, 1,5,10-20)"),
                ))
            }
            (Some(p), Some(f)) => (p, f),
        };
        let mut images = Vec::with_capacity(frames.list.len());
        let mut missing = Vec::new();
        for &frame in &frames.list {
            let one = pattern.frame(frame);
            if one.starts_with("s3://") || self.base.join(&one).exists() {
                images.push((frame, self.located(node, field, &one)?));
            } else {
                missing.push(frame);
            }
        }
        if !missing.is_empty() {
            let shown: Vec<String> = missing
                .iter()
                .take(20)
                .map(|f| pattern.number(*f))
                .collect();
            let more = missing.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            return Err(self.at(
                node.span(),
                field,
                &format!(
                    "{} of {} frames of {s:?} are missing: {}{more} (looked for {})",
                    missing.len(),
                    frames.list.len(),
                    shown.join(", "),
                    self.base.join(pattern.frame(missing[0])).display(),
                ),
            ));
        }
        Ok(Content::Sequence { pattern, images })
    }

    /// A `frames` value: a range string (`1001-1100x2`, `1,5,10-20`) or a number.
    pub(super) fn frames(&self, node: &Node, field: &str) -> Result<Frames, ManifestError> {
        let text = self.scalar(node, field)?.as_str().to_owned();
        let list = parse_frames(&text).map_err(|e| self.at(node.span(), field, &e.0))?;
        Ok(Frames { list })
    }

    pub(super) fn image(&self, node: &Node, field: &str) -> Result<ImageRef, ManifestError> {
        let s = self.reference(node, field)?;
        if FramePattern::find(&s).is_ok_and(|p| p.is_some()) {
            return Err(self.at(
                node.span(),
                field,
                &format!("{s:?} numbers frames; only a job's content may be a sequence"),
            ));
        }
        self.located(node, field, &s)
    }

    /// The image `s` names, checked: an s3:// URI, or a local image file.
    fn located(&self, node: &Node, field: &str, s: &str) -> Result<ImageRef, ManifestError> {
        let s = s.to_owned();
        if s.trim().is_empty() {
            return Err(self.at(node.span(), field, "is empty: give a path or an s3:// URI"));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            if !rest.contains('/') || rest.ends_with('/') {
                return Err(self.at(node.span(), field, &format!("{s:?} is not s3://bucket/key")));
            }
            return Ok(ImageRef::S3(s));
        }
        if s.contains("://") {
            return Err(self.at(
                node.span(),
                field,
                &format!("{s:?}: only local paths and s3:// URIs are supported"),
            ));
        }
        let path = self.base.join(&s);
        if !path.exists() {
            return Err(self.at(
                node.span(),
                field,
                &format!(
                    "{} does not exist (relative paths start at the manifest's folder)",
                    path.display()
                ),
            ));
        }
        // Each file once, however many jobs and wedges name it.
        if !self.checked.borrow().contains(&path) {
            crate::input::check_file(&path)
                .map_err(|e| self.at(node.span(), field, &e.to_string()))?;
            self.checked.borrow_mut().insert(path.clone());
        }
        Ok(ImageRef::Local(path))
    }

    /// One style "look": a path, `{image, weight}`, or a list of those (a blend).
    pub(super) fn look(
        &self,
        node: &Node,
        field: &str,
    ) -> Result<Vec<(ImageRef, f64)>, ManifestError> {
        let one = |n: &Node, f: &str| -> Result<(ImageRef, f64), ManifestError> {
            match n {
                Node::Mapping(m) => {
                    self.known_keys(m, f, &["image", "weight"])?;
                    let image = m
                        .get_node("image")
                        .ok_or_else(|| self.at(n.span(), f, "needs `image`"))?;
                    let weight = match m.get_node("weight") {
                        Some(w) => self.float(w, &format!("{f}.weight"))?,
                        None => 1.0,
                    };
                    if !(weight.is_finite() && weight >= 0.0) {
                        return Err(self.at(
                            n.span(),
                            &format!("{f}.weight"),
                            &format!("{weight} is not a finite number >= 0"),
                        ));
                    }
                    Ok((self.image(image, &format!("{f}.image"))?, weight))
                }
                _ => Ok((self.image(n, f)?, 1.0)),
            }
        };
        let look = match node {
            Node::Sequence(items) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, n)| one(n, &format!("{field}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
            Node::Sequence(_) => {
                return Err(self.at(
                    node.span(),
                    field,
                    "an empty blend: list at least one style image",
                ))
            }
            _ => vec![one(node, field)?],
        };
        if look.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err(self.at(node.span(), field, "the blend weights sum to 0"));
        }
        Ok(look)
    }
}

/// The variables a manifest may use: `STYLEFARM_*` (an asset root shared by a studio's
/// manifests, say), except names that say they hold a secret. A manifest may come from
/// someone else, and what it expands ends up in paths, S3 keys and labels the farm
/// stores: anything else in the environment is refused, by name.
pub const VARIABLE_PREFIX: &str = "STYLEFARM_";
/// Words (between `_`) that mark a `STYLEFARM_*` variable as a secret or a secret's path.
pub const SECRET_WORDS: [&str; 6] = [
    "KEY",
    "SECRET",
    "TOKEN",
    "TOKENS",
    "PASSWORD",
    "CREDENTIALS",
];

/// Why `${name}` may not be expanded, if it may not.
fn refused_variable(name: &str) -> Option<String> {
    let Some(rest) = name.strip_prefix(VARIABLE_PREFIX) else {
        return Some(format!(
            "a manifest may only use {VARIABLE_PREFIX}* variables (it may come from someone else, and must not copy your environment into the farm)"
        ));
    };
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Some(format!(
            "a variable name is {VARIABLE_PREFIX} then A-Z, 0-9 and _"
        ));
    }
    rest.split('_').find(|w| SECRET_WORDS.contains(w)).map(|w| {
        format!(
            "its name has {w} in it, so it may hold a secret; manifests may not use such variables"
        )
    })
}

/// Replaces `${NAME}` with the variable's value from `env`; a variable refused by
/// [`refused_variable`] or unset is an error that names it.
fn expand_env(s: &str, env: Env<'_>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{s:?}: `${{` without a closing `}}`"))?;
        let name = &after[..end];
        if let Some(why) = refused_variable(name) {
            return Err(format!("{s:?} uses ${{{name}}}, which is refused: {why}"));
        }
        let value = env(name).ok_or_else(|| {
            format!("{s:?} uses ${{{name}}}, which is not set in the environment")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The frames a job or wedge renders, as its `frames` lists them.
#[derive(Debug, Clone)]
pub(super) struct Frames {
    /// In the order written, each once.
    pub list: Vec<u32>,
}

/// A content reference as read.
#[derive(Debug, Clone)]
pub(super) enum Content {
    /// One photo.
    Still(ImageRef),
    /// A numbered sequence: each frame's number and image.
    Sequence {
        /// How its files are numbered.
        pattern: FramePattern,
        /// Each frame and its image, in the order of `frames`.
        images: Vec<(u32, ImageRef)>,
    },
}
