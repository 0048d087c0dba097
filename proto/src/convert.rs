//! The one place where wire types become domain types and back.
//!
//! Wire-to-domain conversions are `TryFrom` and validate: a value that converts is a
//! valid [`JobSpec`]/[`RenderParams`], and anything else is an [`InvalidField`] naming
//! the field, never a panic. Absent optional fields take the engine's defaults, so the
//! domain-to-wire direction writes every field and a spec round-trips exactly.

use stylefarm_core::params::{RenderParams, DEFAULT_ADAM_LR};
use stylefarm_core::{
    BatchState, InitKind, InvalidField, JobSpec, JobState, LineSearch, Losses, ObjectRef,
    OptimizerKind, OutputFormat, Pooling, PreviousFrame, StyleRef, Transfer, WeightedLayer,
};

use crate::v1;

impl TryFrom<v1::RenderParams> for RenderParams {
    type Error = InvalidField;

    fn try_from(p: v1::RenderParams) -> Result<Self, InvalidField> {
        let d = RenderParams::default();
        let optimizer = match v1::Optimizer::try_from(p.optimizer) {
            Ok(v1::Optimizer::Unspecified | v1::Optimizer::Lbfgs) => OptimizerKind::Lbfgs,
            Ok(v1::Optimizer::Adam) => OptimizerKind::Adam,
            Err(_) => return Err(unknown_enum("optimizer", p.optimizer)),
        };
        let init = match v1::Init::try_from(p.init) {
            Ok(v1::Init::Unspecified | v1::Init::Content) => InitKind::Content,
            Ok(v1::Init::Noise) => InitKind::Noise,
            Ok(v1::Init::Image) => InitKind::Image,
            Err(_) => return Err(unknown_enum("init", p.init)),
        };
        let line_search = match v1::LineSearch::try_from(p.line_search) {
            Ok(v1::LineSearch::Unspecified | v1::LineSearch::StrongWolfe) => {
                LineSearch::StrongWolfe
            }
            Ok(v1::LineSearch::None) => LineSearch::None,
            Err(_) => return Err(unknown_enum("line_search", p.line_search)),
        };
        let pooling = match v1::Pooling::try_from(p.pooling) {
            Ok(v1::Pooling::Unspecified | v1::Pooling::Max) => Pooling::Max,
            Ok(v1::Pooling::Avg) => Pooling::Avg,
            Err(_) => return Err(unknown_enum("pooling", p.pooling)),
        };
        let input_transfer = match v1::InputTransfer::try_from(p.input_transfer) {
            Ok(v1::InputTransfer::Unspecified | v1::InputTransfer::Auto) => Transfer::Auto,
            Ok(v1::InputTransfer::Srgb) => Transfer::Srgb,
            Ok(v1::InputTransfer::Linear) => Transfer::Linear,
            Err(_) => return Err(unknown_enum("input_transfer", p.input_transfer)),
        };
        let output_format = match v1::OutputFormat::try_from(p.output_format) {
            Ok(v1::OutputFormat::Unspecified | v1::OutputFormat::Png) => OutputFormat::Png,
            Ok(v1::OutputFormat::Exr) => OutputFormat::Exr,
            Ok(v1::OutputFormat::Jpg) => OutputFormat::Jpg,
            Err(_) => return Err(unknown_enum("output_format", p.output_format)),
        };
        let bit_depth = p.output_bit_depth.unwrap_or(u32::from(d.output_bit_depth));
        let output_bit_depth = u8::try_from(bit_depth).map_err(|_| {
            InvalidField::new("output_bit_depth", format!("{bit_depth} is not 8 or 16"))
        })?;
        let default_lr = match optimizer {
            OptimizerKind::Lbfgs => d.learning_rate,
            OptimizerKind::Adam => DEFAULT_ADAM_LR,
        };
        let params = RenderParams {
            size: p.size.unwrap_or(d.size),
            iterations: p.iterations.unwrap_or(d.iterations),
            scales: p.scales,
            scale_iterations: p.scale_iterations.unwrap_or(d.scale_iterations),
            optimizer,
            learning_rate: p.learning_rate.unwrap_or(default_lr),
            lbfgs_history: p.lbfgs_history.unwrap_or(d.lbfgs_history),
            line_search,
            content_weight: p.content_weight.unwrap_or(d.content_weight),
            style_weight: p.style_weight.unwrap_or(d.style_weight),
            tv_weight: p.tv_weight.unwrap_or(d.tv_weight),
            content_layers: layers_or(p.content_layers, d.content_layers),
            style_layers: layers_or(p.style_layers, d.style_layers),
            style_scale: p.style_scale.unwrap_or(d.style_scale),
            seed: p.seed.unwrap_or(d.seed),
            init,
            preserve_colors: p.preserve_colors.unwrap_or(d.preserve_colors),
            pooling,
            output_bit_depth,
            output_format,
            input_transfer,
            temporal_weight: p.temporal_weight.unwrap_or(d.temporal_weight),
            tile: p.tile.unwrap_or(d.tile),
        };
        params.validate()?;
        Ok(params)
    }
}

