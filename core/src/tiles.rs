//! Tiled scales: where the tiles of a scale too large to optimize whole lie, and how
//! each is blended back.
//!
//! A scale whose long side is above `tile` is cut into `tile` x `tile` squares (clipped
//! to the image) overlapping by at least a quarter of a tile, and visited in [`PASSES`]
//! passes: the first on a grid from the image's corner, row by row, the second on a grid
//! whose tiles are centred where four tiles of the first meet, so that the first pass's
//! seams away from the image's border are optimized again from inside a tile. A
//! finished tile is blended into the image through a feathered mask: a linear ramp
//! across a quarter tile on each side where it is drawn over pixels already optimized
//! at this scale (in the first pass its left and top, in the second every side inside
//! the image), full weight elsewhere. Each tile starts from the image as the tiles
//! before it left it, so a ramp blends a tile with the neighbour it continued from, and
//! a tile's far edges, where the network sees zero padding, are drawn over whole by the
//! next tile. Everything here is geometry: the engine, the memory estimate and the seam
//! measurement share it.

use serde::{Deserialize, Serialize};

/// The smallest tile: the deepest VGG layer (four poolings in) still gets 4 x 4.
pub const MIN_TILE: u32 = 64;
/// Passes over a tiled scale: the corner-anchored grid, then the grid on its seams.
pub const PASSES: usize = 2;
/// Most tiles across a scale's long side (about: neighbours overlap): a bound on the
/// work and on the Gram matrices kept per tile.
pub const MAX_ACROSS: u32 = 8;

/// The smallest tile a render of `size` may use: [`MIN_TILE`], or `size / MAX_ACROSS`.
pub fn smallest_tile(size: u32) -> u32 {
    MIN_TILE.max(size.div_ceil(MAX_ACROSS))
}

/// A rectangle of an image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

/// How far neighbouring tiles overlap (at least): a quarter of a tile.
pub fn overlap(tile: u32) -> u32 {
    tile / 4
}

/// How much of the image around a tile the network sees beyond each of its edges (where
/// there is image): an eighth of a tile. Without it the network sees zero padding
/// there, and a tile optimized against that matches the style's statistics only as a
/// tile sees them (measured: 2.8 times the whole image's style loss of a whole render).
pub fn margin(tile: u32) -> u32 {
    tile / 8
}

/// `r` grown by [`margin`] on every side, within a `width` x `height` image.
pub fn with_margin(r: &Region, width: u32, height: u32, tile: u32) -> Region {
    let m = margin(tile);
    let (x, y) = (r.x.saturating_sub(m), r.y.saturating_sub(m));
    Region {
        x,
        y,
        width: (r.x + r.width + m).min(width) - x,
        height: (r.y + r.height + m).min(height) - y,
    }
}

/// True when an image of this size is optimized in tiles of `tile` (0: never).
pub fn is_tiled(width: u32, height: u32, tile: u32) -> bool {
    tile > 0 && width.max(height) > tile
}

/// Where tiles of `t` start along an axis of `len` pixels in `pass`: the first pass
/// spaces them evenly from 0 to `len - t`, overlapping by at least a quarter of a tile;
/// the second puts one halfway between each two of the first's.
fn starts(len: u32, t: u32, pass: usize) -> Vec<u32> {
    if len <= t {
        return vec![0];
    }
    let stride = (t - overlap(t)).max(1);
    let n = (len - t).div_ceil(stride) + 1;
    let step = f64::from(len - t) / f64::from(n - 1);
    let at = |k: f64| (k * step).round() as u32;
    if pass == 0 {
        (0..n).map(|k| at(f64::from(k))).collect()
    } else {
        (0..n - 1).map(|k| at(f64::from(k) + 0.5)).collect()
    }
}

/// The tiles of each pass over a `width` x `height` image, row by row; one pass of the
/// whole image when it is not tiled.
pub fn grid(width: u32, height: u32, tile: u32) -> Vec<Vec<Region>> {
    if !is_tiled(width, height, tile) {
        return vec![vec![Region {
            x: 0,
            y: 0,
            width,
            height,
        }]];
    }
    let (tw, th) = (tile.min(width), tile.min(height));
    (0..PASSES)
        .map(|pass| {
            let xs = starts(width, tw, pass);
            starts(height, th, pass)
                .into_iter()
                .flat_map(|y| {
                    xs.iter().map(move |&x| Region {
                        x,
                        y,
                        width: tw,
                        height: th,
                    })
                })
                .collect()
        })
        .collect()
}

