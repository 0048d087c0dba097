//! The objective: content, style and total-variation terms over VGG activations.
//!
//! - content: `content_weight * sum_l w_l * mean((F_l - P_l)^2) / mean(P_l^2)`
//! - style: `style_weight * sum_l w_l * mean((G(F_l) - A_l)^2) / mean(A_l^2)` with the
//!   normalised Gram `G(F) = F F^T / (C H W)` and `A_l` the blend-weighted sum of the
//!   styles' Grams
//! - tv: `tv_weight * tv(x) / tv(content)` with `tv(x) = mean(dx^2) + mean(dy^2)` on the
//!   [0, 1] pixels (the photo's own at least [`TV_FLOOR`])
//! - temporal (a frame of a sequence): `temporal_weight * mean(c * (x - w)^2)` with `w`
//!   the previous frame's result warped along the optical flow and `c` 1 where the flow
//!   can be trusted, 0 at occlusions (Ruder et al. 2016), on the [0, 1] pixels
//!
//! Each term is relative to its target's own size: a dark, sparse photo has small
//! features and a busy painting large Grams, and without the division the same weights
//! would mean a different balance for each. Targets and their sizes are computed once,
//! without gradients, when the objective is built.

use std::rc::Rc;

use tch::{Kind, Tensor};

use super::vgg::Vgg;

pub use stylefarm_core::Losses;

/// The normalised Gram matrix of `[1, C, H, W]` activations.
pub fn gram(f: &Tensor) -> Tensor {
    let size = f.size();
    let (c, hw) = (size[1], size[2] * size[3]);
    let f = f.reshape([c, hw]);
    f.matmul(&f.tr()) / ((c * hw) as f64)
}

/// The smallest `tv(content)` the TV term is divided by (a flat photo has none).
pub const TV_FLOOR: f64 = 1e-4;

/// A tapped layer and its target.
#[derive(Debug)]
struct Term {
    slot: usize,
    weight: f64,
    target: Tensor,
    /// `mean(target^2)`, the term's unit.
    size: Tensor,
}

impl Clone for Term {
    fn clone(&self) -> Self {
        Self {
            slot: self.slot,
            weight: self.weight,
            target: self.target.shallow_clone(),
            size: self.size.shallow_clone(),
        }
    }
}

impl Term {
    fn new(slot: usize, weight: f64, target: Tensor) -> Self {
        let target = target.detach();
        let size = target.square().mean(Kind::Float);
        Self {
            slot,
            weight,
            target,
            size,
        }
    }
}

/// Content, style and TV terms with their targets.
pub struct Objective {
    net: Rc<Vgg>,
    taps: Vec<usize>,
    content: Vec<Term>,
    style: Vec<Term>,
    content_weight: f64,
    style_weight: f64,
    tv_weight: f64,
    /// `tv(content)`, at least [`TV_FLOOR`].
    tv_size: Tensor,
    temporal: Option<Temporal>,
    /// A tile's surroundings, when the objective is a tile's.
    context: Option<Context>,
}

/// A tile's place in its context: top, left, height and width in pixels.
pub type Window = (i64, i64, i64, i64);

/// The image around a tile, zero where the tile goes, and where that is.
struct Context {
    around: Tensor,
    at: Window,
}

/// `[1, 1, H, W]`: 0 inside `at`, 1 around it.
fn hole(around: &Tensor, (t, l, h, w): Window) -> Tensor {
    let s = around.size();
    let inner = Tensor::ones([1, 1, h, w], (Kind::Float, around.device()));
    (inner.constant_pad_nd([l, s[3] - l - w, t, s[2] - t - h]) - 1.0).abs()
}

