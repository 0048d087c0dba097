//! Image decoding, resizing and encoding for the engine.
//!
//! Everything is decoded to sRGB-encoded RGB `f32` in [0, 1] (what the network was
//! trained on): grayscale is replicated, alpha is composited over white, 16-bit and
//! CMYK are converted, EXIF orientation is applied, and linear-light inputs (OpenEXR by
//! default, [`Transfer`]) are encoded to sRGB with values above 1 clipped. Dimensions are
//! checked against a pixel budget before any pixel is decoded.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Rgb32FImage};
use tch::{Device, Kind, Tensor};

use stylefarm_core::{OutputFormat, Transfer};

use super::error::ImageError;

/// Default largest input accepted, in pixels (8K x 8K).
pub const DEFAULT_MAX_PIXELS: u64 = 8192 * 8192;

/// Width and height from an image's header, without decoding it (`None` when the
/// header does not read: decoding then fails with the reason).
pub fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// Reads and decodes an image file; `what` names it in errors ("content image").
pub fn load(path: &Path, max_pixels: u64) -> Result<Rgb32FImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|cause| ImageError::Unreadable {
        name: path.display().to_string(),
        cause,
    })?;
    decode(&bytes, &path.display().to_string(), max_pixels)
}

/// Decodes image bytes taken to be what their format usually holds
/// ([`Transfer::Auto`]); `name` identifies them in errors.
pub fn decode(bytes: &[u8], name: &str, max_pixels: u64) -> Result<Rgb32FImage, ImageError> {
    decode_as(bytes, name, max_pixels, Transfer::Auto).map(|(img, _)| img)
}

/// Decodes image bytes whose values are `transfer` (auto: linear for OpenEXR, else
/// sRGB) to sRGB-encoded RGB; returns the image and the transfer it was taken to have.
pub fn decode_as(
    bytes: &[u8],
    name: &str,
    max_pixels: u64,
    transfer: Transfer,
) -> Result<(Rgb32FImage, Transfer), ImageError> {
    decode_full(bytes, name, max_pixels, transfer).map(|d| (d.image, d.transfer))
}

/// One channel of coverage, 0 (clear) to 1 (opaque), per pixel.
pub type Alpha = image::ImageBuffer<image::Luma<f32>, Vec<f32>>;

/// A decoded image: its colour for the network, its alpha when the file has one, and
/// the transfer its values were taken to have.
pub struct Decoded {
    /// sRGB-encoded RGB in [0, 1], composited over white where it was not opaque.
    pub image: Rgb32FImage,
    /// The file's alpha channel, if it has one.
    pub alpha: Option<Alpha>,
    /// What the values were taken to be.
    pub transfer: Transfer,
}