/// Each first-pass tile's share of the image: the first pass's tiles cut at the middle
/// of each overlap, so that the shares cover every pixel once (in the order of
/// [`grid`]'s first pass).
pub fn cells(width: u32, height: u32, tile: u32) -> Vec<Region> {
    let first = &grid(width, height, tile)[0];
    let cuts = |starts: Vec<u32>, size: u32, len: u32| -> Vec<(u32, u32)> {
        let mut b = vec![0];
        for k in 1..starts.len() {
            b.push((starts[k] + starts[k - 1] + size) / 2);
        }
        b.push(len);
        b.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
    };
    let mut xs: Vec<u32> = first.iter().map(|r| r.x).collect();
    xs.sort_unstable();
    xs.dedup();
    let mut ys: Vec<u32> = first.iter().map(|r| r.y).collect();
    ys.sort_unstable();
    ys.dedup();
    let (tw, th) = (first[0].width, first[0].height);
    let (cx, cy) = (cuts(xs, tw, width), cuts(ys, th, height));
    cy.iter()
        .flat_map(|&(y, height)| {
            cx.iter().map(move |&(x, width)| Region {
                x,
                y,
                width,
                height,
            })
        })
        .collect()
}

/// One axis of a tile's blend weight: ramps from near 0 to 1 across `o` pixels on its
/// near side when that is inside the image, and on its far side too when `both`; 1
/// elsewhere.
fn ramp(start: u32, size: u32, len: u32, o: u32, both: bool) -> Vec<f32> {
    (0..size)
        .map(|i| {
            let mut w = 1.0f32;
            if o > 0 && start > 0 {
                w = w.min((i as f32 + 0.5) / o as f32);
            }
            if o > 0 && both && start + size < len {
                w = w.min(((size - i) as f32 - 0.5) / o as f32);
            }
            w.min(1.0)
        })
        .collect()
}

/// A tile's blend weight in `[0, 1]`, row-major over the region: the image becomes
/// `image * (1 - m) + tile * m` there. `revisit`: the tile is drawn over optimized
/// pixels on every side (the second pass), not only on its left and top (the first,
/// row by row).
pub fn feather(r: &Region, width: u32, height: u32, tile: u32, revisit: bool) -> Vec<f32> {
    let o = overlap(tile);
    let wx = ramp(r.x, r.width, width, o, revisit);
    let wy = ramp(r.y, r.height, height, o, revisit);
    wy.iter()
        .flat_map(|a| wx.iter().map(move |b| a * b))
        .collect()
}

