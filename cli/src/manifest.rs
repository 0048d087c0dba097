//! Batch manifests (YAML): a batch name, parameter defaults, explicit jobs and wedges
//! (the cartesian product of contents x styles x swept parameters), expanded here into
//! one [`PlannedJob`] per output. Every error names the file, line and field and says
//! what is allowed; see `examples/` and README.md for the format.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};
use serde_json::{Map, Value};
use stylefarm_core::params::parse_layer_list;
use stylefarm_core::spec::check_name;
use stylefarm_core::RenderParams;

/// Largest manifest file read.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Most jobs one manifest may expand to.
pub const MAX_JOBS: usize = 100_000;

/// A manifest error: where, which field, what is wrong and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line (0 when the error is about the whole file).
    pub line: usize,
    /// Dotted path of the field, e.g. `wedges[0].sweep.style_weight[1]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// An image a job reads: a local file or an object in S3.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageRef {
    /// A local file (relative references are resolved against the manifest's folder).
    Local(PathBuf),
    /// `s3://bucket/key`.
    S3(String),
}

impl ImageRef {
    /// The file name without its extension, for output names.
    pub fn stem(&self) -> String {
        let s = match self {
            Self::Local(p) => p.file_stem().map(|s| s.to_string_lossy().into_owned()),
            Self::S3(u) => u
                .rsplit('/')
                .next()
                .map(|n| n.rsplit_once('.').map_or(n, |(stem, _)| stem).to_owned()),
        };
        s.unwrap_or_default()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::S3(u) => f.write_str(u),
        }
    }
}

/// One output, fully specified.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedJob {
    /// Output name, unique in the batch.
    pub name: String,
    /// The content photo.
    pub content: ImageRef,
    /// Styles with blend weights.
    pub styles: Vec<(ImageRef, f64)>,
    /// Start image (for `init: image`).
    pub init_image: Option<ImageRef>,
    /// Every engine parameter.
    pub params: RenderParams,
    /// Where in the manifest the job came from (its list entry).
    pub line: usize,
}

/// A parsed, validated and expanded manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it was read from.
    pub file: PathBuf,
    /// The batch name.
    pub batch: String,
    /// Batch priority (higher first).
    pub priority: i32,
    /// Attempts per job (0: the coordinator's default).
    pub max_attempts: u32,
    /// Weights file named by the manifest, resolved against its folder.
    pub weights: Option<PathBuf>,
    /// Every job, in manifest order (wedges in product order).
    pub jobs: Vec<PlannedJob>,
}

impl Manifest {
    /// Reads and expands a manifest file.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let whole = |message: String| ManifestError {
            file: path.to_owned(),
            line: 0,
            field: String::new(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read: {e}")))?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(whole(format!(
                "{} bytes; a manifest may have at most {MAX_MANIFEST_BYTES}",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read: {e}")))?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        Self::parse(path, &base, &text)
    }

