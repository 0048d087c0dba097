//! What one job renders: its inputs as storage references, its parameters and the
//! identity of the network weights. The coordinator, the workers and the CLI all carry
//! this one type; the wire form converts to it in `stylefarm_proto::convert`.

use serde::{Deserialize, Serialize};

use crate::error::InvalidField;
use crate::params::{InitKind, RenderParams};

/// Most style images one job may blend.
pub const MAX_STYLES: usize = 16;
/// Longest output name accepted.
pub const MAX_NAME_LEN: usize = 200;
/// Longest object URI accepted.
pub const MAX_URI_LEN: usize = 2048;
/// Largest side an image's stated size may have (a worker's pixel budget refuses most
/// images long before).
pub const MAX_IMAGE_SIDE: u32 = 1 << 16;

/// An object in storage: `s3://bucket/key` or a local path, with the SHA-256 of its
/// bytes (inputs are content-addressed, so the hash is their identity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Where the bytes are.
    pub uri: String,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    /// What the submitter called it (the path or URI in their manifest), for messages;
    /// empty when unknown. Never used to find the bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    /// Width and height from the image's header, when the submitter read it; for the
    /// coordinator's memory estimate only (workers read the real header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dims: Option<(u32, u32)>,
}

/// A style image and its weight in the blend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StyleRef {
    /// The painting.
    pub image: ObjectRef,
    /// Its blend weight; finite and >= 0, and the weights of a job sum to more than 0.
    pub weight: f64,
}

/// One job: one output image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Output name, unique within its batch; a file name without directories.
    pub name: String,
    /// The photo whose content is kept.
    pub content: ObjectRef,
    /// The painting(s) whose style is taken.
    pub styles: Vec<StyleRef>,
    /// The starting image when `params.init` is `image`.
    pub init_image: Option<ObjectRef>,
    /// Engine parameters.
    pub params: RenderParams,
    /// SHA-256 of the VGG weights file the job must run with.
    pub weights_sha256: String,
    /// Where the published result goes (set by the coordinator; empty before).
    pub output_key: String,
    /// Names of jobs of the same batch that must succeed before this one may run.
    pub after: Vec<String>,
    /// The frame before this one, for temporal coherence (`params.temporal_weight`):
    /// its job (one of `after`, so its result exists when this one runs) and its content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousFrame>,
}

/// The previous frame of a sequence: the job that rendered it, in the same batch, and
/// its content, between which and this frame's content the optical flow is measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousFrame {
    /// The job's name; its result is that job's output.
    pub name: String,
    /// The previous frame's content.
    pub content: ObjectRef,
}

impl JobSpec {
    /// Checks every field; the error names the first field at fault.
    pub fn validate(&self) -> Result<(), InvalidField> {
        check_name(&self.name)?;
        self.content.validate("content")?;
        if self.after.len() > crate::limits::MAX_AFTER {
            return Err(InvalidField::new(
                "after",
                format!(
                    "{} jobs to wait on, at most {} are allowed",
                    self.after.len(),
                    crate::limits::MAX_AFTER
                ),
            ));
        }
        for (i, a) in self.after.iter().enumerate() {
            check_name(a).map_err(|e| InvalidField::new(format!("after[{i}]"), e.reason))?;
            if *a == self.name {
                return Err(InvalidField::new(
                    format!("after[{i}]"),
                    "a job cannot wait on itself",
                ));
            }
        }
        if self.styles.is_empty() {
            return Err(InvalidField::new(
                "styles",
                "at least one style image is required",
            ));
        }
        if self.styles.len() > MAX_STYLES {
            return Err(InvalidField::new(
                "styles",
                format!(
                    "{} styles given, at most {MAX_STYLES} are allowed",
                    self.styles.len()
                ),
            ));
        }
        for (i, s) in self.styles.iter().enumerate() {
            s.image.validate(&format!("styles[{i}].image"))?;
            if !(s.weight.is_finite() && s.weight >= 0.0) {
                return Err(InvalidField::new(
                    format!("styles[{i}].weight"),
                    format!("{} is not a finite number >= 0", s.weight),
                ));
            }
        }
        if self.styles.iter().map(|s| s.weight).sum::<f64>() <= 0.0 {
            return Err(InvalidField::new("styles", "the blend weights sum to 0"));
        }
        match (&self.params.init, &self.init_image) {
            (InitKind::Image, None) => {
                return Err(InvalidField::new(
                    "init_image",
                    "required when params.init is image",
                ))
            }
            (InitKind::Image, Some(r)) => r.validate("init_image")?,
            (_, Some(_)) => {
                return Err(InvalidField::new(
                    "init_image",
                    "given, but params.init is not image",
                ))
            }
            (_, None) => {}
        }
        self.params.validate().map_err(|e| e.within("params"))?;
        if let Some(p) = &self.previous {
            check_name(&p.name).map_err(|e| InvalidField::new("previous.name", e.reason))?;
            if !self.after.contains(&p.name) {
                return Err(InvalidField::new(
                    "previous.name",
                    format!(
                        "{} is not one of `after`: its result would not be there yet",
                        p.name
                    ),
                ));
            }
            p.content.validate("previous.content")?;
            if self.params.temporal_weight <= 0.0 {
                return Err(InvalidField::new(
                    "previous",
                    "given, but params.temporal_weight is 0",
                ));
            }
        }
        check_sha256("weights_sha256", &self.weights_sha256)
    }
}