/// Pixels on a tile boundary of any pass, row-major: the column (row) just before each
/// edge of a tile that lies inside the image, along that tile's span, whose forward
/// difference crosses the edge. What a seam would show up on.
pub fn boundaries(width: u32, height: u32, tile: u32) -> Vec<bool> {
    let mut on = vec![false; width as usize * height as usize];
    if !is_tiled(width, height, tile) {
        return on;
    }
    let mut mark = |x: u32, y: u32| {
        if x < width && y < height {
            on[y as usize * width as usize + x as usize] = true;
        }
    };
    for r in grid(width, height, tile).iter().flatten() {
        for edge in [r.x, r.x + r.width] {
            if edge == 0 || edge >= width {
                continue;
            }
            for y in r.y..r.y + r.height {
                mark(edge - 1, y);
            }
        }
        for edge in [r.y, r.y + r.height] {
            if edge == 0 || edge >= height {
                continue;
            }
            for x in r.x..r.x + r.width {
                mark(x, edge - 1);
            }
        }
    }
    on
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(width: u32, height: u32, pass: &[Region]) -> Vec<u32> {
        let mut n = vec![0; (width * height) as usize];
        for r in pass {
            assert!(r.x + r.width <= width && r.y + r.height <= height, "{r:?}");
            for y in r.y..r.y + r.height {
                for x in r.x..r.x + r.width {
                    n[(y * width + x) as usize] += 1;
                }
            }
        }
        n
    }

    #[test]
    fn the_first_pass_covers_the_image_with_a_quarter_tile_of_overlap() {
        assert_eq!(smallest_tile(8192), 1024);
        assert_eq!(smallest_tile(300), MIN_TILE);
        for (w, h, t) in [
            (2048, 1536, 512),
            (300, 200, 128),
            (1000, 90, 64),
            (513, 512, 512),
        ] {
            let passes = grid(w, h, t);
            assert_eq!(passes.len(), PASSES);
            assert!(covered(w, h, &passes[0]).iter().all(|&c| c >= 1));
            let xs: Vec<u32> = passes[0].iter().filter(|r| r.y == 0).map(|r| r.x).collect();
            for pair in xs.windows(2) {
                assert!(pair[1] > pair[0], "{xs:?}");
                assert!(
                    pair[0] + t.min(w) - pair[1] >= overlap(t),
                    "{w}x{h} tile {t}: {xs:?}"
                );
            }
        }
    }

    #[test]
    fn the_second_pass_centres_its_tiles_on_the_first_pass_s_seams() {
        let passes = grid(2048, 1536, 512);
        assert_eq!(passes[0].len(), 5 * 4);
        assert_eq!(passes[1].len(), 4 * 3);
        let first: Vec<u32> = passes[0].iter().filter(|r| r.y == 0).map(|r| r.x).collect();
        let second: Vec<u32> = passes[1]
            .iter()
            .filter(|r| r.y == passes[1][0].y)
            .map(|r| r.x)
            .collect();
        for (k, x) in second.iter().enumerate() {
            // The overlap of first-pass tiles k and k+1 is centred in second-pass tile k.
            let seam = (first[k + 1] + first[k] + 512) / 2;
            let centre = x + 256;
            assert!(seam.abs_diff(centre) <= 1, "{first:?} {second:?}");
        }
    }

    #[test]
    fn the_cells_cover_the_image_once_each_within_its_tile() {
        for (w, h, t) in [(2048, 1536, 512), (300, 200, 128), (256, 192, 128)] {
            let first = &grid(w, h, t)[0];
            let cells = cells(w, h, t);
            assert_eq!(cells.len(), first.len());
            assert!(covered(w, h, &cells).iter().all(|&c| c == 1));
            for (c, r) in cells.iter().zip(first) {
                assert!(c.x >= r.x && c.x + c.width <= r.x + r.width, "{c:?} {r:?}");
                assert!(
                    c.y >= r.y && c.y + c.height <= r.y + r.height,
                    "{c:?} {r:?}"
                );
            }
        }
    }

    #[test]
    fn an_image_within_a_tile_is_one_region() {
        assert_eq!(grid(512, 300, 512).len(), 1);
        assert_eq!(grid(512, 300, 0)[0][0].width, 512);
        assert!(boundaries(512, 300, 0).iter().all(|b| !b));
    }

    /// What is left of the image under `pass` after blending its tiles in order, as
    /// the engine does: 1 where a pixel is untouched.
    fn leftover(w: u32, h: u32, t: u32, pass: &[Region], revisit: bool) -> Vec<f32> {
        let mut left = vec![1f32; (w * h) as usize];
        for r in pass {
            let m = feather(r, w, h, t, revisit);
            for y in 0..r.height {
                for x in 0..r.width {
                    left[((r.y + y) * w + r.x + x) as usize] *= 1.0 - m[(y * r.width + x) as usize];
                }
            }
        }
        left
    }

    #[test]
    fn the_first_pass_ramps_over_its_finished_neighbours_and_leaves_nothing_of_the_start() {
        let (w, h, t) = (300, 200, 128);
        let passes = grid(w, h, t);
        // The first tile has no finished neighbour: whole weight, its far edges too.
        let first = feather(&passes[0][0], w, h, t, false);
        assert!(first.iter().all(|&m| m == 1.0));
        // The second ramps up from its left edge across a quarter tile, then is whole.
        let r = passes[0][1];
        let m = feather(&r, w, h, t, false);
        let row: Vec<f32> = (0..r.width)
            .map(|x| m[(10 * r.width + x) as usize])
            .collect();
        assert!(row[0] < 0.05 && row[overlap(t) as usize] == 1.0, "{row:?}");
        assert!(row.windows(2).all(|p| p[1] >= p[0]));
        assert_eq!(row[r.width as usize - 1], 1.0);
        // Every pixel ends as some tile's work.
        assert!(leftover(w, h, t, &passes[0], false)
            .iter()
            .all(|&l| l == 0.0));
    }

    #[test]
    fn the_second_pass_ramps_on_every_side_inside_the_image() {
        let (w, h, t) = (300, 200, 128);
        let r = grid(w, h, t)[1][0];
        let m = feather(&r, w, h, t, true);
        let at = |x: u32, y: u32| m[(y * r.width + x) as usize];
        let (cx, cy) = (r.width / 2, r.height / 2);
        assert_eq!(at(cx, cy), 1.0);
        for (x, y) in [(0, cy), (r.width - 1, cy), (cx, 0), (cx, r.height - 1)] {
            assert!(at(x, y) < 0.05, "({x}, {y}): {}", at(x, y));
        }
    }

    #[test]
    fn boundaries_mark_the_pixel_before_every_inner_edge() {
        let (w, h, t) = (300, 100, 128);
        let b = boundaries(w, h, t);
        let r = grid(w, h, t)[0][1];
        assert!(b[(10 * w + r.x - 1) as usize] && !b[(10 * w + r.x) as usize]);
        // The image's own border is not a tile boundary.
        assert!(!b[(10 * w) as usize]);
        let share = b.iter().filter(|&&x| x).count() as f64 / b.len() as f64;
        assert!(share > 0.0 && share < 0.2, "{share}");
    }
}