impl From<&RenderParams> for v1::RenderParams {
    fn from(p: &RenderParams) -> Self {
        Self {
            size: Some(p.size),
            iterations: Some(p.iterations),
            optimizer: match p.optimizer {
                OptimizerKind::Lbfgs => v1::Optimizer::Lbfgs,
                OptimizerKind::Adam => v1::Optimizer::Adam,
            } as i32,
            learning_rate: Some(p.learning_rate),
            lbfgs_history: Some(p.lbfgs_history),
            line_search: match p.line_search {
                LineSearch::StrongWolfe => v1::LineSearch::StrongWolfe,
                LineSearch::None => v1::LineSearch::None,
            } as i32,
            content_weight: Some(p.content_weight),
            style_weight: Some(p.style_weight),
            tv_weight: Some(p.tv_weight),
            content_layers: p.content_layers.iter().map(wire_layer).collect(),
            style_layers: p.style_layers.iter().map(wire_layer).collect(),
            style_scale: Some(p.style_scale),
            seed: Some(p.seed),
            init: match p.init {
                InitKind::Content => v1::Init::Content,
                InitKind::Noise => v1::Init::Noise,
                InitKind::Image => v1::Init::Image,
            } as i32,
            preserve_colors: Some(p.preserve_colors),
            pooling: match p.pooling {
                Pooling::Max => v1::Pooling::Max,
                Pooling::Avg => v1::Pooling::Avg,
            } as i32,
            output_bit_depth: Some(u32::from(p.output_bit_depth)),
            input_transfer: match p.input_transfer {
                Transfer::Auto => v1::InputTransfer::Auto,
                Transfer::Srgb => v1::InputTransfer::Srgb,
                Transfer::Linear => v1::InputTransfer::Linear,
            } as i32,
            output_format: match p.output_format {
                OutputFormat::Png => v1::OutputFormat::Png,
                OutputFormat::Exr => v1::OutputFormat::Exr,
                OutputFormat::Jpg => v1::OutputFormat::Jpg,
            } as i32,
            scales: p.scales.clone(),
            scale_iterations: Some(p.scale_iterations),
            temporal_weight: Some(p.temporal_weight),
            tile: Some(p.tile),
        }
    }
}

impl TryFrom<v1::JobSpec> for JobSpec {
    type Error = InvalidField;

