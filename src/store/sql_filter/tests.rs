//! The filter compiler's SQL, parameters and refusals.

use super::*;
use crate::domain::filter::parse;

struct TestFields;

fn enum_type(prefix: &str, names: &[&str]) -> ValueType {
    ValueType::Enum {
        values: names
            .iter()
            .zip(0..)
            .map(|(name, number)| (format!("{prefix}{name}"), number))
            .collect(),
        prefix: prefix.to_owned(),
    }
}

impl FieldResolver for TestFields {
    fn resolve(&self, path: &str) -> Option<FieldTarget> {
        let target = |storage, ty, repeated| {
            Some(FieldTarget {
                storage,
                ty,
                repeated,
            })
        };
        let attr = |name: &str| Storage::Attr(name.to_owned());
        let tlp = || enum_type("TLP_", &["UNSPECIFIED", "CLEAR", "GREEN", "AMBER", "RED"]);
        match path {
            "name" => target(Storage::Column("name"), ValueType::String, false),
            "create_time" => target(Storage::Column("create_time"), ValueType::Timestamp, false),
            "tlp" | "sharing.tlp" => target(Storage::Column("tlp"), tlp(), false),
            "year" => target(attr("year"), ValueType::Int, false),
            "online" => target(attr("online"), ValueType::Bool, false),
            "category" => target(
                attr("category"),
                enum_type(
                    "TOOL_CATEGORY_",
                    &["UNSPECIFIED", "HASH_MATCHING", "CLASSIFIER"],
                ),
                false,
            ),
            "regions" => target(attr("regions"), ValueType::String, true),
            "held" => target(attr("held"), ValueType::Timestamp, false),
            "dates" => target(attr("dates"), ValueType::Timestamp, true),
            "sharing.recipients" => target(Storage::Recipients, ValueType::String, true),
            _ => match path.strip_prefix("labels.") {
                Some(key) if !key.is_empty() => target(attr(path), ValueType::String, false),
                _ => None,
            },
        }
    }

    fn field_names(&self) -> Vec<String> {
        ["name", "tlp", "year"].map(String::from).to_vec()
    }
}

fn compile_at(filter: &str, first_param: usize) -> Result<SqlFilter, FilterError> {
    let expr = parse(filter)?.expect("non-empty filter");
    compile(&expr, &TestFields, first_param)
}

fn ok(filter: &str) -> SqlFilter {
    compile_at(filter, 1).unwrap_or_else(|e| panic!("{filter}: {e}"))
}

fn err(filter: &str) -> FilterError {
    match compile_at(filter, 1) {
        Err(e) => e,
        Ok(f) => panic!("{filter} should fail, got {f:?}"),
    }
}

fn text(s: &str) -> SqlParam {
    SqlParam::Text(s.to_owned())
}

const ATTR: &str = "SELECT 1 FROM record_attrs a WHERE a.record = r.id AND a.field";
const RECIPIENT: &str =
    "EXISTS (SELECT 1 FROM record_recipients x WHERE x.record = r.id AND x.partner = $1)";

#[test]
fn column_restrictions() {
    let f = ok("name = \"tools/1\"");
    assert_eq!(f.sql, "r.name = $1");
    assert_eq!(f.params, vec![text("tools/1")]);

    let f = ok("create_time >= 2024-01-01T03:00:00+03:00");
    assert_eq!(f.sql, "r.create_time >= $1");
    assert_eq!(f.params, vec![SqlParam::Int(1_704_067_200_000_000)]);

    // Half a microsecond before the epoch: stored times below it are those
    // below 0, and those above it are above -1.
    let f = ok("create_time < \"1969-12-31T23:59:59.9999995Z\"");
    assert_eq!(f.params, vec![SqlParam::Int(0)]);
    let f = ok("create_time > \"1969-12-31T23:59:59.9999995Z\"");
    assert_eq!(f.params, vec![SqlParam::Int(-1)]);
    let f = ok("create_time >= 2024-01-01T00:00:00.000000001Z");
    assert_eq!(f.sql, "r.create_time >= $1");
    assert_eq!(f.params, vec![SqlParam::Int(1_704_067_200_000_001)]);
    let f = ok("create_time <= 2024-01-01T00:00:00.000000001Z");
    assert_eq!(f.params, vec![SqlParam::Int(1_704_067_200_000_000)]);
    // No stored time equals one between two microseconds.
    assert_eq!(
        ok("create_time = 2024-01-01T00:00:00.000000001Z").sql,
        "1 = 0"
    );
    assert_eq!(
        ok("create_time != 2024-01-01T00:00:00.000000001Z").sql,
        "1 = 1"
    );
    assert_eq!(
        ok("create_time = 2024-01-01T00:00:00.000001Z").sql,
        "r.create_time = $1"
    );

    let f = ok("sharing.tlp != GREEN");
    assert_eq!(f.sql, "r.tlp <> $1");
    assert_eq!(f.params, vec![SqlParam::Int(2)]);
}

