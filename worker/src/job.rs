//! One render from input bytes to output bytes: decode and fingerprint the inputs, run
//! the engine, encode the PNG and its sidecar. The CLI's `render` and the worker node
//! share this path; they differ only in where bytes come from and go to.

use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};
use stylefarm_core::{InitKind, OutputFormat, RenderParams, Transfer};
use stylefarm_weights::{memory, WeightsInfo};
use tch::Device;

use crate::device::MemoryBudget;
use crate::engine::{image_io, EngineError, PreviousImages, Render, RenderInputs};
use crate::report::{InputRecord, MemoryRecord, PreviousRecord, Sidecar, Timings, WeightsRecord};

/// An input's bytes and where they came from.
pub struct NamedBytes {
    /// Where the bytes are (path or URL): the sidecar's `source`, which `fetch` reads
    /// back for the contact sheet.
    pub source: String,
    /// What the submitter called it, for messages and the sidecar's `label`; empty when
    /// that is `source`.
    pub label: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

impl NamedBytes {
    /// Reads a local file.
    pub fn read(path: &std::path::Path) -> Result<Self, EngineError> {
        let bytes = std::fs::read(path).map_err(|cause| crate::engine::ImageError::Unreadable {
            name: path.display().to_string(),
            cause,
        })?;
        Ok(Self {
            source: path.display().to_string(),
            label: String::new(),
            bytes,
        })
    }

