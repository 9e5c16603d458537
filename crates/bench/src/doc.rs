//! docs/benchmarks.md from its template (docs/bench/benchmarks.md.in) and the raw files: every
//! table in it is made here from a run's own files, so no figure is pasted by hand. A line
//! `<!-- generated: KIND ARGS -->` of the template is kept and followed by what it names:
//!
//! - `rto DIR [DIR ...]`: the failover table of those runs' results.csv, merged (runs from
//!   different machines are refused, as `report` refuses them);
//! - `text FILE`: the file as it is (a soak's or a cost run's output);
//! - `chaos FILE`: the table of a chaos run's chaos.txt (what comes before its schedules).
//!
//! Paths are relative to the repository's root. The unit stage checks that the committed
//! docs/benchmarks.md is what the template and the files give.

use std::path::Path;

use crate::report;
use crate::rto::Trial;

pub const TEMPLATE: &str = "docs/bench/benchmarks.md.in";
pub const OUTPUT: &str = "docs/benchmarks.md";
const MARK: &str = "<!-- generated:";

/// The document: `template` with every directive's content after it, files read under `root`;
/// `rto_table` makes a failover table from trials (the tools' references are main's).
pub fn render(template: &str, root: &Path, rto_table: &dyn Fn(&[Trial]) -> String) -> Result<String, String> {
    let mut out = format!(
        "<!-- Made by `cargo run --release -p bench -- report --doc` from {TEMPLATE} and the raw files it \
         names: edit the template, not this file. -->\n"
    );
    for (n, line) in template.lines().enumerate() {
        out.push_str(line);
        out.push('\n');
        let Some(directive) = line.trim().strip_prefix(MARK) else {
            continue;
        };
        let directive = directive
            .strip_suffix("-->")
            .ok_or_else(|| format!("{TEMPLATE}:{}: a directive ends with -->", n + 1))?;
        let mut words = directive.split_whitespace();
        let kind = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        let at = |e: String| format!("{TEMPLATE}:{}: {e}", n + 1);
        let text = match (kind, &args[..]) {
            ("rto", dirs) if !dirs.is_empty() => rto(root, dirs, rto_table).map_err(at)?,
            ("text", [file]) => read(root, file).map_err(at)?,
            ("chaos", [file]) => chaos_table(&read(root, file).map_err(at)?),
            _ => return Err(at(format!("unknown directive {directive:?}"))),
        };
        if kind == "chaos" {
            out.push_str(&text);
        } else {
            out.push_str("```text\n");
            out.push_str(&text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("```\n");
        }
    }
    Ok(out)
}

fn read(root: &Path, file: &str) -> Result<String, String> {
    std::fs::read_to_string(root.join(file)).map_err(|e| format!("{file}: {e}"))
}

/// The failover table of runs `dirs`, merged, if they ran on one machine.
fn rto(root: &Path, dirs: &[&str], rto_table: &dyn Fn(&[Trial]) -> String) -> Result<String, String> {
    let mut trials = Vec::new();
    let mut first: Option<(&str, Vec<(String, String)>)> = None;
    for dir in dirs {
        let machine = report::machine(&read(root, &format!("{dir}/results.json")).unwrap_or_default());
        match &first {
            None => first = Some((dir, machine)),
            Some((other, theirs)) if *theirs != machine => {
                return Err(format!("{dir} and {other} ran on different machines: not merged"));
            }
            Some(_) => {}
        }
        let csv = read(root, &format!("{dir}/results.csv"))?;
        trials.append(&mut report::parse_csv(&csv).map_err(|e| format!("{dir}/results.csv: {e}"))?);
    }
    Ok(rto_table(&trials))
}

/// What comes before a chaos.txt's first schedule: the table and its note.
pub fn chaos_table(text: &str) -> String {
    let table: Vec<&str> = text.lines().take_while(|l| !l.starts_with("seed ")).collect();
    let mut out = table.join("\n").trim_end().to_string();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_kept_and_followed_by_what_they_name() {
        let dir = std::env::temp_dir().join(format!("bench-doc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("soak.txt"), "a 1\nb 2\n").unwrap();
        std::fs::write(dir.join("chaos.txt"), "| t |\n|---|\n\nnote\nseed 1 ok\n  step\n").unwrap();
        let template =
            "# T\n<!-- generated: text soak.txt -->\nprose\n<!-- generated: chaos chaos.txt -->\nend\n";
        let out = render(template, &dir, &|_| String::new()).unwrap();
        let body = out.split_once('\n').unwrap().1;
        assert_eq!(
            body,
            "# T\n<!-- generated: text soak.txt -->\n```text\na 1\nb 2\n```\nprose\n\
             <!-- generated: chaos chaos.txt -->\n| t |\n|---|\n\nnote\nend\n"
        );
        let missing = render("<!-- generated: text nothing.txt -->\n", &dir, &|_| String::new());
        assert!(missing.unwrap_err().contains("nothing.txt"));
        let unknown = render("<!-- generated: pie soak.txt -->\n", &dir, &|_| String::new());
        assert!(unknown.unwrap_err().contains("unknown directive"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
