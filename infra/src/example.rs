//! What every example shares: how it logs, and how it reads its break-it flags.
//!
//! Behind the `examples` feature, so the library crates that depend on `infra` for addresses do not
//! compile a log formatter they never use.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logs to stdout at `info` (or as `RUST_LOG` says), with the time since start on every line and
/// colours only when stdout is a terminal.
pub fn init_logging() {
    init_logging_with("info");
}

/// Like [`init_logging`], with `filter` (an `EnvFilter` directive such as `info,grpc=warn`) where
/// `RUST_LOG` is unset.
pub fn init_logging_with(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(filter)),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .init();
}

/// The flags an example was started with, each one checked against the flags it knows.
#[derive(Debug)]
pub struct Flags(Vec<String>);

impl Flags {
    /// Reads the command line. An unknown argument is an error that lists the known flags.
    pub fn parse(known: &[&str]) -> Result<Flags, String> {
        Self::from_args(std::env::args().skip(1), known)
    }

    fn from_args(
        args: impl Iterator<Item = String>,
        known: &[&str],
    ) -> Result<Flags, String> {
        let args: Vec<String> = args.collect();
        match args.iter().find(|a| !known.contains(&a.as_str())) {
            Some(unknown) => Err(format!(
                "unknown argument {unknown:?}; this example knows {}",
                known.join(", ")
            )),
            None => Ok(Flags(args)),
        }
    }

    /// Whether `flag` was given. Ask only for flags listed in [`Flags::parse`]:
    /// a misspelt one is never set, and the example would skip its fault silently.
    pub fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|a| a == flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter().map(|s| s.to_string()).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn known_flags_are_read_and_unknown_ones_refused() {
        let flags =
            Flags::from_args(args(&["--slow"]), &["--slow", "--invalid"]).unwrap();
        assert!(flags.has("--slow") && !flags.has("--invalid"));
        let err = Flags::from_args(args(&["--slwo"]), &["--slow", "--invalid"])
            .unwrap_err();
        assert_eq!(
            err,
            "unknown argument \"--slwo\"; this example knows --slow, --invalid"
        );
    }
}
