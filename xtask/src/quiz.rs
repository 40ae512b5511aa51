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
    let score = take(&quiz, seed(), io::stdin().lock(), &mut io::stdout().lock())?;
    println!("\nscore: {score} of {}", quiz.questions.len());
    Ok(())
}

/// A multiple-choice question's options, shuffled by `seed`: (text, is it a keyed answer).
fn options(q: &quiz_schema::MultipleChoice, seed: &mut u64) -> Vec<(String, bool)> {
    let answers =
        q.answer.answer.as_slice().iter().map(|a| (a.trim().to_owned(), true));
    let distractors =
        q.prompt.distractors.iter().map(|d| (d.trim().to_owned(), false));
    let mut options: Vec<(String, bool)> = answers.chain(distractors).collect();
    shuffle(&mut options, seed);
    options
}

/// Asks every question of `quiz` on `out`, reads the replies from `input`, explains each
/// answer; returns how many were right. Stops early at the end of input.
fn take(
    quiz: &quiz_schema::Quiz,
    mut seed: u64,
    input: impl BufRead,
    out: &mut impl Write,
) -> Result<usize, Fail> {
    let mut lines = input.lines();
    let mut score = 0;
    let total = quiz.questions.len();
    let io = |e: io::Error| Fail::msg(format!("stdout: {e}"));
    for (n, question) in quiz.questions.iter().enumerate() {
        writeln!(
            out,
            "\nQuestion {} of {total}\n{}\n",
            n + 1,
            question.prompt().trim()
        )
        .map_err(io)?;
        let correct = match question {
            Question::MultipleChoice(q) => {
                let options = options(q, &mut seed);
                for (i, (text, _)) in options.iter().enumerate() {
                    writeln!(out, "  {}) {text}", i + 1).map_err(io)?;
                }
                let several = q.answer.answer.as_slice().len() > 1;
                let hint = if several {
                    "numbers, separated by spaces"
                } else {
                    "a number"
                };
                let Some(reply) =
                    ask(&mut lines, out, &format!("your answer ({hint}): "))?
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
                    writeln!(
                        out,
                        "not quite: the answer is {}",
                        names.join(" and ")
                    )
                    .map_err(io)?;
                }
                picked == expected
            }
            Question::ShortAnswer(q) => {
                let Some(reply) = ask(&mut lines, out, "your answer: ")? else {
                    break;
                };
                let reply = reply.trim().to_lowercase();
                let accepted = std::iter::once(&q.answer.answer)
                    .chain(q.answer.alternatives.iter().flatten());
                let right =
                    accepted.clone().any(|a| a.trim().to_lowercase() == reply);
                if !right {
                    writeln!(out, "not quite: the answer is {}", q.answer.answer)
                        .map_err(io)?;
                }
                right
            }
        };
        if correct {
            score += 1;
            writeln!(out, "correct!").map_err(io)?;
        }
        if let Some(context) = question.context() {
            writeln!(out, "\n{}", context.trim()).map_err(io)?;
        }
    }
    Ok(score)
}

/// Prompts and reads one line; `None` at end of input (the reader pressed Ctrl-D).
fn ask(
    lines: &mut impl Iterator<Item = io::Result<String>>,
    out: &mut impl Write,
    prompt: &str,
) -> Result<Option<String>, Fail> {
    write!(out, "{prompt}")
        .and_then(|()| out.flush())
        .map_err(|e| Fail::msg(format!("stdout: {e}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The keyed replies to a quiz, as a reader would type them with the same shuffle.
    fn keyed_replies(quiz: &quiz_schema::Quiz, mut seed: u64) -> String {
        let mut replies = String::new();
        for question in &quiz.questions {
            let reply = match question {
                Question::MultipleChoice(q) => {
                    let numbers: Vec<String> = options(q, &mut seed)
                        .iter()
                        .enumerate()
                        .filter(|(_, (_, right))| *right)
                        .map(|(i, _)| (i + 1).to_string())
                        .collect();
                    numbers.join(" ")
                }
                Question::ShortAnswer(q) => q.answer.answer.to_uppercase(),
            };
            replies.push_str(&reply);
            replies.push('\n');
        }
        replies
    }

    #[test]
    fn every_quiz_of_the_book_can_be_passed_in_the_terminal() {
        for entry in std::fs::read_dir(quizzes_dir()).unwrap().flatten() {
            let quiz =
                quiz_schema::parse(&std::fs::read_to_string(entry.path()).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
            let seed = 0x9e37_79b9_7f4a_7c15;
            let replies = keyed_replies(&quiz, seed);
            let mut out = Vec::new();
            let score = take(&quiz, seed, replies.as_bytes(), &mut out).unwrap();
            let shown = String::from_utf8(out).unwrap();
            assert_eq!(
                score,
                quiz.questions.len(),
                "{}:\n{shown}",
                entry.path().display()
            );
            // A wrong reply is marked wrong and shows the answer.
            let mut out = Vec::new();
            let wrong = "xyzzy\n".repeat(quiz.questions.len());
            assert_eq!(take(&quiz, seed, wrong.as_bytes(), &mut out).unwrap(), 0);
            assert!(
                String::from_utf8(out).unwrap().contains("not quite: the answer is")
            );
        }
    }
}
