//! What the benches share to show and tune their results: images side by side, and
//! knobs from the environment.

use image::{imageops, Rgb, Rgb32FImage, RgbImage};

/// The environment variable `name` parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An image in 8-bit sRGB.
pub fn to_rgb8(img: &Rgb32FImage) -> RgbImage {
    image::DynamicImage::ImageRgb32F(img.clone()).into_rgb8()
}

/// Images side by side on a white ground, each scaled to `height`.
pub fn side_by_side(images: &[&Rgb32FImage], height: u32) -> RgbImage {
    let scaled: Vec<RgbImage> = images
        .iter()
        .map(|i| {
            let w = (u64::from(i.width()) * u64::from(height) / u64::from(i.height())) as u32;
            imageops::resize(
                &to_rgb8(i),
                w.max(1),
                height,
                imageops::FilterType::Lanczos3,
            )
        })
        .collect();
    let gap = 8;
    let width = scaled.iter().map(|i| i.width() + gap).sum::<u32>() + gap;
    let mut out = RgbImage::from_pixel(width, height + 2 * gap, Rgb([255, 255, 255]));
    let mut x = gap;
    for i in &scaled {
        imageops::replace(&mut out, i, i64::from(x), i64::from(gap));
        x += i.width() + gap;
    }
    out
}
