//! Repository-wide checks, run as ordinary tests: the book and the code must not drift apart.
//!
//! - every `{{#include file:anchor}}` in the book resolves to a non-empty anchor (mdBook itself
//!   renders a missing anchor as an empty block, silently);
//! - every `.rs` file starts with a `//!` header;
//! - every chapter but the introduction ends with a quiz, and every quiz parses with the
//!   mdbook-quiz schema, has at least 8 questions, explains each answer, and asks at least two
//!   questions about the chapter's own example;
//! - every example named in the README or the book exists, and example names are unique;
//! - CI runs the test command the README gives, and every pattern crate has a README;
//! - code the book includes fits its page (85 columns);
//! - no `#[ignore]`d test, no version pinned outside `[workspace.dependencies]`, and every crate
//!   takes the workspace's clippy lints (no `unwrap()` or `expect()` outside tests);
//! - quizzes mix question types, and their keyed answers are not findable by their length.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

#[path = "../xtask/src/quiz_schema.rs"]
mod quiz_schema;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Files under `dir` (recursively) whose name ends with `suffix`, skipping build output and VCS.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
        {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(
                    name.as_str(),
                    "target" | ".git" | "build" | "node_modules" | "mdbook-quiz"
                ) {
                    stack.push(path);
                }
            } else if name.ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn chapters() -> Vec<PathBuf> {
    files(&root().join("book/src"), ".md")
        .into_iter()
        .filter(|p| !p.ends_with("SUMMARY.md"))
        .collect()
}

/// Every `{{#<directive> <argument>}}` in a Markdown text.
fn directives<'a>(markdown: &'a str, directive: &str) -> Vec<&'a str> {
    let open = format!("{{{{#{directive} ");
    markdown
        .match_indices(&open)
        .filter_map(|(at, _)| {
            markdown[at + open.len()..].split_once("}}").map(|(arg, _)| arg.trim())
        })
        .collect()
}

/// The lines between `ANCHOR: name` and `ANCHOR_END: name`, without nested anchor markers.
fn anchor_body(source: &str, name: &str) -> Option<String> {
    let is_marker = |line: &str, kind: &str| {
        line.split_once(kind).is_some_and(|(_, rest)| {
            rest.trim().trim_end_matches("*/").trim().trim_end_matches("-->").trim()
                == name
        })
    };
    let mut lines = source.lines().skip_while(|l| !is_marker(l, "ANCHOR: "));
    lines.next()?;
    let mut body = Vec::new();
    for line in lines {
        if is_marker(line, "ANCHOR_END: ") {
            return Some(body.join("\n"));
        }
        if !line.contains("ANCHOR: ") && !line.contains("ANCHOR_END: ") {
            body.push(line);
        }
    }
    None
}

/// Every `(file, anchor)` the book includes, with the file's path relative to the root.
fn included_anchors() -> BTreeSet<(String, String)> {
    let mut included = BTreeSet::new();
    for chapter in chapters() {
        for include in directives(&read(&chapter), "include") {
            let Some((file, anchor)) = include.split_once(':') else { continue };
            let target = chapter.parent().unwrap().join(file);
            let Ok(target) = target.canonicalize() else { continue };
            let root = root().canonicalize().unwrap();
            let Ok(relative) = target.strip_prefix(&root) else { continue };
            included.insert((relative.display().to_string(), anchor.to_owned()));
        }
    }
    included
}

/// The other direction of the includes: an `ANCHOR` that no chapter includes is a
/// marker that promises a reader something nobody shows them. Teach it or remove it.
#[test]
fn every_anchor_in_the_code_is_included_by_the_book() {
    let included = included_anchors();
    let mut orphans = Vec::new();
    for (path, text) in rust_sources() {
        for line in text.lines() {
            let Some(name) = line.trim().strip_prefix("// ANCHOR: ") else {
                continue;
            };
            if !included.contains(&(path.clone(), name.to_owned())) {
                orphans.push(format!("{path}: ANCHOR: {name}"));
            }
        }
    }
    assert!(
        orphans.is_empty(),
        "anchors no chapter includes (include them where they teach, else remove them):\n{}",
        orphans.join("\n")
    );
}

/// How many columns mdBook's page shows without scrolling a code block.
const PAGE_COLUMNS: usize = 85;

