//! Turns the runs' figures into medians and ratios: a text table, a JSON
//! document and a hand-written SVG chart of the ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::broker::Kind;
use crate::scenarios::{Outcome, Scenario};

/// One row: a figure of a scenario, both brokers.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: &'static str,
    /// Figure name.
    pub figure: &'static str,
    /// Unit.
    pub unit: &'static str,
    /// Whether higher is better.
    pub higher_better: bool,
    /// Accepted values per run, Hearth.
    pub hearth: Vec<f64>,
    /// Accepted values per run, Mosquitto.
    pub mosquitto: Vec<f64>,
    /// Runs whose value was withheld (generator above 90 % of its core).
    pub withheld: BTreeMap<&'static str, u32>,
    /// Median, Hearth.
    pub hearth_median: Option<f64>,
    /// Median, Mosquitto.
    pub mosquitto_median: Option<f64>,
    /// Hearth / Mosquitto.
    pub ratio: Option<f64>,
}

/// Collects outcomes.
#[derive(Debug, Default)]
pub struct Collector {
    rows: Vec<Row>,
    /// Generator CPU per (scenario, broker) run.
    pub gen_cpu: Vec<(&'static str, &'static str, f64)>,
    /// Failed runs: (scenario, broker, error).
    pub failures: Vec<(&'static str, &'static str, String)>,
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

impl Collector {
    /// Adds a run. Rate figures of a run whose generator was above
    /// `gen_limit` of its core are withheld.
    pub fn add(&mut self, s: Scenario, kind: Kind, o: &Outcome, gen_limit: f64) {
        self.gen_cpu.push((s.name(), kind.name(), o.gen_cpu));
        for f in &o.figures {
            let i = match self
                .rows
                .iter()
                .position(|r| r.scenario == s.name() && r.figure == f.name)
            {
                Some(i) => i,
                None => {
                    self.rows.push(Row {
                        scenario: s.name(),
                        figure: f.name,
                        unit: f.unit,
                        higher_better: f.higher_better,
                        hearth: Vec::new(),
                        mosquitto: Vec::new(),
                        withheld: BTreeMap::new(),
                        hearth_median: None,
                        mosquitto_median: None,
                        ratio: None,
                    });
                    self.rows.len() - 1
                }
            };
            let row = &mut self.rows[i];
            if f.rate && o.gen_cpu > gen_limit {
                *row.withheld.entry(kind.name()).or_default() += 1;
                continue;
            }
            match kind {
                Kind::Hearth => row.hearth.push(f.value),
                Kind::Mosquitto => row.mosquitto.push(f.value),
            }
        }
    }

    /// Computes medians and ratios.
    pub fn finish(mut self) -> (Vec<Row>, Self) {
        for r in &mut self.rows {
            r.hearth_median = median(&r.hearth);
            r.mosquitto_median = median(&r.mosquitto);
            r.ratio = match (r.hearth_median, r.mosquitto_median) {
                (Some(h), Some(m)) if m != 0.0 => Some(h / m),
                _ => None,
            };
        }
        let rows = std::mem::take(&mut self.rows);
        (rows, self)
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// The text table (Markdown-compatible).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | figure | unit | Hearth median | Mosquitto median | ratio H/M |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|");
    for r in rows {
        let note = if r.withheld.is_empty() {
            String::new()
        } else {
            let w: Vec<String> = r.withheld.iter().map(|(k, n)| format!("{k}:{n}")).collect();
            format!(" (withheld, generator-bound: {})", w.join(" "))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {}{} |",
            r.scenario,
            r.figure,
            r.unit,
            num(r.hearth_median),
            num(r.mosquitto_median),
            r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
            note
        );
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart of the ratios on a log2 axis (1/16 to 16), green
/// where Hearth is better, red where it is worse.
pub fn svg(rows: &[Row], title: &str) -> String {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.ratio.is_some()).collect();
    let (left, width, bar_h, top) = (330.0, 560.0, 22.0, 60.0);
    let height = top + rows.len() as f64 * bar_h + 50.0;
    let x = |ratio: f64| left + (ratio.log2().clamp(-4.0, 4.0) + 4.0) / 8.0 * width;
    let mut s = String::from(
        "<!-- hearth-bench: ratios Hearth / Mosquitto per scenario and figure (docs/BENCHMARKS.md) -->\n",
    );
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = left + width + 90.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="40" fill="#555">ratio Hearth / Mosquitto, log scale; green = Hearth better for that figure, red = worse</text>"##
    );
    for t in [-4i32, -3, -2, -1, 0, 1, 2, 3, 4] {
        let r = 2f64.powi(t);
        let xx = x(r);
        let label = if t >= 0 {
            format!("{}x", 1 << t)
        } else {
            format!("1/{}", 1 << -t)
        };
        let _ = writeln!(
            s,
            r##"<line x1="{xx}" y1="{top}" x2="{xx}" y2="{y2}" stroke="{c}" stroke-width="{sw}"/><text x="{xx}" y="{ty}" text-anchor="middle" fill="#555">{label}</text>"##,
            y2 = height - 35.0,
            c = if t == 0 { "#000" } else { "#ddd" },
            sw = if t == 0 { 1.5 } else { 1.0 },
            ty = height - 20.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let ratio = r.ratio.unwrap_or(1.0);
        let y = top + i as f64 * bar_h;
        let better = if r.higher_better {
            ratio >= 1.0
        } else {
            ratio <= 1.0
        };
        let (x0, x1) = (x(1.0).min(x(ratio)), x(1.0).max(x(ratio)));
        let _ = writeln!(
            s,
            r#"<text x="{tx}" y="{ty}" text-anchor="end">{label}</text><rect x="{x0}" y="{ry}" width="{w}" height="{h}" fill="{c}"/><text x="{vx}" y="{ty}">{ratio:.2}</text>"#,
            tx = left - 8.0,
            ty = y + bar_h * 0.68,
            label = esc(&format!("{}: {} ({})", r.scenario, r.figure, r.unit)),
            ry = y + 3.0,
            w = (x1 - x0).max(1.0),
            h = bar_h - 6.0,
            c = if better { "#3a9d5d" } else { "#d0544b" },
            vx = x1 + 4.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::Figure;

    #[test]
    fn medians_ratios_and_withholding() {
        let mut c = Collector::default();
        let o = |v: f64, gen: f64| Outcome {
            figures: vec![Figure {
                name: "delivered",
                unit: "msg/s",
                value: v,
                higher_better: true,
                rate: true,
            }],
            gen_cpu: gen,
            count: 1,
        };
        c.add(Scenario::Qos0, Kind::Hearth, &o(10.0, 0.5), 0.9);
        c.add(Scenario::Qos0, Kind::Hearth, &o(30.0, 0.5), 0.9);
        c.add(Scenario::Qos0, Kind::Hearth, &o(20.0, 0.5), 0.9);
        c.add(Scenario::Qos0, Kind::Mosquitto, &o(10.0, 0.5), 0.9);
        c.add(Scenario::Qos0, Kind::Mosquitto, &o(99.0, 0.95), 0.9);
        let (rows, _) = c.finish();
        assert_eq!(rows[0].hearth_median, Some(20.0));
        assert_eq!(rows[0].mosquitto_median, Some(10.0));
        assert_eq!(rows[0].ratio, Some(2.0));
        assert_eq!(rows[0].withheld.get("mosquitto"), Some(&1));
        assert!(svg(&rows, "t").contains("2.00"));
        assert!(table(&rows).contains("| qos0 | delivered |"));
    }
}
