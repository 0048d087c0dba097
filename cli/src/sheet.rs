//! The contact sheet `fetch` and `run` write: one row per job with thumbnails of its
//! content, its style(s) and its result, each labelled. Memory is bounded: the sheet
//! holds at most [`MAX_ROWS`] x [`MAX_COLUMNS`] thumbnails, each picture is decoded
//! within a size and allocation cap and shrunk before the next is read, and inputs are
//! read only from the farm's own `inputs/sha256/` objects.

use std::path::Path;

use anyhow::Context;
use font8x8::{UnicodeFonts, BASIC_FONTS};
use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use stylefarm_storage::{ObjectUrl, Storage};

use crate::cluster::Fetched;

/// Thumbnail box, pixels.
const THUMB: u32 = 192;
/// Space between thumbnails and around the sheet.
const PAD: u32 = 12;
/// Label text scale (8 px glyphs times this).
const SCALE: u32 = 2;
const LABEL_H: u32 = 8 * SCALE + 8;
const BACKGROUND: Rgb<u8> = Rgb([250, 250, 247]);
const INK: Rgb<u8> = Rgb([30, 30, 30]);

/// Most jobs on one sheet (the first ones of the batch); with [`MAX_COLUMNS`] this
/// bounds the sheet to about 50,000 x 1,250 pixels (190 MB as RGB).
pub const MAX_ROWS: usize = 200;
/// Most pictures in a row: the result, the content and four styles.
pub const MAX_COLUMNS: usize = 6;
/// Largest file or object decoded for a thumbnail.
const MAX_BYTES: u64 = crate::input::MAX_INPUT_BYTES;
/// Most memory one decode may take (one full-size image at a time is held).
const MAX_DECODE_ALLOC: u64 = 512 << 20;

/// Builds the sheet from fetched jobs and writes it as a PNG to `path`. One job at a
/// time is read and drawn into the sheet as thumbnails, so at most one full-size image
/// is held. Inputs are read through the sources their sidecars record, and only from
/// the farm's own inputs under `root` (a sidecar is data from the farm, not a path to
/// read anything else by); one that cannot be read is a grey box.
pub async fn write(
    jobs: &[Fetched],
    storage: &Storage,
    root: &ObjectUrl,
    path: &Path,
) -> anyhow::Result<()> {
    if jobs.len() > MAX_ROWS {
        tracing::warn!(
            jobs = jobs.len(),
            shown = MAX_ROWS,
            "the contact sheet shows the first jobs only"
        );
    }
    let jobs = &jobs[..jobs.len().min(MAX_ROWS)];
    let inputs = root.join("inputs/sha256")?.to_string();
    let styles = |job: &Fetched| job.sidecar["styles"].as_array().map_or(0, Vec::len);
    let cols = jobs
        .iter()
        .map(|j| (2 + styles(j)).min(MAX_COLUMNS))
        .max()
        .unwrap_or(1) as u32;
    let width = PAD + cols * (THUMB + PAD);
    let row_h = LABEL_H + THUMB + LABEL_H + PAD;
    let height = PAD + jobs.len() as u32 * row_h;
    let mut sheet = RgbImage::from_pixel(width, height.max(PAD * 2), BACKGROUND);
    for (r, job) in jobs.iter().enumerate() {
        let top = PAD + r as u32 * row_h;
        // The name, and at the row's right end the total loss over the iterations.
        let spark = SPARK_W.min(width.saturating_sub(3 * PAD) / 3);
        text(&mut sheet, PAD, top + 2, width - 3 * PAD - spark, &job.name);
        if let Some(curve) = stylefarm_core::plot::from_sidecar(&job.sidecar) {
            let totals: Vec<f64> = curve.points.iter().map(|p| p[0]).collect();
            sparkline(
                &mut sheet,
                width - PAD - spark,
                top + 2,
                spark,
                LABEL_H - 6,
                &totals,
            );
        }
        let mut cells = vec![(Picture::File(&job.image), "result".to_owned())];
        cells.push((
            Picture::Input(&job.sidecar["content"]["source"]),
            "content".into(),
        ));
        if let Some(list) = job.sidecar["styles"].as_array() {
            for (i, s) in list.iter().enumerate() {
                let weight = s["weight"].as_f64().unwrap_or(1.0);
                let label = if list.len() > 1 {
                    format!("style {} x{weight}", i + 1)
                } else {
                    "style".into()
                };
                cells.push((Picture::Input(&s["source"]), label));
            }
        }
        let y = top + LABEL_H;
        for (c, (picture, label)) in cells.into_iter().take(MAX_COLUMNS).enumerate() {
            let x = PAD + c as u32 * (THUMB + PAD);
            let thumb = match picture {
                Picture::File(p) => thumbnail_of_file(p).await,
                Picture::Input(source) => thumbnail_of_input(storage, &inputs, source).await,
            };
            match thumb {
                Some(t) => {
                    let dx = (THUMB - t.width()) / 2;
                    let dy = (THUMB - t.height()) / 2;
                    image::imageops::overlay(&mut sheet, &t, i64::from(x + dx), i64::from(y + dy));
                }
                None => fill(&mut sheet, x, y, THUMB, THUMB, Rgb([200, 200, 200])),
            }
            text(&mut sheet, x, y + THUMB + 4, THUMB, &label);
        }
    }
    let mut png = std::io::Cursor::new(Vec::new());
    sheet
        .write_to(&mut png, image::ImageFormat::Png)
        .context("encoding the contact sheet")?;
    crate::cluster::write_atomic(path, png.into_inner()).await
}