/// [`decode_as`], keeping the alpha channel.
pub fn decode_full(
    bytes: &[u8],
    name: &str,
    max_pixels: u64,
    transfer: Transfer,
) -> Result<Decoded, ImageError> {
    let corrupt = |e: image::ImageError| ImageError::Corrupt {
        name: name.to_owned(),
        reason: e.to_string(),
    };
    if bytes.is_empty() {
        return Err(ImageError::Empty {
            name: name.to_owned(),
        });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|cause| ImageError::Unreadable {
            name: name.to_owned(),
            cause,
        })?;
    let Some(format) = reader.format() else {
        return Err(ImageError::UnknownFormat {
            name: name.to_owned(),
        });
    };
    // Dimensions come from the header alone: refuse a bomb before allocating for it.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(corrupt)?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels || width == 0 || height == 0 {
        return Err(ImageError::TooLarge {
            name: name.to_owned(),
            width,
            height,
            max_pixels,
        });
    }
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(ImageError::Corrupt {
            name: name.to_owned(),
            reason: "the JPEG stream ends before its end-of-image marker (truncated file)".into(),
        });
    }
    let mut reader = reader;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // RGBA16 (RGBA f32 for OpenEXR) with room for two conversion copies.
    let per_pixel = if format == image::ImageFormat::OpenExr {
        16
    } else {
        8
    };
    limits.max_alloc = Some(pixels * per_pixel * 3 + (64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let orientation = decoder.orientation().map_err(corrupt)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    let transfer = match transfer {
        Transfer::Auto if format == image::ImageFormat::OpenExr => Transfer::Linear,
        Transfer::Auto => Transfer::Srgb,
        t => t,
    };
    let alpha = img.color().has_alpha().then(|| alpha_of(&img));
    let image = match transfer {
        Transfer::Linear => linear_to_srgb(img),
        _ => to_rgb(img),
    };
    Ok(Decoded {
        image,
        alpha,
        transfer,
    })
}

/// The alpha channel of an image that has one, as coverage in [0, 1].
fn alpha_of(img: &DynamicImage) -> Alpha {
    let (w, h) = (img.width(), img.height());
    let mut out = Alpha::new(w, h);
    match img {
        DynamicImage::ImageRgba32F(i) => {
            for (o, p) in out.pixels_mut().zip(i.pixels()) {
                o.0[0] = p.0[3];
            }
        }
        DynamicImage::ImageRgba16(i) => {
            for (o, p) in out.pixels_mut().zip(i.pixels()) {
                o.0[0] = f32::from(p.0[3]) / 65535.0;
            }
        }
        DynamicImage::ImageLumaA16(i) => {
            for (o, p) in out.pixels_mut().zip(i.pixels()) {
                o.0[0] = f32::from(p.0[1]) / 65535.0;
            }
        }
        other => {
            let la = other.to_luma_alpha8();
            for (o, p) in out.pixels_mut().zip(la.pixels()) {
                o.0[0] = f32::from(p.0[1]) / 255.0;
            }
        }
    }
    for v in out.iter_mut() {
        *v = if v.is_finite() {
            v.clamp(0.0, 1.0)
        } else {
            1.0
        };
    }
    out
}

/// The straight (unassociated) sRGB colour of a render of a content that was flattened
/// over white for the network: where the content was partly clear, the white it was
/// composited over is taken back out, in the light it was composited in (linear for a
/// linear-light content, [`decode_full`]), so soft edges carry no white fringe. Clear
/// pixels get black (their colour is never seen).
pub fn unflatten(img: &Rgb32FImage, alpha: &Alpha, transfer: Transfer) -> Rgb32FImage {
    const CLEAR: f32 = 1.0 / 1024.0;
    Rgb32FImage::from_fn(img.width(), img.height(), |x, y| {
        let a = alpha.get_pixel(x, y).0[0];
        let p = img.get_pixel(x, y).0;
        if a <= CLEAR {
            return image::Rgb([0.0; 3]);
        }
        image::Rgb(p.map(|v| match transfer {
            Transfer::Linear => srgb_encode(((srgb_decode(v) - (1.0 - a)) / a).clamp(0.0, 1.0)),
            _ => ((v - (1.0 - a)) / a).clamp(0.0, 1.0),
        }))
    })
}

/// Composites sRGB-encoded colours over white with `alpha`, in the light `transfer`
/// names (linear light for OpenEXR, else the encoded values), as decoding does: the
/// inverse of [`unflatten`].
pub fn flatten(img: &Rgb32FImage, alpha: &Alpha, transfer: Transfer) -> Rgb32FImage {
    Rgb32FImage::from_fn(img.width(), img.height(), |x, y| {
        let a = alpha.get_pixel(x, y).0[0];
        let p = img.get_pixel(x, y).0;
        image::Rgb(p.map(|v| match transfer {
            Transfer::Linear => srgb_encode(srgb_decode(v) * a + (1.0 - a)),
            _ => v * a + (1.0 - a),
        }))
    })
}

/// Resizes an alpha channel to `width` x `height` (Lanczos3), clamped to [0, 1].
pub fn resize_alpha(alpha: &Alpha, width: u32, height: u32) -> Alpha {
    if alpha.dimensions() == (width, height) {
        return alpha.clone();
    }
    let mut out =
        image::imageops::resize(alpha, width, height, image::imageops::FilterType::Lanczos3);
    for v in out.iter_mut() {
        *v = v.clamp(0.0, 1.0);
    }
    out
}

/// The linear value of one sRGB-encoded value (the inverse of [`srgb_encode`] on [0, 1]).
pub fn srgb_decode(encoded: f32) -> f32 {
    let x = encoded.clamp(0.0, 1.0);
    if x <= 0.040_45 {
        x / 12.92
    } else {
        ((x + 0.055) / 1.055).powf(2.4)
    }
}

/// The sRGB encoding of one linear value, clipped to [0, 1] first.
pub fn srgb_encode(linear: f32) -> f32 {
    let x = if linear.is_finite() {
        linear.clamp(0.0, 1.0)
    } else {
        0.0
    };
    if x <= 0.003_130_8 {
        12.92 * x
    } else if x >= 1.0 {
        1.0
    } else {
        1.055 * x.powf(1.0 / 2.4) - 0.055
    }
}

/// A linear-light image (alpha, if any, premultiplied as OpenEXR stores it) composited
/// over white in linear light, then encoded to sRGB.
fn linear_to_srgb(img: DynamicImage) -> Rgb32FImage {
    let has_alpha = img.color().has_alpha();
    let rgba = img.into_rgba32f();
    let (w, h) = rgba.dimensions();
    Rgb32FImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let under = if has_alpha {
            1.0 - p[3].clamp(0.0, 1.0)
        } else {
            0.0
        };
        image::Rgb([
            srgb_encode(p[0] + under),
            srgb_encode(p[1] + under),
            srgb_encode(p[2] + under),
        ])
    })
}

