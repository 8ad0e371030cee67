//! The latency CDF plot as a self-contained SVG file.
//!
//! Hand-written SVG: one polyline per series (payload size or
//! configuration), RTT in microseconds on x, cumulative fraction on y.
//! When a few outliers would squeeze the body of the distribution into a
//! corner, the x axis ends at the largest p99.9 of the series and the
//! caption says so.

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

/// A "nice" tick step (1, 2 or 5 times a power of ten) for `range`.
fn tick_step(range: f64) -> f64 {
    let raw = range / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.5 {
        2.0
    } else if norm < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * mag
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

    let x_min_data = sorted.iter().map(|(_, v)| v[0]).fold(f64::INFINITY, f64::min);
    let x_max_data = sorted.iter().map(|(_, v)| v[v.len() - 1]).fold(0.0, f64::max);
    let p999 = sorted
        .iter()
        .map(|(_, v)| v[((v.len() as f64 * 0.999).ceil() as usize).clamp(1, v.len()) - 1])
        .fold(0.0, f64::max);
    let clipped = x_max_data > 2.0 * p999 && p999 > x_min_data;
    let x_hi_data = if clipped { p999 } else { x_max_data };
    let span = (x_hi_data - x_min_data).max(1e-3);
    let step = tick_step(span);
    let x_lo = (x_min_data / step).floor() * step;
    let x_hi = ((x_hi_data / step).ceil() * step).max(x_lo + step);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x.min(x_hi) - x_lo) / (x_hi - x_lo) * pw;
    let py = |y: f64| TOP + (1.0 - y) * ph;

    // Grid and axes.
    let mut t = x_lo;
    while t <= x_hi + step * 1e-6 {
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
            fmt_tick(t, step)
        );
        t += step;
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
    let caption = if clipped {
        format!("RTT (us); axis ends at p99.9 = {p999:.1} us, max = {x_max_data:.1} us")
    } else {
        "RTT (us)".to_string()
    };
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 14.0,
        escape(&caption)
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

fn fmt_tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let digits = (-step.log10().floor()) as usize;
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
    fn outliers_clip_the_axis_and_say_so() {
        let mut a: Vec<u64> = (0..10_000).map(|i| 50_000 + (i % 100) * 100).collect();
        a.push(50_000_000);
        let svg = cdf_svg("t", &[("x".into(), a)]);
        assert!(svg.contains("axis ends at p99.9"), "{svg}");
        assert!(cdf_svg("t", &[]).contains("no samples"));
        assert!(cdf_svg("t", &[("one".into(), vec![7])]).contains("<polyline"));
    }

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(tick_step(60.0), 10.0);
        assert_eq!(tick_step(12.0), 2.0);
        assert_eq!(tick_step(0.3), 0.05);
    }
}