#[test]
fn attr_restrictions() {
    let f = ok("year >= 2012");
    assert_eq!(f.sql, format!("EXISTS ({ATTR} = $1 AND a.num >= $2)"));
    assert_eq!(f.params, vec![text("year"), SqlParam::Int(2012)]);

    // Scalar `!=`: the one row differs.
    let f = ok("year != \"-5\"");
    assert_eq!(f.sql, format!("EXISTS ({ATTR} = $1 AND a.num <> $2)"));
    assert_eq!(f.params, vec![text("year"), SqlParam::Int(-5)]);

    // Repeated `!=`: no element equals.
    let f = ok("regions != \"KE\"");
    assert_eq!(f.sql, format!("NOT EXISTS ({ATTR} = $1 AND a.str = $2)"));
    assert_eq!(f.params, vec![text("regions"), text("KE")]);

    let f = ok("regions:KE");
    assert_eq!(f.sql, format!("EXISTS ({ATTR} = $1 AND a.str = $2)"));

    let f = ok("online = true");
    assert_eq!(f.params, vec![text("online"), SqlParam::Int(1)]);
}

#[test]
fn a_trailing_star_matches_by_prefix() {
    let f = ok("name = \"partners/é/*\"");
    assert_eq!(f.sql, "substr(r.name, 1, 11) = $1");
    assert_eq!(f.params, vec![text("partners/é/")]);
    assert_eq!(ok("name != \"p*\"").sql, "substr(r.name, 1, 1) <> $1");
    // Repeated: some element starts so; `!=`, none does.
    let f = ok("regions:\"K*\"");
    assert_eq!(
        f.sql,
        format!("EXISTS ({ATTR} = $1 AND substr(a.str, 1, 1) = $2)")
    );
    assert_eq!(f.params, vec![text("regions"), text("K")]);
    let f = ok("regions != K*");
    assert_eq!(
        f.sql,
        format!("NOT EXISTS ({ATTR} = $1 AND substr(a.str, 1, 1) = $2)")
    );
    // A star elsewhere is a character; on other types, a value as before.
    assert_eq!(ok("name = \"a*b\"").params, vec![text("a*b")]);
    assert!(err("year = \"20*\"").message.contains("needs an integer"));
    let e = err("name < \"partners/*\"");
    assert_eq!(e.position, 7);
    assert!(e.message.contains("matches by prefix"), "{}", e.message);
}

#[test]
fn attr_times_between_microseconds_equal_nothing() {
    let between = "2024-01-01T00:00:00.0000005Z";
    assert_eq!(ok(&format!("held = {between}")).sql, "1 = 0");
    assert_eq!(ok(&format!("dates:{between}")).sql, "1 = 0");
    assert_eq!(ok(&format!("dates != {between}")).sql, "1 = 1");
    let f = ok(&format!("held != {between}"));
    assert_eq!(f.sql, format!("EXISTS ({ATTR} = $1)"));
    assert_eq!(f.params, vec![text("held")]);
    let f = ok(&format!("dates < {between}"));
    assert_eq!(f.sql, format!("EXISTS ({ATTR} = $1 AND a.num < $2)"));
    assert_eq!(
        f.params,
        vec![text("dates"), SqlParam::Int(1_704_067_200_000_001)]
    );
}

#[test]
fn attr_enums_bind_the_full_name() {
    for filter in [
        "category = HASH_MATCHING",
        "category = \"HASH_MATCHING\"",
        "category = TOOL_CATEGORY_HASH_MATCHING",
    ] {
        let f = ok(filter);
        assert_eq!(f.sql, format!("EXISTS ({ATTR} = $1 AND a.str = $2)"));
        assert_eq!(
            f.params,
            vec![text("category"), text("TOOL_CATEGORY_HASH_MATCHING")],
            "{filter}"
        );
    }
}

#[test]
fn presence() {
    let f = ok("labels.region:*");
    assert_eq!(f.sql, format!("EXISTS ({ATTR} = $1)"));
    assert_eq!(f.params, vec![text("labels.region")]);

    assert_eq!(ok("labels:region"), f);
    assert_eq!(ok("labels:\"region\""), f);

    let f = ok("labels:*");
    assert_eq!(
        f.sql,
        "EXISTS (SELECT 1 FROM record_attrs a WHERE a.record = r.id AND substr(a.field, 1, 7) = $1)"
    );
    assert_eq!(f.params, vec![text("labels.")]);

    let f = ok("sharing.recipients:*");
    assert_eq!(
        f.sql,
        "EXISTS (SELECT 1 FROM record_recipients x WHERE x.record = r.id)"
    );
    assert!(f.params.is_empty());
}

