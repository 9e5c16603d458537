//! Summaries of trials: the printed table, JSON and CSV files, and an SVG picture with every
//! trial as a point.

use std::fmt::Write as _;

use crate::cluster::Fault;
use crate::rto::Trial;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
}

/// Median, 90th percentile (nearest rank), min and max; `None` for no values.
pub fn stats(values: &[f64]) -> Option<Stats> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let rank = ((0.9 * n as f64).ceil() as usize).clamp(1, n);
    Some(Stats {
        n,
        median,
        p90: v[rank - 1],
        min: v[0],
        max: v[n - 1],
    })
}

/// The (label, fault) groups in first-seen order.
fn groups(trials: &[Trial]) -> Vec<(String, &'static str)> {
    let mut keys: Vec<(String, &'static str)> = Vec::new();
    for t in trials {
        let key = (t.label.clone(), t.fault.name());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

fn field(trials: &[&Trial], f: impl Fn(&Trial) -> Option<f64>) -> Option<Stats> {
    stats(&trials.iter().filter_map(|t| f(t)).collect::<Vec<_>>())
}

/// The RTO table; `reference` names, per fault, the pg_promoter label to compare medians with.
pub fn table(trials: &[Trial], reference: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<7} {:>3} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>6} {:>6}",
        "tool", "fault", "n", "median", "p90", "min", "max", "detect", "promote", "ratio", "lost", "failed"
    );
    for (label, fault) in groups(trials) {
        let group: Vec<&Trial> = trials
            .iter()
            .filter(|t| t.label == label && t.fault.name() == fault)
            .collect();
        let rto = field(&group, |t| t.rto);
        let detect = field(&group, |t| t.detection);
        let promote = field(&group, |t| t.promotion);
        let ratio = reference(&label).and_then(|r| {
            let base: Vec<&Trial> = trials
                .iter()
                .filter(|t| t.label == r && t.fault.name() == fault)
                .collect();
            Some(rto?.median / field(&base, |t| t.rto)?.median)
        });
        let lost: u64 = group.iter().filter_map(|t| t.lost).sum();
        let failed = group.iter().filter(|t| t.rto.is_none()).count();
        let s = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "{:<28} {:<7} {:>3} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>6} {:>6}",
            label,
            fault,
            group.len(),
            s(rto.map(|r| r.median)),
            s(rto.map(|r| r.p90)),
            s(rto.map(|r| r.min)),
            s(rto.map(|r| r.max)),
            s(detect.map(|r| r.median)),
            s(promote.map(|r| r.median)),
            ratio.map_or("-".to_string(), |r| format!("{r:.1}x")),
            lost,
            failed
        );
    }
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: Option<f64>) -> String {
    v.map_or("null".into(), |v| format!("{v:.4}"))
}

/// Every trial plus the run's facts, as JSON.
pub fn json(trials: &[Trial], facts: &[(String, String)]) -> String {
    let facts: Vec<String> = facts
        .iter()
        .map(|(k, v)| format!("    {}: {}", json_str(k), json_str(v)))
        .collect();
    let trials: Vec<String> = trials
        .iter()
        .map(|t| {
            format!(
                "    {{\"tool\": {}, \"family\": {}, \"fault\": {}, \"rto_s\": {}, \"detection_s\": {}, \
                 \"promotion_s\": {}, \"lost_commits\": {}, \"acked_before_fault\": {}, \
                 \"old_primary_acked_after_fault\": {}, \"error\": {}}}",
                json_str(&t.label),
                json_str(&t.family),
                json_str(t.fault.name()),
                json_num(t.rto),
                json_num(t.detection),
                json_num(t.promotion),
                t.lost.map_or("null".into(), |l| l.to_string()),
                t.acked_before,
                t.old_acked_after,
                t.error.as_deref().map_or("null".into(), json_str)
            )
        })
        .collect();
    format!(
        "{{\n  \"facts\": {{\n{}\n  }},\n  \"trials\": [\n{}\n  ]\n}}\n",
        facts.join(",\n"),
        trials.join(",\n")
    )
}

pub fn csv(trials: &[Trial]) -> String {
    let mut out = String::from(
        "tool,family,fault,rto_s,detection_s,promotion_s,lost_commits,old_primary_acked_after_fault,error\n",
    );
    let n = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    for t in trials {
        let _ = writeln!(
            out,
            "\"{}\",{},{},{},{},{},{},{},\"{}\"",
            t.label,
            t.family,
            t.fault.name(),
            n(t.rto),
            n(t.detection),
            n(t.promotion),
            t.lost.map_or(String::new(), |l| l.to_string()),
            t.old_acked_after,
            t.error
                .as_deref()
                .unwrap_or("")
                .replace('"', "'")
                .replace('\n', " ")
        );
    }
    out
}

