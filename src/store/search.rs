//! Full-text search SQL for both backends: the index rows every write path
//! adds, the rebuild of a stale index, and the statements a search runs.
//!
//! A search counts the matches the viewer may see, ranks one page of them,
//! then reads those records (their snippets are made from their text, in
//! `domain::search`). Counting and ranking run over the index alone, without
//! visiting `records` per match, which at 100,000 records cost more than the
//! ranking itself (on PostgreSQL the join was half of a common two-word
//! query's count and of its ranking):
//! - visibility is `record id NOT IN (restricted records the viewer may not
//!   see)`, read first from a partial index of restricted records: no
//!   condition when there are none, a literal list when there are few, else
//!   a set the database builds once per statement (`Hidden`);
//! - only kinds (on PostgreSQL) and filters ask `records`, for one record
//!   per match; on SQLite the row id is `records.id * 4 + kind`, so a kinds
//!   filter is arithmetic on the row id;
//! - every index column is text a client may search, so the common case
//!   needs no FTS5 column filter (one makes FTS5 rewrite the position list
//!   of every match: a quarter of the statements' time, measured alone).
//!
//! bm25 costs about 2 µs per match, so when a query matches more than
//! `EXACT_RANK_LIMIT` records SQLite ranks in two tiers: first the records
//! with every word in their title, summary, terms or people, then the rest,
//! each tier by bm25. A query that common gets its best page without ranking
//! every record that mentions it in passing. Those short columns have a
//! second FTS5 table of their own (`record_search_short`, same row ids): the
//! first tier is a plain match there, over doclists a fraction of the full
//! index's, rather than a column filter over every match of the full index
//! (a search's 99th percentile 15 → 9 ms in SQLite alone, measured on a
//! copy of the bench's database).

use super::sql::{self, Dialect, Exec, RECORD_COLUMNS, push_param};
use super::sql_filter::{self, SqlParam};
use super::{SearchQuery, StoredRecord, index};
use crate::domain::search::{SearchText, Term};
use crate::domain::{Error, Kind, Result};

/// Above this many matches, SQLite ranks in tiers (see the module).
pub const EXACT_RANK_LIMIT: i64 = 2000;

/// bm25 weights of the index columns: title, summary, terms, people, body.
const BM25_WEIGHTS: &str = "10.0, 4.0, 3.0, 3.0, 1.0";
const SHORT_BM25_WEIGHTS: &str = "10.0, 4.0, 3.0, 3.0";
/// The full index, and SQLite's index of the short columns (see the module).
const INDEX: &str = "record_search";
const SHORT_INDEX: &str = "record_search_short";

/// Index row id of a record (see the module).
pub fn row_id(dialect: Dialect, id: i64, kind: Kind) -> i64 {
    match dialect {
        Dialect::Sqlite => id * 4 + kind_code(kind),
        // The row id is the foreign key to `records`.
        Dialect::Postgres => id,
    }
}

fn kind_code(kind: Kind) -> i64 {
    match kind {
        Kind::Workshop => 1,
        Kind::Practice => 2,
        Kind::Tool => 3,
    }
}

/// `row_id` in SQL, of record `r`.
pub fn row_id_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => {
            "r.id * 4 + CASE r.kind WHEN 'workshop' THEN 1 WHEN 'practice' THEN 2 ELSE 3 END"
        }
        Dialect::Postgres => "r.id",
    }
}

/// The `records.id` of a row id of index `table`, in SQL.
fn record_id_sql(dialect: Dialect, table: &str) -> String {
    match dialect {
        Dialect::Sqlite => format!("({table}.rowid / 4)"),
        Dialect::Postgres => format!("{table}.rowid"),
    }
}

/// The index tables every write keeps current.
fn tables(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Sqlite => &[INDEX, SHORT_INDEX],
        Dialect::Postgres => &[INDEX],
    }
}

/// The values of one index row.
pub fn index_row(
    dialect: Dialect,
    id: i64,
    record: &StoredRecord,
    text: &SearchText,
) -> Vec<SqlParam> {
    let mut row = Vec::with_capacity(INDEX_ROW_WIDTH);
    row.push(SqlParam::Int(row_id(dialect, id, record.kind)));
    row.extend(text.columns().map(|c| SqlParam::Text(c.to_owned())));
    row
}

const INDEX_ROW_WIDTH: usize = 6;