#[test]
fn recipients() {
    for filter in [
        "sharing.recipients = \"partners/b\"",
        "sharing.recipients:partners/b",
    ] {
        let f = ok(filter);
        assert_eq!(f.sql, RECIPIENT);
        assert_eq!(f.params, vec![text("b")]);
    }
    let f = ok("sharing.recipients != partners/b");
    assert_eq!(f.sql, format!("NOT {RECIPIENT}"));

    for bad in ["b", "partners/", "partners/b/c", "tools/b"] {
        let e = err(&format!("sharing.recipients = \"{bad}\""));
        assert_eq!(e.position, 21);
        assert!(e.message.contains("partners/b"), "{e}");
    }
    assert!(
        err("sharing.recipients > partners/b")
            .message
            .contains("cannot be used")
    );
}

#[test]
fn boolean_structure_and_numbering() {
    let f =
        compile_at("tlp = GREEN AND tlp = RED OR sharing.tlp = TLP_AMBER", 3).expect("compiles");
    assert_eq!(f.sql, "(r.tlp = $3 AND (r.tlp = $4 OR r.tlp = $5))");
    assert_eq!(
        f.params,
        vec![SqlParam::Int(2), SqlParam::Int(4), SqlParam::Int(3)]
    );

    let f = compile_at("regions:\"KE\" AND year >= 2012", 3).expect("compiles");
    assert_eq!(
        f.sql,
        format!("(EXISTS ({ATTR} = $3 AND a.str = $4) AND EXISTS ({ATTR} = $5 AND a.num >= $6))")
    );
    assert_eq!(
        f.params,
        vec![
            text("regions"),
            text("KE"),
            text("year"),
            SqlParam::Int(2012)
        ]
    );

    let f = ok("NOT (name = a OR -name = b)");
    assert_eq!(f.sql, "NOT ((r.name = $1 OR NOT (r.name = $2)))");
    assert_eq!(f.params, vec![text("a"), text("b")]);
}

#[test]
fn injection_only_reaches_params() {
    let attack = "x' OR 1=1 --";
    let f = ok(&format!(
        "name = \"{attack}\" OR labels.region = \"a\\\"); DROP TABLE records; --\""
    ));
    assert_eq!(
        f.sql,
        format!("(r.name = $1 OR EXISTS ({ATTR} = $2 AND a.str = $3))")
    );
    assert_eq!(
        f.params,
        vec![
            text(attack),
            text("labels.region"),
            text("a\"); DROP TABLE records; --")
        ]
    );
    // A hostile label key is a parameter too.
    let f = ok("labels:\"k') OR 1=1 --\"");
    assert_eq!(f.sql, format!("EXISTS ({ATTR} = $1)"));
    assert_eq!(f.params, vec![text("labels.k') OR 1=1 --")]);
}

#[test]
fn errors_point_at_the_culprit() {
    let e = err("year = 1 AND foo = 2");
    assert_eq!(e.position, 13);
    assert_eq!(
        e.message,
        "unknown field \"foo\"; filterable fields include name, tlp, year"
    );

    let e = err("tlp = PURPLE");
    assert_eq!(e.position, 6);
    assert!(
        e.message
            .contains("UNSPECIFIED, CLEAR, GREEN, AMBER, RED (optionally prefixed with TLP_)"),
        "{e}"
    );

    let e = err("create_time > 2024-13-01T00:00:00Z");
    assert_eq!(e.position, 14);
    assert!(e.message.contains("RFC 3339"), "{e}");
    assert!(err("create_time > 2024-01-01").message.contains("RFC 3339"));

    let cases: &[(&str, usize, &str)] = &[
        ("year = twelve", 7, "an integer"),
        ("year = 1.5", 7, "an integer"),
        ("online = yes", 9, "true or false"),
        ("tlp < RED", 0, "cannot be used"),
        ("online >= true", 0, "cannot be used"),
        ("year = *", 7, "'*' can only be used with ':'"),
        ("name:*", 5, "always present"),
        ("labels:\"\"", 7, "not a valid label key"),
        ("labels = x", 0, "unknown field \"labels\""),
        ("NOT (name = a OR nope = 1)", 17, "unknown field \"nope\""),
    ];
    for &(filter, position, message) in cases {
        let e = err(filter);
        assert_eq!(e.position, position, "{filter}: {e}");
        assert!(e.message.contains(message), "{filter}: {e}");
    }
}

#[test]
fn empty_lists_are_identities() {
    let f = compile(&Expr::And(Vec::new()), &TestFields, 1).expect("compiles");
    assert_eq!(f.sql, "1 = 1");
    let f = compile(&Expr::Or(Vec::new()), &TestFields, 1).expect("compiles");
    assert_eq!(f.sql, "1 = 0");
}