    /// Parses manifest text; `base` is the folder relative image paths start from.
    pub fn parse(file: &Path, base: &Path, text: &str) -> Result<Self, ManifestError> {
        let cx = Cx { file, base };
        // A key given twice is an error: the last one silently winning hides typos.
        let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
        let root = marked_yaml::parse_yaml_with_options(0, text, options)
            .map_err(|e| cx.load_error(&e))?;
        let top = cx.mapping(&root, "")?;
        cx.known_keys(
            top,
            "",
            &[
                "batch",
                "priority",
                "max_attempts",
                "weights",
                "defaults",
                "jobs",
                "wedges",
            ],
        )?;
        let batch = match top.get_node("batch") {
            Some(n) => cx.string(n, "batch")?,
            None => return Err(cx.at(root.span(), "batch", "is required: the batch's name")),
        };
        if batch.trim().is_empty() {
            return Err(cx.at(root.span(), "batch", "is empty"));
        }
        let priority = match top.get_node("priority") {
            Some(n) => cx.integer(n, "priority", i64::from(i32::MIN), i64::from(i32::MAX))? as i32,
            None => 0,
        };
        let max_attempts = match top.get_node("max_attempts") {
            Some(n) => cx.integer(n, "max_attempts", 1, 100)? as u32,
            None => 0,
        };
        let weights = match top.get_node("weights") {
            Some(n) => Some(cx.base.join(cx.string(n, "weights")?)),
            None => None,
        };
        let mut defaults = Params::default();
        if let Some(n) = top.get_node("defaults") {
            defaults.apply(&cx, n, "defaults")?;
            // Out-of-range defaults are reported at their own line even if no job
            // would use them as they are.
            defaults.resolve(&cx, n.span(), "defaults")?;
        }
        let mut jobs = Vec::new();
        if let Some(n) = top.get_node("jobs") {
            for (i, job) in cx.sequence(n, "jobs")?.iter().enumerate() {
                jobs.push(cx.job(job, &format!("jobs[{i}]"), &defaults)?);
            }
        }
        if let Some(n) = top.get_node("wedges") {
            for (i, wedge) in cx.sequence(n, "wedges")?.iter().enumerate() {
                cx.wedge(wedge, &format!("wedges[{i}]"), &defaults, &mut jobs)?;
            }
        }
        if jobs.is_empty() {
            return Err(cx.at(
                root.span(),
                "jobs",
                "the manifest has no jobs: give `jobs`, `wedges` or both",
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for j in &jobs {
            if let Some(first) = seen.insert(&j.name, j.line) {
                return Err(ManifestError {
                    file: file.to_owned(),
                    line: j.line,
                    field: "name".into(),
                    message: format!(
                        "output name {:?} is also produced at line {first}; names must be unique (set `name` on the job or wedge)",
                        j.name
                    ),
                });
            }
        }
        Ok(Self {
            file: file.to_owned(),
            batch,
            priority,
            max_attempts,
            weights,
            jobs,
        })
    }
}

/// Parameter values in their JSON form, each with where it was set, so a range error
/// found once they are merged still points at the line that set the value.
#[derive(Debug, Clone, Default)]
struct Params {
    values: Map<String, Value>,
    origin: HashMap<String, (Span, String)>,
}

impl Params {
    /// Sets every parameter of a `params`/`defaults` mapping.
    fn apply(&mut self, cx: &Cx<'_>, node: &Node, field: &str) -> Result<(), ManifestError> {
        for (key, value) in cx.mapping(node, field)?.iter() {
            let name = key.as_str();
            self.set(cx, name, value, &format!("{field}.{name}"), key.span())?;
        }
        Ok(())
    }

    fn set(
        &mut self,
        cx: &Cx<'_>,
        name: &str,
        node: &Node,
        field: &str,
        span: &Span,
    ) -> Result<(), ManifestError> {
        let value = param_value(cx, name, node, field)?;
        self.insert(name, value, span, field);
        Ok(())
    }

    /// Sets a value already checked by [`param_value`].
    fn insert(&mut self, name: &str, value: Value, span: &Span, field: &str) {
        self.values.insert(name.to_owned(), value);
        self.origin
            .insert(name.to_owned(), (*span, field.to_owned()));
    }

    /// The full, validated parameter set.
    fn resolve(
        &self,
        cx: &Cx<'_>,
        job_span: &Span,
        job_field: &str,
    ) -> Result<RenderParams, ManifestError> {
        let params: RenderParams = serde_json::from_value(Value::Object(self.values.clone()))
            .map_err(|e| cx.at(job_span, job_field, &e.to_string()))?;
        params.validate().map_err(|e| {
            let name = e.field.split(['.', '[']).next().unwrap_or_default();
            match self.origin.get(name) {
                Some((span, field)) => cx.at(span, &e.field.replacen(name, field, 1), &e.reason),
                None => cx.at(
                    job_span,
                    &format!("{job_field}.params.{}", e.field),
                    &e.reason,
                ),
            }
        })?;
        Ok(params)
    }
}

/// The JSON form of one parameter's YAML value, typed by the field's default so that a
/// wrong type or an unknown name is reported at its own line.
fn param_value(cx: &Cx<'_>, name: &str, node: &Node, field: &str) -> Result<Value, ManifestError> {
    let defaults = serde_json::to_value(RenderParams::default()).unwrap_or(Value::Null);
    let Some(default) = defaults.get(name) else {
        let known: Vec<&str> = defaults
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        return Err(cx.at(
            node.span(),
            field,
            &format!("unknown parameter; the parameters are {}", known.join(", ")),
        ));
    };
    let value = match default {
        Value::Array(_) => layers_value(cx, node, field)?,
        Value::Bool(_) => Value::Bool(
            cx.scalar(node, field)?
                .as_bool()
                .ok_or_else(|| cx.at(node.span(), field, "expected true or false"))?,
        ),
        Value::Number(n) if n.is_f64() => {
            let s = cx.scalar(node, field)?;
            let v: f64 = s.as_str().parse().map_err(|_| {
                cx.at(
                    node.span(),
                    field,
                    &format!("{:?} is not a number", s.as_str()),
                )
            })?;
            serde_json::Number::from_f64(v)
                .map(Value::Number)
                .ok_or_else(|| cx.at(node.span(), field, &format!("{v} is not a finite number")))?
        }
        Value::Number(_) => Value::from(cx.integer(node, field, 0, i64::MAX)?),
        _ => Value::String(cx.string(node, field)?),
    };
    // Type and enum checks for this field alone (ranges are checked on the merged set).
    let mut one = Map::new();
    one.insert(name.to_owned(), value.clone());
    serde_json::from_value::<RenderParams>(Value::Object(one)).map_err(|e| {
        let msg = e.to_string();
        cx.at(
            node.span(),
            field,
            msg.split(" at line").next().unwrap_or(&msg),
        )
    })?;
    Ok(value)
}

/// Layers as `relu1_1,relu2_1:0.5`, a list of such names, or a list of
/// `{layer, weight}` mappings.
fn layers_value(cx: &Cx<'_>, node: &Node, field: &str) -> Result<Value, ManifestError> {
    let mut out = Vec::new();
    let mut add = |text: &str, n: &Node| -> Result<(), ManifestError> {
        for l in parse_layer_list(text).map_err(|e| cx.at(n.span(), field, &e))? {
            out.push(serde_json::json!({"layer": l.layer, "weight": l.weight}));
        }
        Ok(())
    };
    match node {
        Node::Scalar(s) => add(s.as_str(), node)?,
        Node::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let f = format!("{field}[{i}]");
                match item {
                    Node::Scalar(s) => add(s.as_str(), item)?,
                    Node::Mapping(m) => {
                        cx.known_keys(m, &f, &["layer", "weight"])?;
                        let layer = m
                            .get_node("layer")
                            .ok_or_else(|| cx.at(item.span(), &f, "needs `layer`"))?;
                        let weight = match m.get_node("weight") {
                            Some(w) => cx.float(w, &format!("{f}.weight"))?,
                            None => 1.0,
                        };
                        add(
                            &format!("{}:{weight}", cx.string(layer, &format!("{f}.layer"))?),
                            item,
                        )?;
                    }
                    Node::Sequence(_) => {
                        return Err(cx.at(
                            item.span(),
                            &f,
                            "expected a layer name or {layer, weight}",
                        ))
                    }
                }
            }
        }
        Node::Mapping(_) => {
            return Err(cx.at(
                node.span(),
                field,
                "expected a list of layers or \"relu1_1,relu2_1:0.5\"",
            ))
        }
    }
    Ok(Value::Array(out))
}

/// The file being read and the folder its relative paths start from.
struct Cx<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl Cx<'_> {
    fn at(&self, span: &Span, field: &str, message: &str) -> ManifestError {
        ManifestError {
            file: self.file.to_owned(),
            line: span.start().map_or(0, marked_yaml::Marker::line),
            field: field.to_owned(),
            message: message.to_owned(),
        }
    }

