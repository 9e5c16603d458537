//! Summaries of trials: the printed table, JSON and CSV files, and an SVG picture with every
//! trial as a point.

use std::fmt::Write as _;

use crate::cluster::{split_label, Fault};
use crate::rto::{Kind, Trial};

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
/// When any trial had a follow time to measure (three nodes or more), four more columns: the
/// follow time's median and max, the trials where it was not reached, and the RTO median against
/// the same tool and setting with two nodes (`vs 2n`).
pub fn table(trials: &[Trial], reference: impl Fn(&str) -> Option<String>) -> String {
    let follows = trials
        .iter()
        .any(|t| t.follow.is_some() || t.follow_error.is_some());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<36} {:<7} {:>3} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>6} {:>6} {:>8} {:>7} {:>7}",
        "tool",
        "fault",
        "n",
        "median",
        "p90",
        "min",
        "max",
        "detect",
        "promote",
        "ratio",
        "lost",
        "failed",
        "in place",
        "inject",
        "old.ack"
    );
    if follows {
        let _ = write!(
            out,
            " {:>8} {:>8} {:>6} {:>6}",
            "follow", "f.max", "f.none", "vs 2n"
        );
    }
    out.push('\n');
    let median_of = |label: &str, fault: &str| {
        let base: Vec<&Trial> = trials
            .iter()
            .filter(|t| t.label == label && t.fault.name() == fault)
            .collect();
        field(&base, |t| t.rto).map(|s| s.median)
    };
    let ratio = |v: Option<f64>| v.map_or("-".to_string(), |r| format!("{r:.1}x"));
    for (label, fault) in groups(trials) {
        let group: Vec<&Trial> = trials
            .iter()
            .filter(|t| t.label == label && t.fault.name() == fault)
            .collect();
        let rto = field(&group, |t| t.rto);
        let detect = field(&group, |t| t.detection);
        let promote = field(&group, |t| t.promotion);
        let vs_reference = reference(&label).and_then(|r| Some(rto?.median / median_of(&r, fault)?));
        let lost: u64 = group.iter().filter_map(|t| t.lost).sum();
        // Not a failover either way: no writes at all, or writes back on the old primary.
        let failed = group.iter().filter(|t| t.kind == Kind::None).count();
        let in_place = group.iter().filter(|t| t.kind == Kind::InPlace).count();
        let injection = field(&group, |t| t.injection);
        let old_acked: u64 = group.iter().map(|t| t.old_acked_after).sum();
        let s = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let _ = write!(
            out,
            "{:<36} {:<7} {:>3} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>6} {:>6} {:>8} {:>7} {:>7}",
            label,
            fault,
            group.len(),
            s(rto.map(|r| r.median)),
            s(rto.map(|r| r.p90)),
            s(rto.map(|r| r.min)),
            s(rto.map(|r| r.max)),
            s(detect.map(|r| r.median)),
            s(promote.map(|r| r.median)),
            ratio(vs_reference),
            lost,
            failed,
            in_place,
            s(injection.map(|i| i.median)),
            old_acked
        );
        if follows {
            let follow = field(&group, |t| t.follow);
            let (tool, nodes) = split_label(&label);
            let none = group.iter().filter(|t| t.follow_error.is_some()).count();
            let none = if nodes > 2 { none.to_string() } else { "-".into() };
            let vs_two = (nodes != 2)
                .then(|| case_label_of(tool, 2))
                .and_then(|two| Some(rto?.median / median_of(&two, fault)?));
            let _ = write!(
                out,
                " {:>8} {:>8} {:>6} {:>6}",
                s(follow.map(|f| f.median)),
                s(follow.map(|f| f.max)),
                none,
                ratio(vs_two)
            );
        }
        out.push('\n');
    }
    out
}

