//! The manifest file as it is read: typed scalars, mappings and sequences with the line
//! each came from, known-key checks, and image references with `${NAME}` expanded.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

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

    pub(super) fn image(&self, node: &Node, field: &str) -> Result<ImageRef, ManifestError> {
        let s = expand_env(&self.string(node, field)?, self.env)
            .map_err(|e| self.at(node.span(), field, &e))?;
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
