//! The engine on real weights: determinism, bit-identical resume, layer checks, colour
//! preservation, and every kind of bad input.

use stylefarm_worker_testkit as common;

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};

use image::{DynamicImage, ImageEncoder, Rgb32FImage};
use stylefarm_core::params::{layers, DEFAULT_ADAM_LR};
use stylefarm_core::{InitKind, LineSearch, OptimizerKind, RenderParams};
use stylefarm_weights::{synthetic, Architecture, WeightsError};
use stylefarm_worker::engine::image_io::{self, DEFAULT_MAX_PIXELS};
use stylefarm_worker::engine::{EngineError, ImageError, Outcome, Render};
use tch::Device;

fn run(params: &RenderParams, stop_at: Option<u32>) -> Render {
    let mut r = Render::new(
        &common::real_weights(),
        params,
        &common::small_inputs(),
        Device::Cpu,
    )
    .expect("render");
    let cancel = AtomicBool::new(false);
    r.run_until(stop_at.unwrap_or(u32::MAX), &cancel, &mut |_| {})
        .expect("run");
    r
}

/// Small parameters for `optimizer` with its default learning rate.
fn with_optimizer(optimizer: OptimizerKind, iterations: u32) -> RenderParams {
    RenderParams {
        optimizer,
        learning_rate: match optimizer {
            OptimizerKind::Lbfgs => RenderParams::default().learning_rate,
            OptimizerKind::Adam => DEFAULT_ADAM_LR,
        },
        ..common::small_params(iterations)
    }
}

fn same_bits(a: &Render, b: &Render) -> bool {
    let (a, b) = (a.variable(), b.variable());
    a.size() == b.size() && a.eq_tensor(&b).all().int64_value(&[]) == 1
}

#[test]
fn same_inputs_give_bit_identical_images() {
    for optimizer in [OptimizerKind::Lbfgs, OptimizerKind::Adam] {
        let params = RenderParams {
            init: InitKind::Noise,
            seed: 5,
            ..with_optimizer(optimizer, 6)
        };
        let a = run(&params, None);
        let b = run(&params, None);
        assert!(same_bits(&a, &b), "{optimizer:?}: two runs differ");
        assert_eq!(a.history(), b.history());
        let c = run(
            &RenderParams {
                seed: 6,
                ..params.clone()
            },
            None,
        );
        assert!(!same_bits(&a, &c), "{optimizer:?}: the seed has no effect");
    }
}

#[test]
fn resume_from_checkpoint_is_bit_identical() {
    for optimizer in [OptimizerKind::Lbfgs, OptimizerKind::Adam] {
        let params = with_optimizer(optimizer, 9);
        let straight = run(&params, None);
        let stopped = run(&params, Some(4));
        assert_eq!(stopped.iteration(), 4);
        let bytes = stopped.checkpoint().expect("checkpoint");
        drop(stopped);
        let mut resumed = Render::resume(
            &common::real_weights(),
            &params,
            &common::small_inputs(),
            Device::Cpu,
            &bytes,
        )
        .expect("resume");
        assert_eq!(resumed.iteration(), 4);
        let mut first = None;
        resumed
            .run(&AtomicBool::new(false), &mut |p| {
                first.get_or_insert(p.iteration);
            })
            .expect("run");
        assert_eq!(first, Some(5), "resumed run starts after the checkpoint");
        assert!(
            same_bits(&straight, &resumed),
            "{optimizer:?}: resumed image differs"
        );
        assert_eq!(straight.history(), resumed.history());
        let a = image_io::encode_png(&straight.output(), 16).expect("png");
        let b = image_io::encode_png(&resumed.output(), 16).expect("png");
        assert_eq!(a, b);
    }
}

