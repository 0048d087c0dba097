//! Loss curves as SVG: what `render`, `run` and `fetch` write beside each sidecar as
//! `NAME.loss.svg`. Content, style, TV and total over the iterations, on a log scale,
//! drawn from the sidecar's `loss_curve`, with a dashed line where each scale of a
//! coarse-to-fine schedule begins; plain SVG that any browser opens.

use std::fmt::Write;

/// The four curves, in the order of the legend: name and colour.
const SERIES: [(&str, &str); 4] = [
    ("total", "#222222"),
    ("content", "#1f77b4"),
    ("style", "#d62728"),
    ("tv", "#2ca02c"),
];
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 110.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 44.0;
/// Most points drawn per curve; longer curves are thinned evenly (first and last kept).
const MAX_POINTS: usize = 2000;
/// Most decades the axis spans below the largest value; smaller values (a content loss
/// of 1e-9 at the first iteration) are left out rather than squeeze the rest.
const MAX_DECADES: f64 = 12.0;

/// One iteration's losses: total, content, style, TV.
pub type Point = [f64; 4];

/// A sidecar's losses and where its scales begin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curve {
    /// One point per `stride` iterations.
    pub points: Vec<Point>,
    /// Each scale's first index in `points` and its long side.
    pub scales: Vec<(usize, u32)>,
    /// Iterations between points (a thinned curve's); 0 reads as 1.
    pub stride: usize,
}

/// The losses of a sidecar's `loss_curve` (objects with `total`, `content`, `style`,
/// `tv`) and its `schedule`; `None` when it has no losses.
pub fn from_sidecar(sidecar: &serde_json::Value) -> Option<Curve> {
    let curve = sidecar["loss_curve"].as_array()?;
    let get = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let points: Vec<Point> = curve
        .iter()
        .map(|v| {
            [
                get(v, "total"),
                get(v, "content"),
                get(v, "style"),
                get(v, "tv"),
            ]
        })
        .collect();
    let scales = sidecar["schedule"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .filter_map(|r| {
                    let first = usize::try_from(r["first_loss"].as_u64()?).ok()?;
                    let side = u32::try_from(r["side"].as_u64()?).ok()?;
                    Some((first, side))
                })
                .collect()
        })
        .unwrap_or_default();
    let stride = sidecar["loss_stride"]
        .as_u64()
        .and_then(|s| usize::try_from(s).ok())
        .unwrap_or(1);
    (!points.is_empty()).then_some(Curve {
        points,
        scales,
        stride,
    })
}

/// An SVG chart of a curve titled `title`; a schedule of more than one scale gets a
/// dashed line and its long side where each scale begins.
pub fn loss_svg(title: &str, curve: &Curve) -> String {
    let points = curve.points.as_slice();
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let positive = points
        .iter()
        .flat_map(|p| p.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = positive.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo_dec, hi_dec) = if lo.is_finite() {
        let hi_dec = hi.log10().ceil();
        let lo_dec = lo.log10().floor().max(hi_dec - MAX_DECADES);
        (lo_dec, hi_dec.max(lo_dec + 1.0))
    } else {
        (0.0, 1.0)
    };
    let last = points.len().saturating_sub(1).max(1) as f64;
    let x_of = |i: usize| LEFT + plot_w * i as f64 / last;
    let y_of = |v: f64| TOP + plot_h * (hi_dec - v.log10()) / (hi_dec - lo_dec);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<title>{title}: losses over iterations</title>
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{title}</text>
"##,
        title = escape(title)
    );
    // Decades: a grid line and a label each.
    let mut d = lo_dec;
    while d <= hi_dec {
        let y = y_of(10f64.powf(d));
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="end">1e{d}</text>"##,
            x2 = LEFT + plot_w,
            tx = LEFT - 6.0,
            ty = y + 4.0,
        );
        d += 1.0;
    }
    // Iterations: about five labelled ticks.
    let stride = curve.stride.max(1) as f64;
    let step = nice_step(last * stride / 5.0);
    let mut i = 0.0;
    while i <= last * stride + 0.5 {
        let x = x_of((i / stride) as usize);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{y1:.1}" x2="{x:.1}" y2="{y2:.1}" stroke="#888888"/><text x="{x:.1}" y="{ty:.1}" text-anchor="middle">{i}</text>"##,
            y1 = TOP + plot_h,
            y2 = TOP + plot_h + 5.0,
            ty = TOP + plot_h + 18.0,
        );
        i += step;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888888"/>
