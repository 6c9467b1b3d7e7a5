//! Logging set-up for every face of the binary: `tracing` to stderr,
//! filtered by `VIGIL_LOG` (default `warn`, with the FUSE library's own
//! messages off). Colour only when stderr is a
//! terminal and `NO_COLOR` is unset or empty: pod logs redirected to a file
//! (the chaos runner's, the demo's, a service manager's) stay plain text.

/// Install the stderr subscriber once; a second call is a no-op.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        // fuser (the chaos runner's FUSE layer) logs every request it
        // answers "not implemented" (xattrs the kernel asks for) and every
        // reply to a process killed mid-request (a power cut) as warnings
        // and errors: off, unless VIGIL_LOG asks for them.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .try_init();
}

/// `NO_COLOR` is set and not empty (https://no-color.org): no colour in
/// logs, nor in the console's theme.
pub fn no_color() -> bool {
    no_color_set(std::env::var_os("NO_COLOR").as_deref())
}

fn no_color_set(no_color: Option<&std::ffi::OsStr>) -> bool {
    no_color.is_some_and(|v| !v.is_empty())
}

/// Whether to colour: a terminal, and no non-empty `NO_COLOR`.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && !no_color_set(no_color)
}

#[cfg(test)]
mod tests {
    use super::colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