/// [`crate::cluster::case_label`] from a tool's label.
fn case_label_of(tool: &str, nodes: usize) -> String {
    format!("{tool}, {nodes} nodes")
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

/// The machine a run's results.json names (its `cpu`, `cores` and `memory_kb` facts): runs are
/// merged only when theirs are the same.
pub fn machine(json: &str) -> Vec<(String, String)> {
    ["cpu", "cores", "memory_kb"]
        .iter()
        .map(|k| {
            let key = format!("\"{k}\": ");
            let value = json
                .lines()
                .find_map(|l| l.trim().strip_prefix(key.as_str()))
                .map_or("unknown".to_string(), |v| {
                    v.trim_end_matches(',').trim_matches('"').to_string()
                });
            (k.to_string(), value)
        })
        .collect()
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
                "    {{\"tool\": {}, \"family\": {}, \"nodes\": {}, \"fault\": {}, \"rto_s\": {}, \
                 \"detection_s\": {}, \"promotion_s\": {}, \"follow_s\": {}, \"follow_error\": {}, \
                 \"lost_commits\": {}, \"acked_before_fault\": {}, \"old_primary_acked_after_fault\": {}, \
                 \"kind\": {}, \"in_place_s\": {}, \"injection_s\": {}, \
                 \"old_primary_acked_during_injection\": {}, \"load_1m\": {}, \"error\": {}}}",
                json_str(&t.label),
                json_str(&t.family),
                t.nodes,
                json_str(t.fault.name()),
                json_num(t.rto),
                json_num(t.detection),
                json_num(t.promotion),
                json_num(t.follow),
                t.follow_error.as_deref().map_or("null".into(), json_str),
                t.lost.map_or("null".into(), |l| l.to_string()),
                t.acked_before,
                t.old_acked_after,
                json_str(t.kind.name()),
                json_num(t.in_place),
                json_num(t.injection),
                t.old_acked_injecting,
                json_num(t.load),
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

/// The columns of results.csv. Files written before trials were classed and injections timed
/// lack `kind` to `old_primary_acked_during_injection` ([`CSV_HEADER_V2`]); those written before
/// node counts and follow times end at `old_primary_acked_after_fault,error`.
const CSV_HEADER: &str = "tool,family,fault,rto_s,detection_s,promotion_s,lost_commits,\
                          old_primary_acked_after_fault,nodes,follow_s,kind,in_place_s,injection_s,\
                          old_primary_acked_during_injection,load_1m,follow_error,error";
const CSV_HEADER_V2: &str = "tool,family,fault,rto_s,detection_s,promotion_s,lost_commits,\
                             old_primary_acked_after_fault,nodes,follow_s,follow_error,error";

/// Text for a quoted CSV field: no quote, no line break.
fn csv_text(s: Option<&str>) -> String {
    s.unwrap_or("").replace('"', "'").replace('\n', " ")
}

pub fn csv(trials: &[Trial]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    let n = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    for t in trials {
        let _ = writeln!(
            out,
            "\"{}\",{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\",\"{}\"",
            t.label,
            t.family,
            t.fault.name(),
            n(t.rto),
            n(t.detection),
            n(t.promotion),
            t.lost.map_or(String::new(), |l| l.to_string()),
            t.old_acked_after,
            t.nodes,
            n(t.follow),
            t.kind.name(),
            n(t.in_place),
            n(t.injection),
            t.old_acked_injecting,
            t.load.map_or(String::new(), |l| format!("{l:.2}")),
            csv_text(t.follow_error.as_deref()),
            csv_text(t.error.as_deref()),
        );
    }
    out
}

/// Reads back what [`csv`] wrote, so several runs can be reported as one; also the files of
/// earlier versions (no node count, no follow time): their trials had two nodes, and their labels
/// get the node count that labels now carry, so they group with new two-node trials.
pub fn parse_csv(text: &str) -> Result<Vec<Trial>, String> {
    let num = |s: &str| -> Result<Option<f64>, String> {
        (!s.is_empty())
            .then(|| s.parse().map_err(|_| format!("not a number: {s}")))
            .transpose()
    };
    let header = text.lines().next().map(str::trim);
    let current = header == Some(CSV_HEADER);
    let v2 = header == Some(CSV_HEADER_V2);
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
    // The plain fields between the quoted label and the quoted texts at the end.
    let plain = if current {
        14
    } else if v2 {
        9
    } else {
        7
    };
    let mut trials = Vec::new();
    for (i, line) in rows.iter().enumerate() {
        let bad = || format!("results.csv row {}: {line}", i + 1);
        // The label and the texts are quoted (and hold no quote); the fields between are plain.
        let rest = line.strip_prefix('"').ok_or_else(bad)?;
        let (label, rest) = rest.split_once("\",").ok_or_else(bad)?;
        let f: Vec<&str> = rest.splitn(plain + 1, ',').collect();
        if f.len() != plain + 1 {
            return Err(bad());
        }
        let (nodes, follow, follow_error, error) = if current || v2 {
            let texts = f[plain].strip_prefix('"').and_then(|t| t.strip_suffix('"'));
            let (follow_error, error) = texts.and_then(|t| t.split_once("\",\"")).ok_or_else(bad)?;
            (f[7].parse().map_err(|_| bad())?, num(f[8])?, follow_error, error)
        } else {
            (2, None, "", f[plain].trim_matches('"'))
        };
        let rto = num(f[2])?;
        // Older files did not class trials: one with a time was counted as a failover.
        let (kind, in_place, injection, injecting, load) = if current {
            (
                Kind::parse(f[9]).ok_or_else(bad)?,
                num(f[10])?,
                num(f[11])?,
                f[12].parse().map_err(|_| bad())?,
                num(f[13])?,
            )
        } else {
            let kind = if rto.is_some() { Kind::Failover } else { Kind::None };
            (kind, None, None, 0, None)
        };
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        trials.push(Trial {
            label: if current || v2 {
                label.to_string()
            } else {
                case_label_of(label, nodes)
            },
            family: f[0].to_string(),
            nodes,
            fault: Fault::parse(f[1]).ok_or_else(bad)?,
            kind,
            rto,
            in_place,
            injection,
            load,
            detection: num(f[3])?,
            promotion: num(f[4])?,
            follow,
            follow_error: text(follow_error),
            lost: num(f[5])?.map(|l| l as u64),
            acked_before: 0,
            old_acked_after: f[6].parse().map_err(|_| bad())?,
            old_acked_injecting: injecting,
            error: text(error),
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
        let trial = |label: &str, fault, rto: Option<f64>, error: Option<&str>| Trial {
            label: label.into(),
            family: "pg_promoter".into(),
            nodes: split_label(label).1,
            fault,
            kind: if rto.is_some() { Kind::Failover } else { Kind::None },
            rto,
            in_place: None,
            injection: Some(0.012),
            load: Some(1.5),
            detection: rto.map(|r| r - 0.03),
            promotion: rto.map(|_| 0.03),
            follow: rto.filter(|_| split_label(label).1 > 2).map(|r| r / 10.0),
            follow_error: None,
            lost: rto.map(|_| 3),
            acked_before: 0,
            old_acked_after: 7,
            old_acked_injecting: 2,
            error: error.map(str::to_string),
        };
        let mut trials = [
            trial("pg_promoter 1s×3, 3 nodes", Fault::Cut, Some(2.5), None),
            trial(
                "x, 2 nodes",
                Fault::Freeze,
                None,
                Some("setup: a, b and 'c'\n\tmore"),
            ),
            trial("y, 3 nodes", Fault::Kill, Some(4.0), None),
        ];
        trials[2].follow = None;
        trials[2].kind = Kind::InPlace;
        trials[2].in_place = trials[2].rto.take();
        trials[2].follow_error = Some("1 of 2 standbys streaming, \"then\"".into());
        let text = csv(&trials);
        let back = parse_csv(&text).unwrap();
        assert_eq!(csv(&back), text);
        assert_eq!(back[0].nodes, 3);
        assert_eq!(back[0].follow, Some(0.25));
        assert_eq!((back[0].injection, back[0].old_acked_injecting), (Some(0.012), 2));
        assert_eq!(
            (back[2].kind, back[2].rto, back[2].in_place),
            (Kind::InPlace, None, Some(4.0))
        );
        assert_eq!(back[1].error.as_deref(), Some("setup: a, b and 'c' \tmore"));
        assert_eq!(back[1].follow_error, None);
        assert_eq!(
            back[2].follow_error.as_deref(),
            Some("1 of 2 standbys streaming, 'then'")
        );
        assert!(parse_csv("header\n\"broken line\n").is_err());
    }

    #[test]
    fn csv_reads_files_from_before_node_counts() {
        let old = "tool,family,fault,rto_s,detection_s,promotion_s,lost_commits,old_primary_acked_after_fault,error\n\
                   \"pg_promoter 1s×3\",pg_promoter,cut,2.5000,2.4700,0.0300,3,7,\"\"\n\
                   \"x\",pg_promoter,freeze,,,,,0,\"setup: a, b and 'c'\n\
                   \tmore\"\n";
        let trials = parse_csv(old).unwrap();
        assert_eq!(trials.len(), 2);
        assert_eq!(trials[0].label, "pg_promoter 1s×3, 2 nodes");
        assert_eq!(
            (trials[0].nodes, trials[0].follow, trials[0].rto),
            (2, None, Some(2.5))
        );
        assert_eq!(trials[0].old_acked_after, 7);
        assert_eq!(trials[0].error, None);
        // An error over two lines, as older files have it.
        assert_eq!(trials[1].error.as_deref(), Some("setup: a, b and 'c' more"));
        assert_eq!(split_label(&trials[1].label), ("x", 2));
    }

    #[test]
    fn table_shows_follow_times_and_the_two_node_figure() {
        let trial = |label: &str, rto: f64, follow: Option<f64>| Trial {
            label: label.into(),
            family: "pg_promoter".into(),
            nodes: split_label(label).1,
            fault: Fault::Kill,
            kind: Kind::Failover,
            rto: Some(rto),
            in_place: None,
            injection: None,
            load: None,
            detection: None,
            promotion: None,
            follow,
            follow_error: None,
            lost: Some(0),
            acked_before: 0,
            old_acked_after: 0,
            old_acked_injecting: 0,
            error: None,
        };
        let two = [trial("a, 2 nodes", 2.0, None)];
        assert!(!table(&two, |_| None).contains("follow"));
        let all = [
            trial("a, 2 nodes", 2.0, None),
            trial("a, 3 nodes", 2.2, Some(0.5)),
            trial("a, 3 nodes", 2.2, Some(0.7)),
        ];
        let t = table(&all, |_| None);
        let row = t.lines().find(|l| l.starts_with("a, 3 nodes")).unwrap();
        assert!(row.ends_with("    0.60     0.70      0   1.1x"), "{row}");
    }

    #[test]
    fn the_machine_of_a_run_is_read_back_from_its_json() {
        let facts = vec![
            ("cpu".to_string(), "AMD EPYC 7B13".to_string()),
            ("cores".to_string(), "2".to_string()),
            ("memory_kb".to_string(), "8000000".to_string()),
        ];
        let text = json(&[], &facts);
        assert_eq!(machine(&text), facts);
        let other = json(&[], &[("cpu".to_string(), "Intel".to_string())]);
        assert_ne!(machine(&other), facts);
    }

    #[test]
    fn json_escapes_strings() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