#[test]
fn a_multi_scale_render_resumed_anywhere_in_its_schedule_ends_bit_identical() {
    for optimizer in [OptimizerKind::Lbfgs, OptimizerKind::Adam] {
        // 32, 45 and 64 px: 4 + 3 + 3 iterations, the scales beginning at 4 and 7.
        let params = RenderParams {
            scales: vec![32, 45, 64],
            scale_iterations: 3,
            ..with_optimizer(optimizer, 4)
        };
        let mut seen = Vec::new();
        let mut straight = Render::new(
            &common::real_weights(),
            &params,
            &common::small_inputs(),
            Device::Cpu,
        )
        .expect("render");
        straight
            .run(&AtomicBool::new(false), &mut |p| {
                seen.push((p.iteration, p.iterations, p.scale, p.scales, p.side));
            })
            .expect("run");
        assert_eq!(straight.iteration(), 10);
        assert_eq!(seen.first(), Some(&(1, 10, 0, 3, 32)));
        assert_eq!(
            seen[4],
            (5, 10, 1, 3, 45),
            "iteration 5 runs at the second scale"
        );
        assert_eq!(seen.last(), Some(&(10, 10, 2, 3, 64)));
        let runs: Vec<_> = straight
            .runs()
            .iter()
            .map(|r| (r.side, r.width, r.height, r.first_iteration, r.first_loss))
            .collect();
        assert_eq!(
            runs,
            [(32, 32, 24, 0, 0), (45, 45, 34, 4, 4), (64, 64, 48, 7, 7)]
        );
        assert_eq!(straight.variable().size(), [1, 3, 48, 64]);
        // Each scale starts from the last one's image, not from the photo again (whose
        // content loss is exactly 0, as at the first iteration).
        let h = straight.history();
        assert_eq!(h[0].content, 0.0);
        assert!(
            h[4].content > 0.0 && h[7].content > 0.0,
            "{optimizer:?}: {h:?}"
        );

        // Stopped mid-scale, on each boundary and just after it, then resumed.
        for stop in [2, 4, 5, 7, 8] {
            let bytes = run(&params, Some(stop)).checkpoint().expect("checkpoint");
            let mut resumed = Render::resume(
                &common::real_weights(),
                &params,
                &common::small_inputs(),
                Device::Cpu,
                &bytes,
            )
            .expect("resume");
            assert_eq!(resumed.iteration(), stop);
            resumed
                .run(&AtomicBool::new(false), &mut |_| {})
                .expect("run");
            assert!(
                same_bits(&straight, &resumed),
                "{optimizer:?} resumed at {stop}: image differs"
            );
            assert_eq!(
                straight.history(),
                resumed.history(),
                "{optimizer:?} at {stop}"
            );
            let sides = |r: &Render| {
                r.runs()
                    .iter()
                    .map(|r| (r.side, r.first_loss))
                    .collect::<Vec<_>>()
            };
            assert_eq!(sides(&straight), sides(&resumed), "{optimizer:?} at {stop}");
        }
        // A checkpoint of another schedule is refused.
        let bytes = run(&params, Some(5)).checkpoint().expect("checkpoint");
        let other = RenderParams {
            scales: vec![40, 64],
            ..params.clone()
        };
        let err = Render::resume(
            &common::real_weights(),
            &other,
            &common::small_inputs(),
            Device::Cpu,
            &bytes,
        )
        .err()
        .expect("another schedule");
        assert!(err.to_string().contains("another job"), "{err}");
    }
}

/// The L-BFGS history pairs a checkpoint holds.
fn lbfgs_pairs(bytes: &[u8]) -> usize {
    safetensors::SafeTensors::deserialize(bytes)
        .expect("tensors")
        .names()
        .iter()
        .filter(|n| n.starts_with("lbfgs.old_dirs."))
        .count()
}

