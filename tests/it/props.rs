//! Property tests (issue 7, "fuzzing" on a stable toolchain): whatever a
//! client sends as a filter, a page token, a feed cursor or proto3 JSON is
//! refused cleanly, never with a panic, and what the hub issues itself
//! round-trips.
//!
//! The number of cases is proptest's: 256 each, or `PROPTEST_CASES`.

use copex::cli::json::{from_json, to_json};
use copex::domain::filter::{self, Expr, MAX_DEPTH, MAX_FILTER_LEN, Value};
use copex::domain::paging::{PageTokens, SortValue};
use copex::feed::Cursors;
use copex::pb;
use proptest::prelude::*;

/// The grpc code of INVALID_ARGUMENT.
const INVALID_ARGUMENT: i32 = 3;
/// The grpc code of FAILED_PRECONDITION.
const FAILED_PRECONDITION: i32 = 9;

/// Deletes, inserts or replaces a character at each of `edits`, so that
/// inputs stay close to valid ones (where bugs hide) rather than noise.
fn mutate(text: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(at, how, c) in edits {
        let at = if chars.is_empty() {
            0
        } else {
            at % chars.len()
        };
        match how % 3 {
            0 if !chars.is_empty() => {
                chars.remove(at);
            }
            1 => chars.insert(at, c),
            _ if !chars.is_empty() => chars[at] = c,
            _ => chars.push(c),
        }
    }
    chars.into_iter().collect()
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, char)>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), any::<char>()), 1..4)
}

// ---- filters ----------------------------------------------------------------

/// Pieces a filter is made of, valid or not in the order they come.
fn filter_token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "title",
            "year",
            "labels.region",
            "sharing.tlp",
            "a.b.c",
            "région",
            "_x1",
            "labels",
            "ORDER",
            "NOTE",
        ])
        .prop_map(str::to_owned),
        prop::sample::select(vec!["=", "!=", "<", "<=", ">", ">=", ":", "!", "==", "=>"])
            .prop_map(str::to_owned),
        prop::sample::select(vec![
            "AND", "OR", "NOT", "-", "(", ")", "*", ".", "\"", "\\", "and", "or"
        ])
        .prop_map(str::to_owned),
        prop::sample::select(vec![
            "2012",
            "-5",
            "1.5",
            "GREEN",
            "TLP_RED",
            "2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00.123456789+03:00",
            "true",
            "x';DROP",
        ])
        .prop_map(str::to_owned),
        "\"([^\"\\\\]|\\\\[\"\\\\ntrq]){0,8}\"?",
        "[a-zA-Z0-9_]{1,6}",
        any::<char>().prop_map(String::from),
    ]
}

fn whitespace() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", " ", " ", "  ", "\t", "\n", "\u{a0}", "\u{3000}"])
        .prop_map(str::to_owned)
}

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec((filter_token(), whitespace()), 0..24).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(token, space)| token + &space)
            .collect()
    })
}

/// A syntactically valid filter and the shape its parse must have.
#[derive(Debug, Clone)]
enum Tree {
    Leaf { text: String, shape: String },
    And(Vec<Tree>, bool),
    Or(Vec<Tree>),
    Not(Box<Tree>, bool),
    Paren(Box<Tree>),
}

fn leaf() -> impl Strategy<Value = Tree> {
    let field = prop::sample::select(vec![
        "title",
        "year",
        "labels.region",
        "sharing.tlp",
        "a.b.c",
        "région",
        "ORDER",
        "NOTE",
        "x_1",
    ]);
    let op = prop::sample::select(vec!["=", "!=", "<", "<=", ">", ">=", ":"]);
    let value = prop_oneof![
        // A bare value: anything but whitespace, quotes and parentheses, and
        // not a keyword. A leading '=' after an operator is an error ("==").
        "[a-zA-Z0-9_.:*+/'%-]{1,10}"
            .prop_filter("keywords and '*' are not bare values", |v| {
                !matches!(v.as_str(), "AND" | "OR" | "NOT" | "*")
            })
            .prop_map(|v| (v.clone(), v)),
        Just(("*".to_owned(), "*".to_owned())),
        // A quoted string, with escapes.
        // (NUL is refused wherever it is.)
        prop::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..8).prop_map(
            |chars| {
                let value: String = chars.into_iter().collect();
                (quote(&value), format!("{value:?}"))
            }
        ),
    ];
    (field, whitespace(), op, whitespace(), value).prop_map(|(field, s1, op, s2, (text, shown))| {
        Tree::Leaf {
            text: format!("{field}{s1}{op}{s2}{text}"),
            shape: format!("{field}{op}{shown}"),
        }
    })
}

