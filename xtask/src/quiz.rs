//! `cargo quiz <chapter>`: a chapter's quiz in the terminal, from the same TOML the browser uses.
//!
//! Options are shuffled (the answer is not always first), the reader types the number(s) of their
//! choice, and every answer, right or wrong, is followed by the explanation from the quiz file.

use std::io::{self, BufRead, Write};

use crate::quiz_schema::{self, Question};
use crate::{Fail, workspace_root};

fn quizzes_dir() -> std::path::PathBuf {
    workspace_root().join("book").join("quizzes")
}

/// `cargo quiz` with no chapter: the chapters that have one.
pub fn list() -> Result<(), Fail> {
    let mut names: Vec<String> = std::fs::read_dir(quizzes_dir())
        .map_err(|e| Fail::msg(format!("cannot read book/quizzes: {e}")))?
        .flatten()
        .filter_map(|e| {
            e.file_name().to_str()?.strip_suffix(".toml").map(str::to_owned)
        })
        .collect();
    names.sort();
    println!(
        "usage: cargo quiz <chapter>\nchapters with a quiz: {}",
        names.join(", ")
    );
    Ok(())
}

pub fn run(chapter: &str) -> Result<(), Fail> {
    let path = quizzes_dir().join(format!("{chapter}.toml"));
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Fail::msg(format!("no quiz named {chapter:?}; `cargo quiz` lists them"))
    })?;
    let quiz = quiz_schema::parse(&text)
        .map_err(|e| Fail::msg(format!("{}: {e}", path.display())))?;
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    let mut seed = seed();
    let mut score = 0;
    let total = quiz.questions.len();
    for (n, question) in quiz.questions.iter().enumerate() {
        println!("\nQuestion {} of {total}\n{}\n", n + 1, question.prompt().trim());
        let correct = match question {
            Question::MultipleChoice(q) => {
                let answers = q.answer.answer.as_slice();
                let mut options: Vec<(&str, bool)> =
                    answers.iter().map(|a| (a.as_str(), true)).collect();
                options.extend(
                    q.prompt.distractors.iter().map(|d| (d.as_str(), false)),
                );
                shuffle(&mut options, &mut seed);
                for (i, (text, _)) in options.iter().enumerate() {
                    println!("  {}) {}", i + 1, text.trim());
                }
                let hint = if answers.len() > 1 {
                    "numbers, separated by spaces"
                } else {
                    "a number"
                };
                let Some(reply) =
                    ask(&mut lines, &format!("your answer ({hint}): "))?
                else {
                    break;
                };
                let mut picked: Vec<usize> = reply
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                picked.sort_unstable();
                picked.dedup();
                let expected: Vec<usize> = options
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, right))| *right)
                    .map(|(i, _)| i + 1)
                    .collect();
                if picked != expected {
                    let names: Vec<String> =
                        expected.iter().map(usize::to_string).collect();
                    println!("not quite: the answer is {}", names.join(" and "));
                }
                picked == expected
            }
            Question::ShortAnswer(q) => {
                let Some(reply) = ask(&mut lines, "your answer: ")? else { break };
                let reply = reply.trim().to_lowercase();
                let accepted = std::iter::once(&q.answer.answer)
                    .chain(q.answer.alternatives.iter().flatten());
                let right =
                    accepted.clone().any(|a| a.trim().to_lowercase() == reply);
                if !right {
                    println!("not quite: the answer is {}", q.answer.answer);
                }
                right
            }
        };
        if correct {
            score += 1;
            println!("correct!");
        }
        if let Some(context) = question.context() {
            println!("\n{}", context.trim());
        }
    }
    println!("\nscore: {score} of {total}");
    Ok(())
}

/// Prompts and reads one line; `None` at end of input (the reader pressed Ctrl-D).
fn ask(
    lines: &mut impl Iterator<Item = io::Result<String>>,
    prompt: &str,
) -> Result<Option<String>, Fail> {
    print!("{prompt}");
    io::stdout().flush().map_err(|e| Fail::msg(format!("stdout: {e}")))?;
    lines.next().transpose().map_err(|e| Fail::msg(format!("stdin: {e}")))
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1);
    (nanos as u64) | 1
}

/// Fisher-Yates with xorshift: the order only has to differ from run to run, not be unpredictable.
fn shuffle<T>(items: &mut [T], state: &mut u64) {
    for i in (1..items.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        items.swap(i, (*state % (i as u64 + 1)) as usize);
    }
}
