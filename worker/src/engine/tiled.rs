//! A tiled scale in progress: the whole image, the tiles of every pass
//! ([`stylefarm_core::tiles::grid`]) and how far through them the optimization is.
//!
//! Each tile is optimized on its own, as a small render: its content targets from its
//! crop of the content, its crop of the temporal term, a fresh optimizer, starting from
//! its crop of the image as the tiles before it left it. When its iterations are done it
//! is blended back through its feathered mask and the next tile begins from the image as
//! it now is, so a tile starts from its finished neighbours' pixels in the overlap.
//!
//! The style term is the whole image's, shared out. The style targets `A` come from the
//! whole style images once per scale. A tile does not match `A` itself: the painting's
//! statistics are the whole canvas's, and a tile of sky held to them all turns every
//! part of the image towards the painting's average colour (measured: three times the
//! style loss of a whole render, washed out). Instead, when a tile begins, the whole
//! image's Gram matrices `G` are measured (its first-pass tiles', averaged by area) and
//! the tile's target is its own Gram matrices `G_t` moved by the image's deficit:
//! `G_t + (A - G)`. At the start of the tile its style gradient is then the whole
//! image's (restricted to it, up to a constant), and when every tile has closed its share of the
//! deficit, the whole image has closed it. The content and TV terms are divided by the
//! whole scale's units, so the three terms weigh in each tile as in the whole image.

use std::cell::RefCell;
use std::rc::Rc;

use stylefarm_core::tiles::{self, Region, PASSES};
use tch::Tensor;

use super::loss::{
    total_variation, Norms, Objective, StyleTargets, Tap, Temporal, Weights, Window, TV_FLOOR,
};
use super::vgg::Vgg;

/// The state of one tiled scale.
pub(super) struct Tiling {
    /// The whole image, `[1, 3, H, W]` pixels on a 0-255 scale, finished tiles blended in.
    canvas: Tensor,
    /// The content target at this scale, `[1, 3, H, W]` in [0, 1].
    content: Tensor,
    style: StyleTargets,
    /// The whole scale's content and TV units, which every tile's terms are divided by.
    norms: Norms,
    /// The temporal term over the whole image, when there is one.
    temporal: Option<Temporal>,
    /// Every pass's tiles, in the order they are optimized.
    pub regions: Vec<Region>,
    /// Tiles in the first pass (which covers the whole image).
    first_pass: usize,
    /// Each first-pass tile's share of the image ([`tiles::cells`]).
    cells: Vec<Region>,
    /// The tile size.
    pub tile: u32,
    /// Iterations each tile gets.
    pub per_tile: u32,
    /// Tile iterations done at this scale.
    pub done: u32,
    /// The Gram matrices of the canvas under each first-pass tile, while they hold.
    grams: RefCell<Vec<Option<Vec<Tensor>>>>,
    /// What the canvas's pixels are divided by for the network (0-255 to [0, 1]).
    scale: f64,
}

/// The region of `image` a tile `r` is seen in (it and its margin) and where the tile
/// lies in it.
fn context(r: &Region, image: &Tensor, tile: u32) -> (Region, Window) {
    let s = image.size();
    let e = tiles::with_margin(r, s[3] as u32, s[2] as u32, tile);
    let at = (
        i64::from(r.y - e.y),
        i64::from(r.x - e.x),
        i64::from(r.height),
        i64::from(r.width),
    );
    (e, at)
}

/// `t[..., r]`: a view of a region of a `[1, C, H, W]` tensor.
pub(super) fn crop(t: &Tensor, r: &Region) -> Tensor {
    t.narrow(2, i64::from(r.y), i64::from(r.height))
        .narrow(3, i64::from(r.x), i64::from(r.width))
}

