//! Database errors as domain errors: the database's own text goes to the
//! log, never to a client.

use crate::domain::Error;

/// Maps a sqlx error to a domain error.
pub fn db_error(err: sqlx::Error) -> Error {
    let unavailable = match &err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // Connection failures and an administrator's shutdown (SQLSTATE
        // classes 08 and 57P).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    };
    if unavailable {
        return unreachable(&err);
    }
    // A statement stopped by its bounds (`ReadBounds`): SQLITE_INTERRUPT,
    // PostgreSQL's query_canceled. Not a fault of the hub: no error log.
    if let sqlx::Error::Database(db) = &err
        && db.code().is_some_and(|code| code == "9" || code == "57014")
    {
        tracing::info!(error = %err, "a statement was stopped");
        return Error::DeadlineExceeded {
            reason: "QUERY_STOPPED",
            message: "the query was stopped before it finished".into(),
        };
    }
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::AlreadyExists("the resource".into())
        }
        _ => failed(&err),
    }
}

/// A database that cannot be reached now: UNAVAILABLE, worth a retry.
pub fn unreachable(err: &dyn std::fmt::Display) -> Error {
    tracing::warn!(error = %err, "database unavailable");
    Error::Unavailable("the database is unreachable; try again shortly".into())
}

/// Any other database failure: INTERNAL, its text to the log only.
pub fn failed(err: &dyn std::fmt::Display) -> Error {
    tracing::error!(error = %err, "database error");
    Error::internal("database error")
}
