//! The process log, on standard error: JSON for machines or pretty for people.

use tracing_subscriber::EnvFilter;

/// Installs the global process logger. `RUST_LOG`, when set, overrides `level`.
pub fn init_logging(json: bool, level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(&env).map_err(|e| format!("RUST_LOG: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| format!("log.level `{level}`: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result =
        if json { builder.json().flatten_event(true).with_current_span(false).try_init() } else { builder.try_init() };
    result.map_err(|e| e.to_string())
}