/// Adds `index_row`s to every index table.
pub async fn insert_rows(tx: &mut dyn Exec, rows: Vec<SqlParam>) -> Result<()> {
    if tables(tx.dialect()).contains(&SHORT_INDEX) {
        // The row id and the four short columns of each row.
        let short: Vec<SqlParam> = rows
            .chunks(INDEX_ROW_WIDTH)
            .flat_map(|row| row[..INDEX_ROW_WIDTH - 1].iter().cloned())
            .collect();
        sql::insert_rows(
            tx,
            &format!("INSERT INTO {SHORT_INDEX} (rowid, title, summary, terms, people) VALUES "),
            INDEX_ROW_WIDTH - 1,
            short,
            "",
        )
        .await?;
    }
    let (head, tail) = match tx.dialect() {
        Dialect::Sqlite => (
            format!("INSERT INTO {INDEX} (rowid, title, summary, terms, people, body) VALUES "),
            "",
        ),
        // Only the weighted document is stored (title A; terms and people
        // B; summary C; long text D).
        Dialect::Postgres => (
            format!(
                "INSERT INTO {INDEX} (rowid, document) SELECT v.rowid, \
                 setweight(to_tsvector('english', v.title), 'A') \
                 || setweight(to_tsvector('english', v.terms || ' ' || v.people), 'B') \
                 || setweight(to_tsvector('english', v.summary), 'C') \
                 || setweight(to_tsvector('english', v.body), 'D') FROM (VALUES "
            ),
            ") AS v (rowid, title, summary, terms, people, body)",
        ),
    };
    sql::insert_rows(tx, &head, INDEX_ROW_WIDTH, rows, tail).await
}

/// Removes from every index table the rows whose row id is in `row_ids`
/// (SQL: a list of placeholders or a subquery) with `params`. FTS5 tables
/// have no foreign key to cascade on.
pub async fn delete_rows(tx: &mut dyn Exec, row_ids: &str, params: &[SqlParam]) -> Result<()> {
    for table in tables(tx.dialect()) {
        tx.execute(
            format!("DELETE FROM {table} WHERE rowid IN ({row_ids})"),
            params.to_vec(),
        )
        .await?;
    }
    Ok(())
}

/// Rebuilds the index from the records when it was built from other search
/// fields than the code's (or not at all: a database from before search).
/// The hub row is updated first, so of several instances starting together
/// one rebuilds and the others wait for it, then find nothing to do.
/// Returns how many records were indexed.
pub async fn rebuild_if_stale(tx: &mut dyn Exec) -> Result<Option<u64>> {
    let version = i64::from(crate::domain::search::INDEX_VERSION);
    let dialect = tx.dialect();
    let claimed = tx
        .execute(
            format!(
                "UPDATE hub SET search_version = {} WHERE singleton = 1 AND search_version < {}",
                dialect.placeholders(1, 1),
                dialect.placeholders(1, 2)
            ),
            vec![SqlParam::Int(version), SqlParam::Int(version)],
        )
        .await?;
    if claimed == 0 {
        return Ok(None);
    }
    for table in tables(dialect) {
        tx.execute(format!("DELETE FROM {table}"), Vec::new())
            .await?;
    }
    let schema = crate::domain::record::schema();
    let mut after = 0;
    let mut indexed = 0;
    loop {
        let records = tx
            .fetch_records(
                format!(
                    "SELECT {RECORD_COLUMNS}, {} AS recipients FROM records r WHERE r.id > {} \
                     ORDER BY r.id LIMIT 1000",
                    dialect.recipients_of_r(),
                    dialect.placeholders(1, 1)
                ),
                vec![SqlParam::Int(after)],
            )
            .await?;
        let Some((last, _)) = records.last() else {
            break;
        };
        after = *last;
        let mut rows = Vec::with_capacity(records.len() * INDEX_ROW_WIDTH);
        for (id, record) in &records {
            let msg = prost_reflect::DynamicMessage::decode(
                schema.message(record.kind),
                record.body.as_slice(),
            )
            .map_err(Error::internal)?;
            rows.extend(index_row(
                dialect,
                *id,
                record,
                &SearchText::of(record.kind, &msg),
            ));
        }
        indexed += records.len() as u64;
        insert_rows(tx, rows).await?;
    }
    Ok(Some(indexed))
}

/// Which matches a ranking takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    All,
    /// Every word in the title, summary, terms or people.
    Short,
    /// The rest.
    Long,
}