impl Tiling {
    /// A tiled scale starting from `canvas`, whose schedule gives it `iterations`.
    /// The content term's units are the first pass's tiles' averaged by area (the whole
    /// content's forward pass would need the memory tiles are there to save).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        canvas: Tensor,
        content: Tensor,
        style: StyleTargets,
        temporal: Option<Temporal>,
        tile: u32,
        iterations: u32,
        net: &Rc<Vgg>,
        content_taps: &[Tap],
        weights: Weights,
    ) -> Self {
        let size = canvas.size();
        let passes = tiles::grid(size[3] as u32, size[2] as u32, tile);
        let first_pass = passes[0].len();
        let mut sums: Vec<Tensor> = Vec::new();
        for r in &passes[0] {
            let area = f64::from(r.width) * f64::from(r.height) / (size[2] * size[3]) as f64;
            let (e, at) = context(r, &canvas, tile);
            let around = crop(&content, &e);
            let n = Objective::in_context(
                Rc::clone(net),
                content_taps,
                &style,
                &around,
                &around,
                at,
                weights,
            )
            .norms();
            if sums.is_empty() {
                sums = n.content.iter().map(|t| t * area).collect();
            } else {
                for (s, t) in sums.iter_mut().zip(&n.content) {
                    *s = &*s + t * area;
                }
            }
        }
        let total: f64 = passes[0]
            .iter()
            .map(|r| f64::from(r.width) * f64::from(r.height) / (size[2] * size[3]) as f64)
            .sum();
        let norms = Norms {
            content: sums.iter().map(|s| s / total).collect(),
            tv: tch::no_grad(|| total_variation(&content).clamp_min(TV_FLOOR)),
        };
        Self {
            canvas,
            content,
            style,
            norms,
            temporal,
            regions: passes.into_iter().flatten().collect(),
            first_pass,
            cells: tiles::cells(size[3] as u32, size[2] as u32, tile),
            tile,
            per_tile: iterations.div_ceil(PASSES as u32).max(1),
            done: 0,
            grams: RefCell::new(Vec::new()),
            scale: super::PIXEL_SCALE,
        }
    }

    /// Tile iterations over the whole scale.
    pub fn total(&self) -> u32 {
        self.per_tile * self.regions.len() as u32
    }

    /// The tile being optimized (`regions.len()` once all are done).
    pub fn current(&self) -> usize {
        (self.done / self.per_tile) as usize
    }

    /// How many of the scale's `iterations` the tile iterations done stand for: every
    /// pixel is optimized about `iterations` times over the passes, as in a whole image.
    pub fn progress(&self, iterations: u32) -> u32 {
        Self::progress_at(self.done, self.total(), iterations)
    }

    /// What `done` of `total` tile iterations stand for in a scale of `iterations`.
    pub fn progress_at(done: u32, total: u32, iterations: u32) -> u32 {
        (u64::from(done) * u64::from(iterations) / u64::from(total.max(1))) as u32
    }

    /// The objective of tile `i` and its starting pixels (its crop of the image).
    pub fn begin(
        &self,
        i: usize,
        net: &Rc<Vgg>,
        content_taps: &[Tap],
        weights: Weights,
    ) -> (Objective, Tensor) {
        let r = &self.regions[i];
        let start = crop(&self.canvas, r).copy();
        let objective = self.objective(r, &self.canvas, net, content_taps, weights);
        let own = objective.grams(&(&start / self.scale));
        let targets = own
            .iter()
            .zip(self.style.targets())
            .zip(self.whole_grams(&self.canvas, net, true))
            .map(|((g, a), whole)| g + a - whole)
            .collect();
        (objective.retarget_style(targets), start)
    }

    /// The Gram matrices of `image` (a whole image, 0-255): those of each first-pass
    /// tile's share of it (seen in context), averaged by area, which is the whole
    /// image's Gram matrix but for the features a margin does not reach. For the canvas
    /// (`cached`), each share's are kept until a finished tile changes its pixels.
    fn whole_grams(&self, image: &Tensor, net: &Rc<Vgg>, cached: bool) -> Vec<Tensor> {
        let mut sums: Vec<Tensor> = Vec::new();
        let mut area = 0.0;
        let mut cache = self.grams.borrow_mut();
        cache.resize_with(self.first_pass, || None);
        for (r, kept) in self.cells.iter().zip(cache.iter_mut()) {
            let a = f64::from(r.width) * f64::from(r.height);
            let measure = || {
                let (e, at) = context(r, image, self.tile);
                self.style
                    .grams_of(net, &(crop(image, &e) / self.scale), Some(at))
            };
            let grams = match (cached, kept.as_ref()) {
                (true, Some(g)) => g.iter().map(Tensor::shallow_clone).collect(),
                (true, None) => {
                    let g = measure();
                    *kept = Some(g.iter().map(Tensor::shallow_clone).collect());
                    g
                }
                (false, _) => measure(),
            };
            if sums.is_empty() {
                sums = grams.iter().map(|g| g * a).collect();
            } else {
                for (s, g) in sums.iter_mut().zip(&grams) {
                    *s = &*s + g * a;
                }
            }
            area += a;
        }
        sums.iter().map(|s| s / area).collect()
    }

    /// Tile `r`'s objective against the scale's style targets, seen in the context of
    /// `image` (0-255) around it.
    fn objective(
        &self,
        r: &Region,
        image: &Tensor,
        net: &Rc<Vgg>,
        content_taps: &[Tap],
        weights: Weights,
    ) -> Objective {
        let (e, at) = context(r, image, self.tile);
        let objective = Objective::in_context(
            Rc::clone(net),
            content_taps,
            &self.style,
            &crop(&self.content, &e),
            &(crop(image, &e) / self.scale),
            at,
            weights,
        )
        .normalised_by(&self.norms);
        match &self.temporal {
            Some(t) => objective.with_temporal(Temporal {
                warped: crop(&t.warped, r),
                mask: crop(&t.mask, r),
                weight: t.weight,
            }),
            None => objective,
        }
    }

    /// `[1, 1, h, w]`: how much of tile `i` replaces the image under it.
    fn mask(&self, i: usize) -> Tensor {
        let r = &self.regions[i];
        let size = self.canvas.size();
        let m = tiles::feather(
            r,
            size[3] as u32,
            size[2] as u32,
            self.tile,
            i >= self.first_pass,
        );
        Tensor::from_slice(&m)
            .view([1, 1, i64::from(r.height), i64::from(r.width)])
            .to_device(self.canvas.device())
    }

    /// The image with tile `i`'s pixels `x` blended in.
    fn blended(&self, canvas: &Tensor, i: usize, x: &Tensor) -> Tensor {
        let m = self.mask(i);
        let under = crop(canvas, &self.regions[i]);
        // A tile's pixels are held to the image's range as they are blended in (as the
        // image is between scales): the next tiles start from them and see them around,
        // and the output clips them anyway.
        tch::no_grad(|| &under * (1.0 - &m) + x.detach().clamp(0.0, self.scale) * &m)
    }

    /// Blends the finished tile `i` into the image.
    pub fn finish(&mut self, i: usize, x: &Tensor) {
        let mixed = self.blended(&self.canvas, i, x);
        tch::no_grad(|| crop(&self.canvas, &self.regions[i]).copy_(&mixed));
        let done = self.regions[i];
        let meets = |r: &Region| {
            r.x < done.x + done.width
                && done.x < r.x + r.width
                && r.y < done.y + done.height
                && done.y < r.y + r.height
        };
        let (w, h) = (self.canvas.size()[3] as u32, self.canvas.size()[2] as u32);
        for (r, kept) in self.cells.iter().zip(self.grams.borrow_mut().iter_mut()) {
            if meets(&tiles::with_margin(r, w, h, self.tile)) {
                *kept = None;
            }
        }
    }

    /// The whole image, finished tiles blended in.
    pub fn canvas(&self) -> &Tensor {
        &self.canvas
    }

    /// Replaces the whole image (a checkpoint's).
    pub fn set_canvas(&mut self, canvas: Tensor) {
        self.canvas = canvas;
        self.grams.borrow_mut().clear();
    }

    /// The whole image as it would be if the current tile, at `x`, were finished now.
    pub fn preview(&self, x: &Tensor) -> Tensor {
        let canvas = self.canvas.copy();
        let i = self.current();
        if i < self.regions.len() && x.size() == crop(&canvas, &self.regions[i]).size() {
            let mixed = self.blended(&canvas, i, x);
            tch::no_grad(|| crop(&canvas, &self.regions[i]).copy_(&mixed));
        }
        canvas
    }

    /// The whole image's losses, measured tile by tile (no pass holds the whole
    /// image's graph at once): the content, TV and temporal terms of the first pass's
    /// tiles averaged by area, and the style term of the image's Gram matrices.
    pub fn losses(
        &self,
        image: &Tensor,
        net: &Rc<Vgg>,
        content_taps: &[Tap],
        weights: Weights,
    ) -> super::Losses {
        let mut sum = super::Losses::default();
        let mut area = 0.0;
        for r in &self.regions[..self.first_pass] {
            let objective = self.objective(r, image, net, content_taps, weights);
            let (_, l) = tch::no_grad(|| objective.evaluate(&(crop(image, r) / self.scale)));
            let a = f64::from(r.width) * f64::from(r.height);
            sum.content += l.content * a;
            sum.tv += l.tv * a;
            sum.temporal += l.temporal * a;
            area += a;
        }
        let style = weights.style * self.style.loss(&self.whole_grams(image, net, false));
        let (content, tv, temporal) = (sum.content / area, sum.tv / area, sum.temporal / area);
        super::Losses {
            content,
            style,
            tv,
            temporal,
            total: content + style + tv + temporal,
        }
    }
}