    fn load_error(&self, e: &marked_yaml::LoadError) -> ManifestError {
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

    fn mapping<'n>(
        &self,
        node: &'n Node,
        field: &str,
    ) -> Result<&'n MarkedMappingNode, ManifestError> {
        node.as_mapping()
            .ok_or_else(|| self.at(node.span(), field, "expected a mapping (key: value lines)"))
    }

    fn sequence<'n>(&self, node: &'n Node, field: &str) -> Result<&'n [Node], ManifestError> {
        node.as_sequence().map(|s| &s[..]).ok_or_else(|| {
            self.at(
                node.span(),
                field,
                "expected a list (lines starting with -)",
            )
        })
    }

    fn scalar<'n>(
        &self,
        node: &'n Node,
        field: &str,
    ) -> Result<&'n MarkedScalarNode, ManifestError> {
        node.as_scalar()
            .ok_or_else(|| self.at(node.span(), field, "expected a single value"))
    }

    fn string(&self, node: &Node, field: &str) -> Result<String, ManifestError> {
        Ok(self.scalar(node, field)?.as_str().to_owned())
    }

    fn integer(&self, node: &Node, field: &str, min: i64, max: i64) -> Result<i64, ManifestError> {
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

    fn float(&self, node: &Node, field: &str) -> Result<f64, ManifestError> {
        let s = self.scalar(node, field)?.as_str();
        s.parse()
            .map_err(|_| self.at(node.span(), field, &format!("{s:?} is not a number")))
    }

    fn known_keys(
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

    fn image(&self, node: &Node, field: &str) -> Result<ImageRef, ManifestError> {
        let s =
            expand_env(&self.string(node, field)?).map_err(|e| self.at(node.span(), field, &e))?;
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
    fn look(&self, node: &Node, field: &str) -> Result<Vec<(ImageRef, f64)>, ManifestError> {
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

    fn job(
        &self,
        node: &Node,
        field: &str,
        defaults: &Params,
    ) -> Result<PlannedJob, ManifestError> {
        let m = self.mapping(node, field)?;
        self.known_keys(
            m,
            field,
            &["name", "content", "style", "styles", "init_image", "params"],
        )?;
        let content = m
            .get_node("content")
            .ok_or_else(|| self.at(node.span(), field, "needs `content`: the photo to restyle"))?;
        let content = self.image(content, &format!("{field}.content"))?;
        let styles = match (m.get_node("style"), m.get_node("styles")) {
            (Some(s), None) => self.look(s, &format!("{field}.style"))?,
            (None, Some(s)) => {
                let s_field = format!("{field}.styles");
                if !matches!(s, Node::Sequence(_)) {
                    return Err(self.at(
                        s.span(),
                        &s_field,
                        "expected a list of style images (use `style:` for one)",
                    ));
                }
                self.look(s, &s_field)?
            }
            (Some(_), Some(s)) => {
                return Err(self.at(s.span(), field, "give `style` or `styles`, not both"))
            }
            (None, None) => {
                return Err(self.at(
                    node.span(),
                    field,
                    "needs `style` (one image) or `styles` (a blend)",
                ))
            }
        };
        let init_image = match m.get_node("init_image") {
            Some(n) => Some(self.image(n, &format!("{field}.init_image"))?),
            None => None,
        };
        let mut params = defaults.clone();
        if let Some(p) = m.get_node("params") {
            params.apply(self, p, &format!("{field}.params"))?;
        }
        let name = match m.get_node("name") {
            Some(n) => self.string(n, &format!("{field}.name"))?,
            None => default_name(&content, &styles, &[]),
        };
        self.finish(node, field, name, content, styles, init_image, &params)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        node: &Node,
        field: &str,
        name: String,
        content: ImageRef,
        styles: Vec<(ImageRef, f64)>,
        init_image: Option<ImageRef>,
        params: &Params,
    ) -> Result<PlannedJob, ManifestError> {
        check_name(&name).map_err(|e| self.at(node.span(), &format!("{field}.name"), &e.reason))?;
        let params = params.resolve(self, node.span(), field)?;
        match (&params.init, &init_image) {
            (stylefarm_core::InitKind::Image, None) => {
                return Err(self.at(
                    node.span(),
                    &format!("{field}.init_image"),
                    "required when init is image",
                ))
            }
            (stylefarm_core::InitKind::Image, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return Err(self.at(
                    node.span(),
                    &format!("{field}.init_image"),
                    "given, but init is not image",
                ))
            }
        }
        Ok(PlannedJob {
            name,
            content,
            styles,
            init_image,
            params,
            line: node.span().start().map_or(0, marked_yaml::Marker::line),
        })
    }

    fn wedge(
        &self,
        node: &Node,
        field: &str,
        defaults: &Params,
        jobs: &mut Vec<PlannedJob>,
    ) -> Result<(), ManifestError> {
        let m = self.mapping(node, field)?;
        self.known_keys(
            m,
            field,
            &[
                "name",
                "contents",
                "styles",
                "init_image",
                "params",
                "sweep",
            ],
        )?;
        let list = |key: &str, what: &str| -> Result<&[Node], ManifestError> {
            let n = m.get_node(key).ok_or_else(|| {
                self.at(
                    node.span(),
                    field,
                    &format!("needs `{key}`: a list of {what}"),
                )
            })?;
            let items = self.sequence(n, &format!("{field}.{key}"))?;
            if items.is_empty() {
                return Err(self.at(
                    n.span(),
                    &format!("{field}.{key}"),
                    &format!("is empty: list at least one of {what}"),
                ));
            }
            Ok(items)
        };
        let contents = list("contents", "content photos")?
            .iter()
            .enumerate()
            .map(|(i, n)| self.image(n, &format!("{field}.contents[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let looks = list("styles", "style images (a nested list is a blend)")?
            .iter()
            .enumerate()
            .map(|(i, n)| self.look(n, &format!("{field}.styles[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let init_image = match m.get_node("init_image") {
            Some(n) => Some(self.image(n, &format!("{field}.init_image"))?),
            None => None,
        };
        let mut fixed = defaults.clone();
        if let Some(p) = m.get_node("params") {
            fixed.apply(self, p, &format!("{field}.params"))?;
        }
        // Swept parameters, in manifest order: (name, [(value node, its field)]).
        // Each swept value is checked and converted once, not once per combination.
        let mut sweep: Vec<(String, Vec<Swept>)> = Vec::new();
        if let Some(s) = m.get_node("sweep") {
            for (key, values) in self.mapping(s, &format!("{field}.sweep"))?.iter() {
                let f = format!("{field}.sweep.{}", key.as_str());
                let items = self.sequence(values, &f)?;
                if items.is_empty() {
                    return Err(self.at(values.span(), &f, "is empty: list the values to sweep"));
                }
                let name = key.as_str();
                let values = items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let field = format!("{f}[{i}]");
                        Ok(Swept {
                            value: param_value(self, name, n, &field)?,
                            span: *n.span(),
                            tag: format!(
                                "{name}{}",
                                tag(n.as_scalar().map_or("x", MarkedScalarNode::as_str))
                            ),
                            field,
                        })
                    })
                    .collect::<Result<Vec<_>, ManifestError>>()?;
                sweep.push((name.to_owned(), values));
            }
        }
        let total = sweep
            .iter()
            .map(|(_, v)| v.len())
            .try_fold(contents.len() * looks.len(), usize::checked_mul);
        if total.is_none_or(|t| jobs.len() + t > MAX_JOBS) {
            return Err(self.at(
                node.span(),
                field,
                &format!("expands to more than {MAX_JOBS} jobs in all"),
            ));
        }
        let prefix = match m.get_node("name") {
            Some(n) => Some(self.string(n, &format!("{field}.name"))?),
            None => None,
        };
        // Odometer over the swept values: the last parameter turns fastest.
        let mut pick = vec![0usize; sweep.len()];
        for content in &contents {
            for look in &looks {
                loop {
                    let mut params = fixed.clone();
                    let mut tags = Vec::new();
                    for ((name, values), &k) in sweep.iter().zip(&pick) {
                        let v = &values[k];
                        params.insert(name, v.value.clone(), &v.span, &v.field);
                        tags.push(v.tag.clone());
                    }
                    let mut name = default_name(content, look, &tags);
                    if let Some(p) = &prefix {
                        name = format!("{p}-{name}");
                    }
                    jobs.push(self.finish(
                        node,
                        field,
                        name,
                        content.clone(),
                        look.clone(),
                        init_image.clone(),
                        &params,
                    )?);
                    if !advance(&mut pick, &sweep) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Replaces `${NAME}` with the environment variable's value (an asset root shared by a
/// studio's manifests, say); an unset variable is an error that names it.
fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{s:?}: `${{` without a closing `}}`"))?;
        let name = &after[..end];
        let value = std::env::var(name)
            .map_err(|_| format!("{s:?} uses ${{{name}}}, which is not set in the environment"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Steps the odometer; false once every combination was produced (and resets it).
/// One value of a swept parameter, converted, with where it was written and the tag it
/// adds to output names.
struct Swept {
    value: Value,
    span: Span,
    field: String,
    tag: String,
}

fn advance(pick: &mut [usize], sweep: &[(String, Vec<Swept>)]) -> bool {
    for i in (0..pick.len()).rev() {
        pick[i] += 1;
        if pick[i] < sweep[i].1.len() {
            return true;
        }
        pick[i] = 0;
    }
    false
}

/// `content_style[+style2]` then `-tag` per swept parameter; characters an output name
/// may not hold become `_`.
fn default_name(content: &ImageRef, styles: &[(ImageRef, f64)], tags: &[String]) -> String {
    let looks: Vec<String> = styles.iter().map(|(s, _)| s.stem()).collect();
    let mut name = format!("{}_{}", content.stem(), looks.join("+"));
    for t in tags {
        name.push('-');
        name.push_str(t);
    }
    tag(&name)
}

fn tag(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.+=@,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