/// The part of features `f` (of the network's input `input`) that lies inside `at`:
/// each pooling halves the window, rounded to whole cells.
fn inside(f: &Tensor, input: &Tensor, at: Option<Window>) -> Tensor {
    let Some((t, l, h, w)) = at else {
        return f.shallow_clone();
    };
    let (fs, is) = (f.size(), input.size());
    let cut = |start: i64, len: i64, axis: usize| {
        let scale = is[axis] as f64 / fs[axis] as f64;
        let a = ((start as f64 / scale).round() as i64).clamp(0, fs[axis] - 1);
        let n = ((len as f64 / scale).round() as i64).clamp(1, fs[axis] - a);
        (a, n)
    };
    let (y, hh) = cut(t, h, 2);
    let (x, ww) = cut(l, w, 3);
    f.narrow(2, y, hh).narrow(3, x, ww)
}

/// The temporal term's target: the previous frame's result warped to this one, where
/// it can be trusted, and the term's weight.
pub struct Temporal {
    /// `[1, 3, H, W]` pixels in [0, 1].
    pub warped: Tensor,
    /// `[1, 1, H, W]`: 1 where the flow holds, 0 at occlusions.
    pub mask: Tensor,
    /// `temporal_weight`.
    pub weight: f64,
}

/// A layer's index in `features` and its weight.
pub type Tap = (usize, f64);

/// The weights of the content, style and TV terms.
#[derive(Debug, Clone, Copy)]
pub struct Weights {
    /// `content_weight`.
    pub content: f64,
    /// `style_weight`.
    pub style: f64,
    /// `tv_weight`.
    pub tv: f64,
}

/// The units of the content and TV terms (see [`Objective::norms`]).
pub struct Norms {
    /// `mean(P_l^2)` per content layer.
    pub content: Vec<Tensor>,
    /// `tv(content)`, at least [`TV_FLOOR`].
    pub tv: Tensor,
}

/// The style term's targets: the blend of the styles' Gram matrices at each style
/// layer. Computed once per scale from the whole style images; every tile of a tiled
/// scale shares them (a normalised Gram is a per-pixel statistic, the same for a tile as
/// for the whole image).
#[derive(Debug, Clone)]
pub struct StyleTargets {
    taps: Vec<usize>,
    terms: Vec<Term>,
}

impl StyleTargets {
    /// The targets of `styles`, `(pixels, blend weight)` with weights summing to 1.
    pub fn new(
        net: &Vgg,
        content_layers: &[Tap],
        style_layers: &[Tap],
        styles: &[(Tensor, f64)],
    ) -> Self {
        let mut taps: Vec<usize> = content_layers
            .iter()
            .chain(style_layers)
            .map(|&(i, _)| i)
            .collect();
        taps.sort_unstable();
        taps.dedup();
        let slot = |i: usize| taps.iter().position(|&t| t == i).unwrap_or(0);
        let terms = tch::no_grad(|| {
            let mut grams: Vec<Option<Tensor>> = style_layers.iter().map(|_| None).collect();
            for (pixels, blend) in styles {
                let feats = net.forward(pixels, &taps);
                for (acc, &(i, _)) in grams.iter_mut().zip(style_layers) {
                    let g = gram(&feats[slot(i)]) * *blend;
                    *acc = Some(match acc.take() {
                        Some(a) => a + g,
                        None => g,
                    });
                }
            }
            style_layers
                .iter()
                .zip(grams)
                .filter_map(|(&(i, weight), g)| g.map(|target| Term::new(slot(i), weight, target)))
                .collect::<Vec<_>>()
        });
        Self { taps, terms }
    }

    /// The Gram matrices of `x` (`[1, 3, H, W]` in [0, 1]) at the style layers, of
    /// the features inside `at` when given, without gradients.
    pub fn grams_of(&self, net: &Vgg, x: &Tensor, at: Option<Window>) -> Vec<Tensor> {
        tch::no_grad(|| {
            let feats = net.forward(x, &self.taps);
            self.terms
                .iter()
                .map(|t| gram(&inside(&feats[t.slot], x, at)))
                .collect()
        })
    }

    /// Each layer's target.
    pub fn targets(&self) -> Vec<Tensor> {
        self.terms
            .iter()
            .map(|t| t.target.shallow_clone())
            .collect()
    }

