//! A file committed beside the code that generates it (an OpenAPI document, an event schema):
//! what the tests that keep the two equal share.

use std::path::Path;

/// Checks that the file at `path` holds exactly `fresh`. With the variable `bless` set (and
/// `CI` not), it first writes `fresh` there, so a contributor accepts a meant change with one
/// command. On a difference, `Err` names the file, the first line that differs, and `advice`:
/// what to do about it.
pub fn matches(
    path: &Path,
    fresh: &str,
    bless: &str,
    advice: &str,
) -> Result<(), String> {
    if std::env::var_os(bless).is_some() && std::env::var_os("CI").is_none() {
        std::fs::write(path, fresh)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let kept = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if kept == fresh {
        return Ok(());
    }
    let first = kept
        .lines()
        .zip(fresh.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(kept.lines().count().min(fresh.lines().count()));
    Err(format!(
        "{} is not what the code generates (first difference at line {}). {advice}",
        path.display(),
        first + 1
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_difference_is_named_by_its_first_line() {
        let path = std::env::temp_dir()
            .join(format!("committed-{}.txt", std::process::id()));
        std::fs::write(&path, "a\nb\nc\n").expect("writes");
        assert_eq!(
            super::matches(&path, "a\nb\nc\n", "NO_SUCH_BLESS_VAR", "-"),
            Ok(())
        );
        let error =
            super::matches(&path, "a\nB\nc\n", "NO_SUCH_BLESS_VAR", "rewrite it")
                .expect_err("differs");
        assert!(
            error.contains("first difference at line 2). rewrite it"),
            "{error}"
        );
        std::fs::remove_file(&path).expect("removes");
        let missing = super::matches(&path, "a\n", "NO_SUCH_BLESS_VAR", "-");
        assert!(missing.is_err(), "a missing file is an error, not a match");
    }
}
