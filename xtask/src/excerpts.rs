//! Executable chapters: every output excerpt the book shows must appear in a real run.
//!
//! `cargo xtask test` runs every example command the README lists and keeps what each printed in
//! `target/example-output/`. This module then reads every ```console block of the book's chapters
//! and of its quizzes' prompts. A block starts with `$ <command>`; each following line is an
//! excerpt of that command's output and must match one real output line, in order:
//!
//! - whitespace runs count as one space, ANSI colours are ignored, and a shown line may be a part
//!   of a real line (the timestamp prefix is left out, for instance);
//! - `...` inside a shown line stands for anything (ids, durations, elided text);
//! - a line that is only `...` marks left-out lines: none, one or many, since lines that run
//!   concurrently may or may not print between the shown ones.
//!
//! A ShortAnswer question whose prompt shows a console block is a "what does it print" question:
//! its answer must appear in the real output of that command too.
//!
//! `cargo xtask excerpts` checks the book against the outputs already kept, without running
//! anything: quick, while writing a chapter.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{Fail, quiz_schema, workspace_root};

/// Where the outputs of the README's example commands are kept, one file per command.
pub fn output_dir() -> PathBuf {
    workspace_root().join("target").join("example-output")
}

/// The file that keeps `command`'s output: the command, made safe as a file name.
pub fn output_file(command: &str) -> PathBuf {
    let name: String = command
        .chars()
        .map(
            |c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' },
        )
        .collect();
    output_dir().join(format!("{name}.txt"))
}

/// One ```console block: the command after `$`, and the output lines shown under it.
#[derive(Debug, PartialEq)]
pub struct Excerpt {
    pub command: String,
    pub lines: Vec<String>,
    /// Where it was found, for the error message.
    pub origin: String,
}

/// The console blocks of a Markdown text. A block may hold several `$` commands.
pub fn console_blocks(markdown: &str, origin: &str) -> Vec<Excerpt> {
    let mut found = Vec::new();
    let mut in_console = false;
    for (number, line) in markdown.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            in_console = !in_console && info.trim() == "console";
            continue;
        }
        if !in_console {
            continue;
        }
        if let Some(command) = trimmed.strip_prefix("$ ") {
            // A shell comment after the command is prose: `$ cargo xtask test   # all of it`.
            let command = command.split_once(" #").map_or(command, |(c, _)| c);
            found.push(Excerpt {
                command: command.trim().to_owned(),
                lines: Vec::new(),
                origin: format!("{origin}:{}", number + 1),
            });
        } else if let Some(excerpt) = found.last_mut()
            && !trimmed.is_empty()
        {
            excerpt.lines.push(trimmed.to_owned());
        }
    }
    found
}