/// What the statements of one search leave out for visibility: the
/// restricted records the viewer may not see, listed when there are few (a
/// hub with none, the common case, needs no condition at all; the check
/// cost about 60 ns per match on SQLite, a third of counting a common word),
/// else a subquery.
#[derive(Debug, Clone, PartialEq)]
pub enum Hidden {
    Ids(Vec<i64>),
    Many,
}

/// Above this many, `Hidden::Many`.
pub const HIDDEN_LISTED: usize = 500;

/// The ids of up to `HIDDEN_LISTED + 1` restricted records the viewer may
/// not see (rows of `id`), from the partial index `records_restricted`.
pub fn hidden(viewer: &str) -> Statement {
    let mut params = Vec::new();
    let viewer = push_param(&mut params, SqlParam::Text(viewer.into()));
    (
        format!("{} LIMIT {}", hidden_ids(&viewer), HIDDEN_LISTED + 1),
        params,
    )
}

/// Ids (`id`) of the restricted records `viewer` (a placeholder) may not
/// see; `records_restricted` holds exactly the records they are drawn from.
fn hidden_ids(viewer: &str) -> String {
    format!(
        "SELECT r.id AS id FROM records r WHERE r.tlp IN ({}) AND NOT {}",
        sql::restricted_tlps(),
        sql::visible_to(viewer)
    )
}

impl Hidden {
    pub fn of(ids: Vec<i64>) -> Self {
        if ids.len() > HIDDEN_LISTED {
            Hidden::Many
        } else {
            Hidden::Ids(ids)
        }
    }
}

/// Whether the ranking statement also counts the matches (`n`, from
/// `count(*) OVER ()`), so no count runs first. PostgreSQL reads every
/// match's row to count it as well as to rank it (`EXPLAIN ANALYZE` of a
/// two-word query with 25,485 matches: the same 16,518 heap pages twice);
/// SQLite counts from its index alone and needs the count to pick tiers.
pub fn counts_while_ranking(dialect: Dialect) -> bool {
    matches!(dialect, Dialect::Postgres)
}

/// The tiers a search with `total` matches ranks, in order.
pub fn tiers(dialect: Dialect, total: i64) -> &'static [Tier] {
    match dialect {
        Dialect::Sqlite if total > EXACT_RANK_LIMIT => &[Tier::Short, Tier::Long],
        _ => &[Tier::All],
    }
}

pub type Statement = (String, Vec<SqlParam>);

/// A statement's parts: the index `table`, on PostgreSQL the `tsquery`
/// (bound once, as `q`), and the conditions.
struct Parts {
    table: &'static str,
    tsquery: Option<String>,
    conditions: String,
    params: Vec<SqlParam>,
}

impl Parts {
    /// `SELECT columns` of the matching rows.
    fn select(&self, columns: &str) -> String {
        match &self.tsquery {
            None => format!(
                "SELECT {columns} FROM {} WHERE {}",
                self.table, self.conditions
            ),
            Some(tsquery) => format!(
                "WITH q AS (SELECT {tsquery} AS query) SELECT {columns} FROM {}, q WHERE {}",
                self.table, self.conditions
            ),
        }
    }
}

fn fts5_phrase(words: &[String]) -> String {
    format!("\"{}\"", words.join(" "))
}

/// `terms` as FTS5 phrases joined by `op`.
fn fts5_terms(terms: &[Term], op: &str) -> String {
    terms
        .iter()
        .map(|t| fts5_phrase(t))
        .collect::<Vec<_>>()
        .join(op)
}

/// The FTS5 expression of every included term.
fn fts5_included(query: &SearchQuery<'_>) -> String {
    format!("({})", fts5_terms(&query.query.include, " AND "))
}

/// The FTS5 expression of every included term, none excluded.
fn fts5_expression(query: &SearchQuery<'_>) -> String {
    let mut expr = fts5_included(query);
    if !query.query.exclude.is_empty() {
        expr = format!(
            "({expr} NOT ({}))",
            fts5_terms(&query.query.exclude, " OR ")
        );
    }
    expr
}