mod sqlite {
    use super::*;
    use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

    async fn database() -> SqlitePool {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("open in-memory database");
        // ids: 1 GREEN, KE+UG, 2015, label region, shared with b
        //      2 RED, TZ, 2010
        //      3 AMBER, KE, 2011, label other, shared with c
        //      4 CLEAR, no regions, 2020, named with a quote
        let statements = [
            "CREATE TABLE records (id INTEGER PRIMARY KEY, kind TEXT, owner TEXT, record_id TEXT, \
             name TEXT UNIQUE, uid TEXT, etag TEXT, create_time INTEGER, update_time INTEGER, \
             tlp INTEGER, title TEXT, body BLOB)",
            "CREATE TABLE record_recipients (record INTEGER, partner TEXT)",
            "CREATE TABLE record_attrs (record INTEGER, field TEXT, str TEXT, num INTEGER)",
            "INSERT INTO records (id, kind, owner, name, tlp, create_time) VALUES \
             (1, 'tool', 'a', 'partners/a/tools/1', 2, 1704067200000000), \
             (2, 'tool', 'a', 'partners/a/tools/2', 4, 1704067200000001), \
             (3, 'tool', 'a', 'partners/a/tools/3', 3, 0), \
             (4, 'tool', 'a', 'x'' OR 1=1 --', 1, 0), \
             (5, 'workshop', 'a', 'partners/a/workshops/5', 2, 0)",
            "INSERT INTO record_recipients (record, partner) VALUES (1, 'b'), (3, 'c')",
            "INSERT INTO record_attrs (record, field, str, num) VALUES \
             (1, 'regions', 'KE', NULL), (1, 'regions', 'UG', NULL), (1, 'year', NULL, 2015), \
             (1, 'labels.region', 'east', NULL), \
             (2, 'regions', 'TZ', NULL), (2, 'year', NULL, 2010), \
             (3, 'regions', 'KE', NULL), (3, 'year', NULL, 2011), (3, 'labels.other', 'x', NULL), \
             (4, 'year', NULL, 2020), \
             (5, 'regions', 'KE', NULL), (5, 'year', NULL, 2020)",
        ];
        for statement in statements {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .expect("set up schema");
        }
        pool
    }

    /// The ids of `tool` records owned by `a` matching `filter`, with the
    /// filter's placeholders following the query's own two.
    async fn select(pool: &SqlitePool, filter: &str) -> Vec<i64> {
        let f = compile_at(filter, 3).unwrap_or_else(|e| panic!("{filter}: {e}"));
        let sql = format!(
            "SELECT r.id FROM records r WHERE r.kind = $1 AND r.owner = $2 AND {} ORDER BY r.id",
            f.sql
        );
        let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .bind("tool")
            .bind("a");
        for param in f.params {
            query = match param {
                SqlParam::Text(s) => query.bind(s),
                SqlParam::Int(i) => query.bind(i),
                SqlParam::Null => query.bind(None::<i64>),
                SqlParam::Bool(b) => query.bind(b),
                SqlParam::Blob(b) => query.bind(b),
            };
        }
        query
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
    }

    #[tokio::test]
    async fn fragments_select_the_right_records() {
        let pool = database().await;
        let cases: &[(&str, &[i64])] = &[
            ("regions:\"KE\" AND year >= 2012", &[1]),
            ("regions:KE", &[1, 3]),
            ("NOT regions:\"KE\"", &[2, 4]),
            ("regions != KE", &[2, 4]),
            ("year != 2015", &[2, 3, 4]),
            ("labels.region:*", &[1]),
            ("labels:region", &[1]),
            ("labels:*", &[1, 3]),
            ("labels.region = east", &[1]),
            ("tlp = GREEN OR tlp = TLP_RED", &[1, 2]),
            ("tlp != GREEN tlp != RED", &[3, 4]),
            ("sharing.recipients = \"partners/b\"", &[1]),
            ("sharing.recipients != partners/b", &[2, 3, 4]),
            ("sharing.recipients:*", &[1, 3]),
            ("create_time > 2024-01-01T00:00:00Z", &[2]),
            ("create_time >= 2024-01-01T00:00:00Z AND -year < 2012", &[1]),
            ("name = \"x' OR 1=1 --\"", &[4]),
            ("name = \"y' OR 1=1 --\"", &[]),
            ("name = \"partners/a/tools/*\"", &[1, 2, 3]),
            ("name != \"partners/*\"", &[4]),
            ("name = \"*\"", &[1, 2, 3, 4]),
            ("regions:\"K*\"", &[1, 3]),
            ("regions != \"K*\"", &[2, 4]),
            ("labels.region = \"ea*\"", &[1]),
        ];
        for &(filter, expected) in cases {
            assert_eq!(select(&pool, filter).await, expected, "{filter}");
        }
    }
}