/// `value` as a filter string literal.
fn quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn tree() -> impl Strategy<Value = Tree> {
    leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 2..4), any::<bool>())
                .prop_map(|(items, keyword)| Tree::And(items, keyword)),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Tree::Or),
            (inner.clone(), any::<bool>()).prop_map(|(t, dash)| Tree::Not(Box::new(t), dash)),
            inner.prop_map(|t| Tree::Paren(Box::new(t))),
        ]
    })
}

impl Tree {
    /// The filter text. OR binds tighter than AND, so an AND inside an OR or
    /// a NOT needs parentheses, and an OR inside an AND does not.
    fn text(&self) -> String {
        match self {
            Tree::Leaf { text, .. } => text.clone(),
            Tree::And(items, keyword) => items
                .iter()
                .map(|t| t.text())
                .collect::<Vec<_>>()
                .join(if *keyword { " AND " } else { " " }),
            Tree::Or(items) => items
                .iter()
                .map(|t| match t {
                    Tree::And(..) | Tree::Or(..) => format!("({})", t.text()),
                    _ => t.text(),
                })
                .collect::<Vec<_>>()
                .join(" OR "),
            Tree::Not(inner, dash) => {
                let inner = match **inner {
                    Tree::And(..) | Tree::Or(..) => format!("({})", inner.text()),
                    _ => inner.text(),
                };
                if *dash {
                    format!("-{inner}")
                } else {
                    format!("NOT {inner}")
                }
            }
            Tree::Paren(inner) => format!("({})", inner.text()),
        }
    }

    /// The shape the parser must give it: like `shape` of a parsed `Expr`,
    /// with nested ANDs (ORs) flattened into their parent AND (OR).
    fn shape(&self) -> String {
        match self {
            Tree::Leaf { shape, .. } => shape.clone(),
            Tree::And(..) => format!("AND({})", self.flat(true).join(", ")),
            Tree::Or(..) => format!("OR({})", self.flat(false).join(", ")),
            Tree::Not(inner, _) => format!("NOT({})", inner.shape()),
            Tree::Paren(inner) => inner.shape(),
        }
    }

    fn flat(&self, and: bool) -> Vec<String> {
        match (self, and) {
            (Tree::And(items, _), true) => items.iter().flat_map(|t| t.flat(and)).collect(),
            (Tree::Or(items), false) => items.iter().flat_map(|t| t.flat(and)).collect(),
            (Tree::Paren(inner), _) => inner.flat(and),
            _ => vec![self.shape()],
        }
    }
}

fn shape(e: &Expr) -> String {
    let list = |v: &[Expr]| v.iter().map(shape).collect::<Vec<_>>().join(", ");
    match e {
        Expr::And(v) => format!("AND({})", list(v)),
        Expr::Or(v) => format!("OR({})", list(v)),
        Expr::Not(e) => format!("NOT({})", shape(e)),
        Expr::Restriction {
            field, op, value, ..
        } => match value {
            Value::String(s) => format!("{field}{op}{s:?}"),
            Value::Bare(s) => format!("{field}{op}{s}"),
            Value::Any => format!("{field}{op}*"),
        },
    }
}

/// Parses `input`, which must not panic, and checks that an error points
/// inside it (a position may be the end, for "missing value" and the like).
fn parse_checked(input: &str) -> Result<(), TestCaseError> {
    if let Err(e) = filter::parse(input) {
        let chars = input.chars().count();
        prop_assert!(
            e.position <= chars,
            "{input:?}: position {} is past its {chars} characters: {e}",
            e.position
        );
        prop_assert!(!e.message.is_empty());
    }
    Ok(())
}

/// Wraps `a=1` in `n` layers of parentheses, NOT and `-`.
fn nested(layers: &[u8]) -> String {
    let mut open = String::new();
    let mut close = String::new();
    for layer in layers {
        match layer % 3 {
            0 => {
                open.push('(');
                close.push(')');
            }
            1 => open.push_str("NOT "),
            _ => open.push('-'),
        }
    }
    format!("{open}a=1{}", close.chars().rev().collect::<String>())
}

