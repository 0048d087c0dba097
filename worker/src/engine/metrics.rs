//! Image measures the benchmarks (and the sidecar) report: how much of a photo's
//! structure survived in its styled version.

use image::Rgb32FImage;

use super::color;
use super::image_io;

/// SSIM window side (scikit-image's default, uniform weights).
const WINDOW: usize = 7;
/// SSIM's stabilising constants for a data range of 1.
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;

/// Mean SSIM (Wang et al. 2004, 7x7 uniform windows) of the luminance of `a` and `b`,
/// both resized to `1 / downscale` of `b`'s size first (structure, not texture: at a
/// quarter of the size a painting's brush strokes are mostly gone, a photo's shapes
/// are not). 1 is identical; unrelated images are near 0.
pub fn structure_ssim(a: &Rgb32FImage, b: &Rgb32FImage, downscale: u32) -> f64 {
    let (w, h) = b.dimensions();
    let (w, h) = (
        (w / downscale.max(1)).max(WINDOW as u32),
        (h / downscale.max(1)).max(WINDOW as u32),
    );
    let lum = |img: &Rgb32FImage| -> Vec<f64> {
        color::luminance(&image_io::resize(img, w, h))
            .pixels()
            .map(|p| f64::from(p[0]))
            .collect()
    };
    ssim(&lum(a), &lum(b), w as usize, h as usize)
}

/// Mean SSIM of two `w` x `h` single-channel images in [0, 1].
pub fn ssim(a: &[f64], b: &[f64], w: usize, h: usize) -> f64 {
    if w < WINDOW || h < WINDOW || a.len() != w * h || b.len() != w * h {
        return f64::NAN;
    }
    let n = (WINDOW * WINDOW) as f64;
    // Sample covariance, as scikit-image does.
    let cov_norm = n / (n - 1.0);
    let mut total = 0.0;
    let mut count = 0usize;
    for y in 0..=h - WINDOW {
        for x in 0..=w - WINDOW {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for dy in 0..WINDOW {
                let row = (y + dy) * w + x;
                for i in row..row + WINDOW {
                    let (va, vb) = (a[i], b[i]);
                    sa += va;
                    sb += vb;
                    saa += va * va;
                    sbb += vb * vb;
                    sab += va * vb;
                }
            }
            let (ma, mb) = (sa / n, sb / n);
            let va = cov_norm * (saa / n - ma * ma);
            let vb = cov_norm * (sbb / n - mb * mb);
            let cab = cov_norm * (sab / n - ma * mb);
            total += ((2.0 * ma * mb + C1) * (2.0 * cab + C2))
                / ((ma * ma + mb * mb + C1) * (va + vb + C2));
            count += 1;
        }
    }
    total / count as f64
}

/// How much a tile grid shows in an image: the mean gradient magnitude of its luminance
/// on the boundaries of the tiles of `tile` ([`stylefarm_core::tiles::boundaries`])
/// divided by that elsewhere. A seam raises it; an image without tiles has its own
/// value for the same grid, which a tiled render's is compared with.
pub fn boundary_gradient_ratio(img: &Rgb32FImage, tile: u32) -> f64 {
    let (w, h) = img.dimensions();
    let on = stylefarm_core::tiles::boundaries(w, h, tile);
    let lum: Vec<f64> = color::luminance(img)
        .pixels()
        .map(|p| f64::from(p[0]))
        .collect();
    let (w, h) = (w as usize, h as usize);
    let (mut sums, mut counts) = ([0.0f64; 2], [0usize; 2]);
    for y in 0..h.saturating_sub(1) {
        for x in 0..w.saturating_sub(1) {
            let i = y * w + x;
            let (gx, gy) = (lum[i + 1] - lum[i], lum[i + w] - lum[i]);
            let k = usize::from(on[i]);
            sums[k] += (gx * gx + gy * gy).sqrt();
            counts[k] += 1;
        }
    }
    let mean = |k: usize| sums[k] / counts[k].max(1) as f64;
    mean(1) / mean(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize, f: impl Fn(usize, usize) -> f64) -> Vec<f64> {
        (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect()
    }

    #[test]
    fn identical_images_score_one_and_unrelated_ones_near_zero() {
        let a = ramp(32, 24, |x, y| ((x * 7 + y * 13) % 17) as f64 / 16.0);
        assert!((ssim(&a, &a, 32, 24) - 1.0).abs() < 1e-12);
        // A checkerboard against noise-like stripes: no shared structure.
        let b = ramp(32, 24, |x, y| ((x / 3 + y / 5) % 2) as f64);
        let c = ramp(32, 24, |x, y| ((x * 31 + y * 17) % 11) as f64 / 10.0);
        assert!(ssim(&b, &c, 32, 24).abs() < 0.2, "{}", ssim(&b, &c, 32, 24));
        // Inverted structure scores below zero; a brightness shift costs little.
        let inv: Vec<f64> = b.iter().map(|v| 1.0 - v).collect();
        assert!(ssim(&b, &inv, 32, 24) < -0.5);
        let shifted: Vec<f64> = b.iter().map(|v| v * 0.9 + 0.05).collect();
        assert!(ssim(&b, &shifted, 32, 24) > 0.9);
        assert!(ssim(&b, &c, 4, 4).is_nan(), "smaller than a window");
    }
}