<text x="{cx:.1}" y="{by:.1}" text-anchor="middle">iteration</text>
<text transform="translate(16 {cy:.1}) rotate(-90)" text-anchor="middle">loss (log scale)</text>"##,
        cx = LEFT + plot_w / 2.0,
        by = HEIGHT - 6.0,
        cy = TOP + plot_h / 2.0,
    );
    if curve.scales.len() > 1 {
        for &(first, side) in &curve.scales {
            let x = x_of(first.min(points.len().saturating_sub(1)));
            let _ = writeln!(
                svg,
                r##"<line class="scale" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{y2:.1}" stroke="#9467bd" stroke-dasharray="4 3"/><text x="{tx:.1}" y="{ty:.1}" fill="#9467bd" font-size="10">{side} px</text>"##,
                y2 = TOP + plot_h,
                tx = x + 3.0,
                ty = TOP + 11.0,
            );
        }
    }
    let stride = points.len().div_ceil(MAX_POINTS).max(1);
    for (s, (name, colour)) in SERIES.iter().enumerate() {
        let mut path = String::new();
        let mut pen_down = false;
        for (i, p) in points.iter().enumerate() {
            if i % stride != 0 && i + 1 != points.len() {
                continue;
            }
            let v = p[s];
            if !(v.is_finite() && v > 0.0 && v.log10() >= lo_dec) {
                pen_down = false;
                continue;
            }
            let cmd = if pen_down { 'L' } else { 'M' };
            let _ = write!(path, "{cmd}{:.1} {:.1} ", x_of(i), y_of(v));
            pen_down = true;
        }
        let width = if s == 0 { 2.0 } else { 1.5 };
        let _ = writeln!(
            svg,
            r##"<path d="{path}" fill="none" stroke="{colour}" stroke-width="{width}"><title>{name}</title></path>"##,
            path = path.trim_end()
        );
        let ly = TOP + 14.0 + 20.0 * s as f64;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{lx:.1}" y1="{ly:.1}" x2="{lx2:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="{width}"/><text x="{tx:.1}" y="{ty:.1}">{name}</text>"##,
            lx2 = lx + 22.0,
            tx = lx + 28.0,
            ty = ly + 4.0,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `raw` (and at least 1).
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 1.0) {
        return 1.0;
    }
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * base)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * base)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(n: usize) -> Curve {
        Curve {
            points: (0..n)
                .map(|i| {
                    let f = 1.0 / (1.0 + i as f64);
                    [1e5 * f + 10.0, 1e3 * f, 1e5 * f, 10.0]
                })
                .collect(),
            scales: Vec::new(),
            stride: 1,
        }
    }

    #[test]
    fn draws_four_curves_on_decades_with_a_legend() {
        let svg = loss_svg("tubingen <starry>", &curve(300));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<path ").count(), 4);
        for name in ["total", "content", "style", "tv"] {
            assert!(svg.contains(&format!(">{name}</text>")), "{name}");
        }
        // From 1e1 (the TV term) to 1e6 (above the first total).
        assert!(svg.contains(">1e1</text>") && svg.contains(">1e6</text>"));
        assert!(svg.contains("tubingen &lt;starry&gt;"));
        // Each curve has a point per iteration.
        let total = svg.split("<path d=\"").nth(1).expect("a path");
        assert_eq!(
            total
                .split('"')
                .next()
                .expect("d")
                .matches(['M', 'L'])
                .count(),
            300
        );
    }

    #[test]
    fn long_curves_are_thinned_and_bad_values_break_the_line() {
        let mut points = curve(10_000);
        points.points[5000][0] = f64::NAN;
        let svg = loss_svg("x", &points);
        let total = svg.split("<path d=\"").nth(1).expect("a path");
        let d = total.split('"').next().expect("d");
        assert!(d.matches(['M', 'L']).count() <= MAX_POINTS + 1);
        assert_eq!(d.matches('M').count(), 2, "the NaN starts a new line");
        // Nothing at all, or a single point, still makes a chart.
        assert!(loss_svg("empty", &Curve::default()).contains("</svg>"));
        assert!(loss_svg("one", &curve(1)).contains("<path d=\"M"));
    }

    #[test]
    fn the_axis_spans_at_most_twelve_decades_below_the_top() {
        let mut points = curve(10);
        points.points[0][1] = 1e-9;
        let svg = loss_svg("x", &points);
        assert!(svg.contains(">1e6</text>") && svg.contains(">1e-6</text>"));
        assert!(!svg.contains(">1e-7</text>"), "{svg}");
    }

    #[test]
    fn reads_a_sidecars_curve() {
        let sidecar = serde_json::json!({
            "loss_curve": [
                {"content": 1.0, "style": 2.0, "tv": 3.0, "total": 6.0},
                {"content": 0.5, "style": 1.0, "tv": 2.0, "total": 3.5}
            ],
            "schedule": [
                {"side": 256, "first_loss": 0},
                {"side": 362, "first_loss": 1}
            ]
        });
        let curve = from_sidecar(&sidecar).expect("a curve");
        assert_eq!(
            curve.points,
            vec![[6.0, 1.0, 2.0, 3.0], [3.5, 0.5, 1.0, 2.0]]
        );
        assert_eq!(curve.scales, vec![(0, 256), (1, 362)]);
        let svg = loss_svg("x", &curve);
        assert_eq!(svg.matches("class=\"scale\"").count(), 2, "{svg}");
        assert!(svg.contains(">362 px</text>"));
        // One scale is no schedule to mark.
        let single = Curve {
            scales: vec![(0, 512)],
            ..curve
        };
        assert!(!loss_svg("x", &single).contains("class=\"scale\""));
        assert_eq!(from_sidecar(&serde_json::json!({})), None);
    }
}