/// Where a picture of a row comes from.
enum Picture<'a> {
    /// A fetched result in the output folder.
    File(&'a Path),
    /// A sidecar's `source`.
    Input(&'a serde_json::Value),
}

/// A fetched result's thumbnail; `None` (a grey box) when it cannot be read.
async fn thumbnail_of_file(path: &Path) -> Option<RgbImage> {
    let p = path.to_owned();
    let bytes = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&p)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_BYTES + 1), &mut bytes)?;
        Ok::<_, std::io::Error>(bytes)
    })
    .await
    .ok()?;
    match bytes {
        Ok(b) => thumbnail(&path.display().to_string(), b).await,
        Err(e) => {
            tracing::warn!(file = %path.display(), cause = %e, "result not readable for the contact sheet");
            None
        }
    }
}

/// An input's thumbnail, read only from the farm's inputs (`inputs`, the prefix every
/// submitted input is stored under); `None` (a grey box) otherwise or when it cannot be
/// read.
async fn thumbnail_of_input(
    storage: &Storage,
    inputs: &str,
    source: &serde_json::Value,
) -> Option<RgbImage> {
    let source = source.as_str()?;
    let digest = source.strip_prefix(inputs)?.strip_prefix('/')?;
    if stylefarm_core::spec::check_sha256("source", digest).is_err() {
        tracing::warn!(
            source,
            "not one of the farm's inputs; left out of the contact sheet"
        );
        return None;
    }
    let url = ObjectUrl::parse(source).ok()?;
    match storage
        .get(
            &url,
            &stylefarm_storage::Limit::new("an input image", MAX_BYTES),
        )
        .await
    {
        Ok(b) => thumbnail(source, b).await,
        Err(e) => {
            tracing::warn!(input = %url, cause = %e, "input not readable for the contact sheet");
            None
        }
    }
}