/// Reads back what [`csv`] wrote, so several runs can be reported as one.
pub fn parse_csv(text: &str) -> Result<Vec<Trial>, String> {
    let num = |s: &str| -> Result<Option<f64>, String> {
        (!s.is_empty())
            .then(|| s.parse().map_err(|_| format!("not a number: {s}")))
            .transpose()
    };
    // Files written before errors were kept on one line: a line that does not start a row
    // continues the error of the row before.
    let mut rows: Vec<String> = Vec::new();
    for line in text.lines().skip(1) {
        match rows.last_mut() {
            Some(row) if !line.starts_with('"') => {
                row.push(' ');
                row.push_str(line.trim());
            }
            _ => rows.push(line.to_string()),
        }
    }
    let mut trials = Vec::new();
    for (i, line) in rows.iter().enumerate() {
        let bad = || format!("results.csv row {}: {line}", i + 1);
        // The label and the error are quoted (and hold no quote); the fields between are plain.
        let rest = line.strip_prefix('"').ok_or_else(bad)?;
        let (label, rest) = rest.split_once("\",").ok_or_else(bad)?;
        let f: Vec<&str> = rest.splitn(8, ',').collect();
        if f.len() != 8 {
            return Err(bad());
        }
        let error = f[7].trim_matches('"');
        trials.push(Trial {
            label: label.to_string(),
            family: f[0].to_string(),
            fault: Fault::parse(f[1]).ok_or_else(bad)?,
            rto: num(f[2])?,
            detection: num(f[3])?,
            promotion: num(f[4])?,
            lost: num(f[5])?.map(|l| l as u64),
            acked_before: 0,
            old_acked_after: f[6].parse().map_err(|_| bad())?,
            error: (!error.is_empty()).then(|| error.to_string()),
        });
    }
    Ok(trials)
}

/// RTO per tool and setting (rows), one point per trial, coloured by fault, log-scaled seconds.
pub fn svg(trials: &[Trial]) -> String {
    let mut labels: Vec<&str> = Vec::new();
    for t in trials {
        if !labels.contains(&t.label.as_str()) {
            labels.push(&t.label);
        }
    }
    let (left, top, row, width) = (230.0, 40.0, 34.0, 560.0);
    let height = top + row * labels.len() as f64 + 50.0;
    let (lo, hi) = (0.1f64.log10(), 200f64.log10());
    let x = |s: f64| left + (s.clamp(0.1, 200.0).log10() - lo) / (hi - lo) * width;
    let color = |f: &str| match f {
        "kill" => "#d62728",
        "freeze" => "#1f77b4",
        _ => "#2ca02c",
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" \
         font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">Failover time (RTO): fault to first commit on the new \
         primary, seconds (log scale)</text>\n",
        left + width + 30.0
    );
    for tick in [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0] {
        let tx = x(tick);
        let _ = writeln!(
            out,
            "<line x1=\"{tx:.1}\" y1=\"{top}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{tick}</text>",
            height - 40.0,
            height - 25.0
        );
    }
    for (i, label) in labels.iter().enumerate() {
        let y = top + row * i as f64 + row / 2.0;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            left - 8.0,
            y + 4.0
        );
        for t in trials.iter().filter(|t| t.label == *label) {
            let Some(rto) = t.rto else { continue };
            let dy = match t.fault.name() {
                "kill" => -8.0,
                "freeze" => 0.0,
                _ => 8.0,
            };
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\" fill-opacity=\"0.7\"><title>{} {} {:.2} s</title></circle>",
                x(rto),
                y + dy,
                color(t.fault.name()),
                label,
                t.fault.name(),
                rto
            );
        }
    }
    for (i, f) in ["kill", "freeze", "cut"].iter().enumerate() {
        let lx = left + 120.0 * i as f64;
        let _ = writeln!(
            out,
            "<circle cx=\"{lx}\" cy=\"{:.1}\" r=\"4\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{f}</text>",
            height - 8.0,
            color(f),
            lx + 8.0,
            height - 4.0
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_order_free_with_nearest_rank_p90() {
        assert_eq!(stats(&[]), None);
        let s = stats(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.n, s.median, s.p90, s.min, s.max), (3, 3.0, 5.0, 1.0, 5.0));
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = stats(&ten).unwrap();
        assert_eq!((s.median, s.p90), (5.5, 9.0));
    }

    #[test]
    fn csv_reads_back_what_it_wrote() {
        let trial = |label: &str, fault, rto, error: Option<&str>| Trial {
            label: label.into(),
            family: "pg_promoter".into(),
            fault,
            rto,
            detection: rto.map(|r| r - 0.03),
            promotion: rto.map(|_| 0.03),
            lost: rto.map(|_| 3),
            acked_before: 0,
            old_acked_after: 7,
            error: error.map(str::to_string),
        };
        let trials = [
            trial("pg_promoter 1s×3", Fault::Cut, Some(2.5), None),
            trial("x", Fault::Freeze, None, Some("setup: a, b and 'c'\n\tmore")),
        ];
        let text = csv(&trials);
        let back = parse_csv(&text).unwrap();
        assert_eq!(csv(&back), text);
        assert_eq!(back[1].error.as_deref(), Some("setup: a, b and 'c' \tmore"));
        // An error over two lines, as older files have it.
        let old = text.replace(" \tmore", "\n\tmore");
        let joined = parse_csv(&old).unwrap();
        assert_eq!(joined[1].error.as_deref(), Some("setup: a, b and 'c' more"));
        assert!(parse_csv("header\n\"broken line\n").is_err());
    }

    #[test]
    fn json_escapes_strings() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