#[test]
fn resume_with_a_short_lbfgs_history_evicts_like_an_uninterrupted_run() {
    // History 3 over 12 iterations: pairs are evicted after the restore, from a checkpoint
    // whose history is still filling (3), exactly full (4) and already evicting (8). (With
    // the line search every step makes a pair, from iteration 2 on; the evaluation it
    // hands to the next iteration is not in the checkpoint and is made again on resume.)
    let params = RenderParams {
        lbfgs_history: 3,
        line_search: LineSearch::StrongWolfe,
        ..with_optimizer(OptimizerKind::Lbfgs, 12)
    };
    let straight = run(&params, None);
    assert_eq!(straight.iteration(), 12);
    let mut stopping = Render::new(
        &common::real_weights(),
        &params,
        &common::small_inputs(),
        Device::Cpu,
    )
    .expect("render");
    let cancel = AtomicBool::new(false);
    let mut checkpoints = Vec::new();
    for (stop, pairs) in [(3, 2), (4, 3), (8, 3)] {
        stopping.run_until(stop, &cancel, &mut |_| {}).expect("run");
        assert_eq!(stopping.iteration(), stop);
        let bytes = stopping.checkpoint().expect("checkpoint");
        assert_eq!(
            lbfgs_pairs(&bytes),
            pairs,
            "history pairs at iteration {stop}"
        );
        checkpoints.push((stop, bytes));
    }
    stopping.run(&cancel, &mut |_| {}).expect("run");
    assert!(
        same_bits(&straight, &stopping),
        "checkpointing changed the run"
    );
    for (stop, bytes) in checkpoints {
        let mut resumed = Render::resume(
            &common::real_weights(),
            &params,
            &common::small_inputs(),
            Device::Cpu,
            &bytes,
        )
        .expect("resume");
        assert_eq!(resumed.iteration(), stop);
        resumed.run(&cancel, &mut |_| {}).expect("run");
        assert_eq!(resumed.iteration(), 12);
        assert_eq!(straight.history().len(), resumed.history().len());
        if let Some((i, (a, b))) = straight
            .history()
            .iter()
            .zip(resumed.history())
            .enumerate()
            .find(|(_, (a, b))| a != b)
        {
            panic!(
                "resumed at {stop}: iteration {} losses differ\nuninterrupted: {a:?}\nresumed:       {b:?}",
                i + 1
            );
        }
        assert!(
            same_bits(&straight, &resumed),
            "resumed at {stop}: image differs"
        );
    }
}

#[test]
fn a_checkpoint_that_does_not_fit_its_job_is_refused_before_it_runs() {
    let params = common::small_params(4);
    let bytes = run(&params, Some(2)).checkpoint().expect("checkpoint");
    let resume = |b: &[u8]| {
        Render::resume(
            &common::real_weights(),
            &params,
            &common::small_inputs(),
            Device::Cpu,
            b,
        )
    };
    assert!(resume(&bytes).is_ok(), "the checkpoint as written resumes");
    let far = common::tampered(&bytes, |_, meta| {
        meta["iteration"] = serde_json::json!(1_000_000)
    });
    let err = resume(&far).err().expect("iteration past the job's end");
    assert!(matches!(err, EngineError::Checkpoint { .. }), "{err}");
    assert!(
        err.to_string().contains("claims iteration 1000000"),
        "{err}"
    );
    let short = common::tampered(&bytes, |raw, _| {
        let name = raw
            .keys()
            .find(|k| *k != "image")
            .expect("an optimizer tensor")
            .clone();
        raw.insert(name, (vec![3], vec![0; 12]));
    });
    let err = resume(&short)
        .err()
        .expect("a state tensor of the wrong size");
    assert!(matches!(err, EngineError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("holds 3 Float values"), "{err}");
}

#[test]
fn checkpoint_of_another_job_is_refused() {
    let params = common::small_params(4);
    let bytes = run(&params, Some(2)).checkpoint().expect("checkpoint");
    let other = RenderParams {
        style_weight: 7.0,
        ..params
    };
    let err = Render::resume(
        &common::real_weights(),
        &other,
        &common::small_inputs(),
        Device::Cpu,
        &bytes,
    )
    .err()
    .expect("refused");
    assert!(matches!(err, EngineError::Checkpoint { .. }), "{err}");
    let err = Render::resume(
        &common::real_weights(),
        &other,
        &common::small_inputs(),
        Device::Cpu,
        b"garbage",
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("checkpoint"), "{err}");
}

#[test]
fn cancel_stops_within_one_iteration_and_progress_reports_each() {
    let params = common::small_params(50);
    let mut r = Render::new(
        &common::real_weights(),
        &params,
        &common::small_inputs(),
        Device::Cpu,
    )
    .expect("render");
    let cancel = AtomicBool::new(false);
    let mut seen = Vec::new();
    let outcome = r
        .run(&cancel, &mut |p| {
            seen.push((p.iteration, p.losses.total));
            if p.iteration == 3 {
                cancel.store(true, Ordering::Relaxed);
            }
        })
        .expect("run");
    assert_eq!(outcome, Outcome::Cancelled);
    assert_eq!(r.iteration(), 3);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(seen.iter().all(|s| s.1.is_finite() && s.1 > 0.0));
}

#[test]
fn a_layer_the_file_lacks_is_named_with_those_it_has() {
    let params = RenderParams {
        style_layers: layers(&["relu1_1", "relu4_1"]),
        ..common::small_params(1)
    };
    let err = Render::new(
        &common::real_weights(),
        &params,
        &common::small_inputs(),
        Device::Cpu,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("relu4_1"), "{err}");
    assert!(err.contains("relu3_1") && err.contains("conv3_4"), "{err}");
}

#[test]
fn a_weights_file_missing_a_tensor_names_the_tensor_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let info = common::random_weights(dir.path(), Architecture::Vgg19, "conv2_1", None, 1);
    // The file loses conv2_1 (features.5) after it was inspected.
    synthetic::write_random_vgg(&info.path, Architecture::Vgg19, "conv1_2", None, 1)
        .expect("rewrite");
    let params = RenderParams {
        content_layers: layers(&["relu2_1"]),
        style_layers: layers(&["relu1_1", "relu2_1"]),
        ..common::small_params(1)
    };
    let err = Render::new(&info, &params, &common::small_inputs(), Device::Cpu)
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        matches!(
            &err,
            EngineError::Weights(WeightsError::MissingTensor { key, .. }) if key == "features.5.weight"
        ),
        "{text}"
    );
    assert!(text.contains(&info.path.display().to_string()), "{text}");
    assert!(!text.contains("checkpoint"), "{text}");
}