/// Decodes within [`MAX_BYTES`] and [`MAX_DECODE_ALLOC`] and shrinks to the thumbnail
/// box, on a blocking thread; the full-size image is dropped before this returns.
async fn thumbnail(name: &str, bytes: Vec<u8>) -> Option<RgbImage> {
    let name = name.to_owned();
    let made = tokio::task::spawn_blocking(move || -> Result<RgbImage, String> {
        if bytes.len() as u64 > MAX_BYTES {
            return Err(format!(
                "{} bytes; at most {MAX_BYTES} are read",
                bytes.len()
            ));
        }
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(MAX_DECODE_ALLOC);
        reader.limits(limits);
        let linear = reader.format() == Some(image::ImageFormat::OpenExr);
        let img = reader.decode().map_err(|e| e.to_string())?;
        let (w, h) = fit(img.width(), img.height());
        let small = img.resize_exact(w, h, FilterType::Triangle);
        if !linear {
            return Ok(small.to_rgb8());
        }
        // OpenEXR holds linear light: encoded to sRGB to be seen as it is meant.
        let mut rgb = small.into_rgb32f();
        for v in rgb.iter_mut() {
            *v = stylefarm_worker::engine::image_io::srgb_encode(*v);
        }
        Ok(image::DynamicImage::ImageRgb32F(rgb).to_rgb8())
    })
    .await
    .ok()?;
    made.map_err(|cause| {
        tracing::warn!(image = %name, cause, "not drawn on the contact sheet");
    })
    .ok()
}

/// The size that fits `w` x `h` into the thumbnail box, keeping the aspect.
fn fit(w: u32, h: u32) -> (u32, u32) {
    let long = w.max(h).max(1);
    let scale = f64::from(THUMB) / f64::from(long);
    // Both results are at most THUMB.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let size = |v: u32| ((f64::from(v) * scale).round() as u32).clamp(1, THUMB);
    (size(w), size(h))
}

/// Width of a row's loss sparkline.
const SPARK_W: u32 = 160;
const SPARK: Rgb<u8> = Rgb([200, 40, 40]);

/// Draws `values` (positive, on a log scale) as a line in the box at `x`, `y` of `w` x
/// `h` pixels; nothing when fewer than two are positive.
fn sparkline(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, values: &[f64]) {
    let logs: Vec<(usize, f64)> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite() && **v > 0.0)
        .map(|(i, v)| (i, v.log10()))
        .collect();
    if logs.len() < 2 || w < 2 || h < 2 {
        return;
    }
    let (lo, hi) = logs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
    let span = (hi - lo).max(1e-9);
    let last = (values.len() - 1).max(1) as f64;
    let at = |(i, v): (usize, f64)| {
        let px = x as f64 + (w - 1) as f64 * i as f64 / last;
        let py = y as f64 + (h - 1) as f64 * (hi - v) / span;
        (px, py)
    };
    // One column at a time: a vertical run from the previous point to this one.
    let mut prev = at(logs[0]);
    for &p in &logs[1..] {
        let (px, py) = at(p);
        let steps = ((px - prev.0).abs().max((py - prev.1).abs()).ceil() as usize).max(1);
        for k in 0..=steps {
            let t = k as f64 / steps as f64;
            let cx = (prev.0 + (px - prev.0) * t).round() as u32;
            let cy = (prev.1 + (py - prev.1) * t).round() as u32;
            if cx < img.width() && cy < img.height() {
                img.put_pixel(cx, cy, SPARK);
            }
        }
        prev = (px, py);
    }
}

fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, c: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            img.put_pixel(xx, yy, c);
        }
    }
}

/// Draws `s` in the 8x8 font, cut to what fits in `max_w` pixels.
/// Long texts drop to half size before they are cut.
fn text(img: &mut RgbImage, x: u32, y: u32, max_w: u32, s: &str) {
    let scale = if s.chars().count() as u32 * 8 * SCALE > max_w {
        1
    } else {
        SCALE
    };
    let fits = (max_w / (8 * scale)) as usize;
    let shown: String = if s.chars().count() > fits {
        let mut t: String = s.chars().take(fits.saturating_sub(1)).collect();
        t.push('~');
        t
    } else {
        s.to_owned()
    };
    for (i, ch) in shown.chars().enumerate() {
        let glyph = BASIC_FONTS
            .get(ch)
            .or_else(|| BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let gx = x + i as u32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) != 0 {
                    fill(
                        img,
                        gx + col * scale,
                        y + row as u32 * scale,
                        scale,
                        scale,
                        INK,
                    );
                }
            }
        }
    }
}
