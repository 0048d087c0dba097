//! Jobs and wedges expanded into one [`PlannedJob`] per output: a wedge is the product
//! of its contents, looks and swept parameters, each output named after what it varies.

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::{Node, Span};
use serde_json::Value;
use stylefarm_core::params::{DEFAULT_TEMPORAL_WEIGHT, MAX_TEMPORAL_WEIGHT};
use stylefarm_core::spec::check_name;

use super::params::{param_value, Params};
use super::reader::{Content, Reader};
use super::{ImageRef, ManifestError, PlannedJob, MAX_JOBS};
use stylefarm_core::frames::FramePattern;

impl Reader<'_> {
    /// One entry of `jobs`: one output, or one per frame of a sequence.
    pub(super) fn job(
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
                "content",
                "frames",
                "style",
                "styles",
                "init_image",
                "params",
                "after",
                "chain",
                "temporal",
            ],
        )?;
        let frames = match m.get_node("frames") {
            Some(f) => Some(self.frames(f, &format!("{field}.frames"))?),
            None => None,
        };
        let after = match m.get_node("after") {
            None => Vec::new(),
            Some(n @ Node::Sequence(items)) => {
                if items.len() > stylefarm_core::limits::MAX_AFTER {
                    return Err(self.at(
                        n.span(),
                        &format!("{field}.after"),
                        &format!("at most {} names", stylefarm_core::limits::MAX_AFTER),
                    ));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, a)| self.string(a, &format!("{field}.after[{i}]")))
                    .collect::<Result<_, _>>()?
            }
            Some(n) => vec![self.string(n, &format!("{field}.after"))?],
        };
        let chain = self.chain(m.get_node("chain"), field)?;
        let content_node = m
            .get_node("content")
            .ok_or_else(|| self.at(node.span(), field, "needs `content`: the photo to restyle"))?;
        let content = self.content(content_node, &format!("{field}.content"), frames.as_ref())?;
        if let (Content::Still(_), Some(c)) = (&content, m.get_node("chain").filter(|_| chain)) {
            return Err(self.at(
                c.span(),
                &format!("{field}.chain"),
                "given, but `content` is one image: only a sequence's frames chain",
            ));
        }
        let temporal = self.temporal(m.get_node("temporal"), field, &content)?;
        if let (Content::Still(_), Some(f)) = (&content, m.get_node("frames")) {
            return Err(self.at(
                f.span(),
                &format!("{field}.frames"),
                "given, but `content` is one image: number its frames (plate.####.exr or plate.%04d.exr)",
            ));
        }
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
        let chain = chain || temporal.is_some();
        let name = match m.get_node("name") {
            Some(n) => Some(self.string(n, &format!("{field}.name"))?),
            None => None,
        };
        let count = match &content {
            Content::Still(_) => 1,
            Content::Sequence { images, .. } => images.len(),
        };
        if jobs.len() + count > MAX_JOBS {
            return Err(self.at(
                node.span(),
                field,
                &format!("expands to more than {MAX_JOBS} jobs in all"),
            ));
        }
        let sequence = match &content {
            Content::Still(_) => None,
            Content::Sequence { pattern, .. } => Some(
                name.clone()
                    .unwrap_or_else(|| default_name(&sequence_stem(pattern), &styles, &[])),
            ),
        };
        let first = jobs.len();
        for (name, content, frame) in outputs(&content, name.as_deref(), &styles, &[]) {
            let mut job = self.finish(
                node,
                field,
                name,
                content,
                styles.clone(),
                init_image.clone(),
                &params,
            )?;
            job.frame = frame;
            job.after.clone_from(&after);
            job.sequence.clone_from(&sequence);
            jobs.push(job);
        }
        if chain {
            link(&mut jobs[first..], temporal);
        }
        Ok(())
    }

    /// `chain: true|false` (absent: false).
    fn chain(&self, node: Option<&Node>, field: &str) -> Result<bool, ManifestError> {
        let Some(n) = node else {
            return Ok(false);
        };
        let f = format!("{field}.chain");
        self.scalar(n, &f)?
            .as_bool()
            .ok_or_else(|| self.at(n.span(), &f, "expected true or false"))
    }

    /// A job's `temporal: {weight: W}`, for sequences only; `weight` defaults to
    /// [`DEFAULT_TEMPORAL_WEIGHT`].
    fn temporal(
        &self,
        node: Option<&Node>,
        field: &str,
        content: &Content,
    ) -> Result<Option<f64>, ManifestError> {
        let Some(node) = node else {
            return Ok(None);
        };
        let field = format!("{field}.temporal");
        if let Content::Still(_) = content {
            return Err(self.at(
                node.span(),
                &field,
                "given, but `content` is one image: temporal coherence is for a sequence's frames",
            ));
        }
        let m = self.mapping(node, &field)?;
        self.known_keys(m, &field, &["weight"])?;
        let Some(w) = m.get_node("weight") else {
            return Ok(Some(DEFAULT_TEMPORAL_WEIGHT));
        };
        let f = format!("{field}.weight");
        let weight = self.float(w, &f)?;
        if !(weight.is_finite() && weight > 0.0 && weight <= MAX_TEMPORAL_WEIGHT) {
            return Err(self.at(
                w.span(),
                &f,
                &format!("{weight} is not a number above 0 and at most {MAX_TEMPORAL_WEIGHT} (leave `temporal` out for frames on their own)"),
            ));
        }
        Ok(Some(weight))
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
            frame: None,
            after: Vec::new(),
            sequence: None,
            previous: None,
        })
    }

    pub(super) fn wedge(
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
                "frames",
                "styles",
                "init_image",
                "params",
                "sweep",
                "chain",
                "temporal",
            ],
        )?;
        let frames = match m.get_node("frames") {
            Some(f) => Some(self.frames(f, &format!("{field}.frames"))?),
            None => None,
        };
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
            .map(|(i, n)| self.content(n, &format!("{field}.contents[{i}]"), frames.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let chain = self.chain(m.get_node("chain"), field)?;
        let sequence = contents
            .iter()
            .find(|c| matches!(c, Content::Sequence { .. }))
            .unwrap_or(&contents[0]);
        if let (Content::Still(_), Some(c)) = (sequence, m.get_node("chain").filter(|_| chain)) {
            return Err(self.at(
                c.span(),
                &format!("{field}.chain"),
                "given, but no content numbers its frames: only a sequence's frames chain",
            ));
        }
        let temporal = self.temporal(m.get_node("temporal"), field, sequence)?;
        let chain = chain || temporal.is_some();
        if let Some(f) = m.get_node("frames") {
            if contents.iter().all(|c| matches!(c, Content::Still(_))) {
                return Err(self.at(
                    f.span(),
                    &format!("{field}.frames"),
                    "given, but no content numbers its frames (plate.####.exr or plate.%04d.exr)",
                ));
            }
        }
        let outputs_per_look: usize = contents
            .iter()
            .map(|c| match c {
                Content::Still(_) => 1,
                Content::Sequence { images, .. } => images.len(),
            })
            .sum();
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
            .try_fold(outputs_per_look * looks.len(), usize::checked_mul);
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
                    let first = jobs.len();
                    for (name, image, frame) in outputs(content, None, look, &tags) {
                        let name = match &prefix {
                            Some(p) => format!("{p}-{name}"),
                            None => name,
                        };
                        let mut job = self.finish(
                            node,
                            field,
                            name,
                            image,
                            look.clone(),
                            init_image.clone(),
                            &params,
                        )?;
                        job.frame = frame;
                        jobs.push(job);
                    }
                    if chain {
                        link(&mut jobs[first..], temporal);
                    }
                    if !advance(&mut pick, &sweep) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Chains one sequence's frames: each runs after the one before it, so frames come out
/// in order, one at a time; with a temporal weight each also starts from and keeps close
/// to the one before it. A still (one job) is left as it is.
fn link(frames: &mut [PlannedJob], temporal: Option<f64>) {
    for i in 0..frames.len() {
        if frames[i].frame.is_none() {
            continue;
        }
        if let Some(w) = temporal {
            frames[i].params.temporal_weight = w;
        }
        if i == 0 {
            continue;
        }
        let (before, rest) = frames.split_at_mut(i);
        let (prev, job) = (&before[i - 1], &mut rest[0]);
        job.after.push(prev.name.clone());
        if temporal.is_some() {
            job.previous = Some((prev.name.clone(), prev.content.clone()));
        }
    }
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

/// The outputs one content makes with one look: (name, content image, frame). A still
/// is one output named `name` (else after what it combines); a sequence one per frame,
/// named `NAME.FRAME` with the frame number padded as its files are.
fn outputs(
    content: &Content,
    name: Option<&str>,
    styles: &[(ImageRef, f64)],
    tags: &[String],
) -> Vec<(String, ImageRef, Option<u32>)> {
    match content {
        Content::Still(image) => {
            let name =
                name.map_or_else(|| default_name(&image.stem(), styles, tags), str::to_owned);
            vec![(name, image.clone(), None)]
        }
        Content::Sequence { pattern, images } => {
            let base = name.map_or_else(
                || default_name(&sequence_stem(pattern), styles, tags),
                str::to_owned,
            );
            images
                .iter()
                .map(|(frame, image)| {
                    (
                        format!("{base}.{}", pattern.number(*frame)),
                        image.clone(),
                        Some(*frame),
                    )
                })
                .collect()
        }
    }
}

/// A sequence's name in output names: its files' name before the frame number
/// (`plates/sh042.####.exr`: `sh042`).
fn sequence_stem(pattern: &FramePattern) -> String {
    let file = pattern
        .prefix
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let stem = file.trim_end_matches(['.', '_', '-']);
    if stem.is_empty() {
        "frame".into()
    } else {
        stem.to_owned()
    }
}

/// `content_style[+style2]` then `-tag` per swept parameter; characters an output name
/// may not hold become `_`.
fn default_name(content: &str, styles: &[(ImageRef, f64)], tags: &[String]) -> String {
    let looks: Vec<String> = styles.iter().map(|(s, _)| s.stem()).collect();
    let mut name = format!("{content}_{}", looks.join("+"));
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