#[test]
fn too_small_for_the_pooling_is_refused() {
    let mut inputs = common::small_inputs();
    inputs.content = common::image("content/tubingen.jpg", 64, 2);
    let err = Render::new(
        &common::real_weights(),
        &common::small_params(1),
        &inputs,
        Device::Cpu,
    )
    .err()
    .expect("refused");
    assert!(matches!(err, EngineError::TooSmall { .. }), "{err}");
    assert!(err.to_string().contains("content"), "{err}");
}

#[test]
fn style_blend_weights_are_checked() {
    let mut inputs = common::small_inputs();
    inputs.style_weights = vec![0.5, 0.5];
    let err = Render::new(
        &common::real_weights(),
        &common::small_params(1),
        &inputs,
        Device::Cpu,
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string().contains("2 blend weights for 1 style"),
        "{err}"
    );
    inputs.style_weights = vec![f64::NAN];
    assert!(Render::new(
        &common::real_weights(),
        &common::small_params(1),
        &inputs,
        Device::Cpu
    )
    .is_err());
}

#[test]
fn preserve_colors_keeps_the_content_chroma() {
    let plain = run(&common::small_params(8), None).output();
    let kept = run(
        &RenderParams {
            preserve_colors: true,
            ..common::small_params(8)
        },
        None,
    )
    .output();
    let content = image_io::resize(&common::small_inputs().content, 64, 48);
    let chroma = |img: &Rgb32FImage| -> f64 {
        img.pixels()
            .zip(content.pixels())
            .map(|(a, c)| {
                let i = |p: &image::Rgb<f32>| 0.596 * p.0[0] - 0.274 * p.0[1] - 0.322 * p.0[2];
                (i(a) - i(c)).abs() as f64
            })
            .sum::<f64>()
    };
    assert!(
        chroma(&kept) < chroma(&plain) * 0.5,
        "kept {} plain {}",
        chroma(&kept),
        chroma(&plain)
    );
}

// --- image inputs -------------------------------------------------------------------

fn encode(img: &DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn sample() -> DynamicImage {
    DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 20, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 12) as u8, 128])
    }))
}

