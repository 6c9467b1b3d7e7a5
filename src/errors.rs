//! Errors as operators read them: one message, each cause once.
//!
//! Our error types say their cause in their own message (so a log line or
//! an API body that prints only the error is complete) and also expose it
//! as `source()` (so code can inspect it). Printing the whole chain, as
//! anyhow's `{:#}` does, then says every cause twice (`pool timed out
//! ...: pool timed out ...`); [`chain`] prints a cause only when the
//! message so far does not already say it.

use std::error::Error;

/// A database error as an operator reads it: the server's message and its
/// SQLSTATE, not where in the server's own C source it was raised (sqlx
/// writes PostgreSQL's `at line 948`, a line of postmaster.c).
pub fn db_text(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => match d.code() {
            Some(code) => format!("error returned from database: {} ({code})", d.message()),
            None => format!("error returned from database: {}", d.message()),
        },
        other => other.to_string(),
    }
}

/// One cause's text: as [`db_text`] says it for database errors.
fn cause_text(cause: &(dyn Error + 'static)) -> String {
    if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
        db_text(e)
    } else if let Some(d) = cause.downcast_ref::<Box<dyn sqlx::error::DatabaseError>>() {
        d.message().to_owned()
    } else {
        cause.to_string()
    }
}

/// `err` and its causes, joined with `": "`, each cause once.
pub fn chain<'a>(mut causes: impl Iterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut out = causes.next().map(cause_text).unwrap_or_default();
    for cause in causes {
        let text = cause_text(cause);
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// [`chain`] of an [`anyhow::Error`].
pub fn report(err: &anyhow::Error) -> String {
    chain(err.chain())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("pool timed out while waiting for an open connection")]
    struct Timeout;

    #[derive(Debug, thiserror::Error)]
    #[error("store unreachable at postgres://x: {source}")]
    struct Unreachable {
        source: Timeout,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Sending(#[source] Refused);

    #[test]
    fn each_cause_is_said_once() {
        let e = anyhow::Error::new(Unreachable { source: Timeout }).context("vigil runs");
        assert_eq!(
            format!("{e:#}"),
            "vigil runs: store unreachable at postgres://x: pool timed out while waiting for an \
             open connection: pool timed out while waiting for an open connection",
            "what anyhow prints"
        );
        assert_eq!(
            report(&e),
            "vigil runs: store unreachable at postgres://x: pool timed out while waiting for an \
             open connection"
        );
        // Causes a message does not say are kept, in order.
        let e = anyhow::Error::new(Sending(Refused)).context("pod at http://h:1 unreachable");
        assert_eq!(
            report(&e),
            "pod at http://h:1 unreachable: error sending request: connection refused"
        );
    }
}