/// True when an end-of-image marker follows the last start-of-scan. The JPEG decoder
/// fills a truncated scan with grey instead of failing; entropy-coded data escapes 0xFF,
/// so the marker cannot occur inside a scan.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let last_eoi = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    matches!((last_sos, last_eoi), (Some(s), Some(e)) if e > s)
}

/// Converts any decoded layout to RGB f32, compositing alpha over white.
fn to_rgb(img: DynamicImage) -> Rgb32FImage {
    if !img.color().has_alpha() {
        return img.into_rgb32f();
    }
    let rgba = img.into_rgba32f();
    let (w, h) = rgba.dimensions();
    Rgb32FImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3].clamp(0.0, 1.0);
        image::Rgb([
            p[0] * a + (1.0 - a),
            p[1] * a + (1.0 - a),
            p[2] * a + (1.0 - a),
        ])
    })
}

/// Dimensions with the long side scaled to `long_side`, keeping the aspect ratio.
pub fn fit_long_side(width: u32, height: u32, long_side: u32) -> (u32, u32) {
    let d = stylefarm_weights::memory::Dims::new(width, height).fit_long_side(long_side);
    (d.width, d.height)
}

/// Resizes to exactly `width` x `height` (Lanczos3), clamped back to [0, 1].
pub fn resize(img: &Rgb32FImage, width: u32, height: u32) -> Rgb32FImage {
    if img.dimensions() == (width, height) {
        return img.clone();
    }
    let mut out =
        image::imageops::resize(img, width, height, image::imageops::FilterType::Lanczos3);
    for v in out.iter_mut() {
        *v = v.clamp(0.0, 1.0);
    }
    out
}

/// An image as a `[1, 3, H, W]` float tensor on `device`.
pub fn to_tensor(img: &Rgb32FImage, device: Device) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .contiguous()
        .to_device(device)
}

/// A `[1, 3, H, W]` tensor as an image, clamped to [0, 1].
pub fn from_tensor(t: &Tensor) -> Rgb32FImage {
    let t = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .clamp(0.0, 1.0)
        .squeeze_dim(0)
        .permute([1, 2, 0])
        .contiguous();
    let (h, w) = (t.size()[0] as u32, t.size()[1] as u32);
    let mut data = vec![0f32; (w * h * 3) as usize];
    let n = data.len();
    t.copy_data(&mut data, n);
    Rgb32FImage::from_raw(w, h, data).unwrap_or_else(|| Rgb32FImage::new(w, h))
}

/// Encodes as PNG with 8 or 16 bits per channel.
pub fn encode_png(img: &Rgb32FImage, bit_depth: u8) -> Result<Vec<u8>, ImageError> {
    encode_output(img, None, OutputFormat::Png, bit_depth)
}

