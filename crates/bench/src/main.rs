//! `cargo run --release -p bench -- [--quick] [--trials N] [--tools a,b] [--faults kill,freeze,cut] [--out DIR]`
//!
//! Failover time of pg_promoter and its peers on the same machine in the same run: every tool
//! and setting, every fault, `--trials` times each, at random phases. Prints a table and writes
//! results.json, results.csv and rto.svg (every trial a point) under the results folder, with
//! the settings, versions and machine facts. Nothing here asserts a speed.

mod client;
mod cluster;
mod env;
mod report;
mod rto;
mod tools;

use std::path::PathBuf;
use std::time::Duration;

use cluster::{Fault, Tool};
use tools::pg_promoter::PgPromoter;

struct Args {
    trials: usize,
    families: Option<Vec<String>>,
    faults: Vec<Fault>,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        trials: 10,
        families: None,
        faults: Fault::ALL.to_vec(),
        out: "results".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--quick" => args.trials = 1,
            "--trials" => args.trials = value()?.parse().map_err(|_| "--trials takes a number")?,
            "--tools" => args.families = Some(value()?.split(',').map(str::to_string).collect()),
            "--faults" => {
                args.faults = value()?
                    .split(',')
                    .map(|f| Fault::parse(f).ok_or(format!("unknown fault {f}: kill, freeze or cut")))
                    .collect::<Result<_, _>>()?
            }
            "--out" => args.out = value()?.into(),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// Every tool and setting under test, the reference (pg_promoter's fast setting) first.
fn tools() -> Vec<Box<dyn Tool>> {
    vec![
        Box::new(PgPromoter {
            keep_alive_ms: 1000,
            count: 3,
        }),
        Box::new(PgPromoter {
            keep_alive_ms: 1000,
            count: 5,
        }),
        Box::new(PgPromoter {
            keep_alive_ms: 200,
            count: 3,
        }),
    ]
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("bench: {e}");
        std::process::exit(2);
    });
    let tools: Vec<Box<dyn Tool>> = tools()
        .into_iter()
        .filter(|t| {
            args.families
                .as_ref()
                .is_none_or(|f| f.iter().any(|f| f == t.family()))
        })
        .collect();
    let mut rng = rto::Rng::from_clock();
    let mut trials = Vec::new();
    for tool in &tools {
        for &fault in &args.faults {
            for i in 0..args.trials {
                let trial = rto::run(tool.as_ref(), fault, &mut rng, Duration::from_secs(180));
                eprintln!(
                    "{} {} #{}: rto {} {}",
                    trial.label,
                    fault.name(),
                    i + 1,
                    trial.rto.map_or("-".into(), |r| format!("{r:.2} s")),
                    trial.error.as_deref().unwrap_or("")
                );
                trials.push(trial);
            }
        }
    }
    // Ratios compare each tool with pg_promoter at the same detection budget (or its fast one).
    let budgets: Vec<(String, Duration, &str)> = tools
        .iter()
        .map(|t| (t.label(), t.budget(), t.family()))
        .collect();
    let reference = |label: &str| {
        let budget = budgets.iter().find(|b| b.0 == label)?.1;
        budgets
            .iter()
            .find(|b| b.2 == "pg_promoter" && b.1 == budget)
            .map(|b| b.0.clone())
    };
    let table = report::table(&trials, reference);
    println!("{table}");

    let mut facts = env::facts();
    facts.push(("trials_per_case".into(), args.trials.to_string()));
    for tool in &tools {
        let settings: Vec<String> = tool.settings().iter().map(|(k, v)| format!("{k}={v}")).collect();
        facts.push((format!("settings: {}", tool.label()), settings.join(" ")));
    }
    std::fs::create_dir_all(&args.out).expect("results folder");
    for (file, text) in [
        ("results.json", report::json(&trials, &facts)),
        ("results.csv", report::csv(&trials)),
        ("rto.svg", report::svg(&trials)),
        ("table.txt", table),
    ] {
        std::fs::write(args.out.join(file), text).unwrap_or_else(|e| panic!("writing {file}: {e}"));
    }
    eprintln!("bench: results in {}", args.out.display());
    if trials
        .iter()
        .any(|t| t.error.is_some() && t.family == "pg_promoter")
    {
        std::process::exit(1);
    }
}