    fn try_from(s: v1::JobSpec) -> Result<Self, InvalidField> {
        let content = s
            .content
            .map(ObjectRef::from)
            .ok_or_else(|| missing("content"))?;
        let styles = s
            .styles
            .into_iter()
            .enumerate()
            .map(|(i, st)| {
                let image = st
                    .image
                    .map(ObjectRef::from)
                    .ok_or_else(|| missing(&format!("styles[{i}].image")))?;
                Ok(StyleRef {
                    image,
                    weight: st.weight,
                })
            })
            .collect::<Result<Vec<_>, InvalidField>>()?;
        let params = match s.params {
            Some(p) => RenderParams::try_from(p).map_err(|e| e.within("params"))?,
            None => RenderParams::default(),
        };
        let spec = JobSpec {
            name: s.name,
            content,
            styles,
            init_image: s.init_image.map(ObjectRef::from),
            params,
            weights_sha256: s.weights_sha256,
            output_key: s.output_key,
            after: s.after,
            previous: match s.previous {
                Some(p) => Some(PreviousFrame {
                    name: p.name,
                    content: p
                        .content
                        .map(ObjectRef::from)
                        .ok_or_else(|| missing("previous.content"))?,
                }),
                None => None,
            },
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl From<&JobSpec> for v1::JobSpec {
    fn from(s: &JobSpec) -> Self {
        Self {
            name: s.name.clone(),
            content: Some(v1::ObjectRef::from(&s.content)),
            styles: s
                .styles
                .iter()
                .map(|st| v1::StyleRef {
                    image: Some(v1::ObjectRef::from(&st.image)),
                    weight: st.weight,
                })
                .collect(),
            init_image: s.init_image.as_ref().map(v1::ObjectRef::from),
            params: Some(v1::RenderParams::from(&s.params)),
            weights_sha256: s.weights_sha256.clone(),
            output_key: s.output_key.clone(),
            after: s.after.clone(),
            previous: s.previous.as_ref().map(|p| v1::PreviousFrame {
                name: p.name.clone(),
                content: Some(v1::ObjectRef::from(&p.content)),
            }),
        }
    }
}

impl From<v1::ObjectRef> for ObjectRef {
    fn from(o: v1::ObjectRef) -> Self {
        Self {
            dims: (o.width != 0 || o.height != 0).then_some((o.width, o.height)),
            uri: o.uri,
            sha256: o.sha256,
            label: o.label,
        }
    }
}

impl From<&ObjectRef> for v1::ObjectRef {
    fn from(o: &ObjectRef) -> Self {
        Self {
            uri: o.uri.clone(),
            sha256: o.sha256.clone(),
            label: o.label.clone(),
            width: o.dims.map_or(0, |d| d.0),
            height: o.dims.map_or(0, |d| d.1),
        }
    }
}

impl From<JobState> for v1::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Queued => Self::Queued,
            JobState::Leased => Self::Leased,
            JobState::Running => Self::Running,
            JobState::Succeeded => Self::Succeeded,
            JobState::Failed => Self::Failed,
            JobState::Cancelled => Self::Cancelled,
            JobState::Waiting => Self::Waiting,
            JobState::Blocked => Self::Blocked,
        }
    }
}

impl From<BatchState> for v1::BatchState {
    fn from(s: BatchState) -> Self {
        match s {
            BatchState::Queued => Self::Queued,
            BatchState::Running => Self::Running,
            BatchState::Succeeded => Self::Succeeded,
            BatchState::Failed => Self::Failed,
            BatchState::Cancelled => Self::Cancelled,
        }
    }
}

/// A job state as the wire's integer carries it; unspecified or unknown values (from a
/// newer coordinator, say) are an error naming `field`.
pub fn job_state(field: &str, wire: i32) -> Result<JobState, InvalidField> {
    Ok(match v1::JobState::try_from(wire) {
        Ok(v1::JobState::Queued) => JobState::Queued,
        Ok(v1::JobState::Leased) => JobState::Leased,
        Ok(v1::JobState::Running) => JobState::Running,
        Ok(v1::JobState::Succeeded) => JobState::Succeeded,
        Ok(v1::JobState::Failed) => JobState::Failed,
        Ok(v1::JobState::Cancelled) => JobState::Cancelled,
        Ok(v1::JobState::Waiting) => JobState::Waiting,
        Ok(v1::JobState::Blocked) => JobState::Blocked,
        Ok(v1::JobState::Unspecified) | Err(_) => return Err(unknown_enum(field, wire)),
    })
}

/// The output format a wire spec asks for (png when it names none it knows: specs are
/// checked when submitted).
pub fn output_format(spec: &v1::JobSpec) -> OutputFormat {
    match spec
        .params
        .as_ref()
        .map(|p| v1::OutputFormat::try_from(p.output_format))
    {
        Some(Ok(v1::OutputFormat::Exr)) => OutputFormat::Exr,
        Some(Ok(v1::OutputFormat::Jpg)) => OutputFormat::Jpg,
        _ => OutputFormat::Png,
    }
}

