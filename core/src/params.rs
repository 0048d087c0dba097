//! Engine parameters: everything that decides what one render produces.
//!
//! The same struct travels in a manifest, in a job spec on the wire and in an output's
//! JSON sidecar, so it is plain serde data with a [`RenderParams::validate`] that names
//! the field at fault.

use serde::{Deserialize, Serialize};

use crate::error::InvalidField;

/// Longest side accepted for an output, in pixels.
pub const MAX_SIZE: u32 = 8192;
/// Smallest output side accepted before the network's own limit is checked.
pub const MIN_SIZE: u32 = 16;
/// Most iterations one job may ask for.
pub const MAX_ITERATIONS: u32 = 100_000;

/// Which optimizer moves the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// L-BFGS as torch.optim.LBFGS (no line search), one iteration per evaluation.
    #[default]
    Lbfgs,
    /// Adam as torch.optim.Adam.
    Adam,
}

/// How L-BFGS chooses its step length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum LineSearch {
    /// torch.optim.LBFGS's `line_search_fn="strong_wolfe"`: each step is searched for
    /// along its direction until the loss falls enough and the slope flattens (one
    /// evaluation in most iterations, more where the step would overshoot).
    #[default]
    StrongWolfe,
    /// A fixed step (`lr`, `min(1, 1/|g|_1) * lr` at first), one evaluation per
    /// iteration; early steps can overshoot by orders of magnitude before it settles.
    None,
}

/// Where the optimized image starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum InitKind {
    /// The content photo itself.
    #[default]
    Content,
    /// Seeded uniform noise in [0, 1].
    Noise,
    /// A given image, resized to the output size; its reference is `JobSpec::init_image`.
    Image,
}

/// Pooling used between VGG blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// 2x2 max pooling, as the network was trained.
    #[default]
    Max,
    /// 2x2 average pooling (Gatys et al. found it gives smoother results).
    Avg,
}

/// How an input image's values relate to light, and so what is done before the
/// network (trained on sRGB-encoded photos) sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Transfer {
    /// Linear for OpenEXR files, sRGB for every other format.
    #[default]
    Auto,
    /// sRGB-encoded values, used as they are.
    Srgb,
    /// Linear light (scene-referred plates): encoded to sRGB, values above 1 clipped.
    Linear,
}

impl Transfer {
    /// Its name as manifests and sidecars write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Srgb => "srgb",
            Self::Linear => "linear",
        }
    }
}

/// The output's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// PNG, 8 or 16 bits per channel (`output_bit_depth`), sRGB, with the content's alpha.
    #[default]
    Png,
    /// OpenEXR, half float, linear light, with the content's alpha (colour premultiplied
    /// by it, as OpenEXR stores colour).
    Exr,
    /// JPEG, 8 bits, sRGB, quality 95; JPEG has no alpha.
    Jpg,
}

impl OutputFormat {
    /// Every format.
    pub const ALL: [OutputFormat; 3] = [Self::Png, Self::Exr, Self::Jpg];

    /// Its name as manifests and flags write it, and the output file's extension.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Exr => "exr",
            Self::Jpg => "jpg",
        }
    }

    /// The format a file name's extension names (`.png`, `.exr`, `.jpg` or `.jpeg`,
    /// any case), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "png" => Some(Self::Png),
            "exr" => Some(Self::Exr),
            "jpg" | "jpeg" => Some(Self::Jpg),
            _ => None,
        }
    }

    /// The media type a download of it is served as.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Exr => "image/x-exr",
            Self::Jpg => "image/jpeg",
        }
    }
}