/// The SQLite conditions of a tier: a match in the index it ranks from
/// (returned) and, for the tiers, a set of row ids of the other index. Every
/// term is a quoted string of plain words, so nothing a client writes is
/// read as FTS5 syntax.
fn fts5_conditions(
    query: &SearchQuery<'_>,
    tier: Tier,
    params: &mut Vec<SqlParam>,
) -> (&'static str, String) {
    match tier {
        Tier::All => {
            let expr = push_param(params, SqlParam::Text(fts5_expression(query)));
            (INDEX, format!("{INDEX} MATCH {expr}"))
        }
        Tier::Short => {
            let expr = push_param(params, SqlParam::Text(fts5_included(query)));
            let mut conditions = format!("{SHORT_INDEX} MATCH {expr}");
            if !query.query.exclude.is_empty() {
                // An excluded word may be in any column.
                let excluded = push_param(
                    params,
                    SqlParam::Text(fts5_terms(&query.query.exclude, " OR ")),
                );
                conditions.push_str(&format!(
                    " AND {SHORT_INDEX}.rowid NOT IN \
                     (SELECT rowid FROM {INDEX} WHERE {INDEX} MATCH {excluded})"
                ));
            }
            (SHORT_INDEX, conditions)
        }
        Tier::Long => {
            let expr = push_param(params, SqlParam::Text(fts5_expression(query)));
            let short = push_param(params, SqlParam::Text(fts5_included(query)));
            (
                INDEX,
                format!(
                    "{INDEX} MATCH {expr} AND {INDEX}.rowid NOT IN \
                     (SELECT rowid FROM {SHORT_INDEX} WHERE {SHORT_INDEX} MATCH {short})"
                ),
            )
        }
    }
}

/// The PostgreSQL tsquery of a search, each term parsed by
/// `phraseto_tsquery` from a bound parameter.
fn tsquery(query: &SearchQuery<'_>, params: &mut Vec<SqlParam>) -> String {
    let mut parse = |words: &[String]| {
        format!(
            "phraseto_tsquery('english', {})",
            push_param(params, SqlParam::Text(words.join(" ")))
        )
    };
    let mut tsquery = query
        .query
        .include
        .iter()
        .map(|t| parse(t))
        .collect::<Vec<_>>()
        .join(" && ");
    for term in &query.query.exclude {
        tsquery = format!("({tsquery}) && !!{}", parse(term));
    }
    tsquery
}

fn parts(dialect: Dialect, query: &SearchQuery<'_>, tier: Tier, hidden: &Hidden) -> Result<Parts> {
    let mut params = Vec::new();
    let (table, tsquery, mut conditions) = match dialect {
        Dialect::Sqlite => {
            let (table, conditions) = fts5_conditions(query, tier, &mut params);
            (table, None, conditions)
        }
        Dialect::Postgres => (
            INDEX,
            Some(tsquery(query, &mut params)),
            format!("{INDEX}.document @@ q.query"),
        ),
    };
    let record_id = record_id_sql(dialect, table);
    match hidden {
        Hidden::Ids(ids) if ids.is_empty() => {}
        Hidden::Ids(ids) => {
            let ids: Vec<String> = ids
                .iter()
                .map(|id| push_param(&mut params, SqlParam::Int(*id)))
                .collect();
            conditions.push_str(&format!(" AND {record_id} NOT IN ({})", ids.join(", ")));
        }
        Hidden::Many => {
            let viewer = push_param(&mut params, SqlParam::Text(query.viewer.into()));
            conditions.push_str(&format!(
                " AND {record_id} NOT IN ({})",
                hidden_ids(&viewer)
            ));
        }
    }
    // What only `records` knows is asked of the one record per match.
    let mut of_record = Vec::new();
    if !query.kinds.is_empty() {
        match dialect {
            Dialect::Sqlite => {
                let codes: Vec<String> = query
                    .kinds
                    .iter()
                    .map(|k| kind_code(*k).to_string())
                    .collect();
                conditions.push_str(&format!(" AND {table}.rowid % 4 IN ({})", codes.join(", ")));
            }
            Dialect::Postgres => of_record.push(format!(
                "r.kind IN ({})",
                sql::kind_params(&mut params, query.kinds)
            )),
        }
    }
    if let Some(expr) = query.filter {
        let compiled = sql_filter::compile(expr, &index::CommonFields, params.len() + 1)
            .map_err(|e| Error::invalid("filter", e.to_string()))?;
        of_record.push(format!("({})", compiled.sql));
        params.extend(compiled.params);
    }
    if !of_record.is_empty() {
        conditions.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM records r WHERE r.id = {record_id} AND {})",
            of_record.join(" AND ")
        ));
    }
    Ok(Parts {
        table,
        tsquery,
        conditions,
        params,
    })
}