/// Encodes a finished render as `format`, with `alpha` (the content's, at the output's
/// size) where the format holds one: PNG (8 or 16 bits, sRGB, straight alpha), OpenEXR
/// (half float, linear light, colour premultiplied by alpha) or JPEG (8 bits, sRGB,
/// quality 95, no alpha).
pub fn encode_output(
    img: &Rgb32FImage,
    alpha: Option<&Alpha>,
    format: OutputFormat,
    bit_depth: u8,
) -> Result<Vec<u8>, ImageError> {
    let encode_err = |e: &dyn std::fmt::Display| ImageError::Encode {
        reason: e.to_string(),
    };
    let alpha = alpha.filter(|a| a.dimensions() == img.dimensions());
    let mut out = Cursor::new(Vec::new());
    match format {
        OutputFormat::Png => {
            let dynamic = match alpha {
                Some(a) => {
                    let rgba = image::Rgba32FImage::from_fn(img.width(), img.height(), |x, y| {
                        let p = img.get_pixel(x, y).0;
                        image::Rgba([p[0], p[1], p[2], a.get_pixel(x, y).0[0]])
                    });
                    let d = DynamicImage::ImageRgba32F(rgba);
                    if bit_depth == 16 {
                        DynamicImage::ImageRgba16(d.into_rgba16())
                    } else {
                        DynamicImage::ImageRgba8(d.into_rgba8())
                    }
                }
                None => {
                    let d = DynamicImage::ImageRgb32F(img.clone());
                    if bit_depth == 16 {
                        DynamicImage::ImageRgb16(d.into_rgb16())
                    } else {
                        DynamicImage::ImageRgb8(d.into_rgb8())
                    }
                }
            };
            dynamic
                .write_to(&mut out, image::ImageFormat::Png)
                .map_err(|e| encode_err(&e))?;
        }
        OutputFormat::Jpg => {
            let rgb8 = DynamicImage::ImageRgb32F(img.clone()).into_rgb8();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
                .encode_image(&rgb8)
                .map_err(|e| encode_err(&e))?;
        }
        OutputFormat::Exr => {
            use exr::prelude::{f16, Image, SpecificChannels, Vec2, WritableImage as _};
            let (w, h) = (img.width() as usize, img.height() as usize);
            let linear = |x: usize, y: usize| {
                // Both fit u32: they index an image of u32 dimensions.
                #[allow(clippy::cast_possible_truncation)]
                let (x, y) = (x as u32, y as u32);
                let p = img.get_pixel(x, y).0;
                let a = alpha.map_or(1.0, |a| a.get_pixel(x, y).0[0]);
                (
                    p.map(|v| f16::from_f32(srgb_decode(v) * a)),
                    f16::from_f32(a),
                )
            };
            let written = match alpha {
                Some(_) => Image::from_channels(
                    (w, h),
                    SpecificChannels::rgba(|Vec2(x, y)| {
                        let ([r, g, b], a) = linear(x, y);
                        (r, g, b, a)
                    }),
                )
                .write()
                .to_buffered(&mut out),
                None => Image::from_channels(
                    (w, h),
                    SpecificChannels::rgb(|Vec2(x, y)| {
                        let ([r, g, b], _) = linear(x, y);
                        (r, g, b)
                    }),
                )
                .write()
                .to_buffered(&mut out),
            };
            written.map_err(|e| encode_err(&e))?;
        }
    }
    Ok(out.into_inner())
}

/// A small JPEG of `img` for the web interface: its long side at most `side` pixels
/// (never enlarged), area-averaged, 8 bits, quality 85.
pub fn encode_view(img: &Rgb32FImage, side: u32) -> Result<Vec<u8>, ImageError> {
    let (w, h) = img.dimensions();
    let long = w.max(h).max(1);
    let scale = f64::from(side.min(long)) / f64::from(long);
    // Both fit u32 and are at least 1: scale is at most 1.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (tw, th) = (
        ((f64::from(w) * scale).round() as u32).max(1),
        ((f64::from(h) * scale).round() as u32).max(1),
    );
    // Shrunk first, so the full-size image is never copied. (`imageops::thumbnail`
    // brightens f32 images: its sums assume integer subpixels.)
    let small = image::imageops::resize(img, tw, th, image::imageops::FilterType::Triangle);
    let small = DynamicImage::ImageRgb32F(small).into_rgb8();
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&small)
        .map_err(|e| ImageError::Encode {
            reason: e.to_string(),
        })?;
    Ok(out.into_inner())
}
