//! `cargo run --release -p bench -- [rto|soak|cost|all] [--quick|--smoke] [--trials N] [--soak-secs N]
//!                                   [--tools a,b] [--nodes 2,3] [--faults kill,freeze,cut] [--out DIR]
//!                                   [--members-only]`
//! `cargo run --release -p bench -- report --from DIR,DIR… [--out DIR]`
//! `cargo run --release -p bench -- report --doc`
//! `cargo run --release -p bench -- chaos [--smoke] [--schedules N] [--parallel N] [--seed S] [--secs N]
//!                                   [--setups witness+sync,nowitness+async,…] [--regressions] [--out DIR]`
//!
//! - rto: failover time of pg_promoter and its peers on the same machine in the same run: every
//!   tool and setting, at every node count (`--nodes`, a primary and its standbys; counts a tool
//!   cannot run are skipped), every fault, `--trials` times each, interleaved (the first trial of
//!   every case, then the second, ...), at random phases; with three nodes or more, also the
//!   follow time (the other standbys streaming from the new primary);
//! - soak: false failovers under pgbench, with a CPU hog, and with short network stalls;
//! - cost: pg_promoter's connections, CPU and memory while all is well, the primary's throughput
//!   with and without it, and a standby's shutdown while its primary is frozen (and repmgrd's);
//!   with three members and leadership, connections, each worker's CPU and the primary's
//!   throughput (`--members-only`: these alone);
//! - report: the failover trials of earlier runs (their results.csv) as one table and picture;
//!   with `--doc`, docs/benchmarks.md made from its template and the raw files (see `doc`);
//! - chaos: seeded fault schedules against three-node clusters, the invariants checked on the
//!   clients' history and the final state (see `chaos`), pg_promoter's and the peers' (Patroni,
//!   repmgrd) under the same schedules; `--smoke` runs 3 schedules of 20 s for each tool.
//!
//! Prints tables and writes results.json, results.csv, rto.svg, soak.txt and cost.txt under the
//! results folder, with the settings, versions and machine facts. Nothing here asserts a speed.
//!
//! `--tools` takes families (`pg_promoter`, `repmgrd`, `patroni`, `pg_auto_failover`), each
//! optionally narrowed to one setting (the end of its label, `x` for `×`) and given its own node
//! counts: `pg_promoter:1sx3@2+3,repmgrd@3` is pg_promoter at 1 s × 3 with two and three nodes
//! and repmgrd at both its settings with three; an entry without `@` takes `--nodes` (2 unless
//! given). Soaks run every selected tool and setting with two nodes.

mod chaos;
mod cluster;
mod cost;
mod doc;
mod env;
mod report;
mod rto;
mod soak;
mod tools;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::{split_label, Fault, Tool};
use tools::pg_promoter::PgPromoter;
use tools::repmgr::Repmgrd;

