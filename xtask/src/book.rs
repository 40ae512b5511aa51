//! `cargo xtask book [--serve]`: the book, built with pinned tools that this command installs.
//!
//! mdBook, mdbook-quiz and mdbook-mermaid are pinned to exact versions and installed with
//! `cargo install --locked` the first time (about 4 minutes on 2 cores); later runs find them on PATH.
//! All three bundle their JavaScript, so building the book fetches nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Fail, cmd, run, run_quiet, workspace_root};

/// (binary, crate, exact version).
const TOOLS: [(&str, &str, &str); 3] = [
    ("mdbook", "mdbook", "0.5.4"),
    ("mdbook-quiz", "mdbook-quiz", "0.5.0"),
    ("mdbook-mermaid", "mdbook-mermaid", "0.17.1"),
];

fn installed_version(binary: &str) -> Option<String> {
    run_quiet(Command::new(binary).arg("--version"), Duration::from_secs(10))
        .ok()
        .map(|v| v.trim().to_owned())
}

fn ensure_tools() -> Result<(), Fail> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(bin, _, version)| {
            !installed_version(bin).is_some_and(|v| v.ends_with(version))
        })
        .map(|(_, krate, version)| format!("{krate}@{version}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("  installing {} (cargo install --locked, once)", missing.join(" "));
    let began = Instant::now();
    run(Command::new(cmd::cargo()).arg("install").args(&missing).arg("--locked"))?;
    println!("  installed the book tools in {:.0}s", began.elapsed().as_secs_f64());
    Ok(())
}

pub fn report_tools() {
    for (bin, _, version) in TOOLS {
        let state = installed_version(bin).unwrap_or_else(|| "not installed".into());
        println!("  {bin:<15} {state} (pinned {version})");
    }
}

pub fn build() -> Result<(), Fail> {
    ensure_tools()?;
    run(Command::new("mdbook").arg("build").arg(workspace_root().join("book")))?;
    println!("  book written to book/build/index.html");
    Ok(())
}

pub fn serve() -> Result<(), Fail> {
    ensure_tools()?;
    run(Command::new("mdbook")
        .args(["serve", "--hostname", "127.0.0.1"])
        .arg(workspace_root().join("book")))
}

/// Every `cargo run ... --example ...` command written in README.md, in order, without repeats.
pub fn readme_examples() -> Result<Vec<String>, Fail> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))
        .map_err(|e| Fail::msg(format!("cannot read README.md: {e}")))?;
    Ok(example_commands(&readme))
}

/// Inline code spans (one line each) that run an example; fenced blocks are prose, not commands.
fn example_commands(markdown: &str) -> Vec<String> {
    let mut commands: Vec<String> = Vec::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        for span in line.split('`').skip(1).step_by(2) {
            if span.contains("cargo run")
                && span.contains("--example ")
                && !commands.iter().any(|c| c == span)
            {
                commands.push(span.to_owned());
            }
        }
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_example_commands_in_code_spans_once() {
        let md = "Run `cargo run --example a` first.\n| x | `SLOW=1 cargo run --example a -- --slow` |\n\
                  `cargo run --example a` again, and `cargo test` is not one.\n\
                  ```console\n$ cargo run --example fenced\n```\n`cargo run --example b`";
        assert_eq!(
            example_commands(md),
            [
                "cargo run --example a",
                "SLOW=1 cargo run --example a -- --slow",
                "cargo run --example b"
            ]
        );
    }
}