#[test]
fn reads_jpeg_png_webp_tiff() {
    for format in [
        image::ImageFormat::Jpeg,
        image::ImageFormat::Png,
        image::ImageFormat::WebP,
        image::ImageFormat::Tiff,
    ] {
        let bytes = encode(&sample(), format);
        let img = image_io::decode(&bytes, "sample", DEFAULT_MAX_PIXELS).expect("decodes");
        assert_eq!(img.dimensions(), (40, 20), "{format:?}");
        let p = img.get_pixel(39, 19).0;
        assert!((p[2] - 128.0 / 255.0).abs() < 0.05, "{format:?}: {p:?}");
    }
}

#[test]
fn grayscale_alpha_sixteen_bit_and_cmyk_become_rgb() {
    let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(8, 8, image::Luma([200])));
    let g = image_io::decode(
        &encode(&gray, image::ImageFormat::Png),
        "gray",
        DEFAULT_MAX_PIXELS,
    )
    .expect("gray");
    assert!(g
        .get_pixel(0, 0)
        .0
        .iter()
        .all(|v| (v - 200.0 / 255.0).abs() < 1e-6));

    let clear = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
        8,
        8,
        image::Rgba([0, 0, 0, 0]),
    ));
    let a = image_io::decode(
        &encode(&clear, image::ImageFormat::Png),
        "alpha",
        DEFAULT_MAX_PIXELS,
    )
    .expect("alpha");
    assert_eq!(
        a.get_pixel(3, 3).0,
        [1.0; 3],
        "transparent is composited over white"
    );

    let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
        8,
        8,
        image::Rgb([65535u16, 0, 32768]),
    ));
    let d = image_io::decode(
        &encode(&deep, image::ImageFormat::Png),
        "16-bit",
        DEFAULT_MAX_PIXELS,
    )
    .expect("16-bit");
    assert!((d.get_pixel(0, 0).0[2] - 0.5).abs() < 1e-3);

    let mut cmyk = Cursor::new(Vec::new());
    let data: Vec<u8> = (0..16).flat_map(|_| [0u8, 255, 255, 0]).collect(); // pure cyan-free red: C0 M255 Y255 K0
    tiff::encoder::TiffEncoder::new(&mut cmyk)
        .expect("tiff")
        .write_image::<tiff::encoder::colortype::CMYK8>(4, 4, &data)
        .expect("write cmyk");
    let c = image_io::decode(cmyk.get_ref(), "cmyk", DEFAULT_MAX_PIXELS).expect("cmyk");
    let p = c.get_pixel(0, 0).0;
    assert!(
        p[0] > 0.9 && p[1] < 0.1 && p[2] < 0.1,
        "CMYK red became {p:?}"
    );
}

#[test]
fn exif_orientation_is_applied() {
    // A TIFF-structured EXIF block with Orientation = 6 (rotate 90 degrees clockwise).
    let mut exif = b"II*\0".to_vec();
    exif.extend(8u32.to_le_bytes());
    exif.extend(1u16.to_le_bytes());
    exif.extend([0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]);
    exif.extend(0u32.to_le_bytes());
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new(&mut out);
    enc.set_exif_metadata(exif).expect("exif");
    enc.write_image(sample().as_bytes(), 40, 20, image::ExtendedColorType::Rgb8)
        .expect("jpeg");
    let img = image_io::decode(&out, "rotated", DEFAULT_MAX_PIXELS).expect("decodes");
    assert_eq!(img.dimensions(), (20, 40));
}

