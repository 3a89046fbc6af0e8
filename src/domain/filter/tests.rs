use super::*;

fn r(field: &str, field_pos: usize, op: Op, value: Value, value_pos: usize) -> Expr {
    Expr::Restriction {
        field: field.to_owned(),
        field_pos,
        op,
        value,
        value_pos,
    }
}

fn bare(s: &str) -> Value {
    Value::Bare(s.to_owned())
}

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn ok(input: &str) -> Expr {
    match parse(input) {
        Ok(Some(e)) => e,
        other => panic!("{input:?} -> {other:?}"),
    }
}

fn err(input: &str) -> FilterError {
    match parse(input) {
        Err(e) => e,
        other => panic!("{input:?} should fail, got {other:?}"),
    }
}

/// A compact rendering of the tree, to assert shapes without positions.
fn shape(e: &Expr) -> String {
    match e {
        Expr::And(v) => format!(
            "AND({})",
            v.iter().map(shape).collect::<Vec<_>>().join(", ")
        ),
        Expr::Or(v) => format!("OR({})", v.iter().map(shape).collect::<Vec<_>>().join(", ")),
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

#[test]
fn empty_is_none() {
    assert_eq!(parse(""), Ok(None));
    assert_eq!(parse("  \t\n "), Ok(None));
}

#[test]
fn simple_restrictions_with_positions() {
    assert_eq!(ok("year >= 2012"), r("year", 0, Op::Ge, bare("2012"), 8));
    assert_eq!(ok("year>=2012"), r("year", 0, Op::Ge, bare("2012"), 6));
    assert_eq!(
        ok("  labels.region:*"),
        r("labels.region", 2, Op::Has, Value::Any, 16)
    );
    assert_eq!(
        ok("regions:\"KE\""),
        r("regions", 0, Op::Has, string("KE"), 8)
    );
    assert_eq!(ok("a!=b"), r("a", 0, Op::Ne, bare("b"), 3));
    assert_eq!(ok("a<b"), r("a", 0, Op::Lt, bare("b"), 2));
    assert_eq!(ok("a <= b"), r("a", 0, Op::Le, bare("b"), 5));
    assert_eq!(ok("a > -5"), r("a", 0, Op::Gt, bare("-5"), 4));
    assert_eq!(ok("a = \"*\""), r("a", 0, Op::Eq, string("*"), 4));
}

#[test]
fn bare_values() {
    assert_eq!(
        shape(&ok("create_time > 2024-01-01T00:00:00Z")),
        "create_time>2024-01-01T00:00:00Z"
    );
    assert_eq!(
        shape(&ok("category = TOOL_CATEGORY_HASH_MATCHING")),
        "category=TOOL_CATEGORY_HASH_MATCHING"
    );
    assert_eq!(shape(&ok("sharing.tlp=GREEN")), "sharing.tlp=GREEN");
    assert_eq!(shape(&ok("(a=1)")), "a=1");
    assert_eq!(shape(&ok("a:b=c")), "a:b=c");
}

#[test]
fn precedence_or_binds_tighter_than_and() {
    assert_eq!(shape(&ok("a=1 AND b=2 OR c=3")), "AND(a=1, OR(b=2, c=3))");
    assert_eq!(shape(&ok("a=1 OR b=2 AND c=3")), "AND(OR(a=1, b=2), c=3)");
    assert_eq!(shape(&ok("a=1 b=2 OR c=3")), "AND(a=1, OR(b=2, c=3))");
    assert_eq!(shape(&ok("(a=1 AND b=2) OR c=3")), "OR(AND(a=1, b=2), c=3)");
}

#[test]
fn flattens_same_kind() {
    assert_eq!(
        shape(&ok("a=1 AND (b=2 AND c=3) d=4")),
        "AND(a=1, b=2, c=3, d=4)"
    );
    assert_eq!(
        shape(&ok("a=1 OR (b=2 OR (c=3)) OR d=4")),
        "OR(a=1, b=2, c=3, d=4)"
    );
    assert_eq!(
        shape(&ok("((a=1 OR b=2)) AND (c=3 OR d=4)")),
        "AND(OR(a=1, b=2), OR(c=3, d=4))"
    );
}

#[test]
fn negation() {
    assert_eq!(shape(&ok("NOT a=1")), "NOT(a=1)");
    assert_eq!(shape(&ok("-a=1")), "NOT(a=1)");
    assert_eq!(shape(&ok("NOT(a=1 OR b=2)")), "NOT(OR(a=1, b=2))");
    assert_eq!(shape(&ok("NOT NOT a=1")), "NOT(NOT(a=1))");
    assert_eq!(shape(&ok("NOT a=1 OR b=2")), "OR(NOT(a=1), b=2)");
    assert_eq!(shape(&ok("a=1 -b=2")), "AND(a=1, NOT(b=2))");
}

#[test]
fn keywords_are_whole_upper_case_words() {
    assert_eq!(shape(&ok("ORDER=1 ANDROID=2")), "AND(ORDER=1, ANDROID=2)");
    assert_eq!(shape(&ok("NOTE=1")), "NOTE=1");
    assert_eq!(shape(&ok("a=1 and=2")), "AND(a=1, and=2)");
    assert_eq!(shape(&ok("a=1 or=2")), "AND(a=1, or=2)");
    assert_eq!(shape(&ok("a=x OR.y=2")), "AND(a=x, OR.y=2)");
}

#[test]
fn string_escapes() {
    assert_eq!(
        shape(&ok(r#"title = "say \"hi\"\\ \n\t""#)),
        format!("title={:?}", "say \"hi\"\\ \n\t")
    );
    assert_eq!(
        shape(&ok(r#"title="a b (c) AND d""#)),
        "title=\"a b (c) AND d\""
    );
    let e = err(r#"title = "bad \q""#);
    assert_eq!(e.position, 13);
    assert!(e.message.contains("unknown escape"), "{e}");
}

#[test]
fn sql_looking_input_is_just_a_string() {
    assert_eq!(
        ok(r#"name = "x' OR 1=1 --""#),
        r("name", 0, Op::Eq, string("x' OR 1=1 --"), 7)
    );
    assert_eq!(shape(&ok("name = x';DROP")), "name=x';DROP");
}

#[test]
fn unicode_positions_are_characters() {
    assert_eq!(
        ok("titel = \"Ünïcødé ✓\""),
        r("titel", 0, Op::Eq, string("Ünïcødé ✓"), 8)
    );
    // "é" and "✓" are multi-byte; positions still count characters.
    assert_eq!(
        ok("t=\"é✓\" région=Nairobi"),
        Expr::And(vec![
            r("t", 0, Op::Eq, string("é✓"), 2),
            r("région", 7, Op::Eq, bare("Nairobi"), 14),
        ])
    );
    let e = err("t=\"é✓\" ¿");
    assert_eq!(e.position, 7);
}

#[test]
fn global_restrictions_are_rejected() {
    for input in ["foo", "\"foo\"", "a=1 foo", "foo bar = 1", "2012"] {
        let e = err(input);
        assert_eq!(e.message, GLOBAL_RESTRICTION, "{input}");
    }
    assert_eq!(err("a=1 foo").position, 4);
    assert_eq!(err("  \"foo\"").position, 2);
}

#[test]
fn error_positions() {
    let cases: &[(&str, usize, &str)] = &[
        ("title = \"abc", 8, "unterminated string"),
        ("title = \"abc\\", 8, "unterminated string"),
        ("year >=", 7, "missing value after '>='"),
        ("year = )", 7, "missing value after '='"),
        ("year = AND b=1", 7, "missing value after '='"),
        ("(a=1", 0, "unbalanced parenthesis"),
        ("x=1 AND (a=1 OR (b=2)", 8, "unbalanced parenthesis"),
        ("a=1)", 3, "unbalanced parenthesis"),
        ("a=1 AND ( )", 8, "empty parentheses"),
        ("a=1 AND", 7, "expected a restriction"),
        ("a=1 AND OR b=2", 8, "expected a restriction"),
        ("OR a=1", 0, "expected a restriction"),
        ("NOT", 3, "expected a restriction"),
        ("a == 1", 3, "unexpected '='"),
        ("a ! 1", 2, "expected '!='"),
        ("= 1", 0, "expected a restriction"),
        ("a.=1", 2, "expected a field name after '.'"),
        ("a..b=1", 2, "expected a field name after '.'"),
        ("a=1 *", 4, "expected a restriction"),
    ];
    for &(input, position, message) in cases {
        let e = err(input);
        assert_eq!(e.position, position, "{input}: {e}");
        assert!(e.message.contains(message), "{input}: {e}");
    }
}

#[test]
fn error_display_includes_position() {
    assert_eq!(
        err("year >=").to_string(),
        "missing value after '>=' (at position 7)"
    );
}

#[test]
fn comparisons_are_counted_through_every_operator() {
    assert_eq!(ok("a=1").comparisons(), 1);
    assert_eq!(ok("a=1 b=2 OR c=3").comparisons(), 3);
    assert_eq!(ok("NOT (a=1 OR -b:*) AND (c=1 (d=2))").comparisons(), 4);
}

#[test]
fn depth_limit() {
    let nested = |n: usize| format!("{}a=1{}", "(".repeat(n), ")".repeat(n));
    assert_eq!(shape(&ok(&nested(MAX_DEPTH))), "a=1");
    let e = err(&nested(MAX_DEPTH + 1));
    assert_eq!(e.position, MAX_DEPTH);
    assert!(e.message.contains("nested too deeply"), "{e}");

    let nots = |n: usize| format!("{}a=1", "NOT ".repeat(n));
    assert!(parse(&nots(MAX_DEPTH)).is_ok());
    assert_eq!(err(&nots(MAX_DEPTH + 1)).position, 4 * MAX_DEPTH);
    assert!(parse(&format!("{}a=1", "-".repeat(MAX_DEPTH + 1))).is_err());
}

#[test]
fn huge_nesting_is_an_error_not_a_stack_overflow() {
    // 10,000 is caught by the length limit; within it, by the depth limit.
    assert!(parse(&"(".repeat(10_000)).is_err());
    let e = err(&"(".repeat(MAX_FILTER_LEN));
    assert_eq!(e.position, MAX_DEPTH);
    assert!(e.message.contains("nested too deeply"), "{e}");
    let input = format!("{}a=1", "-".repeat(8000));
    assert!(err(&input).message.contains("nested too deeply"));
}

#[test]
fn nul_is_refused_where_it_is() {
    for (input, position) in [("a=\"x\u{0}\"", 4), ("\u{0}", 0), ("é=\u{0}", 2)] {
        let e = err(input);
        assert_eq!(e.position, position, "{input:?}: {e}");
        assert!(e.message.contains("NUL"), "{e}");
    }
}

#[test]
fn length_limit() {
    let at_limit = format!("a={}", "x".repeat(MAX_FILTER_LEN - 2));
    assert!(parse(&at_limit).is_ok());
    let too_long = format!("a={}", "x".repeat(MAX_FILTER_LEN - 1));
    let e = err(&too_long);
    assert_eq!(e.position, MAX_FILTER_LEN);
    assert!(e.message.contains("too long"), "{e}");
    // 4,097 two-byte characters: the 4,097th is the one past the limit.
    let e = err(&"é".repeat(MAX_FILTER_LEN / 2 + 1));
    assert_eq!(e.position, MAX_FILTER_LEN / 2);
    assert!(e.message.contains("too long"), "{e}");
}
