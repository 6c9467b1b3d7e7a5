//! Logging set-up for every face of the binary: `tracing` to stderr,
//! filtered by `VIGIL_LOG` (default `warn`).

/// Install the stderr subscriber once; a second call is a no-op.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