    /// The same layers with other targets, measured in the same units (the style's).
    pub fn retargeted(&self, targets: Vec<Tensor>) -> Self {
        Self {
            taps: self.taps.clone(),
            terms: self
                .terms
                .iter()
                .zip(targets)
                .map(|(t, target)| Term {
                    target: target.detach(),
                    ..t.clone()
                })
                .collect(),
        }
    }

    /// The style term, before `style_weight`, of an image whose Gram matrices are
    /// `grams`.
    pub fn loss(&self, grams: &[Tensor]) -> f64 {
        self.terms
            .iter()
            .zip(grams)
            .map(|(t, g)| {
                ((g - &t.target).square().mean(Kind::Float) / &t.size).double_value(&[]) * t.weight
            })
            .sum()
    }
}

impl Objective {
    /// Builds the objective; `styles` are `(pixels, blend weight)` with weights summing to 1.
    pub fn new(
        net: Rc<Vgg>,
        content_layers: &[Tap],
        style_layers: &[Tap],
        content: &Tensor,
        styles: &[(Tensor, f64)],
        weights: Weights,
    ) -> Self {
        let style = StyleTargets::new(&net, content_layers, style_layers, styles);
        Self::with_style(net, content_layers, &style, content, weights)
    }

    /// Builds the objective of `content` (a whole image) against style targets
    /// computed before.
    pub fn with_style(
        net: Rc<Vgg>,
        content_layers: &[Tap],
        style: &StyleTargets,
        content: &Tensor,
        weights: Weights,
    ) -> Self {
        Self::build(net, content_layers, style, content, None, weights)
    }

    /// Builds the objective of one tile seen in its context: `content_around` is the
    /// content photo around the tile and `around` the image around it (the pixels the
    /// network sees beyond the tile's edges instead of zero padding), the tile at
    /// `at`. Every term is measured on the features inside the tile.
    pub fn in_context(
        net: Rc<Vgg>,
        content_layers: &[Tap],
        style: &StyleTargets,
        content_around: &Tensor,
        around: &Tensor,
        at: Window,
        weights: Weights,
    ) -> Self {
        let context = Context {
            around: tch::no_grad(|| around * hole(around, at)),
            at,
        };
        Self::build(
            net,
            content_layers,
            style,
            content_around,
            Some(context),
            weights,
        )
    }

    fn build(
        net: Rc<Vgg>,
        content_layers: &[Tap],
        style: &StyleTargets,
        content: &Tensor,
        context: Option<Context>,
        weights: Weights,
    ) -> Self {
        let taps = style.taps.clone();
        let slot = |i: usize| taps.iter().position(|&t| t == i).unwrap_or(0);
        let at = context.as_ref().map(|c| c.at);
        let content_terms = tch::no_grad(|| {
            let feats = net.forward(content, &taps);
            content_layers
                .iter()
                .map(|&(i, weight)| {
                    Term::new(slot(i), weight, inside(&feats[slot(i)], content, at))
                })
                .collect::<Vec<_>>()
        });
        let own = match at {
            Some((t, l, h, w)) => content.narrow(2, t, h).narrow(3, l, w),
            None => content.shallow_clone(),
        };
        let tv_size = tch::no_grad(|| total_variation(&own).clamp_min(TV_FLOOR));
        Self {
            net,
            taps,
            content: content_terms,
            style: style.terms.clone(),
            content_weight: weights.content,
            style_weight: weights.style,
            tv_weight: weights.tv,
            tv_size,
            temporal: None,
            context,
        }
    }

    /// The network's input for pixels `x` (the tile put into its context).
    fn input(&self, x: &Tensor) -> Tensor {
        match &self.context {
            None => x.shallow_clone(),
            Some(c) => {
                let s = c.around.size();
                let (t, l, h, w) = c.at;
                x.constant_pad_nd([l, s[3] - l - w, t, s[2] - t - h]) + &c.around
            }
        }
    }

