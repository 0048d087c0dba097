//! Dense optical flow between two frames, with tensor operations on the render's device,
//! for temporal coherence (Ruder et al. 2016: start each frame from the previous styled
//! frame warped along the flow, and keep it close to that outside occlusions).
//!
//! The method is coarse-to-fine Lucas-Kanade (Bouguet's pyramidal form) made dense: at
//! each level of an image pyramid the source is warped by the flow so far, and each
//! pixel solves the 2x2 least-squares system of the brightness-constancy equation over
//! a Gaussian window around it; a few such steps per level, the flow carried to the
//! next finer level. It was chosen over learned flow (RAFT and its kind) because it needs
//! no weights beyond VGG's (none can be downloaded on a farm node), and over variational
//! methods (Horn-Schunck, TV-L1) because every step is a handful of convolutions and one
//! `grid_sample`, so it runs on the GPU as the render does and costs little beside it.
//! Its weakness, large motions of small things, matters little between consecutive
//! frames of a shot; the pyramid covers camera moves of tens of pixels.
//!
//! Occlusions come from forward-backward consistency (Sundaram et al. 2010, as Ruder et
//! al. use it): where following the backward flow and then the forward flow does not
//! come back near the start, the pixel was hidden in one of the frames.

use tch::{Device, Kind, Tensor};

/// Gaussian window of the least-squares sums, in pixels (sigma).
const WINDOW_SIGMA: f64 = 2.0;
/// Smoothing of the flow field after each level, in pixels (sigma).
const SPREAD_SIGMA: f64 = 6.0;
/// Confidence (the structure tensor's smaller eigenvalue, luminance in [0, 1]) at which
/// a pixel's own flow and its neighbours' count the same.
const TRUSTED: f64 = 2e-4;
/// Lucas-Kanade steps at each pyramid level.
const STEPS: usize = 5;
/// Coarsest level's shorter side is at least this.
const MIN_SIDE: i64 = 12;
/// Most pyramid levels.
const MAX_LEVELS: usize = 7;
/// Added to the structure tensor's diagonal: flat regions get little flow, not noise.
const DAMPING: f64 = 1e-5;
/// Largest change of the flow in one step at one level, in that level's pixels.
const MAX_STEP: f64 = 1.0;

/// Luminance of `[1, 3, H, W]` RGB in [0, 1], as `[1, 1, H, W]`.
fn luma(rgb: &Tensor) -> Tensor {
    let w = Tensor::from_slice(&[0.299f32, 0.587, 0.114])
        .to_device(rgb.device())
        .view([1, 3, 1, 1]);
    (rgb.to_kind(Kind::Float) * w).sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
}

/// A normalised 2-D Gaussian kernel `[1, 1, k, k]`.
fn gaussian(sigma: f64, device: Device) -> Tensor {
    // The radius is a few pixels: a small whole number.
    #[allow(clippy::cast_possible_truncation)]
    let radius = (sigma * 2.5).ceil() as i64;
    let xs = Tensor::arange_start(-radius, radius + 1, (Kind::Float, device));
    let g = (-(&xs * &xs) / (2.0 * sigma * sigma)).exp();
    let g = &g / g.sum(Kind::Float);
    g.unsqueeze(1)
        .matmul(&g.unsqueeze(0))
        .view([1, 1, 2 * radius + 1, 2 * radius + 1])
}