proptest! {
    #[test]
    fn filter_parser_survives_any_string(input in any::<String>()) {
        parse_checked(&input)?;
    }

    #[test]
    fn filter_parser_survives_token_soup(input in token_soup()) {
        parse_checked(&input)?;
    }

    #[test]
    fn filter_parser_survives_mutated_filters(t in tree(), edits in edits()) {
        parse_checked(&mutate(&t.text(), &edits))?;
    }

    #[test]
    fn valid_filters_parse_to_their_shape(t in tree()) {
        let text = t.text();
        match filter::parse(&text) {
            Ok(Some(expr)) => prop_assert_eq!(shape(&expr), t.shape(), "{}", text),
            other => prop_assert!(false, "{text:?} -> {other:?}"),
        }
    }

    #[test]
    fn filters_with_nul_are_refused_at_the_nul(t in tree(), at in any::<prop::sample::Index>()) {
        let mut chars: Vec<char> = t.text().chars().collect();
        let at = at.index(chars.len() + 1);
        chars.insert(at, '\0');
        let input: String = chars.into_iter().collect();
        let e = filter::parse(&input).expect_err("NUL");
        prop_assert_eq!(e.position, at, "{:?}: {}", input, e);
    }

    #[test]
    fn nesting_is_limited_to_max_depth(layers in prop::collection::vec(any::<u8>(), 0..80)) {
        let input = nested(&layers);
        let result = filter::parse(&input);
        if layers.len() <= MAX_DEPTH {
            prop_assert!(matches!(result, Ok(Some(_))), "{input}: {result:?}");
        } else {
            let e = result.expect_err("too deep");
            prop_assert!(e.message.contains("nested too deeply"), "{input}: {e}");
            prop_assert!(e.position <= input.chars().count());
        }
    }

    #[test]
    fn long_filters_are_refused_by_length(
        piece in prop_oneof![Just("x".to_owned()), Just("é".to_owned()), Just("✓ ".to_owned()), any::<char>().prop_map(String::from)],
        extra in 1usize..64,
    ) {
        let mut input = "a=".to_owned();
        while input.len() <= MAX_FILTER_LEN + extra {
            input.push_str(&piece);
        }
        let e = filter::parse(&input).expect_err("too long");
        prop_assert!(e.message.contains("too long"), "{e}");
        prop_assert!(
            e.position <= input.chars().count(),
            "position {} past {} characters", e.position, input.chars().count()
        );
    }
}

// ---- page tokens ------------------------------------------------------------

fn sort_values() -> impl Strategy<Value = Vec<SortValue>> {
    prop::collection::vec(
        prop_oneof![
            any::<i64>().prop_map(SortValue::Int),
            any::<String>().prop_map(SortValue::Text),
        ],
        1..4,
    )
}

fn parts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(any::<String>(), 0..4)
}

/// The query digest of a list call, as the API makes it.
fn digest(parts: &[String]) -> String {
    PageTokens::query_digest(&parts.iter().map(String::as_str).collect::<Vec<_>>())
}

fn query() -> impl Strategy<Value = String> {
    parts().prop_map(|parts| digest(&parts))
}

/// Two different queries (without rejecting cases, which would abort long
/// runs).
fn two_queries() -> impl Strategy<Value = (String, String)> {
    (parts(), parts()).prop_map(|(first, mut second)| {
        if first == second {
            second.push(String::new());
        }
        (digest(&first), digest(&second))
    })
}