#[test]
fn every_book_include_resolves_to_a_non_empty_anchor() {
    let mut problems = Vec::new();
    let mut count = 0;
    for chapter in chapters() {
        let text = read(&chapter);
        for include in directives(&text, "include") {
            count += 1;
            let (file, anchor) = include
                .split_once(':')
                .map_or((include, None), |(f, a)| (f, Some(a)));
            let target = chapter.parent().unwrap().join(file);
            let Ok(source) = fs::read_to_string(&target) else {
                problems
                    .push(format!("{}: {include}: no such file", chapter.display()));
                continue;
            };
            let body = match anchor {
                Some(anchor) => anchor_body(&source, anchor),
                None => Some(source),
            };
            if let Some(body) = &body {
                for line in body.lines().filter(|l| l.chars().count() > PAGE_COLUMNS)
                {
                    problems.push(format!(
                        "{}: {include}: a line wider than {PAGE_COLUMNS} columns: {line}",
                        chapter.display()
                    ));
                }
            }
            match body {
                Some(body) if !body.trim().is_empty() => {}
                Some(_) => problems.push(format!(
                    "{}: {include}: the anchor is empty",
                    chapter.display()
                )),
                None => problems.push(format!(
                    "{}: {include}: no ANCHOR/ANCHOR_END pair with that name",
                    chapter.display()
                )),
            }
        }
    }
    assert!(problems.is_empty(), "broken includes:\n{}", problems.join("\n"));
    assert!(
        count >= 20,
        "only {count} includes found: is the book still including its code?"
    );
}

#[test]
fn every_rust_file_starts_with_a_module_header() {
    let missing: Vec<String> = files(&root(), ".rs")
        .into_iter()
        .filter(|path| !read(path).trim_start().starts_with("//!"))
        .map(|path| path.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "these files need a `//!` header saying what they are for:\n{}",
        missing.join("\n")
    );
}

/// `(title, file)` for each numbered chapter in SUMMARY.md (list items; the introduction is not one).
fn summary_chapters() -> Vec<(String, String)> {
    read(&root().join("book/src/SUMMARY.md"))
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- ["))
        .filter_map(|rest| {
            let (title, rest) = rest.split_once("](")?;
            Some((title.to_owned(), rest.split_once(')')?.0.to_owned()))
        })
        .collect()
}

#[test]
fn every_chapter_but_the_introduction_ends_with_its_quiz() {
    let chapters = summary_chapters();
    assert!(!chapters.is_empty(), "SUMMARY.md lists no chapters");
    for (title, file) in chapters {
        let text = read(&root().join("book/src").join(&file));
        let stem = file.trim_end_matches(".md");
        let expected = format!("../quizzes/{stem}.toml");
        let quizzes = directives(&text, "quiz");
        assert_eq!(
            quizzes,
            [expected.as_str()],
            "chapter {title:?} ({file}) must embed exactly {{{{#quiz {expected}}}}}"
        );
        assert!(
            root().join("book/quizzes").join(format!("{stem}.toml")).exists(),
            "chapter {title:?}: {expected} is missing"
        );
    }
}

#[test]
fn every_quiz_parses_and_explains_its_answers() {
    use quiz_schema::Question;
    let quizzes = files(&root().join("book/quizzes"), ".toml");
    assert!(!quizzes.is_empty());
    for path in quizzes {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let quiz = quiz_schema::parse(&read(&path)).unwrap_or_else(|e| {
            panic!("{name} does not match the mdbook-quiz schema: {e}")
        });
        assert!(
            quiz.questions.len() >= 8,
            "{name}: {} questions, at least 8 wanted",
            quiz.questions.len()
        );
        let about_examples =
            quiz.questions.iter().filter(|q| q.prompt().contains("example")).count();
        assert!(
            about_examples >= 2,
            "{name}: only {about_examples} questions about the chapter's example (at least 2 wanted)"
        );
        for (i, question) in quiz.questions.iter().enumerate() {
            let at = format!("{name} question {}", i + 1);
            assert!(!question.prompt().trim().is_empty(), "{at}: empty prompt");
            let context = question.context().unwrap_or_default().trim();
            if let Question::MultipleChoice(q) = question {
                let distractors = &q.prompt.distractors;
                assert!(distractors.len() >= 2, "{at}: at least two distractors");
                // Every wrong option needs its own explanation: a sentence or more for each.
                assert!(
                    context.len() >= 80 * distractors.len(),
                    "{at}: the context must explain the answer and each of the {} distractors",
                    distractors.len()
                );
                let mut options: Vec<&String> =
                    distractors.iter().chain(q.answer.answer.as_slice()).collect();
                let total = options.len();
                options.sort();
                options.dedup();
                assert_eq!(options.len(), total, "{at}: two options are identical");
            } else {
                assert!(
                    context.len() >= 80,
                    "{at}: the context must explain the answer"
                );
            }
        }
    }
}

/// Example name -> the files that define it.
fn examples_in_workspace() -> BTreeMap<String, Vec<PathBuf>> {
    let mut dirs = vec![root().join("examples")];
    dirs.extend(
        fs::read_dir(root().join("patterns"))
            .unwrap()
            .flatten()
            .map(|e| e.path().join("examples")),
    );
    let mut examples: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        for file in fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        {
            examples
                .entry(file.file_stem().unwrap().to_string_lossy().into_owned())
                .or_default()
                .push(file);
        }
    }
    examples
}

