//! One logging setup for every binary. `RUST_LOG` filters (default: the
//! binary's own level); `IM_LOG_FORMAT` is `text` (the default, for people)
//! or `json` (one object per line, its fields as keys: `trace_id` among
//! them on the command path, for a log pipeline to join gateway, writer
//! and projector lines). Logs go to stderr; stdout is for what a command
//! prints.

/// The environment variable naming the format.
pub const FORMAT_VAR: &str = "IM_LOG_FORMAT";

/// Installs the global subscriber; an unknown format is an error (the
/// caller exits 2: it could not run as asked).
pub fn init(default_filter: &str) -> Result<(), String> {
    // The search index's engine says "info" of every commit (several a
    // second): its warnings only, unless RUST_LOG asks.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("{default_filter},tantivy=warn").into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var(FORMAT_VAR).as_deref() {
        Err(_) | Ok("") | Ok("text") => builder.init(),
        Ok("json") => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        Ok(other) => return Err(format!("{FORMAT_VAR}={other:?}: text or json")),
    }
    Ok(())
}
