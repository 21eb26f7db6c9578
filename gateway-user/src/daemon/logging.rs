//! Log output: human text for a terminal, JSON lines for machines.
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs go to stderr; `RUST_LOG` overrides the default `info` level.
///
/// Lines go to stderr from a thread of their own: a statement's events are
/// formatted on the session's thread but never wait for the pipe or the
/// journal to take them (which cost tens of µs per statement under load).
/// Nothing is dropped; only past 128k queued lines does logging block.
/// Keep the guard until exit: dropping it writes out what is queued.
#[must_use = "dropping the guard stops logging"]
pub fn init_logging(format: LogFormat) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("cp-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    guard
}