struct Args {
    mode: String,
    quick: bool,
    smoke: bool,
    trials: usize,
    soak_secs: u64,
    /// `--tools`; None: every tool and setting.
    selectors: Option<Vec<Selector>>,
    /// `--nodes`, for selectors without their own.
    nodes: Option<Vec<usize>>,
    /// `cost --members-only`: the three-member figures alone.
    members_only: bool,
    /// `report --doc`: docs/benchmarks.md from its template and the raw files.
    doc: bool,
    /// `chaos --regressions`: the schedules that once found a violation.
    regressions: bool,
    faults: Vec<Fault>,
    out: PathBuf,
    from: Vec<PathBuf>,
    /// `chaos`: how many schedules, the first seed, each one's length, the setups.
    schedules: usize,
    parallel: usize,
    seed: u64,
    chaos_secs: u64,
    setups: Vec<chaos::Setup>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        mode: "rto".into(),
        quick: false,
        smoke: false,
        trials: 10,
        soak_secs: 600,
        selectors: None,
        nodes: None,
        members_only: false,
        doc: false,
        regressions: false,
        faults: Fault::ALL.to_vec(),
        out: "results".into(),
        from: Vec::new(),
        schedules: 100,
        parallel: 1,
        seed: 1,
        chaos_secs: 60,
        setups: chaos::Setup::ALL.to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "rto" | "soak" | "cost" | "all" | "report" | "chaos" => args.mode = arg.clone(),
            "--quick" => {
                args.quick = true;
                args.trials = 1;
                args.soak_secs = 60;
            }
            // CI's proof that every part still works within minutes: one kill trial per tool
            // and setting, one short soak with stalls, a short cost run.
            "--smoke" => {
                args.quick = true;
                args.smoke = true;
                args.trials = 1;
                args.soak_secs = 10;
                args.faults = vec![Fault::Kill];
                args.schedules = 3;
                args.chaos_secs = 20;
            }
            "--schedules" => args.schedules = value()?.parse().map_err(|_| "--schedules takes a number")?,
            "--parallel" => args.parallel = value()?.parse().map_err(|_| "--parallel takes a number")?,
            "--seed" => args.seed = value()?.parse().map_err(|_| "--seed takes a number")?,
            "--secs" => {
                args.chaos_secs = value()?.parse().map_err(|_| "--secs takes a number")?;
                if args.chaos_secs < 10 {
                    return Err("--secs takes 10 or more".into());
                }
            }
            "--setups" => {
                let all = chaos::Setup::ALL;
                args.setups = value()?
                    .split(',')
                    .map(|k| {
                        all.into_iter()
                            .find(|s| s.key() == k)
                            .ok_or(format!("unknown setup {k}: {}", all.map(|s| s.key()).join(", ")))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--trials" => args.trials = value()?.parse().map_err(|_| "--trials takes a number")?,
            "--soak-secs" => args.soak_secs = value()?.parse().map_err(|_| "--soak-secs takes a number")?,
            "--tools" => {
                args.selectors = Some(
                    value()?
                        .split(',')
                        .map(Selector::parse)
                        .collect::<Result<_, _>>()?,
                )
            }
            "--members-only" => args.members_only = true,
            "--doc" => args.doc = true,
            "--regressions" => args.regressions = true,
            "--nodes" => args.nodes = Some(parse_nodes(&value()?, ',')?),
            "--faults" => {
                args.faults = value()?
                    .split(',')
                    .map(|f| Fault::parse(f).ok_or(format!("unknown fault {f}: kill, freeze or cut")))
                    .collect::<Result<_, _>>()?
            }
            "--out" => args.out = value()?.into(),
            "--from" => args.from = value()?.split(',').map(PathBuf::from).collect(),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// The node counts of `--nodes 2,3` or of a selector's `@2+3`.
fn parse_nodes(text: &str, separator: char) -> Result<Vec<usize>, String> {
    text.split(separator)
        .map(|n| match n.parse() {
            Ok(n) if n >= 2 => Ok(n),
            _ => Err(format!("{n}: a node count is a number, 2 or more")),
        })
        .collect()
}

/// One `--tools` entry: `family[:setting][@nodes+nodes]`.
struct Selector {
    family: String,
    setting: Option<String>,
    nodes: Option<Vec<usize>>,
}

impl Selector {
    fn parse(text: &str) -> Result<Selector, String> {
        let (rest, nodes) = match text.split_once('@') {
            Some((rest, nodes)) => (rest, Some(parse_nodes(nodes, '+')?)),
            None => (text, None),
        };
        let (family, setting) = match rest.split_once(':') {
            Some((family, setting)) => (family, Some(setting.to_string())),
            None => (rest, None),
        };
        Ok(Selector {
            family: family.to_string(),
            setting,
            nodes,
        })
    }

    fn matches(&self, tool: &dyn Tool) -> bool {
        // "1sx3" for "1s×3", in any case.
        let plain = |s: &str| s.to_lowercase().replace('×', "x");
        tool.family() == self.family
            && self
                .setting
                .as_ref()
                .is_none_or(|s| plain(&tool.label()).ends_with(&format!(" {}", plain(s))))
    }
}

/// Every tool and setting under test, the reference (pg_promoter's fast setting) first.
fn tools() -> Vec<Box<dyn Tool>> {
    vec![
        Box::new(PgPromoter {
            keep_alive_ms: 1000,
            count: 3,
            witness: false,
        }),
        Box::new(PgPromoter {
            keep_alive_ms: 1000,
            count: 5,
            witness: false,
        }),
        // Like for like with the tools that fence: leadership and a witness, with two nodes too.
        Box::new(PgPromoter {
            keep_alive_ms: 1000,
            count: 3,
            witness: true,
        }),
        Box::new(PgPromoter {
            keep_alive_ms: 200,
            count: 3,
            witness: false,
        }),
        Box::new(Repmgrd::DEFAULTS),
        Box::new(Repmgrd::FAST),
        Box::new(tools::patroni::Patroni::defaults()),
        Box::new(tools::patroni::Patroni::fastest()),
        Box::new(tools::auto_failover::AutoFailover::defaults()),
        Box::new(tools::auto_failover::AutoFailover::fast()),
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
            args.selectors
                .as_ref()
                .is_none_or(|sel| sel.iter().any(|s| s.matches(t.as_ref())))
        })
        .collect();
    let all = self::tools();
    if let Some(s) = args
        .selectors
        .iter()
        .flatten()
        .find(|s| !all.iter().any(|t| s.matches(t.as_ref())))
    {
        eprintln!(
            "bench: --tools {}{}: no such tool or setting",
            s.family,
            s.setting.as_ref().map_or(String::new(), |x| format!(":{x}"))
        );
        std::process::exit(2);
    }
    std::fs::create_dir_all(&args.out).expect("results folder");
    let mut facts = env::facts();
    for tool in &tools {
        let settings: Vec<String> = tool.settings().iter().map(|(k, v)| format!("{k}={v}")).collect();
        facts.push((format!("settings: {}", tool.label()), settings.join(" ")));
    }
    // Every run says where it ran, whatever its mode.
    let text: String = facts.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    write(&args, "facts.txt", &text);
    let mut failed = false;
    if args.mode == "report" {
        failed |= report_mode(&args, &tools, facts.clone());
    }
    if matches!(args.mode.as_str(), "rto" | "all") {
        failed |= rto_mode(&args, &tools, facts.clone());
    }
    if matches!(args.mode.as_str(), "soak" | "all") {
        failed |= soak_mode(&args, &tools);
    }
    if matches!(args.mode.as_str(), "cost" | "all") {
        failed |= cost_mode(&args, &tools);
    }
    if args.mode == "chaos" {
        let runs = if args.regressions {
            let runs = chaos::REGRESSIONS
                .map(|(seed, setup, hosts, secs, _)| (seed, setup, hosts, Duration::from_secs(secs)));
            runs.to_vec()
        } else {
            let length = Duration::from_secs(args.chaos_secs);
            chaos::runs(args.seed, args.schedules, &args.setups, length)
        };
        failed |= chaos::run(&runs, args.parallel, &args.out);
    }
    eprintln!("bench: results in {}", args.out.display());
    if failed {
        std::process::exit(1);
    }
}

fn write(args: &Args, file: &str, text: &str) {
    std::fs::write(args.out.join(file), text).unwrap_or_else(|e| panic!("writing {file}: {e}"));
}

/// The (tool, node count) pairs the failover trials run, in the tools' order, each tool at its
/// node counts in the order given. The smoke run adds one three-node pg_promoter case at its
/// fastest setting (about 20 s), unless `--tools` or `--nodes` chose the cases.
fn cases<'a>(args: &Args, tools: &'a [Box<dyn Tool>]) -> Vec<(&'a dyn Tool, usize)> {
    let default_nodes = args.nodes.clone().unwrap_or(vec![2]);
    let mut cases: Vec<(&dyn Tool, usize)> = Vec::new();
    for tool in tools {
        let mut counts: Vec<usize> = match &args.selectors {
            None => default_nodes.clone(),
            Some(sel) => sel
                .iter()
                .filter(|s| s.matches(tool.as_ref()))
                .flat_map(|s| s.nodes.clone().unwrap_or(default_nodes.clone()))
                .collect(),
        };
        if args.smoke
            && args.selectors.is_none()
            && args.nodes.is_none()
            && tool.label() == "pg_promoter 200ms×3"
        {
            counts.push(3);
        }
        let mut seen = Vec::new();
        for n in counts {
            if seen.contains(&n) {
                continue;
            }
            seen.push(n);
            if tool.supports(n) {
                cases.push((tool.as_ref(), n));
            } else {
                eprintln!("bench: {} does not run {n} nodes here: skipped", tool.label());
            }
        }
    }
    cases
}

/// Failover time; true when a pg_promoter trial failed (or, with three nodes or more, its other
/// standbys did not all follow the new primary).
fn rto_mode(args: &Args, tools: &[Box<dyn Tool>], mut facts: Vec<(String, String)>) -> bool {
    let mut rng = rto::Rng::from_clock();
    let cases = cases(args, tools);
    let mut trials = Vec::new();
    // Round robin: trial i of every case and fault, then trial i + 1, so a change in the
    // machine's load over the run falls on every case alike.
    for i in 0..args.trials {
        for &(tool, nodes) in &cases {
            for &fault in &args.faults {
                let trial = rto::run(tool, nodes, fault, &mut rng, Duration::from_secs(180));
                eprintln!(
                    "{} {} #{}: rto {}{} {}",
                    trial.label,
                    fault.name(),
                    i + 1,
                    match (trial.rto, trial.in_place) {
                        (Some(r), _) => format!("{r:.2} s"),
                        (None, Some(p)) => format!("- (not a failover: back in place after {p:.2} s)"),
                        (None, None) => "-".into(),
                    },
                    match (trial.follow, &trial.follow_error) {
                        (Some(f), _) => format!(", follow {f:.2} s"),
                        (None, Some(e)) => format!(", follow: {e}"),
                        (None, None) => String::new(),
                    },
                    trial.error.as_deref().unwrap_or("")
                );
                trials.push(trial);
            }
        }
    }
    facts.push(("trials_per_case".into(), args.trials.to_string()));
    let counts: Vec<String> = cases
        .iter()
        .map(|(t, n)| format!("{}, {n} nodes", t.label()))
        .collect();
    facts.push(("cases".into(), counts.join("; ")));
    write_rto(args, tools, &trials, &facts);
    trials
        .iter()
        .any(|t| t.family == "pg_promoter" && (t.error.is_some() || t.follow_error.is_some()))
}

/// Several runs' trials (their results.csv) reported as one: runs of different tools may go
/// side by side, and the ratios still compare each with pg_promoter at the same budget.
fn report_mode(args: &Args, tools: &[Box<dyn Tool>], mut facts: Vec<(String, String)>) -> bool {
    // The trials ran at their own runs' commits (in their results.json), not at this one.
    for fact in facts.iter_mut().filter(|f| f.0 == "commit") {
        fact.0 = "report_commit".into();
    }
    if args.doc {
        let all = self::tools();
        let made = std::fs::read_to_string(doc::TEMPLATE)
            .map_err(|e| format!("{}: {e} (run it from the repository's root)", doc::TEMPLATE))
            .and_then(|template| doc::render(&template, Path::new("."), &|t| rto_table(&all, t)))
            .and_then(|text| std::fs::write(doc::OUTPUT, text).map_err(|e| format!("{}: {e}", doc::OUTPUT)));
        return match made {
            Ok(()) => {
                eprintln!("bench: wrote {} from {}", doc::OUTPUT, doc::TEMPLATE);
                false
            }
            Err(e) => {
                eprintln!("bench: {e}");
                true
            }
        };
    }
    let mut trials = Vec::new();
    let mut first: Option<(&PathBuf, Vec<(String, String)>)> = None;
    for dir in &args.from {
        // Figures from different machines are not comparable: such runs are not merged.
        let json = std::fs::read_to_string(dir.join("results.json")).unwrap_or_default();
        let machine = report::machine(&json);
        match &first {
            None => first = Some((dir, machine)),
            Some((other, theirs)) if *theirs != machine => {
                eprintln!(
                    "bench: {} ran on {machine:?}, {} on {theirs:?}: runs from different machines are not merged",
                    dir.display(),
                    other.display()
                );
                return true;
            }
            Some(_) => {}
        }
        let path = dir.join("results.csv");
        let read = std::fs::read_to_string(&path).map_err(|e| e.to_string());
        match read.and_then(|text| report::parse_csv(&text)) {
            Ok(mut t) => trials.append(&mut t),
            Err(e) => {
                eprintln!("bench: {}: {e}", path.display());
                return true;
            }
        }
        facts.push(("from".into(), dir.display().to_string()));
    }
    write_rto(args, tools, &trials, &facts);
    false
}

/// The table (printed too), results.json and .csv, and rto.svg.
fn write_rto(args: &Args, tools: &[Box<dyn Tool>], trials: &[rto::Trial], facts: &[(String, String)]) {
    let table = rto_table(tools, trials);
    println!("{table}");
    write(args, "results.json", &report::json(trials, facts));
    write(args, "results.csv", &report::csv(trials));
    write(args, "rto.svg", &report::svg(trials));
    write(args, "table.txt", &table);
}

/// The failover table of `trials`.
fn rto_table(tools: &[Box<dyn Tool>], trials: &[rto::Trial]) -> String {
    // Ratios compare each tool with pg_promoter at the same detection budget, like with like:
    // the tools that fence with pg_promoter's setup that fences (leadership and a witness), the
    // others with pg_promoter's without it.
    let budgets: Vec<(String, Duration, &str, bool)> = tools
        .iter()
        .map(|t| (t.label(), t.budget(), t.family(), t.fences()))
        .collect();
    // A trial's label is its tool's and its node count: the reference has the same node count.
    let reference = |label: &str| {
        let (tool, nodes) = split_label(label);
        let (_, budget, _, fences) = budgets.iter().find(|b| b.0 == tool)?;
        budgets
            .iter()
            .find(|b| b.2 == "pg_promoter" && b.1 == *budget && b.3 == *fences)
            .map(|b| format!("{}, {nodes} nodes", b.0))
    };
    report::table(trials, reference)
}

/// False failovers: pg_promoter at 200 ms × 3 and at 1 s × 3 (the peers' budget), the peers at
/// their fast settings, side by side.
fn soak_mode(args: &Args, tools: &[Box<dyn Tool>]) -> bool {
    let fast: Vec<&dyn Tool> = tools
        .iter()
        .map(|t| t.as_ref())
        .filter(|t| {
            (t.family() == "pg_promoter" && t.label().ends_with("×3"))
                || (t.family() != "pg_promoter" && !t.label().contains("defaults"))
        })
        .collect();
    let variants: &[soak::Variant] = if args.smoke {
        &[soak::Variant::Stalls]
    } else {
        &soak::Variant::ALL
    };
    let mut soaks = Vec::new();
    for &variant in variants {
        for s in soak::run_side_by_side(&fast, variant, Duration::from_secs(args.soak_secs)) {
            eprintln!(
                "{} {}: {} failover(s), longest write gap {} ms {}",
                s.label,
                variant.name(),
                s.failovers,
                s.longest_write_gap_ms.unwrap_or(0),
                s.error.as_deref().unwrap_or("")
            );
            soaks.push(s);
        }
    }
    let table = soak::table(&soaks);
    println!("{table}");
    write(args, "soak.txt", &table);
    soaks
        .iter()
        .any(|s| s.error.is_some() && s.label.starts_with("pg_promoter"))
}

/// pg_promoter's cost while all is well.
fn cost_mode(args: &Args, tools: &[Box<dyn Tool>]) -> bool {
    // --members-only: the three-member figures alone (the leadership's cost).
    let two_nodes = !args.members_only;
    // `--tools` without pg_promoter: the peers' figures alone.
    let promoter = tools.iter().any(|t| t.family() == "pg_promoter");
    let secs = match (args.smoke, args.quick) {
        (true, _) => 5,
        (false, true) => 30,
        (false, false) => 300,
    };
    let mut out = String::new();
    let mut failed = false;
    if two_nodes && promoter {
        for keep_alive_ms in [100, 1000] {
            match cost::worker(keep_alive_ms, Duration::from_secs(secs)) {
                Ok(c) => out.push_str(&format!(
                    "keep_alive {} ms over {} s: {:.0} new connections/hour on the primary, {:.1} CPU s/hour, \
                     RSS {} kB ({} kB anonymous)\n",
                    c.keep_alive_ms, c.seconds, c.sessions_per_hour, c.cpu_seconds_per_hour, c.rss_kb, c.anon_kb
                )),
                Err(e) => {
                    failed = true;
                    out.push_str(&format!("keep_alive {keep_alive_ms} ms: error: {e}\n"));
                }
            }
        }
    }
    let (rounds, each) = match (args.smoke, args.quick) {
        (true, _) => (1, 3),
        (false, true) => (2, 10),
        (false, false) => (6, 30),
    };
    if two_nodes && promoter {
        match cost::overhead(rounds, each) {
            Ok(o) => out.push_str(&format!(
                "primary pgbench TPS, standby worker checking every 100 ms vs no worker, {rounds} interleaved \
                 rounds of {each} s: with {:?}, without {:?}, ratio {:.3}\n",
                o.with_worker.iter().map(|t| t.round()).collect::<Vec<_>>(),
                o.without_worker.iter().map(|t| t.round()).collect::<Vec<_>>(),
                o.ratio()
            )),
            Err(e) => {
                failed = true;
                out.push_str(&format!("throughput overhead: error: {e}\n"));
            }
        }
    }
    if promoter {
        // Three members, leadership: the lease rounds and the commit-time lease check.
        match cost::members(1000, 5, Duration::from_secs(secs)) {
            Ok(c) => out.push_str(&format!(
                "three members, leadership, keep_alive {} ms x {} over {} s: new connections/hour {:?} \
                 (primary, standby, standby), worker CPU s/hour {:?}\n",
                c.keep_alive_ms,
                c.count,
                c.seconds,
                c.sessions_per_hour.iter().map(|v| v.round()).collect::<Vec<_>>(),
                c.cpu_seconds_per_hour
                    .iter()
                    .map(|v| (v * 10.0).round() / 10.0)
                    .collect::<Vec<_>>()
            )),
            Err(e) => {
                failed = true;
                out.push_str(&format!("three members: error: {e}\n"));
            }
        }
        match cost::members_overhead(rounds, each) {
            Ok(o) => out.push_str(&format!(
                "three members, leadership at 100 ms x 3: primary pgbench TPS for an ordinary role, with the \
                 library vs without, {rounds} interleaved rounds of {each} s: with {:?}, without {:?}, ratio {:.3}\n",
                o.with_worker.iter().map(|t| t.round()).collect::<Vec<_>>(),
                o.without_worker.iter().map(|t| t.round()).collect::<Vec<_>>(),
                o.ratio()
            )),
            Err(e) => {
                failed = true;
                out.push_str(&format!("three members throughput overhead: error: {e}\n"));
            }
        }
    }
    if two_nodes && promoter {
        match cost::shutdown_while_frozen() {
            Ok(d) => out.push_str(&format!(
                "pg_promoter: standby fast shutdown while the primary is frozen: {} ms\n",
                d.as_millis()
            )),
            Err(e) => {
                failed = true;
                out.push_str(&format!("shutdown while frozen: error: {e}\n"));
            }
        }
        // The same moment with repmgrd at its fast setting: its daemon runs beside the server.
        match Repmgrd::FAST.shutdown_while_frozen() {
            Ok((daemon, server)) => out.push_str(&format!(
                "repmgrd 1s×3: standby's repmgrd exit after SIGTERM while the primary is frozen: {} ms, then \
                 the standby's fast shutdown: {} ms\n",
                daemon.as_millis(),
                server.as_millis()
            )),
            Err(e) => out.push_str(&format!("repmgrd shutdown while frozen: error: {e}\n")),
        }
    }
    if two_nodes {
        // The peers measured as pg_promoter is: connections to the primary, their daemons' CPU
        // and memory; the smoke run takes one setting of each.
        let mut seen: Vec<&str> = Vec::new();
        for tool in tools.iter().filter(|t| t.family() != "pg_promoter") {
            if args.smoke && seen.contains(&tool.family()) {
                continue;
            }
            seen.push(tool.family());
            match cost::peer(tool.as_ref(), Duration::from_secs(secs)) {
                Ok(c) => {
                    let daemons: Vec<String> = (c.daemons.iter())
                        .map(|(name, cpu, rss)| format!("{name} {cpu:.1} CPU s/hour, RSS {rss} kB"))
                        .collect();
                    let cpu: f64 = c.daemons.iter().map(|d| d.1).sum();
                    let rss: u64 = c.daemons.iter().map(|d| d.2).sum();
                    out.push_str(&format!(
                        "{} over {} s: {:.0} new connections/hour on the primary, daemons {:.1} CPU s/hour and \
                         RSS {} kB in all ({})\n",
                        c.label,
                        c.seconds,
                        c.sessions_per_hour,
                        cpu,
                        rss,
                        daemons.join("; ")
                    ));
                }
                Err(e) => out.push_str(&format!("{}: cost: error: {e}\n", tool.label())),
            }
        }
    }
    print!("{out}");
    write(args, "cost.txt", &out);
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/benchmarks.md is what `report --doc` makes: no table in it is edited by hand.
    #[test]
    fn the_committed_benchmarks_md_is_made_from_its_template_and_raw_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let template = std::fs::read_to_string(root.join(doc::TEMPLATE)).unwrap();
        let all = tools();
        let made = doc::render(&template, &root, &|t| rto_table(&all, t)).unwrap();
        let committed = std::fs::read_to_string(root.join(doc::OUTPUT)).unwrap();
        assert!(
            made == committed,
            "{} differs from what {} and the raw files make: run `cargo run --release -p bench -- report --doc`",
            doc::OUTPUT,
            doc::TEMPLATE
        );
    }
}