/// How many records the viewer may see match; one row, column `n`.
pub fn count(
    dialect: Dialect,
    query: &SearchQuery<'_>,
    tier: Tier,
    hidden: &Hidden,
) -> Result<Statement> {
    let p = parts(dialect, query, tier, hidden)?;
    Ok((p.select("count(*) AS n"), p.params))
}

/// A page of one tier, best first: rows of `id` and `score` (higher is
/// better), and with `counted` the tier's matches as `n` in every row.
pub fn rank(
    dialect: Dialect,
    query: &SearchQuery<'_>,
    tier: Tier,
    hidden: &Hidden,
    offset: usize,
    limit: usize,
    counted: bool,
) -> Result<Statement> {
    let mut p = parts(dialect, query, tier, hidden)?;
    let score = match dialect {
        // The short index has the first four columns.
        Dialect::Sqlite if p.table == SHORT_INDEX => {
            format!("-bm25({SHORT_INDEX}, {SHORT_BM25_WEIGHTS})")
        }
        Dialect::Sqlite => format!("-bm25({INDEX}, {BM25_WEIGHTS})"),
        // Normalised by document length (1), so a long text with a passing
        // mention does not outweigh a short, exact one.
        Dialect::Postgres => "ts_rank(record_search.document, q.query, 1)::float8".into(),
    };
    let limit = push_param(&mut p.params, SqlParam::Int(limit as i64));
    let offset = push_param(&mut p.params, SqlParam::Int(offset as i64));
    let matches = p.select(&format!(
        "{} AS id, {score} AS score",
        record_id_sql(dialect, p.table)
    ));
    let page = format!("ORDER BY score DESC, id LIMIT {limit} OFFSET {offset}");
    let sql = if counted {
        // Scored inside the fence (`OFFSET 0`), so the window's store of
        // every match holds (id, score) only. Scored above it, it held each
        // match's tsvector until ranking, and spilled to temporary files for
        // common words: the bench's 1000 queries at 100,000 records, by
        // psql on PostgreSQL, p99 81 → 46 ms.
        format!(
            "SELECT id, score, count(*) OVER () AS n FROM ({matches} OFFSET 0) AS matches {page}"
        )
    } else {
        format!("{matches} {page}")
    };
    Ok((sql, p.params))
}

/// The records `ids` (already known to be visible matches); snippets are
/// made from their text (`domain::search::snippet`).
pub fn hits(ids: &[i64]) -> Statement {
    let mut params = Vec::new();
    let ids: Vec<String> = ids
        .iter()
        .map(|id| push_param(&mut params, SqlParam::Int(*id)))
        .collect();
    (
        format!(
            "SELECT {RECORD_COLUMNS} FROM records r WHERE r.id IN ({})",
            ids.join(", ")
        ),
        params,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Kind, search};

    fn query<'a>(q: &'a search::Query, kinds: &'a [Kind]) -> SearchQuery<'a> {
        SearchQuery {
            viewer: "ngo-1",
            query: q,
            kinds,
            filter: None,
            offset: 0,
            limit: 10,
        }
    }

    #[test]
    fn fts5_expressions_quote_every_client_word() {
        let q = search::parse(r#"hash "photo dna" -video NEAR(x) {audience}:public hash"#).unwrap();
        assert_eq!(
            fts5_expression(&query(&q, &[])),
            r#"(("hash" AND "photo dna" AND "near x" AND "audience public") NOT ("video"))"#
        );
    }

    #[test]
    fn tiers_match_in_the_short_index_then_the_rest_of_the_full_one() {
        let q = search::parse("hash -video -audio").unwrap();
        let q = query(&q, &[]);
        let cases = [
            (
                Tier::Short,
                SHORT_INDEX,
                "record_search_short MATCH $1 AND record_search_short.rowid NOT IN \
                 (SELECT rowid FROM record_search WHERE record_search MATCH $2)",
                [r#"("hash")"#, r#""video" OR "audio""#],
            ),
            (
                Tier::Long,
                INDEX,
                "record_search MATCH $1 AND record_search.rowid NOT IN \
                 (SELECT rowid FROM record_search_short WHERE record_search_short MATCH $2)",
                [r#"(("hash") NOT ("video" OR "audio"))"#, r#"("hash")"#],
            ),
        ];
        for (tier, table, conditions, expressions) in cases {
            let mut params = Vec::new();
            assert_eq!(
                fts5_conditions(&q, tier, &mut params),
                (table, conditions.to_owned()),
                "{tier:?}"
            );
            assert_eq!(params, expressions.map(|e| SqlParam::Text(e.into())));
        }
    }
}
