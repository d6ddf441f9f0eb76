//! Small self-contained SVG line charts (no plotting crate): latency
//! percentiles over time (log scale), sockets over time, events per second.
//!
//! Phase changes (ramp -> load -> grace -> stop) are drawn as dashed lines so
//! a reader can tell a ramp artefact from a load effect.

use std::fmt::Write as _;

use super::Sample;
use crate::report::{human, human_us};

/// One line of a chart.
pub struct Series<'a> {
    /// Legend text.
    pub name: &'a str,
    /// CSS colour.
    pub color: &'a str,
    /// `(x, y)`; a `None` y breaks the line.
    pub points: Vec<(f64, Option<f64>)>,
}

const W: f64 = 860.0;
const H: f64 = 380.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Tick positions covering `0..=max` with a 1-2-5 step.
fn linear_ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0, 1.0];
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| max / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let n = (max / step).ceil() as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

/// A line chart. `log_y` plots log10(y) with decade ticks; `fmt_y` labels ticks.
pub fn line_chart(
    title: &str,
    y_label: &str,
    series: &[Series<'_>],
    phases: &[(f64, String)],
    log_y: bool,
    fmt_y: &dyn Fn(f64) -> String,
) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="{}" y="24" font-size="16" font-weight="bold">{}</text>"#,
        LEFT,
        esc(title)
    );

    let pts = series.iter().flat_map(|s| s.points.iter());
    let x_max = pts.clone().map(|p| p.0).fold(0.0f64, f64::max).max(1.0);
    let ys: Vec<f64> = pts
        .filter_map(|p| p.1)
        .filter(|y| !log_y || *y > 0.0)
        .collect();
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    if ys.is_empty() {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" fill="#888">no data</text></svg>"##,
            LEFT + plot_w / 2.0 - 20.0,
            TOP + plot_h / 2.0
        );
        return svg;
    }
    let (y_lo, y_hi, y_ticks): (f64, f64, Vec<f64>) = if log_y {
        let lo = ys
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .max(1.0)
            .log10()
            .floor();
        let hi = ys
            .iter()
            .copied()
            .fold(0.0f64, f64::max)
            .log10()
            .ceil()
            .max(lo + 1.0);
        (
            lo,
            hi,
            (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect(),
        )
    } else {
        let ticks = linear_ticks(ys.iter().copied().fold(0.0f64, f64::max));
        (0.0, *ticks.last().unwrap_or(&1.0), ticks)
    };
    let map_y = |y: f64| -> f64 {
        let v = if log_y { y.max(1e-9).log10() } else { y };
        let frac = if y_hi > y_lo {
            (v - y_lo) / (y_hi - y_lo)
        } else {
            0.0
        };
        TOP + plot_h * (1.0 - frac.clamp(0.0, 1.0))
    };
    let map_x = |x: f64| LEFT + plot_w * (x / x_max).clamp(0.0, 1.0);

    // Axes and grid.
    for t in &y_ticks {
        let y = map_y(*t);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/>"##,
            LEFT + plot_w
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            esc(&fmt_y(*t))
        );
    }
    for t in linear_ticks(x_max) {
        if t > x_max * 1.0001 {
            break;
        }
        let x = map_x(t);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#f0f0f0"/>"##,
            TOP + plot_h
        );
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{t}</text>"#,
            TOP + plot_h + 16.0
        );
    }
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text>"#,
        LEFT + plot_w / 2.0,
        H - 10.0
    );
    let _ = write!(
        svg,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        esc(y_label)
    );

    // Phase changes; a label too close to the previous one is left out.
    let mut last_label = f64::NEG_INFINITY;
    for (x, name) in phases {
        let px = map_x(*x);
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{}" stroke="#bbb" stroke-dasharray="4 3"/>"##,
            TOP + plot_h
        );
        if px - last_label < 40.0 {
            continue;
        }
        last_label = px;
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" fill="#777" font-size="10">{}</text>"##,
            px + 3.0,
            TOP + 11.0,
            esc(name)
        );
    }

    // Lines (broken where y is missing) and legend.
    for (k, s) in series.iter().enumerate() {
        let mut segment: Vec<String> = Vec::new();
        let flush = |svg: &mut String, seg: &mut Vec<String>| {
            if seg.len() == 1 {
                let _ = write!(
                    svg,
                    r#"<circle cx="{}" r="2" fill="{}"/>"#,
                    seg[0].replace(',', r#"" cy=""#),
                    s.color
                );
            } else if seg.len() > 1 {
                let _ = write!(
                    svg,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
                    s.color,
                    seg.join(" ")
                );
            }
            seg.clear();
        };
        for &(x, y) in &s.points {
            match y {
                Some(y) if !log_y || y > 0.0 => {
                    segment.push(format!("{:.1},{:.1}", map_x(x), map_y(y)))
                }
                _ => flush(&mut svg, &mut segment),
            }
        }
        flush(&mut svg, &mut segment);
        let ly = TOP + 10.0 + k as f64 * 18.0;
        let lx = W - RIGHT + 14.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="3"/>"#,
            lx + 18.0,
            s.color
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            ly + 4.0,
            esc(s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn phase_marks(series: &[Sample]) -> Vec<(f64, String)> {
    let mut out = Vec::new();
    let mut last = "";
    for s in series {
        if s.phase != last {
            out.push((s.t_s - 1.0, s.phase.clone()));
            last = &s.phase;
        }
    }
    out
}

/// Latency percentiles per second (log scale).
pub fn latency_chart(series: &[Sample]) -> String {
    let pick = |f: fn(&Sample) -> u64| -> Vec<(f64, Option<f64>)> {
        series
            .iter()
            .map(|s| (s.t_s, (s.events > 0).then(|| f(s) as f64)))
            .collect()
    };
    let lines = [
        Series {
            name: "p50",
            color: "#1f77b4",
            points: pick(|s| s.p50_us),
        },
        Series {
            name: "p90",
            color: "#2ca02c",
            points: pick(|s| s.p90_us),
        },
        Series {
            name: "p99",
            color: "#ff7f0e",
            points: pick(|s| s.p99_us),
        },
        Series {
            name: "p99.9",
            color: "#d62728",
            points: pick(|s| s.p999_us),
        },
        Series {
            name: "max",
            color: "#7f7f7f",
            points: pick(|s| s.max_us),
        },
    ];
    line_chart(
        "End-to-end latency per second",
        "latency",
        &lines,
        &phase_marks(series),
        true,
        &|v| human_us(v as u64),
    )
}

/// Open sockets and errors over time.
pub fn sockets_chart(series: &[Sample]) -> String {
    let pick = |f: fn(&Sample) -> u64| -> Vec<(f64, Option<f64>)> {
        series.iter().map(|s| (s.t_s, Some(f(s) as f64))).collect()
    };
    let lines = [
        Series {
            name: "open",
            color: "#1f77b4",
            points: pick(|s| s.open),
        },
        Series {
            name: "connect errors",
            color: "#d62728",
            points: pick(|s| s.connect_errors),
        },
        Series {
            name: "disconnects",
            color: "#ff7f0e",
            points: pick(|s| s.disconnects),
        },
    ];
    line_chart(
        "Sockets over time",
        "sockets",
        &lines,
        &phase_marks(series),
        false,
        &human,
    )
}

/// Delivered events per second.
pub fn throughput_chart(series: &[Sample]) -> String {
    let lines = [Series {
        name: "events/s",
        color: "#9467bd",
        points: series
            .iter()
            .map(|s| (s.t_s, Some(s.events as f64)))
            .collect(),
    }];
    line_chart(
        "Delivered events per second",
        "events/s",
        &lines,
        &phase_marks(series),
        false,
        &human,
    )
}

/// The reconnect curve: sockets resumed per second, sockets down, and the
/// workers' CPU (cores x 100, so "the client was the limit" shows).
pub fn reconnects_chart(series: &[Sample]) -> String {
    let lines = [
        Series {
            name: "resumed/s",
            color: "#2ca02c",
            points: series
                .iter()
                .map(|s| (s.t_s, Some(s.reconnects as f64)))
                .collect(),
        },
        Series {
            name: "down",
            color: "#d62728",
            points: series
                .iter()
                .map(|s| (s.t_s, Some(s.down as f64)))
                .collect(),
        },
        Series {
            name: "tester CPU %",
            color: "#7f7f7f",
            points: series
                .iter()
                .map(|s| (s.t_s, Some(s.worker_cpu_cores * 100.0)))
                .collect(),
        },
    ];
    line_chart(
        "Reconnects per second, sockets down, load-tester CPU",
        "sockets",
        &lines,
        &phase_marks(series),
        false,
        &human,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_max() {
        assert_eq!(linear_ticks(10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = linear_ticks(1234.0);
        assert!(*t.last().unwrap() >= 1234.0 && t.len() <= 8);
    }

    #[test]
    fn charts_are_wellformed_svg_with_escaped_text() {
        let series: Vec<Sample> = (1..=5)
            .map(|i| Sample {
                t_s: i as f64,
                phase: if i < 3 { "ramp".into() } else { "load".into() },
                open: i * 10,
                events: if i == 3 { 0 } else { 100 },
                p50_us: 100 * i,
                p99_us: 1000 * i,
                max_us: 5000 * i,
                ..Sample::default()
            })
            .collect();
        for svg in [
            latency_chart(&series),
            sockets_chart(&series),
            throughput_chart(&series),
            reconnects_chart(&series),
        ] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("<polyline"));
            assert_eq!(svg.matches("<svg").count(), 1);
        }
        let empty = latency_chart(&[]);
        assert!(empty.contains("no data") && empty.ends_with("</svg>"));
        let odd = line_chart("a<b & c", "y", &[], &[], false, &|v| format!("{v}"));
        assert!(odd.contains("a&lt;b &amp; c"));
    }
}
