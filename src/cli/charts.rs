//! Small SVG charts for people: a loss curve and a bar chart with error
//! bars. Plain SVG text, so they open in any browser with no dependency.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 400.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 50.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn header(out: &mut String, title: &str) {
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"##,
        W / 2.0,
        esc(title)
    );
}

/// Line chart of named series of (x, y) points.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[(&str, &[(f64, f64)])]) -> String {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0f64, f64::MIN);
    for (x, y) in &pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if pts.is_empty() || x1 <= x0 {
        x0 = 0.0;
        x1 = x1.max(1.0);
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let sy = |y: f64| H - B - (y - y0) / (y1 - y0) * (H - T - B);
    let mut out = String::new();
    header(&mut out, title);
    axes(&mut out, x_label, y_label);
    for i in 0..=5 {
        let v = y0 + (y1 - y0) * i as f64 / 5.0;
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="end">{v:.2}</text><line x1="{L}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/>"##,
            L - 6.0,
            sy(v) + 4.0,
            W - R,
            y = sy(v)
        );
        let xv = x0 + (x1 - x0) * i as f64 / 5.0;
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle">{xv:.0}</text>"##,
            sx(xv),
            H - B + 16.0
        );
    }
    let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
    for (k, (name, p)) in series.iter().enumerate() {
        let c = colours[k % colours.len()];
        let path: Vec<String> = p.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        let _ = writeln!(
            out,
            r##"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
        let _ = writeln!(
            out,
            r##"<rect x="{}" y="{}" width="12" height="12" fill="{c}"/><text x="{}" y="{}">{}</text>"##,
            W - R - 150.0,
            T + 8.0 + k as f64 * 18.0,
            W - R - 132.0,
            T + 18.0 + k as f64 * 18.0,
            esc(name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Bars with 95% intervals: (label, value, low, high), values in [0, 1].
pub fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64, f64, f64)]) -> String {
    let mut out = String::new();
    header(&mut out, title);
    axes(&mut out, "", y_label);
    let sy = |y: f64| H - B - y.clamp(0.0, 1.0) * (H - T - B);
    for i in 0..=5 {
        let v = i as f64 / 5.0;
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="end">{:.0}%</text><line x1="{L}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/>"##,
            L - 6.0,
            sy(v) + 4.0,
            v * 100.0,
            W - R,
            y = sy(v)
        );
    }
    let n = bars.len().max(1) as f64;
    let slot = (W - L - R) / n;
    for (k, (label, v, lo, hi)) in bars.iter().enumerate() {
        let x = L + slot * k as f64 + slot * 0.2;
        let w = slot * 0.6;
        let _ = writeln!(
            out,
            r##"<rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="#1f77b4"/>"##,
            sy(*v),
            (H - B) - sy(*v)
        );
        let cx = x + w / 2.0;
        let _ = writeln!(
            out,
            r##"<line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/>"##,
            sy(*lo),
            sy(*hi),
            cx - 6.0,
            cx + 6.0,
            sy(*lo),
            sy(*lo),
            cx - 6.0,
            cx + 6.0,
            sy(*hi),
            sy(*hi)
        );
        let _ = writeln!(
            out,
            r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{:.1}%</text><text x="{cx:.1}" y="{}" text-anchor="middle">{}</text>"##,
            sy(*hi) - 6.0,
            v * 100.0,
            H - B + 16.0,
            esc(label)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn axes(out: &mut String, x_label: &str, y_label: &str) {
    let _ = writeln!(
        out,
        r##"<line x1="{L}" x2="{L}" y1="{T}" y2="{}" stroke="black"/><line x1="{L}" x2="{}" y1="{}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"##,
        H - B,
        W - R,
        H - B,
        H - B,
        (L + W - R) / 2.0,
        H - 10.0,
        esc(x_label),
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        esc(y_label)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg() {
        let pts = [(1.0, 4.0), (2.0, 2.0), (3.0, 1.0)];
        let s = line_chart("loss", "step", "loss", &[("train", &pts)]);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("polyline"));
        let b = bar_chart("pass rate", "pass rate", &[("base <x>".into(), 0.1, 0.05, 0.2)]);
        assert!(b.contains("base &lt;x&gt;"));
    }
}
