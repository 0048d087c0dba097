//! The manifest file as it is read: typed scalars, mappings and sequences with the line
//! each came from, known-key checks, and image references with `${NAME}` expanded.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};

use std::path::Path;

use super::{Env, ImageRef, ManifestError};

/// The file being read and the folder its relative paths start from.
pub(super) struct Reader<'a> {
    pub(super) file: &'a Path,
    pub(super) base: &'a Path,
    pub(super) env: Env<'a>,
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
        if !path.is_file() {
            return Err(self.at(
                node.span(),
                field,
                &format!(
                    "{} does not exist (relative paths start at the manifest's folder)",
                    path.display()
                ),
            ));
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

/// Replaces `${NAME}` with the variable's value from `env` (an asset root shared by a
/// studio's manifests, say); an unset variable is an error that names it.
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
        let value = env(name).ok_or_else(|| {
            format!("{s:?} uses ${{{name}}}, which is not set in the environment")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
