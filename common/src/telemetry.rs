//! Logging setup: `tracing` with JSON or text output and an EnvFilter.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{Error, cli::LogFormat};

/// Installs the global tracing subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat, filter: &str) -> Result<(), Error> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| Error::Telemetry(format!("bad log filter {filter:?}: {e}")))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(true)
                    // The fmt layer writes to stdout.
                    .with_ansi(colour(
                        std::io::stdout().is_terminal(),
                        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
                    )),
            )
            .try_init(),
    };
    result.map_err(|e| Error::Telemetry(e.to_string()))
}

/// Whether text logs carry ANSI colour codes: only on a terminal, and not when `NO_COLOR` is set
/// (no-color.org), so a log redirected to a file or collected from a pod stays plain text.
fn colour(writes_to_terminal: bool, no_color: bool) -> bool {
    writes_to_terminal && !no_color
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        for (terminal, no_color, want) in [
            (true, false, true),
            (true, true, false),
            (false, false, false),
            (false, true, false),
        ] {
            assert_eq!(
                colour(terminal, no_color),
                want,
                "terminal {terminal}, NO_COLOR {no_color}"
            );
        }
    }
}