/// A batch state as the wire's integer carries it (see [`job_state`]).
pub fn batch_state(field: &str, wire: i32) -> Result<BatchState, InvalidField> {
    Ok(match v1::BatchState::try_from(wire) {
        Ok(v1::BatchState::Queued) => BatchState::Queued,
        Ok(v1::BatchState::Running) => BatchState::Running,
        Ok(v1::BatchState::Succeeded) => BatchState::Succeeded,
        Ok(v1::BatchState::Failed) => BatchState::Failed,
        Ok(v1::BatchState::Cancelled) => BatchState::Cancelled,
        Ok(v1::BatchState::Unspecified) | Err(_) => return Err(unknown_enum(field, wire)),
    })
}

impl From<&Losses> for v1::Losses {
    fn from(l: &Losses) -> Self {
        Self {
            content: l.content,
            style: l.style,
            tv: l.tv,
            total: l.total,
            temporal: l.temporal,
        }
    }
}

impl From<v1::Losses> for Losses {
    fn from(l: v1::Losses) -> Self {
        Self {
            content: l.content,
            style: l.style,
            tv: l.tv,
            total: l.total,
            temporal: l.temporal,
        }
    }
}

fn wire_layer(l: &WeightedLayer) -> v1::LayerWeight {
    v1::LayerWeight {
        layer: l.layer.clone(),
        weight: l.weight,
    }
}

fn layers_or(wire: Vec<v1::LayerWeight>, default: Vec<WeightedLayer>) -> Vec<WeightedLayer> {
    if wire.is_empty() {
        return default;
    }
    wire.into_iter()
        .map(|l| WeightedLayer {
            layer: l.layer,
            weight: l.weight,
        })
        .collect()
}

fn missing(field: &str) -> InvalidField {
    InvalidField::new(field, "is missing")
}

