//! Colour preservation (Gatys et al. 2016, "luminance-only transfer"): the optimization
//! sees luminance only, the style's luminance matched to the content's mean and spread,
//! and the result takes its chroma (YIQ's I and Q) from the content photo.

use image::{Rgb, Rgb32FImage};

fn yiq(p: [f32; 3]) -> [f32; 3] {
    let [r, g, b] = p;
    [
        0.299 * r + 0.587 * g + 0.114 * b,
        0.595_716 * r - 0.274_453 * g - 0.321_263 * b,
        0.211_456 * r - 0.522_591 * g + 0.311_135 * b,
    ]
}

fn rgb([y, i, q]: [f32; 3]) -> [f32; 3] {
    [
        (y + 0.9563 * i + 0.6210 * q).clamp(0.0, 1.0),
        (y - 0.2721 * i - 0.6474 * q).clamp(0.0, 1.0),
        (y - 1.1070 * i + 1.7046 * q).clamp(0.0, 1.0),
    ]
}

fn mean_std(img: &Rgb32FImage) -> (f64, f64) {
    let n = (img.width() * img.height()).max(1) as f64;
    let ys: Vec<f64> = img.pixels().map(|p| yiq(p.0)[0] as f64).collect();
    let mean = ys.iter().sum::<f64>() / n;
    let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The image's luminance in all three channels.
pub fn luminance(img: &Rgb32FImage) -> Rgb32FImage {
    Rgb32FImage::from_fn(img.width(), img.height(), |x, y| {
        let l = yiq(img.get_pixel(x, y).0)[0];
        Rgb([l, l, l])
    })
}

/// The style's luminance, shifted and scaled to the content's mean and spread.
pub fn matched_luminance(style: &Rgb32FImage, content: &Rgb32FImage) -> Rgb32FImage {
    let (ms, ss) = mean_std(style);
    let (mc, sc) = mean_std(content);
    let gain = if ss > 1e-6 { sc / ss } else { 1.0 };
    Rgb32FImage::from_fn(style.width(), style.height(), |x, y| {
        let l = yiq(style.get_pixel(x, y).0)[0] as f64;
        let m = ((l - ms) * gain + mc).clamp(0.0, 1.0) as f32;
        Rgb([m, m, m])
    })
}

/// The luminance of `result` with the chroma of `content` (same size).
pub fn recolor(result: &Rgb32FImage, content: &Rgb32FImage) -> Rgb32FImage {
    Rgb32FImage::from_fn(result.width(), result.height(), |x, y| {
        let l = yiq(result.get_pixel(x, y).0)[0];
        let [_, i, q] = yiq(content.get_pixel(x, y).0);
        Rgb(rgb([l, i, q]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yiq_round_trips() {
        for p in [[0.2f32, 0.5, 0.9], [1.0, 0.0, 0.0], [0.3, 0.3, 0.3]] {
            let back = rgb(yiq(p));
            for c in 0..3 {
                assert!((back[c] - p[c]).abs() < 2e-3, "{p:?} -> {back:?}");
            }
        }
    }

    #[test]
    fn recolor_keeps_content_chroma() {
        let content = Rgb32FImage::from_pixel(4, 4, Rgb([0.8, 0.2, 0.1]));
        let gray = luminance(&content);
        let out = recolor(&gray, &content);
        let p = out.get_pixel(1, 1).0;
        assert!(
            (p[0] - 0.8).abs() < 5e-3 && (p[2] - 0.1).abs() < 5e-3,
            "{p:?}"
        );
    }
}
