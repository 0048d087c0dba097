//! Optical flow on synthetic camera moves over a fixture photo, where the true flow is
//! known (`stylefarm_worker_testkit::camera`): a pan, a slow zoom and both at once.

use stylefarm_worker::engine::flow;
use stylefarm_worker_testkit::camera::{inner, Move};
use stylefarm_worker_testkit::image;
use tch::Kind;

const SIZE: (u32, u32) = (256, 192);

/// Frames 0 and 1 of a move by (`dx`, `dy`) photo pixels and `dzoom` per frame.
fn pair(dx: f64, dy: f64, dzoom: f64) -> Move {
    let photo = image("content/tubingen.jpg", 400, 300);
    Move::new(&photo, SIZE, 2, (200.0, 150.0), (dx, dy), dzoom)
}

/// End-point error of the estimated flow from frame 1 back to frame 0, inside a margin,
/// where frame 0 shows the same ground (what the camera brings into view has no flow).
fn error(m: &Move) -> (f64, f64) {
    let truth = m.flow(1, 0);
    let estimated = flow::estimate(&m.frame(1), &m.frame(0));
    let seen = inner(&m.seen_in(1, 0), 12);
    let epe = flow::end_point_error(&inner(&estimated, 12), &inner(&truth, 12), Some(&seen));
    let largest = truth.abs().max().double_value(&[]);
    (epe, largest)
}

#[test]
fn a_pan_is_measured_to_a_fraction_of_a_pixel_and_the_warp_undoes_it() {
    let m = pair(5.0, 2.0, 0.0);
    let (epe, _) = error(&m);
    println!("pan 5 x 2 px: end-point error {epe:.3} px");
    assert!(epe < 0.25, "pan end-point error {epe:.3} px");
    // Warped by the flow, the old frame is the new one (inside the frame).
    let (source, target) = (m.frame(0), m.frame(1));
    let backward = flow::estimate(&target, &source);
    let mean_diff = |a: &tch::Tensor| {
        (inner(a, 12) - inner(&target, 12))
            .abs()
            .mean(Kind::Float)
            .double_value(&[])
    };
    let (before, after) = (
        mean_diff(&source),
        mean_diff(&flow::warp(&source, &backward)),
    );
    println!("pan: mean difference {before:.4} before the warp, {after:.4} after");
    assert!(after < before / 5.0, "{after} vs {before}");
}

#[test]
fn a_slow_zoom_a_zooming_pan_and_a_fast_pan_are_measured_to_half_a_pixel() {
    for (name, m) in [
        ("zoom 3%", pair(0.0, 0.0, 0.03)),
        ("pan 4 x 1 px and zoom 2%", pair(4.0, 1.0, 0.02)),
        ("pan 24 x 6 px", pair(24.0, 6.0, 0.0)),
        ("pan 40 x 10 px", pair(40.0, 10.0, 0.0)),
    ] {
        let (epe, largest) = error(&m);
        println!("{name}: end-point error {epe:.3} px (motion up to {largest:.1} px)");
        assert!(largest > 2.5, "{name} moves pixels by up to {largest} px");
        assert!(epe < 0.5, "{name}: end-point error {epe:.3} px");
    }
}

#[test]
fn forward_and_backward_flows_agree_except_where_the_pan_reveals_new_ground() {
    let m = pair(8.0, 0.0, 0.0);
    let (a, b) = (m.frame(0), m.frame(1));
    let backward = flow::estimate(&b, &a);
    let forward = flow::estimate(&a, &b);
    let mask = flow::consistent(&backward, &forward);
    // Where the truth says the pixel was inside the old frame, the flows should agree.
    let seen = m.seen_in(1, 0);
    let agree_seen = (&mask * &seen).sum(Kind::Float).double_value(&[])
        / seen.sum(Kind::Float).double_value(&[]);
    println!("consistent over {agree_seen:.3} of what both frames show");
    assert!(agree_seen > 0.9, "{agree_seen}");
    // The strip that came into view at the right (8 px) was not in the old frame.
    let w = i64::from(SIZE.0);
    let strip = mask.narrow(3, w - 6, 6).mean(Kind::Float).double_value(&[]);
    println!("consistent over {strip:.3} of the newly revealed strip");
    assert!(strip < 0.05, "{strip}");
}
