//! The subset of the mdbook-quiz 0.5 question format this book uses, read strictly.
//!
//! Two readers share this file: the terminal quiz (`cargo quiz`) and the tidy test in
//! `tests/tidy.rs`, which includes it by path. Unknown keys are errors, so a typo such as
//! `prompt.distractor` fails a test instead of silently dropping the distractors in the browser.
//! Field names follow mdbook-quiz's camelCase TOML keys.

#![allow(
    dead_code,
    reason = "the tidy test reads fields the terminal quiz does not show"
)]

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quiz {
    pub questions: Vec<Question>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum Question {
    MultipleChoice(MultipleChoice),
    ShortAnswer(ShortAnswer),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultipleChoice {
    pub id: Option<String>,
    pub prompt: MultipleChoicePrompt,
    pub answer: MultipleChoiceAnswer,
    pub context: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MultipleChoicePrompt {
    pub prompt: String,
    pub distractors: Vec<String>,
    pub answer_index: Option<usize>,
    pub sort_answers: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultipleChoiceAnswer {
    pub answer: OneOrMany,
}

/// One correct answer, or several that must all be picked.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(answer) => std::slice::from_ref(answer),
            OneOrMany::Many(answers) => answers,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShortAnswer {
    pub id: Option<String>,
    pub prompt: ShortAnswerPrompt,
    pub answer: ShortAnswerAnswer,
    pub context: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShortAnswerPrompt {
    pub prompt: String,
    pub response: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShortAnswerAnswer {
    pub answer: String,
    pub alternatives: Option<Vec<String>>,
}

impl Question {
    pub fn prompt(&self) -> &str {
        match self {
            Question::MultipleChoice(q) => &q.prompt.prompt,
            Question::ShortAnswer(q) => &q.prompt.prompt,
        }
    }

    pub fn context(&self) -> Option<&str> {
        match self {
            Question::MultipleChoice(q) => q.context.as_deref(),
            Question::ShortAnswer(q) => q.context.as_deref(),
        }
    }
}

pub fn parse(toml_text: &str) -> Result<Quiz, toml::de::Error> {
    toml::from_str(toml_text)
}