/// A 1x1 PNG whose header claims `w` x `h`, with a valid CRC: a decompression bomb's header.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = encode(
        &DynamicImage::ImageRgb8(image::RgbImage::new(1, 1)),
        image::ImageFormat::Png,
    );
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn bad_images_get_typed_errors() {
    let jpeg = std::fs::read(common::fixture("content/tubingen.jpg")).expect("fixture");
    let png = encode(&sample(), image::ImageFormat::Png);
    let mut corrupt_png = png.clone();
    let mid = corrupt_png.len() / 2;
    for b in &mut corrupt_png[mid..mid + 16] {
        *b ^= 0x5a;
    }
    let cases: Vec<(&str, Vec<u8>, fn(&ImageError) -> bool)> = vec![
        ("empty", vec![], |e| matches!(e, ImageError::Empty { .. })),
        ("text", b"this is not an image at all".to_vec(), |e| {
            matches!(e, ImageError::UnknownFormat { .. })
        }),
        ("truncated jpeg", jpeg[..jpeg.len() / 3].to_vec(), |e| {
            matches!(e, ImageError::Corrupt { .. })
        }),
        ("truncated png", png[..png.len() / 2].to_vec(), |e| {
            matches!(e, ImageError::Corrupt { .. })
        }),
        ("corrupt png", corrupt_png, |e| {
            matches!(e, ImageError::Corrupt { .. })
        }),
        ("bomb", png_claiming(100_000, 100_000), |e| {
            matches!(e, ImageError::TooLarge { width: 100_000, .. })
        }),
    ];
    for (name, bytes, expected) in cases {
        let err = image_io::decode(&bytes, name, DEFAULT_MAX_PIXELS).expect_err(name);
        assert!(expected(&err), "{name}: unexpected {err:?}");
        assert!(
            err.to_string().contains(name),
            "{name}: message does not name the input: {err}"
        );
    }
    let err = image_io::load(
        std::path::Path::new("/nonexistent/x.jpg"),
        DEFAULT_MAX_PIXELS,
    )
    .expect_err("missing");
    assert!(err.to_string().contains("/nonexistent/x.jpg"), "{err}");
}

#[test]
fn sixteen_bit_png_output_round_trips() {
    let img = Rgb32FImage::from_fn(8, 4, |x, _| image::Rgb([x as f32 / 7.0, 0.25, 1.0]));
    let png = image_io::encode_png(&img, 16).expect("png");
    let back = image::load_from_memory(&png).expect("decodes");
    assert_eq!(back.color(), image::ColorType::Rgb16);
    let png8 = image_io::encode_png(&img, 8).expect("png");
    assert_eq!(
        image::load_from_memory(&png8).expect("decodes").color(),
        image::ColorType::Rgb8
    );
}

