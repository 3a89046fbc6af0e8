//! The schema migrations: one file per dialect
//! (`migrations/{sqlite,postgres}/0001_schema.sql`), run by sqlx at start
//! or by `copex migrate`.

use sqlx::migrate::MigrateError;

use crate::domain::Error;

/// A failed migration as the operator reads it. A database migrated by a
/// copex from before the schema was one file has migrations applied that
/// this build does not know (or a first one that differs): sqlx refuses it
/// before changing anything, and the answer says why and what to do.
pub fn refused(err: MigrateError) -> Error {
    match err {
        MigrateError::VersionMissing(_) | MigrateError::VersionMismatch(_) => {
            Error::FailedPrecondition {
                reason: "UNKNOWN_SCHEMA_HISTORY",
                message: format!(
                    "the database was migrated by an earlier copex, whose schema history this \
                     version replaces with a single migration ({err}); it was left unchanged. \
                     Start this version on a new database and push the records exported from \
                     the old one (`copex export`, then `copex push`)"
                ),
            }
        }
        other => Error::internal(format!("migration failed: {other}")),
    }
}