/// Each channel of `t` (`[1, C, H, W]`) smoothed by `kernel`, edges replicated.
fn smooth(t: &Tensor, kernel: &Tensor) -> Tensor {
    let c = t.size()[1];
    let k = kernel.size()[2];
    let r = k / 2;
    let weight = kernel.expand([c, 1, k, k], false);
    t.replication_pad2d([r, r, r, r])
        .conv2d(&weight, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
}

/// Horizontal and vertical derivatives (central differences, edges replicated).
fn gradients(t: &Tensor) -> (Tensor, Tensor) {
    let p = t.replication_pad2d([1, 1, 1, 1]);
    let (h, w) = (t.size()[2], t.size()[3]);
    let gx = (p.narrow(3, 2, w).narrow(2, 1, h) - p.narrow(3, 0, w).narrow(2, 1, h)) * 0.5;
    let gy = (p.narrow(2, 2, h).narrow(3, 1, w) - p.narrow(2, 0, h).narrow(3, 1, w)) * 0.5;
    (gx, gy)
}

/// `source` (`[1, C, H, W]`) sampled at each pixel plus `flow` (`[1, 2, H, W]`, x then y,
/// in pixels): the image `source` shows where `flow` says each pixel came from.
/// Outside the frame, the border is repeated.
pub fn warp(source: &Tensor, flow: &Tensor) -> Tensor {
    let (h, w) = (flow.size()[2], flow.size()[3]);
    let device = flow.device();
    let xs = Tensor::arange(w, (Kind::Float, device))
        .view([1, 1, w])
        .expand([1, h, w], false);
    let ys = Tensor::arange(h, (Kind::Float, device))
        .view([1, h, 1])
        .expand([1, h, w], false);
    let fx = flow.select(1, 0);
    let fy = flow.select(1, 1);
    // Normalised to [-1, 1] with corners at pixel centres (align_corners).
    let gx = (xs + fx) * (2.0 / (w - 1).max(1) as f64) - 1.0;
    let gy = (ys + fy) * (2.0 / (h - 1).max(1) as f64) - 1.0;
    let grid = Tensor::stack(&[gx, gy], 3);
    // Bilinear (0), border padding (1), align corners.
    source.to_kind(Kind::Float).grid_sampler(&grid, 0, 1, true)
}

/// 1 where `flow` (`[1, 2, H, W]`) leads to a point inside the frame, else 0
/// (`[1, 1, H, W]`).
fn inside(flow: &Tensor) -> Tensor {
    let (h, w) = (flow.size()[2], flow.size()[3]);
    let device = flow.device();
    let xs = Tensor::arange(w, (Kind::Float, device)).view([1, 1, w]);
    let ys = Tensor::arange(h, (Kind::Float, device)).view([1, h, 1]);
    let x = flow.select(1, 0) + xs;
    let y = flow.select(1, 1) + ys;
    (x.ge(0.0) * x.le((w - 1) as f64) * y.ge(0.0) * y.le((h - 1) as f64))
        .to_kind(Kind::Float)
        .unsqueeze(1)
}

/// Flow field `[1, 2, H, W]` (x then y, in pixels) such that `source` warped by it
/// ([`warp`]) looks like `target`: for each pixel of `target`, where it was in `source`.
/// Both are `[1, 3, H, W]` RGB in [0, 1] of the same size, on the same device.
pub fn estimate(target: &Tensor, source: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let device = target.device();
        let kernel = gaussian(WINDOW_SIGMA, device);
        let spread = gaussian(SPREAD_SIGMA, device);
        let mut targets = vec![luma(target)];
        let mut sources = vec![luma(source)];
        while targets.len() < MAX_LEVELS {
            let last = &targets[targets.len() - 1];
            let (h, w) = (last.size()[2], last.size()[3]);
            if h.min(w) / 2 < MIN_SIDE {
                break;
            }
            let down = |t: &Tensor| {
                smooth(t, &gaussian(1.0, device)).avg_pool2d(
                    [2, 2],
                    [2, 2],
                    [0, 0],
                    false,
                    true,
                    None::<i64>,
                )
            };
            let t = down(last);
            let s = down(&sources[sources.len() - 1]);
            targets.push(t);
            sources.push(s);
        }
        let coarsest = &targets[targets.len() - 1];
        let mut flow = Tensor::zeros(
            [1, 2, coarsest.size()[2], coarsest.size()[3]],
            (Kind::Float, device),
        );
        for (t, s) in targets.iter().zip(&sources).rev() {
            let (h, w) = (t.size()[2], t.size()[3]);
            let (fh, fw) = (flow.size()[2], flow.size()[3]);
            if (fh, fw) != (h, w) {
                let scale = Tensor::from_slice(&[w as f32 / fw as f32, h as f32 / fh as f32])
                    .to_device(device)
                    .view([1, 2, 1, 1]);
                flow = flow.upsample_bilinear2d([h, w], false, None, None) * scale;
            }
            let (tgx, tgy) = gradients(t);
            let mut confidence = Tensor::zeros([1, 1, h, w], (Kind::Float, device));
            for _ in 0..STEPS {
                let moved = warp(s, &flow);
                let (sgx, sgy) = gradients(&moved);
                // What the source does not show (the flow leads out of it) says nothing
                // about the flow: it is left out of every window's sums.
                let valid = inside(&flow);
                let gx = (&sgx + &tgx) * 0.5 * &valid;
                let gy = (&sgy + &tgy) * 0.5 * &valid;
                let r = &moved - t;
                let a11 = smooth(&(&gx * &gx), &kernel) + DAMPING;
                let a12 = smooth(&(&gx * &gy), &kernel);
                let a22 = smooth(&(&gy * &gy), &kernel) + DAMPING;
                let b1 = -smooth(&(&gx * &r), &kernel);
                let b2 = -smooth(&(&gy * &r), &kernel);
                let det = &a11 * &a22 - &a12 * &a12;
                // The structure tensor's smaller eigenvalue: how well both components of
                // the flow are pinned down here.
                let half = (&a11 + &a22) * 0.5;
                confidence = (&half - ((&half * &half) - &det).clamp_min(0.0).sqrt()) * &valid;
                let du = ((&a22 * &b1 - &a12 * &b2) / &det).clamp(-MAX_STEP, MAX_STEP);
                let dv = ((&a11 * &b2 - &a12 * &b1) / &det).clamp(-MAX_STEP, MAX_STEP);
                flow += Tensor::cat(&[du, dv], 1);
            }
            // Flat regions (sky, walls) constrain nothing: there the flow is filled in
            // from where it is well defined (normalised convolution, weighted by
            // confidence), before the next finer level refines it.
            let filled =
                smooth(&(&flow * &confidence), &spread) / (smooth(&confidence, &spread) + 1e-12);
            let trust = &confidence / (&confidence + TRUSTED);
            flow = &flow * &trust + filled * (1.0 - &trust);
        }
        flow
    })
}

