//! The latency CDF plot as a self-contained SVG file.
//!
//! Hand-written SVG: one polyline per series (payload size or
//! configuration), RTT in microseconds on x, cumulative fraction on y.
//! When the samples span a factor of 10 or more (a tail of outliers), the
//! x axis is logarithmic so the body of the distribution is not squeezed
//! into a corner; the caption says which scale is used.

use std::fmt::Write as _;

const W: f64 = 760.0;
const H: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
/// Points per polyline at most (the CDF is sampled at evenly spaced ranks).
const MAX_POINTS: usize = 1000;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The x axis: linear when the samples span less than a factor of 10,
/// else logarithmic, so both the body and the tail of a latency
/// distribution stay readable.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    step: f64,
}

/// The 1-2-5 series around `v`: the largest value `<= v` (`down`) or the
/// smallest `>= v`.
fn nice(v: f64, down: bool) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    let steps = [1.0, 2.0, 5.0, 10.0];
    if down {
        steps.iter().rev().map(|m| m * mag).find(|&c| c <= v * (1.0 + 1e-9)).unwrap_or(mag)
    } else {
        steps.iter().map(|m| m * mag).find(|&c| c >= v * (1.0 - 1e-9)).unwrap_or(10.0 * mag)
    }
}

/// A round tick step (1, 2 or 5 times a power of ten) for `range`.
fn tick_step(range: f64) -> f64 {
    nice(range / 6.0, false)
}

impl Axis {
    fn new(min: f64, max: f64) -> Axis {
        if max / min >= 10.0 {
            Axis { lo: nice(min, true), hi: nice(max, false), log: true, step: 0.0 }
        } else {
            let step = tick_step((max - min).max(1e-3));
            let lo = (min / step).floor() * step;
            let hi = ((max / step).ceil() * step).max(lo + step);
            Axis { lo, hi, log: false, step }
        }
    }

    /// Position of `x` on the axis, 0..=1.
    fn frac(&self, x: f64) -> f64 {
        let f = if self.log {
            (x.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (x - self.lo) / (self.hi - self.lo)
        };
        f.clamp(0.0, 1.0)
    }

    fn ticks(&self) -> Vec<f64> {
        let mut t = Vec::new();
        if self.log {
            let mut v = self.lo;
            while v <= self.hi * (1.0 + 1e-9) {
                t.push(v);
                v = nice(v * 1.000_001, false);
            }
        } else {
            let mut v = self.lo;
            while v <= self.hi + self.step * 1e-6 {
                t.push(v);
                v += self.step;
            }
        }
        t
    }
}

/// Render a CDF plot of `series` (label, RTT samples in ns).
pub fn cdf_svg(title: &str, series: &[(String, Vec<u64>)]) -> String {
    let mut sorted: Vec<(String, Vec<f64>)> = series
        .iter()
        .map(|(l, v)| {
            let mut us: Vec<f64> = v.iter().map(|&n| n as f64 / 1000.0).collect();
            us.sort_by(f64::total_cmp);
            (l.clone(), us)
        })
        .collect();
    sorted.retain(|(_, v)| !v.is_empty());

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    if sorted.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">no samples</text>"#,
            W / 2.0,
            H / 2.0
        );
        s.push_str("</svg>\n");
        return s;
    }

    let x_min_data = sorted.iter().map(|(_, v)| v[0]).fold(f64::INFINITY, f64::min).max(0.001);
    let x_max_data = sorted.iter().map(|(_, v)| v[v.len() - 1]).fold(0.0, f64::max).max(x_min_data);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let py = |y: f64| TOP + (1.0 - y) * ph;
    let axis = Axis::new(x_min_data, x_max_data);
    let px = |x: f64| LEFT + axis.frac(x) * pw;

    // Grid and axes.
    for t in axis.ticks() {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + ph + 16.0,
            fmt_tick(t)
        );
    }
    for i in 0..=10 {
        let y = py(i as f64 / 10.0);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.1}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            i as f64 / 10.0
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let caption = if axis.log { "RTT (us, log scale)" } else { "RTT (us)" };
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{caption}</text>"#,
        LEFT + pw / 2.0,
        H - 14.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">cumulative fraction</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );

    // Curves and legend.
    for (k, (label, v)) in sorted.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let n = v.len();
        let mut pts = String::new();
        let take = n.min(MAX_POINTS);
        for j in 0..take {
            let idx = if take == 1 { n - 1 } else { j * (n - 1) / (take - 1) };
            let _ = write!(pts, "{:.1},{:.1} ", px(v[idx]), py((idx + 1) as f64 / n as f64));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
            pts.trim_end()
        );
        let ly = TOP + 18.0 + k as f64 * 18.0;
        let lx = LEFT + pw - 200.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/>"#,
            lx + 24.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{} (n={n})</text>"#,
            lx + 30.0,
            ly + 4.0,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_tick(v: f64) -> String {
    if v >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        let digits = (-v.log10().floor()) as usize;
        format!("{v:.digits$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_polyline_per_series_inside_the_plot() {
        let a: Vec<u64> = (0..5000).map(|i| 40_000 + i * 10).collect();
        let b: Vec<u64> = (0..10).map(|i| 90_000 + i * 1000).collect();
        let svg = cdf_svg(
            "RTT <test>",
            &[("256 B".into(), a), ("1400 B".into(), b), ("empty".into(), vec![])],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("RTT &lt;test&gt;"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // Every curve point lies inside the plot area.
        for line in svg.lines().filter(|l| l.starts_with("<polyline")) {
            let pts = line.split("points=\"").nth(1).unwrap().trim_end_matches("\"/>");
            let n = pts.split(' ').count();
            assert!(n <= MAX_POINTS);
            for p in pts.split(' ') {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((LEFT..=W - RIGHT).contains(&x), "{x}");
                assert!((TOP..=H - BOTTOM).contains(&y), "{y}");
            }
        }
    }

    #[test]
    fn wide_ranges_use_a_log_axis() {
        let mut a: Vec<u64> = (0..10_000).map(|i| 50_000 + (i % 100) * 100).collect();
        a.push(50_000_000);
        let svg = cdf_svg("t", &[("x".into(), a)]);
        assert!(svg.contains("log scale"), "{svg}");
        // Ticks from 50 us to 50 ms in the 1-2-5 series.
        for tick in [">50<", ">100<", ">1000<", ">50000<"] {
            assert!(svg.contains(tick), "{tick} missing");
        }
        let narrow: Vec<u64> = (0..100).map(|i| 40_000 + i * 100).collect();
        assert!(!cdf_svg("t", &[("x".into(), narrow)]).contains("log scale"));
        assert!(cdf_svg("t", &[]).contains("no samples"));
        assert!(cdf_svg("t", &[("one".into(), vec![7])]).contains("<polyline"));
    }

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(tick_step(60.0), 10.0);
        assert_eq!(tick_step(12.0), 2.0);
        assert_eq!(tick_step(0.3), 0.05);
        assert_eq!(nice(37.0, true), 20.0);
        assert_eq!(nice(37.0, false), 50.0);
        assert_eq!(nice(100.0, true), 100.0);
    }
}