proptest! {
    #[test]
    fn page_tokens_round_trip(q in query(), position in sort_values()) {
        let tokens = PageTokens::new(b"a secret of the hub");
        let token = tokens.issue(&q, position.clone()).expect("issue");
        prop_assert_eq!(tokens.open(&q, &token).expect("open"), Some(position));
    }

    #[test]
    fn page_tokens_of_another_query_or_hub_are_refused(
        (q1, q2) in two_queries(), position in sort_values(),
    ) {
        let tokens = PageTokens::new(b"a secret of the hub");
        let token = tokens.issue(&q1, position).expect("issue");
        let e = tokens.open(&q2, &token).expect_err("another query");
        prop_assert_eq!(e.code() as i32, INVALID_ARGUMENT);
        let e = PageTokens::new(b"another hub").open(&q1, &token).expect_err("another hub");
        prop_assert_eq!(e.code() as i32, INVALID_ARGUMENT);
    }

    #[test]
    fn mutated_page_tokens_are_refused(
        q in query(), position in sort_values(), edits in edits(),
    ) {
        let tokens = PageTokens::new(b"a secret of the hub");
        let token = tokens.issue(&q, position).expect("issue");
        let forged = mutate(&token, &edits);
        // Each token has one spelling (canonical base64, sealed body), so any
        // other string is refused.
        prop_assume!(forged != token);
        let e = tokens.open(&q, &forged).expect_err("a forged token");
        prop_assert_eq!(e.code() as i32, INVALID_ARGUMENT);
    }

    #[test]
    fn arbitrary_page_tokens_are_refused(
        token in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,48}",
        ].prop_filter("empty is the first page", |t| !t.is_empty()),
    ) {
        let tokens = PageTokens::new(b"a secret of the hub");
        let e = tokens.open("q", &token).expect_err("not issued");
        prop_assert_eq!(e.code() as i32, INVALID_ARGUMENT);
    }
}

// ---- feed cursors -----------------------------------------------------------

const HUB: &str = "0123456789abcdef0123456789abcdef";
const SECRET: &[u8] = b"the hub database's secret";

fn cursors() -> Cursors {
    Cursors::new(HUB, SECRET)
}

/// What `decode` may say of a string it did not issue: INVALID_ARGUMENT for
/// anything that is not a cursor, FAILED_PRECONDITION for another hub's or
/// an earlier version's; a position only for a cursor sealed by this hub,
/// which nothing made here is (`accepted` names the ones that may be).
fn check_decode(cursor: &str, accepted: &[String]) -> Result<(), TestCaseError> {
    match cursors().decode(cursor) {
        Ok(seq) => {
            prop_assert!(seq >= 0, "{cursor:?} -> {seq}");
            prop_assert!(
                cursor.is_empty() || accepted.iter().any(|a| a == cursor),
                "{cursor:?} accepted"
            );
        }
        Err(e) => prop_assert!(
            [INVALID_ARGUMENT, FAILED_PRECONDITION].contains(&(e.code() as i32)),
            "{cursor:?}: {e:?}"
        ),
    }
    Ok(())
}

fn encoded(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

proptest! {
    #[test]
    fn cursors_round_trip(seq in 0i64..=copex::domain::seal::MAX_NUMBER as i64) {
        let cursors = cursors();
        prop_assert_eq!(cursors.decode(&cursors.encode(seq)).expect("decode"), seq);
        prop_assert_eq!(cursors.decode(&cursors.encode_change(seq)).expect("decode"), seq);
    }

    #[test]
    fn cursors_of_another_hub_are_refused(seq in 0i64..=i64::MAX, other in "[0-9a-f]{32}") {
        prop_assume!(other != HUB);
        for cursor in [Cursors::new(other.clone(), SECRET).encode(seq), encoded(&format!("c1.{other}.{seq}"))] {
            let e = cursors().decode(&cursor).expect_err("another hub");
            prop_assert_eq!(e.code() as i32, FAILED_PRECONDITION);
        }
    }

    #[test]
    fn arbitrary_cursors_are_refused_cleanly(
        cursor in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_-]{1,60}",
            "[-+]?[0-9]{0,22}".prop_map(|seq| encoded(&format!("c1.{HUB}.{seq}"))),
            // Well-encoded text close to a cursor of the first version:
            // wrong version, parts, signs, overflow.
            ("c[0-9]", "\\.", "[0-9a-f.]{0,34}", "\\.?", "[-+]?[0-9]{0,22}", "[.a-z]{0,2}")
                .prop_map(|(a, b, c, d, e, f)| encoded(&format!("{a}{b}{c}{d}{e}{f}"))),
            // Bytes of a sealed cursor's length and version.
            prop::collection::vec(any::<u8>(), 23).prop_map(|mut bytes| {
                use base64::Engine;
                bytes[0] = 2;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
            }),
        ],
    ) {
        check_decode(&cursor, &[])?;
    }

    #[test]
    fn mutated_cursors_are_refused_cleanly(seq in 0i64..=i64::MAX, edits in edits()) {
        let original = cursors().encode(seq);
        let mutated = mutate(&original, &edits);
        check_decode(&mutated, &[original])?;
    }

    #[test]
    fn readable_cursors_of_the_first_version_are_expired(seq in i64::MIN..=i64::MAX) {
        let cursor = encoded(&format!("c1.{HUB}.{seq}"));
        let e = cursors().decode(&cursor).expect_err("first version");
        prop_assert_eq!(e.code() as i32, if seq < 0 { INVALID_ARGUMENT } else { FAILED_PRECONDITION });
    }
}

