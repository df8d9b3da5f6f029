//! Charts drawn by the server as inline SVG (no script, no style attribute: colours come from
//! classes in `console.css`): per-minute bars of two stacked series (delivered and failed) and
//! a lag chart (the average as a line over bars of the largest). Each bar has a `<title>`, which
//! the browser shows on hover, with the minute and its figures.

use std::fmt::Write as _;

use super::html::esc;

/// Drawing area in SVG units; the CSS scales the chart to the page's width.
const W: f64 = 720.0;
const H: f64 = 160.0;
/// Room on the left for the scale and at the bottom for the times.
const LEFT: f64 = 64.0;
/// Room right of the plot for the last time label, centred on its bar.
const RIGHT: f64 = 18.0;
/// Width of the plot, between the scale and the right margin.
const PLOT_W: f64 = W - LEFT - RIGHT;
const BOTTOM: f64 = 18.0;

/// One minute of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The minute's label (`20:41`).
    pub label: String,
    /// The lower (first) series' value.
    pub a: f64,
    /// The upper (second) series' value, or the lag chart's average (None: no value).
    pub b: Option<f64>,
}

/// A round number at or above `max` for the scale (1, 2, 5 × 10^n).
fn ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * magnitude)
}

/// The frame: the scale's top value, the baseline and the times under the first, middle and last
/// bars.
fn frame(out: &mut String, points: &[Point], top: f64, unit: &str) {
    let plot_h = H - BOTTOM;
    let right = W - RIGHT;
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{plot_h}\" x2=\"{right}\" y2=\"{plot_h}\"/>\
         <line class=\"grid\" x1=\"{LEFT}\" y1=\"4\" x2=\"{right}\" y2=\"4\"/>\
         <text class=\"scale\" x=\"{}\" y=\"12\" text-anchor=\"end\">{}{}</text>\
         <text class=\"scale\" x=\"{}\" y=\"{plot_h}\" text-anchor=\"end\">0</text>",
        LEFT - 4.0,
        number(top),
        esc(unit),
        LEFT - 4.0
    );
    let n = points.len();
    let step = PLOT_W / n.max(1) as f64;
    for i in [0, n / 2, n.saturating_sub(1)] {
        if let Some(p) = points.get(i) {
            let x = LEFT + step * (i as f64 + 0.5);
            let _ = write!(
                out,
                "<text class=\"scale\" x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                H - 4.0,
                esc(&p.label)
            );
        }
    }
}

/// A figure for a scale or a tooltip: whole numbers without decimals, others with one.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Stacked bars: `a` (class `a`) below `b` (class `b`), e.g. delivered and failed per minute.
pub fn stacked(points: &[Point], names: (&str, &str), testid: &str) -> String {
    let max = points
        .iter()
        .map(|p| p.a + p.b.unwrap_or(0.0))
        .fold(0.0, f64::max);
    let top = ceiling(max);
    let mut out = open(testid, names);
    frame(&mut out, points, top, "");
    let plot_h = H - BOTTOM - 4.0;
    let step = PLOT_W / points.len().max(1) as f64;
    for (i, p) in points.iter().enumerate() {
        let x = LEFT + step * i as f64 + 1.0;
        let width = (step - 2.0).max(1.0);
        let ha = p.a / top * plot_h;
        let hb = p.b.unwrap_or(0.0) / top * plot_h;
        let base = H - BOTTOM;
        let _ = write!(
            out,
            "<g><title>{}: {} {}, {} {}</title>\
             <rect class=\"a\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"{ha:.1}\"/>\
             <rect class=\"b\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"{hb:.1}\"/></g>",
            esc(&p.label),
            number(p.a),
            esc(names.0),
            number(p.b.unwrap_or(0.0)),
            esc(names.1),
            base - ha,
            base - ha - hb,
        );
    }
    out.push_str("</svg>");
    out
}

/// The lag chart: bars of the largest lag (`a`) and a line through the averages (`b`), in
/// milliseconds; minutes without deliveries have neither.
pub fn lag(points: &[Point], testid: &str) -> String {
    let max = points.iter().map(|p| p.a).fold(0.0, f64::max);
    let top = ceiling(max);
    let mut out = open(testid, ("largest", "average"));
    frame(&mut out, points, top, " ms");
    let plot_h = H - BOTTOM - 4.0;
    let base = H - BOTTOM;
    let step = PLOT_W / points.len().max(1) as f64;
    let mut line = String::new();
    let mut dots = String::new();
    for (i, p) in points.iter().enumerate() {
        let Some(avg) = p.b else { continue };
        let x = LEFT + step * i as f64 + 1.0;
        let h = p.a / top * plot_h;
        let _ = write!(
            out,
            "<g><title>{}: average {} ms, largest {} ms</title>\
             <rect class=\"a\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\"/></g>",
            esc(&p.label),
            number(avg.round()),
            number(p.a.round()),
            base - h,
            (step - 2.0).max(1.0)
        );
        let (cx, cy) = (x + step / 2.0 - 1.0, base - avg / top * plot_h);
        let _ = write!(line, "{cx:.1},{cy:.1} ");
        // A dot as well: a minute alone (no neighbour to draw a line to) shows its average.
        let _ = write!(
            dots,
            "<circle class=\"b\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"2.5\"/>"
        );
    }
    if !line.is_empty() {
        let _ = write!(
            out,
            "<polyline class=\"b\" points=\"{}\"/>{dots}",
            line.trim_end()
        );
    }
    out.push_str("</svg>");
    out
}

fn open(testid: &str, names: (&str, &str)) -> String {
    format!(
        "<svg class=\"chart\" data-testid=\"{}\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"{} and {} per minute\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(testid),
        esc(names.0),
        esc(names.1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points() -> Vec<Point> {
        vec![
            Point {
                label: "20:40".into(),
                a: 3.0,
                b: Some(1.0),
            },
            Point {
                label: "20:41".into(),
                a: 0.0,
                b: None,
            },
            Point {
                label: "<x>".into(),
                a: 7.0,
                b: Some(2.0),
            },
        ]
    }

    #[test]
    fn scales_round_up() {
        assert_eq!(ceiling(0.0), 1.0);
        assert_eq!(ceiling(7.0), 10.0);
        assert_eq!(ceiling(12.0), 20.0);
        assert_eq!(ceiling(450.0), 500.0);
        assert_eq!(number(3.0), "3");
        assert_eq!(number(2.5), "2.5");
    }

    #[test]
    fn a_stacked_chart_has_one_bar_pair_per_minute_and_escaped_labels() {
        let svg = stacked(&points(), ("delivered", "failed"), "chart-delivered");
        assert!(svg.starts_with("<svg class=\"chart\" data-testid=\"chart-delivered\""));
        assert_eq!(svg.matches("<rect class=\"a\"").count(), 3);
        assert_eq!(svg.matches("<rect class=\"b\"").count(), 3);
        assert!(svg.contains("<title>20:40: 3 delivered, 1 failed</title>"));
        assert!(svg.contains("&lt;x&gt;") && !svg.contains("<x>"));
        assert!(!svg.contains("style="));
    }

    #[test]
    fn the_lag_chart_skips_minutes_without_deliveries() {
        let svg = lag(&points(), "chart-lag");
        assert_eq!(svg.matches("<rect class=\"a\"").count(), 2);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("average 1 ms, largest 3 ms"));
    }
}