/// A network layer with the weight of its term in the loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedLayer {
    /// A layer name such as `relu3_1` or `conv2_1`.
    pub layer: String,
    /// Its weight in the sum; finite and non-negative.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// Every parameter of one style-transfer optimization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenderParams {
    /// Long side of the output in pixels; the content photo is resized to it.
    pub size: u32,
    /// Optimizer iterations (one loss and gradient evaluation each) at the first scale,
    /// the only one for a single-scale render.
    pub iterations: u32,
    /// Long sides to optimize at, coarse to fine, ending at `size`. Empty (the default,
    /// `auto` in manifests and flags): [`RenderParams::schedule`] picks them.
    pub scales: Vec<u32>,
    /// Iterations at each scale after the first; 0 (the default): half of `iterations`.
    pub scale_iterations: u32,
    /// L-BFGS or Adam.
    pub optimizer: OptimizerKind,
    /// Learning rate: L-BFGS step scale (torch default 1.0) or Adam's rate in grey levels.
    pub learning_rate: f64,
    /// L-BFGS history size (torch.optim.LBFGS's `history_size`).
    pub lbfgs_history: u32,
    /// L-BFGS's step length rule.
    pub line_search: LineSearch,
    /// Weight of the content term (each layer's error relative to the photo's features).
    pub content_weight: f64,
    /// Weight of the style term (each layer's Gram error relative to the painting's).
    pub style_weight: f64,
    /// Weight of the total-variation term (relative to the photo's own).
    pub tv_weight: f64,
    /// Layers whose features the output should share with the content photo. Empty (the
    /// default): Gatys et al.'s `relu4_2`, or the deepest `reluN_2` the weights hold.
    pub content_layers: Vec<WeightedLayer>,
    /// Layers whose Gram matrices the output should share with the style(s). Empty (the
    /// default): Gatys et al.'s `relu1_1` to `relu5_1`, as many as the weights hold.
    pub style_layers: Vec<WeightedLayer>,
    /// Style images are resized to `size * style_scale` on their long side.
    pub style_scale: f64,
    /// Seed for noise initialisation.
    pub seed: u64,
    /// Where the optimization starts.
    pub init: InitKind,
    /// Transfer luminance only and keep the content's colours.
    pub preserve_colors: bool,
    /// Max or average pooling.
    pub pooling: Pooling,
    /// 8 or 16 bits per channel in the output PNG.
    pub output_bit_depth: u8,
    /// The output's file format.
    pub output_format: OutputFormat,
    /// What the input images' values are (auto: linear for OpenEXR, else sRGB).
    pub input_transfer: Transfer,
    /// Weight of the temporal term for a frame of a sequence: how closely it keeps to
    /// the previous frame's result warped along the optical flow, outside occlusions
    /// (Ruder et al. 2016). 0 (the default): each frame on its own.
    /// Not written when 0, so a still's parameters (and the fingerprint its checkpoints
    /// carry) read as they did before the term existed; set by a sequence's `temporal:`,
    /// not as a parameter of its own.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub temporal_weight: f64,
    /// Long side of the tiles a scale larger than it is optimized in (see
    /// [`crate::tiles`]); 0 (the default): whole, unless a worker's memory budget needs
    /// tiles, when it picks the largest that fits. Not written when 0, so the
    /// parameters of an untiled render read as they did before tiles existed.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub tile: u32,
}

impl Default for RenderParams {
    fn default() -> Self {
        Self {
            size: 512,
            iterations: 500,
            scales: Vec::new(),
            scale_iterations: 0,
            optimizer: OptimizerKind::Lbfgs,
            learning_rate: 1.0,
            lbfgs_history: 100,
            line_search: LineSearch::StrongWolfe,
            content_weight: 1.0,
            style_weight: 10.0,
            tv_weight: 0.3,
            content_layers: Vec::new(),
            style_layers: Vec::new(),
            style_scale: 1.0,
            seed: 0,
            init: InitKind::Content,
            preserve_colors: false,
            pooling: Pooling::Max,
            output_bit_depth: 8,
            output_format: OutputFormat::Png,
            input_transfer: Transfer::Auto,
            temporal_weight: 0.0,
            tile: 0,
        }
    }
}

/// Layers with weight 1 each.
pub fn layers(names: &[&str]) -> Vec<WeightedLayer> {
    names
        .iter()
        .map(|n| WeightedLayer {
            layer: (*n).to_owned(),
            weight: 1.0,
        })
        .collect()
}

/// Default Adam learning rate (grey levels on a 0-255 scale per step), used when
/// `--optimizer adam` is chosen without a rate of its own.
pub const DEFAULT_ADAM_LR: f64 = 2.0;