impl ObjectRef {
    fn validate(&self, field: &str) -> Result<(), InvalidField> {
        if self.uri.trim().is_empty() {
            return Err(InvalidField::new(format!("{field}.uri"), "is empty"));
        }
        if self.uri.len() > MAX_URI_LEN || self.uri.chars().any(char::is_control) {
            return Err(InvalidField::new(
                format!("{field}.uri"),
                format!("must be at most {MAX_URI_LEN} bytes without control characters"),
            ));
        }
        if self.label.len() > MAX_URI_LEN || self.label.chars().any(char::is_control) {
            return Err(InvalidField::new(
                format!("{field}.label"),
                format!("must be at most {MAX_URI_LEN} bytes without control characters"),
            ));
        }
        if let Some((w, h)) = self.dims {
            for (name, v) in [("width", w), ("height", h)] {
                if v == 0 || v > MAX_IMAGE_SIDE {
                    return Err(InvalidField::new(
                        format!("{field}.{name}"),
                        format!(
                            "{v} is outside 1..={MAX_IMAGE_SIDE} (both 0 when the size is not known)"
                        ),
                    ));
                }
            }
        }
        check_sha256(&format!("{field}.sha256"), &self.sha256)
    }
}

/// Checks an output name: non-empty, at most [`MAX_NAME_LEN`] bytes, letters, digits and
/// `-_.+=@,` only, not starting with a dot.
pub fn check_name(name: &str) -> Result<(), InvalidField> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.+=@,".contains(c);
    if name.is_empty() {
        return Err(InvalidField::new("name", "is empty"));
    }
    if name.len() > MAX_NAME_LEN || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(InvalidField::new(
            "name",
            format!(
                "{name:?} is not a valid output name (at most {MAX_NAME_LEN} of A-Z a-z 0-9 - _ . + = @ , not starting with a dot)"
            ),
        ));
    }
    Ok(())
}

/// Checks a lower-case hex SHA-256.
pub fn check_sha256(field: &str, value: &str) -> Result<(), InvalidField> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            format!("{value:?} is not a lower-case hex SHA-256 (64 characters)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(c: char) -> ObjectRef {
        ObjectRef {
            dims: None,
            uri: format!("s3://in/{c}"),
            sha256: c.to_string().repeat(64),
            label: format!("shots/{c}.jpg"),
        }
    }

    fn spec() -> JobSpec {
        JobSpec {
            name: "tubingen-starry".into(),
            content: obj('a'),
            styles: vec![StyleRef {
                image: obj('b'),
                weight: 1.0,
            }],
            init_image: None,
            params: RenderParams::default(),
            weights_sha256: "c".repeat(64),
            output_key: String::new(),
            after: Vec::new(),
            previous: None,
        }
    }

    #[test]
    fn a_valid_spec_passes_and_each_bad_field_is_named() {
        spec().validate().expect("valid");
        let cases: Vec<(Box<dyn Fn(&mut JobSpec)>, &str)> = vec![
            (Box::new(|s| s.name = "../x".into()), "name"),
            (Box::new(|s| s.name = String::new()), "name"),
            (Box::new(|s| s.content.uri = " ".into()), "content.uri"),
            (
                Box::new(|s| s.content.sha256 = "ABC".into()),
                "content.sha256",
            ),
            (
                Box::new(|s| s.styles[0].image.label = "a\nb".into()),
                "styles[0].image.label",
            ),
            (Box::new(|s| s.styles.clear()), "styles"),
            (
                Box::new(|s| s.styles[0].weight = f64::NAN),
                "styles[0].weight",
            ),
            (Box::new(|s| s.styles[0].weight = 0.0), "styles"),
            (Box::new(|s| s.params.init = InitKind::Image), "init_image"),
            (Box::new(|s| s.init_image = Some(obj('d'))), "init_image"),
            (Box::new(|s| s.params.size = 0), "params.size"),
            (
                Box::new(|s| s.params.style_weight = f64::INFINITY),
                "params.style_weight",
            ),
            (Box::new(|s| s.weights_sha256.clear()), "weights_sha256"),
            (
                Box::new(|s| s.params.temporal_weight = -1.0),
                "params.temporal_weight",
            ),
            (
                Box::new(|s| {
                    s.params.temporal_weight = 100.0;
                    s.previous = Some(PreviousFrame {
                        name: "frame.1001".into(),
                        content: obj('e'),
                    });
                }),
                "previous.name",
            ),
            (
                Box::new(|s| {
                    s.after = vec!["frame.1001".into()];
                    s.previous = Some(PreviousFrame {
                        name: "frame.1001".into(),
                        content: obj('e'),
                    });
                }),
                "previous",
            ),
            (
                Box::new(|s| {
                    s.params.temporal_weight = 100.0;
                    s.after = vec!["frame.1001".into()];
                    s.previous = Some(PreviousFrame {
                        name: "frame.1001".into(),
                        content: ObjectRef {
                            uri: String::new(),
                            ..obj('e')
                        },
                    });
                }),
                "previous.content.uri",
            ),
        ];
        for (edit, field) in cases {
            let mut s = spec();
            edit(&mut s);
            let err = s.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }
}
