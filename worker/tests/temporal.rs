//! The temporal term on real weights: a frame rendered against its predecessor starts
//! from that result carried along the flow and keeps much closer to it than a frame
//! styled on its own; the term is 0 without a predecessor; a frame resumed from a
//! checkpoint ends bit-identical, and a checkpoint made against another predecessor is
//! refused.

use std::sync::atomic::AtomicBool;

use image::Rgb32FImage;
use stylefarm_core::RenderParams;
use stylefarm_worker::engine::{flow, image_io, EngineError, PreviousImages, Render, RenderInputs};
use stylefarm_worker_testkit::camera::Move;
use stylefarm_worker_testkit::{image, real_weights, small_params};
use tch::{Device, Kind};

/// Two frames of a pan of 3 x 1 px and a 1% zoom, 96 x 72.
fn shot() -> Move {
    let photo = image("content/tubingen.jpg", 150, 112);
    Move::new(&photo, (96, 72), 2, (75.0, 56.0), (3.0, 1.0), 0.01)
}

fn params(temporal_weight: f64) -> RenderParams {
    RenderParams {
        size: 96,
        temporal_weight,
        ..small_params(40)
    }
}

fn inputs(content: Rgb32FImage, previous: Option<PreviousImages>) -> RenderInputs {
    RenderInputs {
        content,
        styles: vec![image("styles/starry_night.jpg", 96, 72)],
        style_weights: vec![],
        init_image: None,
        previous,
    }
}

fn render(params: &RenderParams, inputs: &RenderInputs, stop_at: u32) -> Render {
    let mut r = Render::new(&real_weights(), params, inputs, Device::Cpu).expect("render");
    r.run_until(stop_at, &AtomicBool::new(false), &mut |_| {})
        .expect("run");
    r
}

fn same_bits(a: &Render, b: &Render) -> bool {
    a.variable().eq_tensor(&b.variable()).all().int64_value(&[]) == 1
}

/// Mean absolute difference between `now` (frame 1) and `before` (frame 0) carried along
/// the true flow, where both frames show the same ground.
fn warp_error(m: &Move, now: &Rgb32FImage, before: &Rgb32FImage) -> f64 {
    let warped = flow::warp(&image_io::to_tensor(before, Device::Cpu), &m.flow(1, 0));
    let seen = m.seen_in(1, 0);
    ((image_io::to_tensor(now, Device::Cpu) - warped).abs() * &seen)
        .sum(Kind::Float)
        .double_value(&[])
        / (3.0 * seen.sum(Kind::Float).double_value(&[]))
}

#[test]
fn a_frame_kept_to_its_predecessor_flickers_far_less_than_one_styled_alone() {
    let m = shot();
    let (c0, c1) = (m.frame_image(0), m.frame_image(1));
    let first = render(&params(0.0), &inputs(c0.clone(), None), 40).output();
    let alone = render(&params(0.0), &inputs(c1.clone(), None), 40);
    assert_eq!(alone.history()[0].temporal, 0.0, "no predecessor, no term");
    let previous = PreviousImages {
        content: c0,
        styled: first.clone(),
    };
    let with = inputs(c1, Some(previous));
    // A weight of 0 ignores the predecessor: the same render as alone.
    let ignored = render(&params(0.0), &with, 40);
    assert!(
        same_bits(&ignored, &alone),
        "a weight of 0 changed the render"
    );

    let start = render(&params(200.0), &with, 0);
    let coherent = render(&params(200.0), &with, 40);
    // Started from the warped predecessor but with next to no term: what the start
    // alone buys.
    let started = render(&params(1e-9), &with, 40);
    let (at_start, alone_e, started_e, coherent_e) = (
        warp_error(&m, &start.output(), &first),
        warp_error(&m, &alone.output(), &first),
        warp_error(&m, &started.output(), &first),
        warp_error(&m, &coherent.output(), &first),
    );
    println!(
        "warp error: start {at_start:.4}, alone {alone_e:.4}, from the warped start without the term {started_e:.4}, with it {coherent_e:.4}"
    );
    assert!(
        at_start < 0.02,
        "the frame starts from its predecessor warped"
    );
    assert!(coherent_e < 0.5 * alone_e, "{coherent_e} vs {alone_e}");
    assert!(
        coherent_e < 0.8 * started_e,
        "the term itself holds the frame: {coherent_e} vs {started_e}"
    );
    let losses = coherent.history().last().copied().expect("losses");
    assert!(losses.temporal > 0.0, "{losses:?}");
    let sum = losses.content + losses.style + losses.tv + losses.temporal;
    assert!((losses.total - sum).abs() <= 1e-6 * sum, "{losses:?}");
}

#[test]
fn a_frame_resumes_bit_identical_and_refuses_a_checkpoint_against_another_predecessor() {
    let m = shot();
    let (c0, c1) = (m.frame_image(0), m.frame_image(1));
    let first = render(&params(0.0), &inputs(c0.clone(), None), 20).output();
    let p = RenderParams {
        scales: vec![64, 96],
        scale_iterations: 6,
        ..params(200.0)
    };
    let with = |styled: Rgb32FImage| {
        inputs(
            c1.clone(),
            Some(PreviousImages {
                content: c0.clone(),
                styled,
            }),
        )
    };
    let straight = render(&p, &with(first.clone()), u32::MAX);
    // Stopped in the second scale, resumed from the checkpoint.
    let bytes = render(&p, &with(first.clone()), 44)
        .checkpoint()
        .expect("checkpoint");
    let mut resumed = Render::resume(
        &real_weights(),
        &p,
        &with(first.clone()),
        Device::Cpu,
        &bytes,
    )
    .expect("resume");
    resumed
        .run(&AtomicBool::new(false), &mut |_| {})
        .expect("run");
    assert!(same_bits(&straight, &resumed), "the resumed frame differs");
    assert_eq!(straight.history(), resumed.history());
    // Against another predecessor the checkpoint is another job's.
    let other = Rgb32FImage::from_fn(first.width(), first.height(), |_, _| {
        image::Rgb([0.5, 0.5, 0.5])
    });
    match Render::resume(&real_weights(), &p, &with(other), Device::Cpu, &bytes) {
        Err(EngineError::Checkpoint { reason }) => {
            assert!(reason.contains("another job"), "{reason}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a checkpoint against another predecessor was accepted"),
    }
}