impl RenderParams {
    /// Checks every field's range; the error names the first field at fault.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return Err(InvalidField::new(
                "size",
                format!("{} is outside {MIN_SIZE}..={MAX_SIZE}", self.size),
            ));
        }
        if !(1..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(InvalidField::new(
                "iterations",
                format!("{} is outside 1..={MAX_ITERATIONS}", self.iterations),
            ));
        }
        self.check_scales()?;
        positive("learning_rate", self.learning_rate)?;
        if !(1..=1000).contains(&self.lbfgs_history) {
            return Err(InvalidField::new(
                "lbfgs_history",
                format!("{} is outside 1..=1000", self.lbfgs_history),
            ));
        }
        non_negative("content_weight", self.content_weight)?;
        non_negative("style_weight", self.style_weight)?;
        non_negative("tv_weight", self.tv_weight)?;
        non_negative("temporal_weight", self.temporal_weight)?;
        if self.temporal_weight > MAX_TEMPORAL_WEIGHT {
            return Err(InvalidField::new(
                "temporal_weight",
                format!(
                    "{} is above {MAX_TEMPORAL_WEIGHT}: the frame would only copy the one before",
                    self.temporal_weight
                ),
            ));
        }
        let smallest = crate::tiles::smallest_tile(self.size);
        if self.tile != 0 && !(smallest..=MAX_SIZE).contains(&self.tile) {
            return Err(InvalidField::new(
                "tile",
                format!(
                    "{} is outside {smallest}..={MAX_SIZE} at size {} (at most {} tiles across; 0: whole images)",
                    self.tile,
                    self.size,
                    crate::tiles::MAX_ACROSS
                ),
            ));
        }
        positive("style_scale", self.style_scale)?;
        if self.style_scale > 8.0 {
            return Err(InvalidField::new(
                "style_scale",
                format!("{} is above 8", self.style_scale),
            ));
        }
        check_layers("content_layers", &self.content_layers)?;
        check_layers("style_layers", &self.style_layers)?;
        if !matches!(self.output_bit_depth, 8 | 16) {
            return Err(InvalidField::new(
                "output_bit_depth",
                format!("{} is not 8 or 16", self.output_bit_depth),
            ));
        }
        if self.output_bit_depth != 8 && self.output_format != OutputFormat::Png {
            return Err(InvalidField::new(
                "output_bit_depth",
                format!(
                    "{} bits is for png; {} is always {}",
                    self.output_bit_depth,
                    self.output_format.as_str(),
                    if self.output_format == OutputFormat::Exr {
                        "half float"
                    } else {
                        "8 bits"
                    }
                ),
            ));
        }
        Ok(())
    }
}

/// One step of a coarse-to-fine schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scale {
    /// Long side in pixels.
    pub side: u32,
    /// Iterations at this side.
    pub iterations: u32,
}

/// The temporal weight a sequence's `temporal:` gets when it names none: frames keep to
/// their warped predecessor closely enough not to flicker, and still take the style
/// where the camera reveals something new (`make bench-temporal` measures both).
pub const DEFAULT_TEMPORAL_WEIGHT: f64 = 200.0;
/// The largest temporal weight (far past where a frame only copies its predecessor).
pub const MAX_TEMPORAL_WEIGHT: f64 = 1e6;

/// Sizes up to this render at one scale when `scales` is `auto`.
pub const AUTO_SINGLE_SCALE_MAX: u32 = 512;
/// The first scale `auto` picks for larger sizes.
pub const AUTO_FIRST_SCALE: u32 = 256;
/// Most scales a schedule may have.
pub const MAX_SCALES: usize = 16;

impl RenderParams {
    /// The scales this render optimizes at, coarse to fine. `auto` (an empty `scales`):
    /// one scale up to [`AUTO_SINGLE_SCALE_MAX`] px; above it [`AUTO_FIRST_SCALE`] px,
    /// growing by a factor of sqrt(2) to `size` (a last step shorter than half of one is
    /// folded into it).
    /// The first scale runs `iterations`, each later one `scale_iterations`.
    pub fn schedule(&self) -> Vec<Scale> {
        let sides = if !self.scales.is_empty() {
            self.scales.clone()
        } else if self.size <= AUTO_SINGLE_SCALE_MAX {
            vec![self.size]
        } else {
            let mut sides = Vec::new();
            let mut side = f64::from(AUTO_FIRST_SCALE);
            // The last step is at least half a step (2^(1/4)): no sliver of a scale.
            while side * 2f64.powf(0.25) <= f64::from(self.size) {
                sides.push(side.round() as u32);
                side *= std::f64::consts::SQRT_2;
            }
            sides.push(self.size);
            sides
        };
        let later = match self.scale_iterations {
            0 => (self.iterations / 2).max(1),
            n => n,
        };
        sides
            .iter()
            .enumerate()
            .map(|(i, &side)| Scale {
                side,
                iterations: if i == 0 { self.iterations } else { later },
            })
            .collect()
    }