/// Where the `backward` flow (target to source, [`estimate`]) can be trusted: 1 where
/// it stays inside the source and following it there and the `forward` flow (source to
/// target) back lands near the start, 0 where a pixel was hidden in one frame, came into
/// view at its edge or the flows disagree (Sundaram et
/// al.'s test: `|b + f(x + b)|^2 <= 0.01 (|b|^2 + |f(x + b)|^2) + 0.5`). `[1, 1, H, W]`.
pub fn consistent(backward: &Tensor, forward: &Tensor) -> Tensor {
    tch::no_grad(|| {
        // A pixel whose flow leads out of the source frame was not in it (the camera
        // revealed it): the border `warp` repeats would otherwise agree with it.
        let inside = inside(backward);
        let f = warp(forward, backward);
        let sum = (backward + &f)
            .square()
            .sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
        let size = backward
            .square()
            .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
            + f.square()
                .sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
        sum.le_tensor(&(size * 0.01 + 0.5)).to_kind(Kind::Float) * inside
    })
}

/// Mean end-point error between two flows (`[1, 2, H, W]`), in pixels, over `mask`
/// (`[1, 1, H, W]`, 1 where counted) or everywhere.
pub fn end_point_error(a: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> f64 {
    let e = (a - b)
        .square()
        .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
        .sqrt();
    match mask {
        Some(m) => {
            let n = m.sum(Kind::Float).double_value(&[]);
            (e * m).sum(Kind::Float).double_value(&[]) / n.max(1.0)
        }
        None => e.mean(Kind::Float).double_value(&[]),
    }
}