/// Names after `--example ` in a text; a placeholder such as `--example ...` names nothing.
fn examples_named_in(text: &str) -> BTreeSet<String> {
    text.match_indices("--example ")
        .map(|(at, flag)| {
            text[at + flag.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn example_names_are_unique_across_the_workspace() {
    let examples = examples_in_workspace();
    let clashes: Vec<_> =
        examples.iter().filter(|(_, files)| files.len() > 1).collect();
    assert!(
        clashes.is_empty(),
        "`cargo run --example NAME` from the root needs unique names: {clashes:?}"
    );
}

#[test]
fn every_example_the_readme_and_the_book_name_exists() {
    let examples = examples_in_workspace();
    let mut sources = vec![root().join("README.md")];
    sources.extend(chapters());
    for source in sources {
        let named = examples_named_in(&read(&source));
        for name in named {
            assert!(
                examples.contains_key(&name),
                "{} runs `--example {name}`, which does not exist",
                source.display()
            );
        }
    }
    let in_readme = examples_named_in(&read(&root().join("README.md")));
    let unlisted: Vec<_> =
        examples.keys().filter(|name| !in_readme.contains(*name)).collect();
    assert!(
        unlisted.is_empty(),
        "every example belongs in the README's table: {unlisted:?}"
    );
}

#[test]
fn ci_runs_the_test_command_the_readme_gives() {
    let ci = read(&root().join(".ci/run"));
    let readme = read(&root().join("README.md"));
    let commands: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        commands.iter().any(|c| c.ends_with("cargo xtask test")),
        ".ci/run must call `cargo xtask test`: {commands:?}"
    );
    assert!(
        readme.contains("cargo xtask test"),
        "the README must give `cargo xtask test` as the test command"
    );
}

#[test]
fn every_pattern_crate_has_a_readme() {
    for entry in fs::read_dir(root().join("patterns")).unwrap().flatten() {
        let readme = entry.path().join("README.md");
        assert!(readme.exists(), "{} has no README.md", entry.path().display());
        assert!(
            read(&readme).contains("cargo run"),
            "{} should say how to run its examples",
            readme.display()
        );
    }
}

#[test]
fn anchors_are_found_the_way_mdbook_finds_them() {
    let source = "a\n// ANCHOR: outer\nb\n// ANCHOR: inner\nc\n// ANCHOR_END: inner\n// ANCHOR_END: outer\n";
    assert_eq!(anchor_body(source, "outer").as_deref(), Some("b\nc"));
    assert_eq!(anchor_body(source, "inner").as_deref(), Some("c"));
    assert_eq!(anchor_body(source, "inne"), None, "anchor names match whole");
    assert_eq!(
        directives("x {{#include ../a.rs:b}} y {{#quiz q.toml}}", "include"),
        ["../a.rs:b"]
    );
}

/// The Rust files of the repository, as (path relative to the root, text).
fn rust_sources() -> Vec<(String, String)> {
    files(&root(), ".rs")
        .into_iter()
        .map(|path| {
            let text = read(&path);
            (path.strip_prefix(root()).unwrap().display().to_string(), text)
        })
        .collect()
}

#[test]
fn no_test_is_ignored() {
    let ignored: Vec<String> = rust_sources()
        .into_iter()
        .filter(|(_, text)| {
            text.lines().any(|l| l.trim_start().starts_with("#[ignore"))
        })
        .map(|(path, _)| path)
        .collect();
    assert!(
        ignored.is_empty(),
        "a test that does not run proves nothing: {ignored:?}"
    );
}

/// Every manifest of the workspace, the root's first.
fn manifests() -> Vec<PathBuf> {
    let mut manifests = vec![root().join("Cargo.toml")];
    for dir in ["infra", "domain", "xtask"] {
        manifests.push(root().join(dir).join("Cargo.toml"));
    }
    manifests.extend(files(&root().join("patterns"), "Cargo.toml"));
    manifests
}

/// Panics and hidden errors are caught by clippy (`cargo clippy -D warnings` in
/// `cargo xtask test`), not by a text scan: the workspace denies `unwrap_used` and
/// `expect_used` outside tests, and every crate must opt in, or it escapes.
#[test]
fn every_crate_takes_the_workspace_lints() {
    let root_manifest: toml::Table =
        toml::from_str(&read(&root().join("Cargo.toml"))).unwrap();
    let clippy = &root_manifest["workspace"]["lints"]["clippy"];
    for lint in ["unwrap_used", "expect_used", "let_underscore_future"] {
        assert!(
            clippy.get(lint).is_some(),
            "[workspace.lints.clippy] must set {lint}"
        );
    }
    for manifest in manifests() {
        let doc: toml::Table = toml::from_str(&read(&manifest)).unwrap();
        let opted_in = doc
            .get("lints")
            .and_then(|l| l.get("workspace"))
            .and_then(|w| w.as_bool())
            == Some(true);
        assert!(opted_in, "{} needs `[lints] workspace = true`", manifest.display());
    }
}

#[test]
fn every_dependency_version_lives_in_the_workspace() {
    let mut pinned = Vec::new();
    for manifest in manifests() {
        let doc: toml::Table = toml::from_str(&read(&manifest)).unwrap();
        let mut tables: Vec<(String, &toml::Table)> = Vec::new();
        for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
            if let Some(t) = doc.get(kind).and_then(toml::Value::as_table) {
                tables.push((kind.to_owned(), t));
            }
            let targets = doc.get("target").and_then(toml::Value::as_table);
            for (cfg, target) in targets.into_iter().flatten() {
                if let Some(t) = target.get(kind).and_then(toml::Value::as_table) {
                    tables.push((format!("target.{cfg}.{kind}"), t));
                }
            }
        }
        for (kind, table) in tables {
            for (name, spec) in table {
                let inherited = spec
                    .as_table()
                    .and_then(|t| t.get("workspace"))
                    .and_then(toml::Value::as_bool)
                    == Some(true);
                if !inherited {
                    let at = manifest.strip_prefix(root()).unwrap().display();
                    pinned.push(format!("{at} [{kind}] {name}"));
                }
            }
        }
    }
    assert!(
        pinned.is_empty(),
        "pin versions once, in the root [workspace.dependencies], and use \
         `name.workspace = true`:\n{}",
        pinned.join("\n")
    );
}

/// Whether a MultipleChoice question's keyed answer is its longest option (a reader who
/// picks the longest option gets it right without reading).
fn keyed_answer_is_longest(q: &quiz_schema::MultipleChoice) -> bool {
    let longest =
        |options: &[String]| options.iter().map(|o| o.chars().count()).max();
    longest(q.answer.answer.as_slice()) > longest(&q.prompt.distractors)
}

#[test]
fn quizzes_mix_question_types_and_do_not_leak_answers_by_length() {
    use quiz_schema::Question;
    let (mut leaking, mut multiple_choice) = (0, 0);
    for path in files(&root().join("book/quizzes"), ".toml") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let quiz = quiz_schema::parse(&read(&path)).unwrap();
        let multi_select = quiz.questions.iter().any(|q| {
            matches!(q, Question::MultipleChoice(mc) if mc.answer.answer.as_slice().len() > 1)
        });
        assert!(
            multi_select,
            "{name}: no multi-select question (several correct options)"
        );
        let about_output = quiz.questions.iter().any(|q| {
            matches!(q, Question::ShortAnswer(_))
                || q.prompt().contains("```console")
        });
        assert!(
            about_output,
            "{name}: no short-answer or \"what does this print\" question (a prompt quoting \
             the example's output in a ```console block)"
        );
        for question in &quiz.questions {
            if let Question::MultipleChoice(q) = question {
                multiple_choice += 1;
                leaking += usize::from(keyed_answer_is_longest(q));
            }
        }
    }
    // At most 35% across the book: the longest option must be no better than a guess.
    assert!(
        leaking * 100 <= multiple_choice * 35,
        "in {leaking} of {multiple_choice} multiple-choice questions the keyed answer is the \
         longest option; at most 35% may be"
    );
}