// ---- proto3 JSON import -----------------------------------------------------

fn timestamp() -> impl Strategy<Value = Option<pbjson_types::Timestamp>> {
    // proto3 JSON covers years 0001 to 9999.
    prop::option::of(
        (-62_135_596_800i64..253_402_300_799, 0i32..1_000_000_000)
            .prop_map(|(seconds, nanos)| pbjson_types::Timestamp { seconds, nanos }),
    )
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(any::<String>(), 0..3)
}

fn tool() -> impl Strategy<Value = pb::Tool> {
    (
        (any::<String>(), any::<String>(), timestamp(), timestamp()),
        (
            -2i32..8,
            strings(),
            prop::collection::btree_map(any::<String>(), any::<String>(), 0..3),
        ),
        (any::<String>(), any::<String>(), -1i32..10, -1i32..6),
        (strings(), prop::collection::vec(-1i32..9, 0..3), strings()),
    )
        .prop_map(
            |(
                (name, display_name, create_time, update_time),
                (tlp, recipients, labels),
                (summary, developer, category, availability),
                (regions, intended_users, related),
            )| pb::Tool {
                name,
                display_name,
                create_time,
                update_time,
                sharing: Some(pb::Sharing { tlp, recipients }),
                labels: labels.into_iter().collect(),
                summary,
                developer,
                category,
                availability,
                regions,
                intended_users,
                related,
                ..Default::default()
            },
        )
}

fn record() -> impl Strategy<Value = pb::Record> {
    tool().prop_map(|tool| pb::Record {
        kind: Some(pb::record::Kind::Tool(tool)),
    })
}

/// Any JSON value, nested a little.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value as J;
    let scalar = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<f64>().prop_map(J::from),
        any::<String>().prop_map(J::String),
        prop::sample::select(vec![
            "TLP_GREEN",
            "TOOL_CATEGORY_CLASSIFIER",
            "2024-01-01T00:00:00Z",
            "1e400",
            "-0",
            "99999999999999999999",
        ])
        .prop_map(|s| J::String(s.into())),
    ];
    let key = prop::sample::select(vec![
        "tool",
        "workshop",
        "practice",
        "name",
        "displayName",
        "display_name",
        "sharing",
        "tlp",
        "recipients",
        "labels",
        "createTime",
        "category",
        "intendedUsers",
        "regions",
        "year",
        "@type",
        "nope",
    ]);
    scalar.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
            prop::collection::vec((key.clone(), inner), 0..5).prop_map(|entries| {
                J::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                )
            }),
        ]
    })
}

proptest! {
    #[test]
    fn records_round_trip_through_json(record in record()) {
        let text = to_json(&record).expect("to_json");
        let back: pb::Record = from_json(&text).expect("from_json");
        prop_assert_eq!(back, record);
    }

    #[test]
    fn json_import_survives_any_json(value in json()) {
        let _ = from_json::<pb::Record>(&value.to_string());
        let _ = from_json::<pb::Tool>(&value.to_string());
    }

    #[test]
    fn json_import_survives_any_text(text in any::<String>()) {
        if from_json::<pb::Record>(&text).is_ok() {
            prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn json_import_survives_mutated_records(record in record(), edits in edits()) {
        let text = to_json(&record).expect("to_json");
        let _ = from_json::<pb::Record>(&mutate(&text, &edits));
    }
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    for depth in [64, 1_000, 100_000] {
        let text = format!(
            "{{\"tool\":{{\"labels\":{}1{}}}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(from_json::<pb::Record>(&text).is_err(), "{depth}");
    }
}
