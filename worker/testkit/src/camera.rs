//! Synthetic camera moves over a fixture photo, where the true optical flow is known:
//! each frame is the photo seen through a camera that pans and zooms, sampled bicubically
//! at exactly the position the move gives, so the flow between any two frames follows
//! from the move alone.

use image::Rgb32FImage;
use stylefarm_worker::engine::image_io;
use tch::{Device, Kind, Tensor};

/// Where the camera looks in one frame: the photo point at the frame's centre and the
/// zoom (frame pixels per photo pixel).
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// Photo x at the frame's centre.
    pub x: f64,
    /// Photo y at the frame's centre.
    pub y: f64,
    /// Frame pixels per photo pixel.
    pub zoom: f64,
}

/// A camera move: the photo, the frame size and one view per frame.
pub struct Move {
    photo: Tensor,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// One view per frame.
    pub views: Vec<View>,
}

impl Move {
    /// `frames` views of `photo` (`[0, 1]` RGB) starting centred at (`x`, `y`) with zoom 1,
    /// moving by (`dx`, `dy`) photo pixels and zooming in by `dzoom` (relative) per frame.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        photo: &Rgb32FImage,
        (width, height): (u32, u32),
        frames: usize,
        (x, y): (f64, f64),
        (dx, dy): (f64, f64),
        dzoom: f64,
    ) -> Self {
        let views = (0..frames)
            .map(|k| View {
                x: x + dx * k as f64,
                y: y + dy * k as f64,
                zoom: (1.0 + dzoom).powi(k as i32),
            })
            .collect();
        Self {
            photo: image_io::to_tensor(photo, Device::Cpu),
            width,
            height,
            views,
        }
    }

    /// Photo coordinates (x and y, each `[1, H, W]`) of each pixel of frame `k`.
    fn photo_coordinates(&self, k: usize) -> (Tensor, Tensor) {
        let v = self.views[k];
        let (w, h) = (f64::from(self.width), f64::from(self.height));
        let (xs, ys) = self.pixel_grid();
        let px = (xs - (w - 1.0) / 2.0) / v.zoom + v.x;
        let py = (ys - (h - 1.0) / 2.0) / v.zoom + v.y;
        (px, py)
    }

    /// Frame `k` as `[1, 3, H, W]` in [0, 1].
    pub fn frame(&self, k: usize) -> Tensor {
        let (px, py) = self.photo_coordinates(k);
        let size = self.photo.size();
        let (pw, ph) = (size[3] as f64, size[2] as f64);
        // Normalised with corners at pixel centres (align_corners).
        let gx = px * (2.0 / (pw - 1.0)) - 1.0;
        let gy = py * (2.0 / (ph - 1.0)) - 1.0;
        let grid = Tensor::stack(&[gx, gy], 3).to_kind(Kind::Float);
        // Bicubic (2), border padding (1), align corners.
        self.photo.grid_sampler(&grid, 2, 1, true).clamp(0.0, 1.0)
    }

    /// Frame `k` as an image.
    pub fn frame_image(&self, k: usize) -> Rgb32FImage {
        image_io::from_tensor(&self.frame(k))
    }

    /// The true flow from frame `k` back to frame `j`: for each pixel of frame `k`,
    /// where the same photo point is in frame `j` minus where it is in `k`
    /// (`[1, 2, H, W]`, x then y, in pixels).
    pub fn flow(&self, k: usize, j: usize) -> Tensor {
        let (px, py) = self.photo_coordinates(k);
        let v = self.views[j];
        let (w, h) = (f64::from(self.width), f64::from(self.height));
        let xj = (px - v.x) * v.zoom + (w - 1.0) / 2.0;
        let yj = (py - v.y) * v.zoom + (h - 1.0) / 2.0;
        let (xk, yk) = self.pixel_grid();
        Tensor::stack(&[xj - xk, yj - yk], 1).to_kind(Kind::Float)
    }

    /// Where [`Move::flow`] from `k` to `j` lands inside frame `j` (`[1, 1, H, W]`, 1
    /// inside): the pixels frame `j` also shows.
    pub fn seen_in(&self, k: usize, j: usize) -> Tensor {
        let f = self.flow(k, j);
        let (xk, yk) = self.pixel_grid();
        let x = f.select(1, 0) + xk.to_kind(Kind::Float);
        let y = f.select(1, 1) + yk.to_kind(Kind::Float);
        let (w, h) = (f64::from(self.width - 1), f64::from(self.height - 1));
        (x.ge(0.0) * x.le(w) * y.ge(0.0) * y.le(h))
            .to_kind(Kind::Float)
            .unsqueeze(1)
    }

    fn pixel_grid(&self) -> (Tensor, Tensor) {
        let (w, h) = (i64::from(self.width), i64::from(self.height));
        let xs = Tensor::arange(w, (Kind::Double, Device::Cpu))
            .view([1, 1, w])
            .expand([1, h, w], false);
        let ys = Tensor::arange(h, (Kind::Double, Device::Cpu))
            .view([1, h, 1])
            .expand([1, h, w], false);
        (xs, ys)
    }
}

/// The inner part of a `[1, C, H, W]` tensor, `m` pixels in from each edge.
pub fn inner(t: &Tensor, m: i64) -> Tensor {
    let (h, w) = (t.size()[2], t.size()[3]);
    t.narrow(2, m, h - 2 * m).narrow(3, m, w - 2 * m)
}
