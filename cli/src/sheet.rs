//! The contact sheet `fetch` and `run` write: one row per job with thumbnails of its
//! content, its style(s) and its result, each labelled.

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

/// One labelled picture of a row.
struct Cell {
    image: Option<RgbImage>,
    label: String,
}

/// A job: its name over its pictures (result first, so results line up in a column).
struct Row {
    title: String,
    cells: Vec<Cell>,
}

/// Builds the sheet from fetched jobs, reading their inputs through the sources their
/// sidecars record, and writes it as a PNG to `path`.
pub async fn write(jobs: &[Fetched], storage: &Storage, path: &Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for job in jobs {
        let result = image::open(&job.png)
            .with_context(|| format!("reading {}", job.png.display()))?
            .to_rgb8();
        let mut row = vec![
            Cell {
                image: Some(result),
                label: "result".into(),
            },
            Cell {
                image: input(storage, &job.sidecar["content"]["source"]).await,
                label: "content".into(),
            },
        ];
        if let Some(styles) = job.sidecar["styles"].as_array() {
            for (i, s) in styles.iter().enumerate() {
                let weight = s["weight"].as_f64().unwrap_or(1.0);
                let label = if styles.len() > 1 {
                    format!("style {} x{weight}", i + 1)
                } else {
                    "style".into()
                };
                row.push(Cell {
                    image: input(storage, &s["source"]).await,
                    label,
                });
            }
        }
        rows.push(Row {
            title: job.name.clone(),
            cells: row,
        });
    }
    let sheet = compose(&rows);
    let mut png = std::io::Cursor::new(Vec::new());
    sheet
        .write_to(&mut png, image::ImageFormat::Png)
        .context("encoding the contact sheet")?;
    crate::cluster::write_atomic(path, png.into_inner()).await
}

/// An input's thumbnail source; `None` (drawn as a grey box) when it cannot be read.
async fn input(storage: &Storage, source: &serde_json::Value) -> Option<RgbImage> {
    let url = ObjectUrl::parse(source.as_str()?).ok()?;
    let bytes = match storage.get(&url).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(input = %url, cause = %e, "input not readable for the contact sheet");
            return None;
        }
    };
    image::load_from_memory(&bytes).ok().map(|i| i.to_rgb8())
}

fn compose(rows: &[Row]) -> RgbImage {
    let cols = rows.iter().map(|r| r.cells.len()).max().unwrap_or(1) as u32;
    let width = PAD + cols * (THUMB + PAD);
    let row_h = LABEL_H + THUMB + LABEL_H + PAD;
    let height = PAD + rows.len() as u32 * row_h;
    let mut sheet = RgbImage::from_pixel(width, height.max(PAD * 2), BACKGROUND);
    for (r, row) in rows.iter().enumerate() {
        let top = PAD + r as u32 * row_h;
        text(&mut sheet, PAD, top + 2, width - 2 * PAD, &row.title);
        let y = top + LABEL_H;
        for (c, cell) in row.cells.iter().enumerate() {
            let x = PAD + c as u32 * (THUMB + PAD);
            match &cell.image {
                Some(img) => {
                    let thumb = image::imageops::resize(
                        img,
                        fit(img.width(), img.height()).0,
                        fit(img.width(), img.height()).1,
                        FilterType::Triangle,
                    );
                    let dx = (THUMB - thumb.width()) / 2;
                    let dy = (THUMB - thumb.height()) / 2;
                    image::imageops::overlay(
                        &mut sheet,
                        &thumb,
                        i64::from(x + dx),
                        i64::from(y + dy),
                    );
                }
                None => fill(&mut sheet, x, y, THUMB, THUMB, Rgb([200, 200, 200])),
            }
            text(&mut sheet, x, y + THUMB + 4, THUMB, &cell.label);
        }
    }
    sheet
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