    /// How messages name it: the label, else the source.
    pub fn name(&self) -> &str {
        if self.label.is_empty() {
            &self.source
        } else {
            &self.label
        }
    }
}

/// The inputs of one job.
pub struct JobInputs {
    /// Content photo.
    pub content: NamedBytes,
    /// Style images with blend weights.
    pub styles: Vec<(NamedBytes, f64)>,
    /// Start image for `init: image`.
    pub init_image: Option<NamedBytes>,
    /// The previous frame's content and result, for the temporal term.
    pub previous: Option<PreviousInputs>,
}

/// The previous frame of a sequence as bytes.
pub struct PreviousInputs {
    /// Its content photo.
    pub content: NamedBytes,
    /// Its result, as its job wrote it.
    pub result: NamedBytes,
}

/// A job ready to run: decoded inputs and the records for its sidecar.
pub struct PreparedJob {
    /// The engine's view of the inputs.
    pub inputs: RenderInputs,
    /// The content's alpha channel, passed through to the output, and the light the
    /// content was flattened over white in.
    alpha: Option<(image_io::Alpha, Transfer)>,
    content: InputRecord,
    styles: Vec<InputRecord>,
    previous: Option<PreviousRecord>,
    /// The memory estimate's peak, when the inputs' headers gave their sizes.
    memory_estimate: Option<u64>,
    /// The parameters to render with: the job's, with the tile size the memory budget
    /// needs when the job left it to the worker.
    pub params: RenderParams,
}

fn record(
    n: &NamedBytes,
    img: &image::Rgb32FImage,
    weight: Option<f64>,
    transfer: Transfer,
) -> InputRecord {
    InputRecord {
        transfer: transfer.as_str().to_owned(),
        source: n.source.clone(),
        label: n.label.clone(),
        sha256: hex::encode(Sha256::digest(&n.bytes)),
        width: img.width(),
        height: img.height(),
        weight,
    }
}

impl PreparedJob {
    /// Checks the job's memory estimate against `budget` from the inputs' headers,
    /// then decodes every input; the first bad one fails the job with its name in the
    /// error.
    pub fn decode(
        job: &JobInputs,
        params: &RenderParams,
        max_pixels: u64,
        weights: &WeightsInfo,
        budget: &MemoryBudget,
    ) -> Result<Self, EngineError> {
        let (memory_estimate, tile) = check_memory(job, params, weights, budget, max_pixels)?;
        let params = &RenderParams {
            tile,
            ..params.clone()
        };
        let decode = |n: &NamedBytes| {
            image_io::decode_as(&n.bytes, n.name(), max_pixels, params.input_transfer)
        };
        let image_io::Decoded {
            image: content,
            alpha,
            transfer: content_transfer,
        } = image_io::decode_full(
            &job.content.bytes,
            job.content.name(),
            max_pixels,
            params.input_transfer,
        )?;
        let mut styles = Vec::new();
        let mut records = Vec::new();
        for (n, w) in &job.styles {
            let (img, transfer) = decode(n)?;
            records.push(record(n, &img, Some(*w), transfer));
            styles.push(img);
        }
        let init_image = match (&params.init, &job.init_image) {
            (InitKind::Image, Some(n)) => Some(decode(n)?.0),
            _ => None,
        };
        let mut previous = None;
        let mut previous_record = None;
        if let Some(p) = job
            .previous
            .as_ref()
            .filter(|_| params.temporal_weight > 0.0)
        {
            let (before, before_transfer) = decode(&p.content)?;
            // The result is in the job's own output format: linear light in OpenEXR,
            // sRGB in PNG and JPEG, as the decoder assumes for each. A matte's edges are
            // put back over white in the light this frame's content was, as the network
            // sees this frame.
            let image_io::Decoded {
                image: styled,
                alpha: result_alpha,
                transfer: result_transfer,
            } = image_io::decode_full(
                &p.result.bytes,
                p.result.name(),
                max_pixels,
                Transfer::Auto,
            )?;
            let styled = match result_alpha {
                Some(a) if result_transfer != content_transfer => image_io::flatten(
                    &image_io::unflatten(&styled, &a, result_transfer),
                    &a,
                    content_transfer,
                ),
                _ => styled,
            };
            previous_record = Some(PreviousRecord {
                content: record(&p.content, &before, None, before_transfer),
                result: record(&p.result, &styled, None, result_transfer),
            });
            previous = Some(PreviousImages {
                content: before,
                styled,
            });
        }
        Ok(Self {
            params: params.clone(),
            memory_estimate,
            previous: previous_record,
            alpha: alpha.map(|a| (a, content_transfer)),
            content: record(&job.content, &content, None, content_transfer),
            inputs: RenderInputs {
                content,
                styles,
                style_weights: job.styles.iter().map(|(_, w)| *w).collect(),
                init_image,
                previous,
            },
            styles: records,
        })
    }
}

/// Refuses a job whose estimated peak is over `budget` even in tiles, else gives the
/// estimate and the tile size to render with (the job's own, or the largest that fits
/// when the whole image does not). Images whose header does not read are left to the
/// decoder, which names what is wrong with them (and give no estimate).
fn check_memory(
    job: &JobInputs,
    params: &RenderParams,
    weights: &WeightsInfo,
    budget: &MemoryBudget,
    max_pixels: u64,
) -> Result<(Option<u64>, u32), EngineError> {
    let unknown = Ok((None, params.tile));
    let dims =
        |n: &NamedBytes| image_io::dimensions(&n.bytes).map(|(w, h)| memory::Dims::new(w, h));
    let (Some(content), Some(styles)) = (
        dims(&job.content),
        job.styles
            .iter()
            .map(|(n, _)| dims(n))
            .collect::<Option<Vec<_>>>(),
    ) else {
        return unknown;
    };
    // An image over the pixel budget is the decoder's to refuse, by name; its header's
    // sizes are not worth estimating with.
    let over = |d: &memory::Dims| u64::from(d.width) * u64::from(d.height) > max_pixels;
    if over(&content) || styles.iter().any(over) {
        return unknown;
    }
    let init = match (&params.init, &job.init_image) {
        (InitKind::Image, Some(n)) => dims(n).filter(|d| !over(d)),
        _ => None,
    };
    let previous = match &job.previous {
        Some(p) if params.temporal_weight > 0.0 => match (dims(&p.content), dims(&p.result)) {
            (Some(c), Some(r)) if !over(&c) && !over(&r) => Some((c, r)),
            _ => return unknown,
        },
        _ => None,
    };
    let params = &weights.resolve_layers(params);
    let file_bytes = std::fs::metadata(&weights.path).map_or(0, |m| m.len());
    let fit = memory::fit(
        weights.architecture,
        file_bytes,
        params,
        &memory::JobImages {
            content,
            styles,
            init,
            previous,
        },
        budget.backend,
        budget.bytes,
    )
    .map_err(|e| EngineError::Param(stylefarm_core::InvalidField::new("params", e.to_string())))?;
    let (estimate, tile) = match fit {
        memory::Fit::Whole(e) => (e, params.tile),
        memory::Fit::Tiled(tile, e) => (e, tile),
        memory::Fit::Never(e) => {
            let tiles = if params.tile == 0 {
                format!(" even in {} px tiles", memory::smallest_tile(params.size))
            } else {
                format!(" in {} px tiles", params.tile)
            };
            return Err(EngineError::Memory {
                needs: format!("{}{tiles}", e.describe()),
                budget: memory::gib(budget.bytes),
                from: budget.from.clone(),
            });
        }
    };
    tracing::info!(estimate = %estimate.describe(), bytes = estimate.peak(), budget = budget.bytes, tile, "memory estimate");
    Ok((Some(estimate.peak()), tile))
}

/// A finished render's files.
pub struct Rendered {
    /// The output image, encoded as `params.output_format`.
    pub image: Vec<u8>,
    /// The sidecar.
    pub sidecar: Sidecar,
}

/// Encodes the current image and writes the sidecar record for it.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    render: &Render,
    job: &PreparedJob,
    params: &RenderParams,
    weights: &WeightsInfo,
    device: Device,
    output_name: &str,
    started: Instant,
    setup_s: f64,
) -> Result<Rendered, EngineError> {
    let image = render.output();
    let alpha = job
        .alpha
        .as_ref()
        .map(|(a, t)| (image_io::resize_alpha(a, image.width(), image.height()), *t));
    // The network saw the content over white: a matte's colour is taken back out of it.
    let colour = match &alpha {
        Some((a, t)) if params.output_format != OutputFormat::Jpg => {
            std::borrow::Cow::Owned(image_io::unflatten(&image, a, *t))
        }
        _ => std::borrow::Cow::Borrowed(&image),
    };
    let alpha = alpha.map(|(a, _)| a);
    let encoded = image_io::encode_output(
        &colour,
        alpha.as_ref(),
        params.output_format,
        params.output_bit_depth,
    )?;
    let final_losses = render.losses()?;
    let optimize_s = render.elapsed().as_secs_f64();
    let done = render.iteration();
    let sidecar = Sidecar {
        stylefarm_version: env!("CARGO_PKG_VERSION").to_owned(),
        output: output_name.to_owned(),
        width: image.width(),
        height: image.height(),
        alpha: alpha.is_some() && params.output_format != OutputFormat::Jpg,
        params: render.params().clone(),
        content: job.content.clone(),
        styles: job.styles.clone(),
        previous: job.previous.clone(),
        memory: MemoryRecord {
            estimate_bytes: job.memory_estimate,
            peak_rss_bytes: crate::device::peak_rss(),
        },
        weights: WeightsRecord {
            path: weights.path.display().to_string(),
            sha256: weights.sha256.clone(),
            architecture: weights.architecture.name().to_owned(),
            convention: weights.convention.name().to_owned(),
        },
        device: format!("{device:?}").to_lowercase(),
        threads: tch::get_num_threads(),
        iterations_done: done,
        converged: render.converged(),
        resumed_from: render.resumed_from(),
        final_losses,
        loss_curve: render.history().to_vec(),
        schedule: render.runs().to_vec(),
        timings: Timings {
            setup_s,
            optimize_s,
            per_iteration_s: if done > 0 {
                optimize_s / done as f64
            } else {
                0.0
            },
            total_s: started.elapsed().as_secs_f64(),
            evaluations: render.evaluations(),
            started_unix_s: unix_s(SystemTime::now() - started.elapsed()),
            finished_unix_s: unix_s(SystemTime::now()),
        },
    };
    Ok(Rendered {
        image: encoded,
        sidecar,
    })
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_s(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
