//! Logging setup: `tracing` with JSON or text output and an EnvFilter.

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
        LogFormat::Text => registry.with(fmt::layer().with_target(true)).try_init(),
    };
    result.map_err(|e| Error::Telemetry(e.to_string()))
}