    /// Iterations over the whole schedule.
    pub fn total_iterations(&self) -> u32 {
        self.schedule().iter().map(|s| s.iterations).sum()
    }

    /// The scale (its index) that global iteration `iteration` falls in; the last scale
    /// for iterations past the end.
    pub fn scale_at(&self, iteration: u32) -> (usize, Scale) {
        let schedule = self.schedule();
        let mut end = 0;
        for (i, s) in schedule.iter().enumerate() {
            end += s.iterations;
            if iteration < end {
                return (i, *s);
            }
        }
        let last = schedule.len() - 1;
        (last, schedule[last])
    }

    fn check_scales(&self) -> Result<(), InvalidField> {
        if self.scales.len() > MAX_SCALES {
            return Err(InvalidField::new(
                "scales",
                format!("{} scales; at most {MAX_SCALES}", self.scales.len()),
            ));
        }
        for (i, &side) in self.scales.iter().enumerate() {
            if side < MIN_SIZE {
                return Err(InvalidField::new(
                    format!("scales[{i}]"),
                    format!("{side} is below {MIN_SIZE}"),
                ));
            }
            if i > 0 && side <= self.scales[i - 1] {
                return Err(InvalidField::new(
                    format!("scales[{i}]"),
                    format!("{side} does not grow from {}", self.scales[i - 1]),
                ));
            }
        }
        if let Some(&last) = self.scales.last() {
            if last != self.size {
                return Err(InvalidField::new(
                    "scales",
                    format!(
                        "the last scale is {last}; it must be the size, {}",
                        self.size
                    ),
                ));
            }
        }
        if self.scale_iterations > MAX_ITERATIONS {
            return Err(InvalidField::new(
                "scale_iterations",
                format!("{} is above {MAX_ITERATIONS}", self.scale_iterations),
            ));
        }
        let total: u64 = self
            .schedule()
            .iter()
            .map(|s| u64::from(s.iterations))
            .sum();
        if total > u64::from(MAX_ITERATIONS) {
            return Err(InvalidField::new(
                "scale_iterations",
                format!("the schedule runs {total} iterations in all; at most {MAX_ITERATIONS}"),
            ));
        }
        Ok(())
    }
}

/// `256 px x 500, 362 px x 250, 512 px x 250 (1000 iterations)`.
pub fn describe_schedule(schedule: &[Scale]) -> String {
    let steps: Vec<String> = schedule
        .iter()
        .map(|s| format!("{} px x {}", s.side, s.iterations))
        .collect();
    let total: u64 = schedule.iter().map(|s| u64::from(s.iterations)).sum();
    format!("{} ({total} iterations)", steps.join(", "))
}

/// Parses `auto` (an empty list) or `256,362,512`.
pub fn parse_scales(s: &str) -> Result<Vec<u32>, String> {
    if s.trim() == "auto" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .map_err(|_| format!("scale {p:?} is not a whole number of pixels (or use `auto`)"))
        })
        .collect()
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn non_negative(field: &str, v: f64) -> Result<(), InvalidField> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            format!("{v} is not a finite number >= 0"),
        ))
    }
}

fn positive(field: &str, v: f64) -> Result<(), InvalidField> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            format!("{v} is not a finite number > 0"),
        ))
    }
}

fn check_layers(field: &str, layers: &[WeightedLayer]) -> Result<(), InvalidField> {
    for (i, l) in layers.iter().enumerate() {
        if l.layer.trim().is_empty() {
            return Err(InvalidField::new(
                format!("{field}[{i}]"),
                "empty layer name",
            ));
        }
        non_negative(&format!("{field}[{i}].weight"), l.weight)?;
        if layers[..i].iter().any(|o| o.layer == l.layer) {
            return Err(InvalidField::new(
                format!("{field}[{i}]"),
                format!("layer {} is listed twice", l.layer),
            ));
        }
    }
    Ok(())
}