#[test]
fn outputs_are_png_half_float_linear_exr_or_jpeg_and_png_and_exr_keep_the_alpha() {
    use stylefarm_core::{OutputFormat, Transfer};
    // An RGBA content: opaque on the left, half covered in the middle, clear on the right.
    let coverage = |x: u32| match x {
        0..=3 => 1.0,
        4..=5 => 0.5,
        _ => 0.0,
    };
    let content =
        image::Rgba32FImage::from_fn(8, 4, |x, _| image::Rgba([0.5, 0.25, 1.0, coverage(x)]));
    let png_in = encode(
        &DynamicImage::ImageRgba16(DynamicImage::ImageRgba32F(content).into_rgba16()),
        image::ImageFormat::Png,
    );
    let decoded = image_io::decode_full(&png_in, "rgba.png", DEFAULT_MAX_PIXELS, Transfer::Auto)
        .expect("decodes");
    let alpha = decoded.alpha.expect("the PNG's alpha is kept");
    for x in 0..8 {
        let a = alpha.get_pixel(x, 0).0[0];
        assert!(
            (a - coverage(x)).abs() < 1e-4,
            "alpha at {x}: {a} (16 bits)"
        );
    }
    let opaque = image_io::decode_full(
        &encode(
            &DynamicImage::ImageRgb8(image::RgbImage::new(2, 2)),
            image::ImageFormat::Png,
        ),
        "rgb.png",
        DEFAULT_MAX_PIXELS,
        Transfer::Auto,
    )
    .expect("decodes");
    assert!(opaque.alpha.is_none(), "no alpha where the file has none");

    // A render's output (sRGB 0.5 is linear 0.214) with that alpha.
    let out = Rgb32FImage::from_pixel(8, 4, image::Rgb([0.5, 0.0, 1.0]));
    let png = image_io::encode_output(&out, Some(&alpha), OutputFormat::Png, 16).expect("png");
    let back = image::load_from_memory(&png).expect("decodes");
    assert_eq!(back.color(), image::ColorType::Rgba16);
    let back = back.into_rgba32f();
    for x in 0..8 {
        let p = back.get_pixel(x, 1).0;
        assert!((p[3] - coverage(x)).abs() < 1e-4, "PNG alpha at {x}: {p:?}");
        assert!(
            (p[0] - 0.5).abs() < 1e-4,
            "PNG colour is straight sRGB: {p:?}"
        );
    }
    let png8 = image_io::encode_output(&out, Some(&alpha), OutputFormat::Png, 8).expect("png");
    assert_eq!(
        image::load_from_memory(&png8).expect("decodes").color(),
        image::ColorType::Rgba8
    );

    let exr = image_io::encode_output(&out, Some(&alpha), OutputFormat::Exr, 8).expect("exr");
    let back = image::load_from_memory_with_format(&exr, image::ImageFormat::OpenExr)
        .expect("an OpenEXR file");
    assert!(back.color().has_alpha(), "{:?}", back.color());
    let back = back.into_rgba32f();
    for x in 0..8 {
        let p = back.get_pixel(x, 2).0;
        let a = coverage(x);
        assert!((p[3] - a).abs() < 1e-3, "EXR alpha at {x}: {p:?}");
        assert!(
            (p[0] - 0.2140 * a).abs() < 2e-3 && p[1].abs() < 1e-6 && (p[2] - a).abs() < 2e-3,
            "EXR colour is linear, premultiplied: {p:?} at coverage {a}"
        );
    }
    // Half floats, as the file's header says of each of its four channels.
    let meta = exr::meta::MetaData::read_from_buffered(Cursor::new(&exr), true).expect("header");
    let channels = &meta.headers[0].channels.list;
    assert_eq!(channels.len(), 4);
    assert!(
        channels
            .iter()
            .all(|c| c.sample_type == exr::meta::attribute::SampleType::F16),
        "{channels:?}"
    );
    // Read back as a plate, the output is the render again (sRGB 0.5 where opaque).
    let (plate, t) = image_io::decode_as(&exr, "out.exr", DEFAULT_MAX_PIXELS, Transfer::Auto)
        .expect("decodes as a plate");
    assert_eq!(t, Transfer::Linear);
    assert!((plate.get_pixel(0, 0).0[0] - 0.5).abs() < 3e-3);
    // Without an alpha, three channels.
    let rgb = image_io::encode_output(&out, None, OutputFormat::Exr, 8).expect("exr");
    assert!(!image::load_from_memory(&rgb)
        .expect("decodes")
        .color()
        .has_alpha());

    // The colour of a soft edge comes back without the white the network saw it over,
    // whichever light it was flattened in.
    let straight = [0.2f32, 0.6, 0.9];
    for (t, flat) in [
        (Transfer::Srgb, straight.map(|c| c * 0.5 + 0.5)),
        (
            Transfer::Linear,
            straight.map(|c| image_io::srgb_encode(image_io::srgb_decode(c) * 0.5 + 0.5)),
        ),
    ] {
        let half = image::ImageBuffer::from_pixel(1, 1, image::Luma([0.5f32]));
        let back = image_io::unflatten(&Rgb32FImage::from_pixel(1, 1, image::Rgb(flat)), &half, t);
        for (b, c) in back.get_pixel(0, 0).0.iter().zip(straight) {
            assert!((b - c).abs() < 1e-4, "{t:?}: {b} for {c}");
        }
    }

    let jpg = image_io::encode_output(&out, Some(&alpha), OutputFormat::Jpg, 8).expect("jpg");
    let back = image::load_from_memory(&jpg).expect("decodes");
    assert_eq!(back.color(), image::ColorType::Rgb8, "JPEG has no alpha");
    let p = back.into_rgb8().get_pixel(0, 0).0;
    assert!((i32::from(p[0]) - 128).abs() <= 3 && p[2] >= 250, "{p:?}");
}

