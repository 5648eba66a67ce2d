//! The process log, on standard error: JSON for machines or pretty for people.
//!
//! `log.level` (or `RUST_LOG`) is a `tracing` filter. A bare level in it (`debug`, `trace`)
//! sets the level of Portcullis's own targets; the libraries underneath (hyper, h2, rustls,
//! mio, tokio, the file watcher...) log at most `info` unless the filter names them. The file
//! watcher (`notify`, `inotify`) is held at `info` even when named: at `debug` and `trace` it
//! logs every file-system event, and with the log file in a watched folder (the config's)
//! each of those lines is itself an event, a loop that fills the disk.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The target prefix shared by Portcullis's crates (`portcullis`, `portcullis_proxy`...).
const OWN_TARGET: &str = "portcullis";

/// The most a dependency logs when the filter does not name it.
const DEPENDENCY_LEVEL: LevelFilter = LevelFilter::INFO;

/// Targets that log per file-system event; never enabled above [`DEPENDENCY_LEVEL`].
const WATCHER_TARGETS: [&str; 2] = ["notify", "inotify"];

/// Installs the global process logger. `RUST_LOG`, when set, overrides `level`.
pub fn init_logging(json: bool, level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => filter(&env).map_err(|e| format!("RUST_LOG: {e}"))?,
        _ => filter(level).map_err(|e| format!("log.level `{level}`: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result =
        if json { builder.json().flatten_event(true).with_current_span(false).try_init() } else { builder.try_init() };
    result.map_err(|e| e.to_string())
}

/// The filter for a `log.level` or `RUST_LOG` value (see the module documentation).
fn filter(spec: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder().parse(directives(spec)).map_err(|e| e.to_string())
}

/// Rewrites a filter so that a bare level applies to Portcullis's targets, other targets get
/// at most [`DEPENDENCY_LEVEL`] from it, and the file watcher's targets never more.
fn directives(spec: &str) -> String {
    let mut own: Option<LevelFilter> = None;
    let mut rest: Vec<String> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Ok(level) = part.parse::<LevelFilter>() {
            // As in any filter, the last bare level is the default.
            own = Some(level);
            continue;
        }
        // `target=level`, `target` (everything from it), or a span/field directive.
        let (selector, level) = match part.rsplit_once('=') {
            Some((s, l)) if !s.contains('[') || s.ends_with(']') => (s, l.parse::<LevelFilter>().ok()),
            _ => (part, None),
        };
        let watcher = !selector.contains('[') && WATCHER_TARGETS.iter().any(|t| selector.starts_with(t));
        if watcher {
            let level = level.unwrap_or(LevelFilter::TRACE).min(DEPENDENCY_LEVEL);
            rest.push(format!("{selector}={level}"));
        } else {
            rest.push(part.to_string());
        }
    }
    let mut out = Vec::with_capacity(rest.len() + 2 + WATCHER_TARGETS.len());
    let others = own.map_or(LevelFilter::OFF, |level| level.min(DEPENDENCY_LEVEL));
    if let Some(level) = own {
        out.push(others.to_string());
        // Written before the filter's own directives, so that these still override them.
        out.push(format!("{OWN_TARGET}={level}"));
    }
    // The watcher's own directives, unless the filter named it (then capped above): they
    // also hold it against a shorter prefix (`no=trace` would match `notify`).
    let named: Vec<bool> =
        WATCHER_TARGETS.iter().map(|t| rest.iter().any(|p| p.split_once('=').is_some_and(|(s, _)| s == *t))).collect();
    out.extend(rest);
    for (t, named) in WATCHER_TARGETS.iter().zip(named) {
        if !named {
            out.push(format!("{t}={others}"));
        }
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_bare_level_is_portcullis_own() {
        assert_eq!(directives("info"), "info,portcullis=info,notify=info,inotify=info");
        assert_eq!(directives("trace"), "info,portcullis=trace,notify=info,inotify=info");
        assert_eq!(directives("warn"), "warn,portcullis=warn,notify=warn,inotify=warn");
        assert_eq!(directives("off"), "off,portcullis=off,notify=off,inotify=off");
        // Named targets keep the level they are given...
        assert_eq!(
            directives("debug, h2=trace,portcullis_proxy=warn"),
            "info,portcullis=debug,h2=trace,portcullis_proxy=warn,notify=info,inotify=info"
        );
        assert_eq!(directives("portcullis=trace"), "portcullis=trace,notify=off,inotify=off");
        // ...except the file watcher's, whoever names it.
        assert_eq!(
            directives("notify=trace,inotify,notify::inotify=warn"),
            "notify=info,inotify=info,notify::inotify=warn"
        );
        assert_eq!(directives("no=trace"), "no=trace,notify=off,inotify=off");
        assert_eq!(directives("trace,notify=debug"), "info,portcullis=trace,notify=info,inotify=info");
        assert_eq!(directives("[request]=trace"), "[request]=trace,notify=off,inotify=off");
    }

    /// Lines written by a subscriber with the filter `spec`, for one event per target.
    fn logged(spec: &str, level: tracing::Level) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter(spec).unwrap())
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            macro_rules! each {
                ($($target:literal),*) => {$(
                    match level {
                        tracing::Level::TRACE => tracing::trace!(target: $target, "from {}", $target),
                        tracing::Level::DEBUG => tracing::debug!(target: $target, "from {}", $target),
                        _ => tracing::info!(target: $target, "from {}", $target),
                    }
                )*};
            }
            each!(
                "portcullis_gateway::watch",
                "portcullis",
                "notify::inotify",
                "inotify",
                "mio::poll",
                "h2::codec",
                "hyper_util::client"
            );
        });
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn trace_reaches_portcullis_only() {
        let out = logged("trace", tracing::Level::TRACE);
        assert!(out.contains("from portcullis_gateway::watch") && out.contains("from portcullis\n"), "{out}");
        for quiet in ["notify", "inotify", "mio", "h2", "hyper"] {
            assert!(!out.contains(&format!("from {quiet}")), "{quiet} at trace:\n{out}");
        }
        // Dependencies still say what matters.
        let out = logged("trace", tracing::Level::INFO);
        assert!(out.contains("from notify::inotify") && out.contains("from h2::codec"), "{out}");
    }

    #[test]
    fn a_named_dependency_is_heard_but_never_the_watcher() {
        let out = logged("info,h2=trace,notify=trace", tracing::Level::TRACE);
        assert!(out.contains("from h2::codec"), "{out}");
        assert!(!out.contains("from notify") && !out.contains("from portcullis"), "{out}");
        let out = logged("warn", tracing::Level::INFO);
        assert!(out.is_empty(), "{out}");
        let out = logged("no=trace", tracing::Level::TRACE);
        assert!(!out.contains("from notify"), "{out}");
    }
}