/// Removes ANSI escape sequences and folds whitespace runs into one space.
fn normalize(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in @..~
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether the shown line matches the real line: its `...`-separated parts appear in order.
fn line_matches(shown: &str, real: &str) -> bool {
    let real = normalize(real);
    let mut rest = real.as_str();
    for part in
        normalize(shown).split("...").map(str::trim).filter(|p| !p.is_empty())
    {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Checks an excerpt's lines against a real output, in order; returns the first line not found.
pub fn first_missing<'a>(shown: &'a [String], output: &str) -> Option<&'a str> {
    let real: Vec<&str> = output.lines().collect();
    let mut next = 0;
    for line in shown {
        // Lines between two shown ones are skipped anyway; the mark consumes none.
        if normalize(line).trim() == "..." {
            continue;
        }
        match real[next..].iter().position(|r| line_matches(line, r)) {
            Some(at) => next += at + 1,
            None => return Some(line),
        }
    }
    None
}

/// Every excerpt in the book's chapters and quiz prompts, then the quiz answers that must be
/// printed (as one-line excerpts).
fn book_excerpts() -> Result<(Vec<Excerpt>, Vec<Excerpt>), Fail> {
    let root = workspace_root();
    let mut excerpts = Vec::new();
    let mut answers = Vec::new();
    for path in markdown_files(&root.join("book").join("src"))? {
        let text = read(&path)?;
        excerpts.extend(console_blocks(&text, &relative(&path)));
    }
    for path in files_with_extension(&root.join("book").join("quizzes"), "toml")? {
        let quiz = quiz_schema::parse(&read(&path)?)
            .map_err(|e| Fail::msg(format!("{}: {e}", relative(&path))))?;
        for (i, question) in quiz.questions.iter().enumerate() {
            let origin = format!("{} question {}", relative(&path), i + 1);
            let blocks = console_blocks(question.prompt(), &origin);
            if let quiz_schema::Question::ShortAnswer(q) = question
                && let Some(block) = blocks.last()
            {
                answers.push(Excerpt {
                    command: block.command.clone(),
                    lines: vec![q.answer.answer.clone()],
                    origin: format!("{origin} (its answer)"),
                });
            }
            excerpts.extend(blocks);
        }
    }
    Ok((excerpts, answers))
}

/// Checks the book against the outputs kept in `target/example-output/`.
pub fn check() -> Result<usize, Fail> {
    let (excerpts, answers) = book_excerpts()?;
    let mut outputs: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();
    let all = excerpts.iter().chain(&answers);
    let mut checked = 0;
    // A block that shows only a command shows no output to check.
    for excerpt in
        all.filter(|e| e.command.contains("--example") && !e.lines.is_empty())
    {
        if !outputs.contains_key(&excerpt.command) {
            let file = output_file(&excerpt.command);
            match fs::read_to_string(&file) {
                Ok(text) => outputs.insert(excerpt.command.clone(), text),
                Err(_) => {
                    problems.push(format!(
                        "{}: `{}` is not a README command, or it has not run yet \
                         (no {}); the book may only show output of commands CI runs",
                        excerpt.origin,
                        excerpt.command,
                        relative(&file)
                    ));
                    continue;
                }
            };
        }
        checked += 1;
        if let Some(line) = first_missing(&excerpt.lines, &outputs[&excerpt.command])
        {
            problems.push(format!(
                "{}: `{}` did not print (in this order) the line\n      {line}",
                excerpt.origin, excerpt.command
            ));
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(Fail::msg(format!(
            "the book shows output that a real run did not print:\n  {}\n\
             (outputs are in {}; `...` in a shown line stands for anything)",
            problems.join("\n  "),
            relative(&output_dir())
        )))
    }
}

fn read(path: &Path) -> Result<String, Fail> {
    fs::read_to_string(path)
        .map_err(|e| Fail::msg(format!("{}: {e}", path.display())))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root()).unwrap_or(path).display().to_string()
}

fn markdown_files(dir: &Path) -> Result<Vec<PathBuf>, Fail> {
    files_with_extension(dir, "md")
}

fn files_with_extension(dir: &Path, extension: &str) -> Result<Vec<PathBuf>, Fail> {
    let entries = fs::read_dir(dir)
        .map_err(|e| Fail::msg(format!("{}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "  0.001s  INFO using the Kafka broker at 127.0.0.1:9092\n\
        \u{1b}[33m  0.2s  WARN\u{1b}[0m totals-service: duplicate delivery of o-1001: \
        skipped event_id=d0eb1d72\n  0.3s  INFO done: each order applied once\n";

    #[test]
    fn shown_lines_match_real_lines_in_order_with_ellipses() {
        let shown =
            |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let ok = shown(&[
            "INFO using the Kafka broker at ...",
            "WARN totals-service: duplicate delivery of o-1001: skipped event_id=...",
            "INFO done:   each order applied once",
        ]);
        assert_eq!(first_missing(&ok, OUTPUT), None);
        let reordered =
            shown(&["INFO done: each order", "INFO using the Kafka broker"]);
        assert_eq!(
            first_missing(&reordered, OUTPUT),
            Some("INFO using the Kafka broker")
        );
        let invented = shown(&["WARN totals-service: duplicate delivery of o-1002"]);
        assert_eq!(first_missing(&invented, OUTPUT), Some(invented[0].as_str()));
        let halves_in_wrong_order = shown(&["skipped ... duplicate delivery"]);
        assert!(first_missing(&halves_in_wrong_order, OUTPUT).is_some());
    }

    #[test]
    fn a_line_of_dots_stands_for_no_line_as_well_as_for_many() {
        let shown =
            |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let adjacent = shown(&["duplicate delivery of o-1001", "...", "INFO done:"]);
        assert_eq!(first_missing(&adjacent, OUTPUT), None);
        let skipping = shown(&["INFO using the Kafka broker", "...", "INFO done:"]);
        assert_eq!(first_missing(&skipping, OUTPUT), None);
        let still_in_order = shown(&["INFO done:", "...", "INFO using the Kafka"]);
        assert!(first_missing(&still_in_order, OUTPUT).is_some());
    }

    #[test]
    fn console_blocks_are_read_with_their_commands() {
        let md = "text\n```console\n$ cargo run --example a\nline one\n\nline two\n```\n\
                  ```text\n$ not a console block\n```\n```console\n$ cargo xtask test  # all\n```\n";
        let blocks = console_blocks(md, "x.md");
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].command, "cargo run --example a");
        assert_eq!(blocks[0].lines, ["line one", "line two"]);
        assert_eq!(blocks[0].origin, "x.md:3");
        assert!(blocks[1].lines.is_empty());
        assert_eq!(
            blocks[1].command, "cargo xtask test",
            "a shell comment is not the command"
        );
    }

    #[test]
    fn output_files_are_named_after_their_command() {
        let file = output_file("cargo run --example kafka_orders -- --poison");
        assert!(file.ends_with("cargo_run_--example_kafka_orders_--_--poison.txt"));
    }
}