    /// The Gram matrices of `x` at the style layers (inside the tile, in context),
    /// without gradients.
    pub fn grams(&self, x: &Tensor) -> Vec<Tensor> {
        tch::no_grad(|| {
            let input = self.input(x);
            let feats = self.net.forward(&input, &self.taps);
            let at = self.context.as_ref().map(|c| c.at);
            self.style
                .iter()
                .map(|t| gram(&inside(&feats[t.slot], &input, at)))
                .collect()
        })
    }

    /// The same objective with other style targets (in the same units).
    pub fn retarget_style(mut self, targets: Vec<Tensor>) -> Self {
        for (t, target) in self.style.iter_mut().zip(targets) {
            t.target = target.detach();
        }
        self
    }

    /// What the content and TV terms are divided by: each content layer's
    /// `mean(P_l^2)` and `tv(content)`.
    pub fn norms(&self) -> Norms {
        Norms {
            content: self
                .content
                .iter()
                .map(|t| t.size.shallow_clone())
                .collect(),
            tv: self.tv_size.shallow_clone(),
        }
    }

    /// Divides the content and TV terms by `norms` instead of this content's own: a
    /// tile of sky has almost no variation or deep features of its own, and divided by
    /// them its content and smoothness would outweigh the style many times over.
    pub fn normalised_by(mut self, norms: &Norms) -> Self {
        for (t, n) in self.content.iter_mut().zip(&norms.content) {
            t.size = n.shallow_clone();
        }
        self.tv_size = norms.tv.shallow_clone();
        self
    }

    /// Adds the temporal term.
    pub fn with_temporal(mut self, temporal: Temporal) -> Self {
        self.temporal = Some(temporal);
        self
    }

    /// The temporal term's target, when there is one.
    pub fn temporal(&self) -> Option<&Temporal> {
        self.temporal.as_ref()
    }

    /// The total loss as a graph (for backward) and the values of each term.
    #[allow(clippy::assign_op_pattern)]
    pub fn evaluate(&self, x: &Tensor) -> (Tensor, Losses) {
        let input = self.input(x);
        let at = self.context.as_ref().map(|c| c.at);
        let feats: Vec<Tensor> = self
            .net
            .forward(&input, &self.taps)
            .iter()
            .map(|f| inside(f, &input, at))
            .collect();
        let zero = || Tensor::zeros([], (Kind::Float, x.device()));
        let mut content = zero();
        for t in &self.content {
            content = content
                + (&feats[t.slot] - &t.target).square().mean(Kind::Float) / &t.size * t.weight;
        }
        let mut style = zero();
        for t in &self.style {
            style = style
                + (gram(&feats[t.slot]) - &t.target)
                    .square()
                    .mean(Kind::Float)
                    / &t.size
                    * t.weight;
        }
        let content = content * self.content_weight;
        let style = style * self.style_weight;
        let tv = total_variation(x) / &self.tv_size * self.tv_weight;
        let mut total = &content + &style + &tv;
        let mut temporal = 0.0;
        if let Some(t) = &self.temporal {
            let term = ((x - &t.warped).square() * &t.mask).mean(Kind::Float) * t.weight;
            temporal = term.double_value(&[]);
            total = total + term;
        }
        let losses = Losses {
            content: content.double_value(&[]),
            style: style.double_value(&[]),
            tv: tv.double_value(&[]),
            temporal,
            total: total.double_value(&[]),
        };
        (total, losses)
    }
}

/// `mean(dx^2) + mean(dy^2)` of a `[1, C, H, W]` image.
pub fn total_variation(x: &Tensor) -> Tensor {
    let h = x.size()[2];
    let w = x.size()[3];
    let dy = x.narrow(2, 1, h - 1) - x.narrow(2, 0, h - 1);
    let dx = x.narrow(3, 1, w - 1) - x.narrow(3, 0, w - 1);
    dy.square().mean(Kind::Float) + dx.square().mean(Kind::Float)
}