#[test]
fn openexr_is_linear_light_encoded_to_srgb_and_the_transfer_can_be_named() {
    use stylefarm_core::Transfer;
    // Linear 0.2140 is sRGB 0.5; 4.0 is a highlight above 1; the last column is clear.
    let plate = image::Rgba32FImage::from_fn(6, 4, |x, _| match x {
        0..=3 => image::Rgba([0.2140, 0.0, 4.0, 1.0]),
        _ => image::Rgba([0.0, 0.0, 0.0, 0.0]),
    });
    let exr = encode(
        &DynamicImage::ImageRgba32F(plate),
        image::ImageFormat::OpenExr,
    );
    let (img, t) = image_io::decode_as(&exr, "plate.exr", DEFAULT_MAX_PIXELS, Transfer::Auto)
        .expect("an EXR decodes");
    assert_eq!(t, Transfer::Linear, "OpenEXR is taken as linear");
    let p = img.get_pixel(0, 0).0;
    assert!((p[0] - 0.5).abs() < 2e-3, "linear 0.214 is sRGB 0.5: {p:?}");
    assert_eq!(
        (p[1], p[2]),
        (0.0, 1.0),
        "black stays black, a highlight clips"
    );
    assert_eq!(
        img.get_pixel(5, 0).0,
        [1.0; 3],
        "clear is composited over white"
    );
    // Named sRGB, the same file's values are used as they are.
    let (raw, t) = image_io::decode_as(&exr, "plate.exr", DEFAULT_MAX_PIXELS, Transfer::Srgb)
        .expect("decodes");
    assert_eq!(t, Transfer::Srgb);
    assert!((raw.get_pixel(0, 0).0[0] - 0.2140).abs() < 1e-3);
    // A PNG is sRGB unless named linear.
    let png = encode(
        &DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            2,
            2,
            image::Rgb([14025u16, 0, 65535]),
        )),
        image::ImageFormat::Png,
    );
    let (s, t) =
        image_io::decode_as(&png, "a.png", DEFAULT_MAX_PIXELS, Transfer::Auto).expect("png");
    assert_eq!(t, Transfer::Srgb);
    assert!(
        (s.get_pixel(0, 0).0[0] - 14025.0 / 65535.0).abs() < 1e-6,
        "16 bits kept"
    );
    let (l, _) =
        image_io::decode_as(&png, "a.png", DEFAULT_MAX_PIXELS, Transfer::Linear).expect("png");
    assert!(
        (l.get_pixel(0, 0).0[0] - 0.5).abs() < 2e-3,
        "named linear, it is encoded"
    );
    assert_eq!(image_io::srgb_encode(f32::NAN), 0.0);
    // A 2K plate decodes within the decoder's memory limit.
    let big = image::Rgba32FImage::from_pixel(2048, 1152, image::Rgba([0.5, 0.25, 0.125, 1.0]));
    let exr = encode(
        &DynamicImage::ImageRgba32F(big),
        image::ImageFormat::OpenExr,
    );
    let (img, _) = image_io::decode_as(&exr, "2k.exr", DEFAULT_MAX_PIXELS, Transfer::Auto)
        .expect("a 2K plate decodes");
    assert_eq!(img.dimensions(), (2048, 1152));
}

#[test]
fn a_view_image_is_small_and_keeps_the_colours() {
    // A large image with a known colour and a gradient: the view is at most VIEW_SIDE
    // on its long side and its pixels are the image's, not brightened or darkened.
    let img =
        image::Rgb32FImage::from_fn(1200, 600, |x, _| image::Rgb([0.2, 0.5, x as f32 / 1199.0]));
    let jpeg = image_io::encode_view(&img, 320).expect("encodes");
    let view = image::load_from_memory(&jpeg).expect("a JPEG").into_rgb8();
    assert_eq!(view.dimensions(), (320, 160));
    let p = view.get_pixel(160, 80).0;
    assert!(
        (i32::from(p[0]) - 51).abs() <= 3
            && (i32::from(p[1]) - 128).abs() <= 3
            && (i32::from(p[2]) - 128).abs() <= 6,
        "{p:?}"
    );
}
