//! Reads back the figures every scenario run appended to the results file and prints
//! Quay against Mosquitto: one line per figure, and a markdown table for the README.
//!
//! The ratio is always "Quay's advantage": Quay ÷ Mosquitto where higher is better,
//! Mosquitto ÷ Quay where lower is better, so above 1.00x means Quay did better.

use std::path::Path;

use anyhow::{Context, Result};

use crate::measure::{Better, Figure};

const QUAY: &str = "quay";
const MOSQUITTO: &str = "mosquitto";

/// One figure of one scenario with each broker's result, in order of first appearance.
struct Row<'a> {
    scenario: &'a str,
    metric: &'a str,
    quay: Option<&'a Figure>,
    mosquitto: Option<&'a Figure>,
}

pub fn load(path: &Path) -> Result<Vec<Figure>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().filter_map(Figure::parse).collect())
}

fn rows<'a>(figures: &'a [Figure], scenario: Option<&str>) -> Vec<Row<'a>> {
    let mut rows: Vec<Row<'a>> = Vec::new();
    for f in figures {
        if scenario.is_some_and(|s| s != f.scenario) {
            continue;
        }
        let index = match rows
            .iter()
            .position(|r| r.scenario == f.scenario && r.metric == f.metric)
        {
            Some(i) => i,
            None => {
                rows.push(Row {
                    scenario: &f.scenario,
                    metric: &f.metric,
                    quay: None,
                    mosquitto: None,
                });
                rows.len() - 1
            }
        };
        // The latest run of a figure wins.
        match f.broker.as_str() {
            QUAY => rows[index].quay = Some(f),
            MOSQUITTO => rows[index].mosquitto = Some(f),
            _ => {}
        }
    }
    rows
}

/// A number as people read it: whole above 100 (and when whole), a few decimals below.
pub fn human(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// What one CPU figure is per: "msg" for msg/s, "conn" for conn/s.
fn per_unit(unit: &str) -> &str {
    unit.strip_suffix("/s").unwrap_or(unit)
}

fn ratio(row: &Row) -> String {
    let (Some(q), Some(m)) = (row.quay, row.mosquitto) else {
        return "n/a".to_string();
    };
    match q.better {
        Better::Higher if m.value > 0.0 => format!("{:.2}x", q.value / m.value),
        Better::Lower if q.value > 0.0 => format!("{:.2}x", m.value / q.value),
        Better::Exact if q.value == m.value => "same".to_string(),
        Better::Exact => "DIFFERENT".to_string(),
        _ => "n/a".to_string(),
    }
}

fn value(f: Option<&Figure>) -> String {
    f.map_or("n/a".to_string(), |f| {
        format!("{} {}", human(f.value), f.unit)
    })
}

fn cpu(f: Option<&Figure>) -> Option<String> {
    let f = f?;
    let us = f.cpu_us_per_unit?;
    Some(format!("{} µs cpu/{}", human(us), per_unit(&f.unit)))
}

/// One line per figure: `fanin throughput  quay ... (… µs cpu/msg)  mosquitto ...  ratio 2.00x`.
pub fn print_lines(figures: &[Figure], scenario: Option<&str>) {
    for row in rows(figures, scenario) {
        let side = |name: &str, f: Option<&Figure>| match cpu(f) {
            Some(c) => format!("{name} {} ({c})", value(f)),
            None => format!("{name} {}", value(f)),
        };
        let flag = match row.quay.map(|q| (q.better, q.value)) {
            Some((Better::Exact, v)) if v != 0.0 => "  <-- quay not 0",
            _ => "",
        };
        println!(
            "{:<11} {:<14} {}  {}  ratio {}{flag}",
            row.scenario,
            row.metric,
            side(QUAY, row.quay),
            side(MOSQUITTO, row.mosquitto),
            ratio(&row)
        );
    }
}

/// The markdown table for the README.
pub fn print_markdown(figures: &[Figure]) {
    println!(
        "| Scenario | Figure | Quay | Mosquitto | Quay advantage | Quay CPU | Mosquitto CPU |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for row in rows(figures, None) {
        let dash = || "–".to_string();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.metric,
            value(row.quay),
            value(row.mosquitto),
            ratio(&row),
            cpu(row.quay).unwrap_or_else(dash),
            cpu(row.mosquitto).unwrap_or_else(dash)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(broker: &str, metric: &str, value: f64, better: Better) -> Figure {
        let mut f = Figure::new(metric, value, "msg/s", better);
        f.scenario = "fanin".into();
        f.broker = broker.into();
        f
    }

    #[test]
    fn ratio_is_quay_advantage_both_ways() {
        let figs = [
            fig("quay", "t", 200.0, Better::Higher),
            fig("mosquitto", "t", 100.0, Better::Higher),
        ];
        assert_eq!(ratio(&rows(&figs, None)[0]), "2.00x");
        let figs = [
            fig("quay", "ms", 50.0, Better::Lower),
            fig("mosquitto", "ms", 100.0, Better::Lower),
        ];
        assert_eq!(ratio(&rows(&figs, None)[0]), "2.00x");
        let figs = [fig("quay", "t", 1.0, Better::Higher)];
        assert_eq!(ratio(&rows(&figs, None)[0]), "n/a");
    }
}