/// Parses `relu1_1,relu2_1:0.5` into weighted layers (weight 1 where none is given).
pub fn parse_layer_list(s: &str) -> Result<Vec<WeightedLayer>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| match part.split_once(':') {
            None => Ok(WeightedLayer {
                layer: part.to_owned(),
                weight: 1.0,
            }),
            Some((name, w)) => {
                let weight: f64 = w
                    .trim()
                    .parse()
                    .map_err(|_| format!("layer weight {w:?} of {name} is not a number"))?;
                Ok(WeightedLayer {
                    layer: name.trim().to_owned(),
                    weight,
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RenderParams::default().validate().expect("defaults valid");
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(&str, Box<dyn Fn(&mut RenderParams)>)> = vec![
            ("size", Box::new(|p| p.size = 4)),
            ("iterations", Box::new(|p| p.iterations = 0)),
            ("style_weight", Box::new(|p| p.style_weight = f64::NAN)),
            ("tv_weight", Box::new(|p| p.tv_weight = -1.0)),
            ("style_scale", Box::new(|p| p.style_scale = f64::INFINITY)),
            (
                "style_layers[0].weight",
                Box::new(|p| {
                    p.style_layers = layers(&["relu1_1"]);
                    p.style_layers[0].weight = -2.0;
                }),
            ),
            ("output_bit_depth", Box::new(|p| p.output_bit_depth = 12)),
        ];
        for (field, mutate) in cases {
            let mut p = RenderParams::default();
            mutate(&mut p);
            let err = p.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn auto_schedules_grow_by_sqrt2_from_256_above_512() {
        let at = |size: u32| {
            let p = RenderParams {
                size,
                iterations: 400,
                ..Default::default()
            };
            let s = p.schedule();
            (
                s.iter().map(|s| s.side).collect::<Vec<_>>(),
                s,
                p.total_iterations(),
            )
        };
        assert_eq!(at(512).0, [512]);
        assert_eq!(at(300).0, [300]);
        assert_eq!(at(1024).0, [256, 362, 512, 724, 1024]);
        assert_eq!(at(2048).0, [256, 362, 512, 724, 1024, 1448, 2048]);
        // A size just past a step is not given a sliver of a scale.
        assert_eq!(at(1100).0, [256, 362, 512, 724, 1100]);
        assert_eq!(at(600).0, [256, 362, 600]);
        let (_, s, total) = at(1024);
        assert_eq!(s[0].iterations, 400);
        assert!(s[1..].iter().all(|s| s.iterations == 200));
        assert_eq!(total, 400 + 4 * 200);
    }

    #[test]
    fn the_scale_of_an_iteration_follows_the_schedule() {
        let p = RenderParams {
            size: 512,
            iterations: 10,
            scales: vec![128, 256, 512],
            scale_iterations: 5,
            ..Default::default()
        };
        assert_eq!(p.total_iterations(), 20);
        assert_eq!(p.scale_at(0).0, 0);
        assert_eq!(p.scale_at(9).0, 0);
        assert_eq!(
            p.scale_at(10),
            (
                1,
                Scale {
                    side: 256,
                    iterations: 5
                }
            )
        );
        assert_eq!(p.scale_at(19).0, 2);
        assert_eq!(p.scale_at(20).0, 2);
    }

    #[test]
    fn bad_schedules_are_named() {
        let with = |scales: Vec<u32>, scale_iterations: u32| RenderParams {
            size: 512,
            scales,
            scale_iterations,
            ..Default::default()
        };
        let field = |p: RenderParams| p.validate().expect_err("invalid").field;
        assert_eq!(field(with(vec![256, 256, 512], 0)), "scales[1]");
        assert_eq!(field(with(vec![8, 512], 0)), "scales[0]");
        assert_eq!(field(with(vec![256, 362], 0)), "scales");
        assert_eq!(field(with(vec![16; 17], 0)), "scales");
        assert_eq!(field(with(vec![256, 512], 99_999)), "scale_iterations");
        with(vec![256, 362, 512], 100).validate().expect("valid");
        assert_eq!(parse_scales("auto"), Ok(vec![]));
        assert_eq!(parse_scales("256, 512"), Ok(vec![256, 512]));
        assert!(parse_scales("256,big").is_err());
    }

    #[test]
    fn layer_lists_parse_with_weights() {
        let l = parse_layer_list("relu1_1, relu2_1:0.5").expect("parses");
        assert_eq!(l[0].layer, "relu1_1");
        assert_eq!(l[0].weight, 1.0);
        assert_eq!(l[1].weight, 0.5);
        assert!(parse_layer_list("relu1_1:x").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<RenderParams>(r#"{"sise": 3}"#).expect_err("unknown");
        assert!(err.to_string().contains("sise"), "{err}");
    }
}
