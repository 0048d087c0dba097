//! Batch manifests (YAML): a batch name, parameter defaults, explicit jobs and wedges
//! (the cartesian product of contents x styles x swept parameters), expanded here into
//! one [`PlannedJob`] per output. Every error names the file, line and field and says
//! what is allowed; see `examples/` and README.md for the format.

//!
//! - [`reader`]: the YAML file as it is read: typed values with their lines, image
//!   references (local ones checked to be image files, see [`crate::input`]), and
//!   `${STYLEFARM_*}` expansion (through a lookup the caller passes).
//! - [`params`]: engine parameters typed by their defaults and validated as a set.
//! - [`expand`]: jobs and wedges expanded into [`PlannedJob`]s, with their output names.

mod expand;
mod params;
mod reader;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use stylefarm_core::limits::MAX_ATTEMPTS;
use stylefarm_core::RenderParams;

use params::Params;
use reader::Reader;

/// How `${NAME}` in image references is looked up: the process environment by default,
/// a map in tests. Only `STYLEFARM_*` names that do not look like secrets are looked up
/// at all (see `reader`).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Largest manifest file read.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Most jobs one manifest may expand to: what one batch may hold.
pub const MAX_JOBS: usize = stylefarm_core::limits::MAX_JOBS_PER_BATCH as usize;

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
    /// Its frame, when its content is a frame of a sequence.
    pub frame: Option<u32>,
    /// Names of jobs that must succeed before it runs (output names, a sequence's
    /// `name` standing for all its frames; resolved when the manifest is read).
    pub after: Vec<String>,
    /// The name of the manifest entry it came from, when that named a sequence.
    pub sequence: Option<String>,
    /// The frame before it (its job's name and content), when the sequence is rendered
    /// with temporal coherence.
    pub previous: Option<(String, ImageRef)>,
}

/// Replaces each job's `after` names with output names: a sequence's name stands for
/// every frame of it. A name that is neither is refused with the job's line.
fn resolve_after(file: &Path, jobs: &mut [PlannedJob]) -> Result<(), ManifestError> {
    let names: std::collections::HashSet<String> = jobs.iter().map(|j| j.name.clone()).collect();
    let mut frames: HashMap<String, Vec<String>> = HashMap::new();
    for j in jobs.iter() {
        if let Some(s) = &j.sequence {
            frames.entry(s.clone()).or_default().push(j.name.clone());
        }
    }
    for j in jobs.iter_mut() {
        let mut resolved = Vec::new();
        for a in &j.after {
            if names.contains(a) {
                resolved.push(a.clone());
            } else if let Some(all) = frames.get(a) {
                resolved.extend(all.iter().filter(|f| **f != j.name).cloned());
            } else {
                return Err(ManifestError {
                    file: file.to_owned(),
                    line: j.line,
                    field: "after".into(),
                    message: format!(
                        "{a:?} names no job of this manifest (an output name, or the `name` of a sequence for all its frames)"
                    ),
                });
            }
        }
        resolved.sort();
        resolved.dedup();
        if resolved.len() > stylefarm_core::limits::MAX_AFTER {
            return Err(ManifestError {
                file: file.to_owned(),
                line: j.line,
                field: "after".into(),
                message: format!(
                    "waits on {} jobs, at most {} are allowed",
                    resolved.len(),
                    stylefarm_core::limits::MAX_AFTER
                ),
            });
        }
        j.after = resolved;
    }
    Ok(())
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
    /// Reads and expands a manifest file; `${NAME}` comes from the process environment.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        Self::load_with_env(path, &process_env)
    }

    /// [`Manifest::load`] with `${NAME}` looked up in `env`.
    pub fn load_with_env(path: &Path, env: Env<'_>) -> Result<Self, ManifestError> {
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
        Self::parse(path, &base, &text, env)
    }

    /// Parses manifest text; `base` is the folder relative image paths start from.
    pub fn parse(
        file: &Path,
        base: &Path,
        text: &str,
        env: Env<'_>,
    ) -> Result<Self, ManifestError> {
        let reader = Reader {
            file,
            base,
            env,
            checked: std::cell::RefCell::default(),
        };
        // A key given twice is an error: the last one silently winning hides typos.
        let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
        let root = marked_yaml::parse_yaml_with_options(0, text, options)
            .map_err(|e| reader.load_error(&e))?;
        let top = reader.mapping(&root, "")?;
        reader.known_keys(
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
            Some(n) => reader.string(n, "batch")?,
            None => return Err(reader.at(root.span(), "batch", "is required: the batch's name")),
        };
        if batch.trim().is_empty() {
            return Err(reader.at(root.span(), "batch", "is empty"));
        }
        let priority = match top.get_node("priority") {
            Some(n) => {
                reader.integer(n, "priority", i64::from(i32::MIN), i64::from(i32::MAX))? as i32
            }
            None => 0,
        };
        let max_attempts = match top.get_node("max_attempts") {
            Some(n) => reader.integer(n, "max_attempts", 1, i64::from(MAX_ATTEMPTS))? as u32,
            None => 0,
        };
        let weights = match top.get_node("weights") {
            Some(n) => Some(reader.base.join(reader.string(n, "weights")?)),
            None => None,
        };
        let mut defaults = Params::default();
        if let Some(n) = top.get_node("defaults") {
            defaults.apply(&reader, n, "defaults")?;
            // Out-of-range defaults are reported at their own line even if no job
            // would use them as they are.
            defaults.resolve(&reader, n.span(), "defaults")?;
        }
        let mut jobs = Vec::new();
        if let Some(n) = top.get_node("jobs") {
            for (i, job) in reader.sequence(n, "jobs")?.iter().enumerate() {
                reader.job(job, &format!("jobs[{i}]"), &defaults, &mut jobs)?;
            }
        }
        if let Some(n) = top.get_node("wedges") {
            for (i, wedge) in reader.sequence(n, "wedges")?.iter().enumerate() {
                reader.wedge(wedge, &format!("wedges[{i}]"), &defaults, &mut jobs)?;
            }
        }
        if jobs.is_empty() {
            return Err(reader.at(
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
        resolve_after(file, &mut jobs)?;
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
