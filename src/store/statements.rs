//! Statements on a sqlx connection of either database, with the store's
//! own parameters (`SqlParam`) and rows (`ReadRow`). What sqlx asks of a
//! database to bind, run and read a statement is written once, on the
//! blanket implementation below; the shared code asks only `D: SqlxDb`.

use std::borrow::Cow;

use sqlx::{AssertSqlSafe, Database, Encode, Executor, IntoArguments, Type};

use super::error::db_error;
use super::rows::ReadRow;
use super::sql_filter::SqlParam;
use crate::domain::Result;

/// SQL text: a constant, or one built for the call.
pub type Sql = Cow<'static, str>;

/// The rows a statement changed (sqlx's query results share no trait).
pub trait RowsAffected {
    fn changed_rows(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn changed_rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn changed_rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// A database the store runs statements on through sqlx.
#[tonic::async_trait]
pub trait SqlxDb: Database<Row: ReadRow> {
    /// Runs a statement; the rows it changed.
    async fn execute(
        conn: &mut Self::Connection,
        sql: impl Into<Sql> + Send,
        params: Vec<SqlParam>,
    ) -> Result<u64>;

    async fn fetch_all(
        conn: &mut Self::Connection,
        sql: impl Into<Sql> + Send,
        params: Vec<SqlParam>,
    ) -> Result<Vec<Self::Row>>;

    async fn fetch_optional(
        conn: &mut Self::Connection,
        sql: impl Into<Sql> + Send,
        params: Vec<SqlParam>,
    ) -> Result<Option<Self::Row>>;
}

#[tonic::async_trait]
impl<D> SqlxDb for D
where
    D: Database<Row: ReadRow, QueryResult: RowsAffected, Arguments: IntoArguments<D>>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    String: for<'q> Encode<'q, D> + Type<D>,
    i64: for<'q> Encode<'q, D> + Type<D>,
    Option<i64>: for<'q> Encode<'q, D> + Type<D>,
    bool: for<'q> Encode<'q, D> + Type<D>,
    Vec<u8>: for<'q> Encode<'q, D> + Type<D>,
{
    async fn execute(
        conn: &mut D::Connection,
        sql: impl Into<Sql> + Send,
        params: Vec<SqlParam>,
    ) -> Result<u64> {
        let query = bind_all(sqlx::query(AssertSqlSafe(sql.into())), params);
        Executor::execute(&mut *conn, query)
            .await
            .map(|done| done.changed_rows())
            .map_err(db_error)
    }

    async fn fetch_all(
        conn: &mut D::Connection,
        sql: impl Into<Sql> + Send,
        params: Vec<SqlParam>,
    ) -> Result<Vec<D::Row>> {
        let query = bind_all(sqlx::query(AssertSqlSafe(sql.into())), params);
        Executor::fetch_all(&mut *conn, query)
            .await
            .map_err(db_error)
    }

    async fn fetch_optional(
        conn: &mut D::Connection,
        sql: impl Into<Sql> + Send,
        params: Vec<SqlParam>,
    ) -> Result<Option<D::Row>> {
        let query = bind_all(sqlx::query(AssertSqlSafe(sql.into())), params);
        Executor::fetch_optional(&mut *conn, query)
            .await
            .map_err(db_error)
    }
}

/// Binds `params` in order, as `$1`, `$2`, ... (sqlx numbers them so on
/// SQLite too).
fn bind_all<D>(
    mut query: sqlx::query::Query<'static, D, D::Arguments>,
    params: Vec<SqlParam>,
) -> sqlx::query::Query<'static, D, D::Arguments>
where
    D: Database,
    String: for<'q> Encode<'q, D> + Type<D>,
    i64: for<'q> Encode<'q, D> + Type<D>,
    Option<i64>: for<'q> Encode<'q, D> + Type<D>,
    bool: for<'q> Encode<'q, D> + Type<D>,
    Vec<u8>: for<'q> Encode<'q, D> + Type<D>,
{
    // Moved, not copied: a batch's parameters hold every record's body.
    for param in params {
        query = match param {
            SqlParam::Text(text) => query.bind(text),
            SqlParam::Int(n) => query.bind(n),
            SqlParam::Null => query.bind(None::<i64>),
            SqlParam::Bool(b) => query.bind(b),
            SqlParam::Blob(bytes) => query.bind(bytes),
        };
    }
    query
}