fn unknown_enum(field: &str, value: i32) -> InvalidField {
    InvalidField::new(field, format!("{value} is not a known value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex64() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[0-9a-f]{64}",
            1 => ".{0,70}",
        ]
    }

    fn object() -> impl Strategy<Value = Option<v1::ObjectRef>> {
        proptest::option::weighted(
            0.9,
            (
                prop_oneof![6 => "s3://[a-z]{1,8}/[a-z0-9/]{1,20}", 1 => ".{0,30}"],
                hex64(),
                prop_oneof![3 => Just(String::new()), 3 => "[a-z/._]{1,30}", 1 => ".{0,30}"],
            )
                .prop_map(|(uri, sha256, label)| v1::ObjectRef {
                    uri,
                    sha256,
                    label,
                    ..Default::default()
                }),
        )
    }

    fn float() -> impl Strategy<Value = f64> {
        prop_oneof![
            12 => 0.0f64..1e4,
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(-1.0),
            1 => any::<f64>(),
        ]
    }

    fn layers() -> impl Strategy<Value = Vec<v1::LayerWeight>> {
        proptest::collection::vec(
            (prop_oneof![6 => "relu[1-5]_[1-4]", 1 => ".{0,8}"], float())
                .prop_map(|(layer, weight)| v1::LayerWeight { layer, weight }),
            0..4,
        )
    }

    prop_compose! {
        fn params()(
            size in proptest::option::of(prop_oneof![6 => 16u32..2048, 1 => any::<u32>()]),
            iterations in proptest::option::of(prop_oneof![6 => 1u32..1000, 1 => any::<u32>()]),
            optimizer in -1i32..4,
            learning_rate in proptest::option::of(float()),
            lbfgs_history in proptest::option::of(0u32..2000),
            weights in (proptest::option::of(float()), proptest::option::of(float()), proptest::option::of(float()), proptest::option::of(float())),
            content_layers in layers(),
            style_layers in layers(),
            style_scale in proptest::option::of(float()),
            seed in proptest::option::of(any::<u64>()),
            init in -1i32..5,
            preserve_colors in proptest::option::of(any::<bool>()),
            pooling in -1i32..4,
            output_bit_depth in proptest::option::of(prop_oneof![Just(8u32), Just(16u32), any::<u32>()]),
            schedule in (
                prop_oneof![Just(vec![]), proptest::collection::vec(0u32..9000, 0..5), proptest::collection::vec(any::<u32>(), 0..20)],
                proptest::option::of(prop_oneof![0u32..2000, any::<u32>()]),
                -1i32..4,
                -1i32..5,
                -1i32..5,
                proptest::option::of(prop_oneof![Just(0u32), 0u32..4096, any::<u32>()]),
            ),
        ) -> v1::RenderParams {
            v1::RenderParams {
                size, iterations, optimizer, learning_rate, lbfgs_history,
                content_weight: weights.0, style_weight: weights.1, tv_weight: weights.2,
                content_layers, style_layers, style_scale, seed, init, preserve_colors,
                pooling, output_bit_depth, scales: schedule.0, scale_iterations: schedule.1,
                line_search: schedule.2, input_transfer: schedule.3, output_format: schedule.4,
                temporal_weight: weights.3, tile: schedule.5,
            }
        }
    }

    prop_compose! {
        fn spec()(
            name in prop_oneof![6 => "[a-z0-9_-]{1,20}", 1 => ".{0,30}"],
            content in object(),
            styles in proptest::collection::vec(
                (object(), float()).prop_map(|(image, weight)| v1::StyleRef { image, weight }),
                0..4,
            ),
            init_image in proptest::option::weighted(0.2, object().prop_filter_map("some", |o| o)),
            params in proptest::option::weighted(0.9, params()),
            weights_sha256 in hex64(),
            previous in proptest::option::weighted(0.3, ("[a-z0-9.]{1,12}", object(), any::<bool>())),
        ) -> v1::JobSpec {
            let after = previous.iter().filter(|p| p.2).map(|p| p.0.clone()).collect();
            let previous = previous.map(|(name, content, _)| v1::PreviousFrame { name, content });
            v1::JobSpec { name, content, styles, init_image, params, weights_sha256, output_key: String::new(), after, previous }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any wire spec converts to a valid domain spec or to an error naming a field,
        /// never a panic; what converts round-trips exactly.
        #[test]
        fn wire_specs_convert_or_name_the_field(wire in spec()) {
            match JobSpec::try_from(wire) {
                Ok(domain) => {
                    prop_assert!(domain.validate().is_ok());
                    let back = JobSpec::try_from(v1::JobSpec::from(&domain));
                    prop_assert_eq!(back.as_ref(), Ok(&domain));
                }
                Err(err) => prop_assert!(!err.field.is_empty() && !err.reason.is_empty()),
            }
        }
    }

    #[test]
    fn absent_fields_take_defaults_and_bad_ones_are_named() {
        let p = RenderParams::try_from(v1::RenderParams::default()).expect("defaults");
        assert_eq!(p, RenderParams::default());
        let adam = RenderParams::try_from(v1::RenderParams {
            optimizer: v1::Optimizer::Adam as i32,
            ..Default::default()
        })
        .expect("adam");
        assert_eq!(adam.learning_rate, DEFAULT_ADAM_LR);
        let bad = |p: v1::RenderParams| RenderParams::try_from(p).expect_err("invalid").field;
        assert_eq!(
            bad(v1::RenderParams {
                style_weight: Some(f64::NAN),
                ..Default::default()
            }),
            "style_weight"
        );
        assert_eq!(
            bad(v1::RenderParams {
                optimizer: 9,
                ..Default::default()
            }),
            "optimizer"
        );
        assert_eq!(
            bad(v1::RenderParams {
                output_bit_depth: Some(300),
                ..Default::default()
            }),
            "output_bit_depth"
        );
        let no_content = v1::JobSpec::default();
        assert_eq!(
            JobSpec::try_from(no_content).expect_err("missing").field,
            "content"
        );
    }
}
