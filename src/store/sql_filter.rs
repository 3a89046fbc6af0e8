//! Compiles a parsed filter into a parameterised SQL `WHERE` fragment over
//! `records r`.
//!
//! Values never reach the SQL text: each one becomes a `$N` placeholder and an
//! entry of [`SqlFilter::params`]. `$N` placeholders work on both SQLite and
//! PostgreSQL, and numbering from a caller-chosen start lets the fragment follow
//! the caller's own parameters.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::filter::{Expr, FilterError, Op, Value};

/// How a filterable field is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// A column of `records` (e.g. "name", "create_time", "tlp", "title", "uid").
    Column(&'static str),
    /// Rows of `record_attrs` with this `field` value.
    Attr(String),
    /// The `record_recipients` table (values are written `partners/{id}`; the
    /// id is bound).
    Recipients,
}

/// The type of a filterable field, which decides how values are converted.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueType {
    String,
    Int,
    Bool,
    Timestamp,
    /// An enum: (full value name, number) pairs. A filter may write the full
    /// name (`TOOL_CATEGORY_HASH_MATCHING`) or the name without `prefix`
    /// (`HASH_MATCHING`), quoted or not. Column storage binds the number, Attr
    /// storage binds the full name.
    Enum {
        values: Vec<(String, i32)>,
        /// e.g. "TOOL_CATEGORY_".
        prefix: String,
    },
    /// A list of messages (`organisers`): only `:*` (has any element)
    /// applies, stored as one field every element has a row of.
    Messages,
}

/// Where and how a field path is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldTarget {
    pub storage: Storage,
    pub ty: ValueType,
    pub repeated: bool,
}

/// Resolves a field path as written in a filter. `labels.<key>` paths resolve
/// through this too (to `Attr("labels.<key>")`, `String`, not repeated).
pub trait FieldResolver {
    fn resolve(&self, path: &str) -> Option<FieldTarget>;

    /// Field paths to suggest when a filter names an unknown field.
    fn field_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// Why a field of the record that `resolve` does not know cannot be
    /// filtered on, when it is one (free text).
    fn not_filterable(&self, _path: &str) -> Option<String> {
        None
    }
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    Text(String),
    Int(i64),
    /// SQL NULL; filters never produce it, writes do.
    Null,
    Bool(bool),
    Blob(Vec<u8>),
}

/// A `WHERE` fragment and the values of its placeholders, in order.
///
/// The fragment is a single SQL predicate that can be joined to other
/// conditions with `AND` without extra parentheses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SqlFilter {
    pub sql: String,
    pub params: Vec<SqlParam>,
}

/// Compiles `expr` (as returned by [`crate::domain::filter::parse`]).
/// `first_param` is the number of the first placeholder to use
/// (`$first_param`, `$first_param + 1`, ...); placeholders start at 1.
///
/// # Errors
///
/// An unknown field, a value of the wrong type, or an operator the field's
/// type does not support, positioned at the offending field or value.
pub fn compile(
    expr: &Expr,
    fields: &dyn FieldResolver,
    first_param: usize,
) -> Result<SqlFilter, FilterError> {
    let mut compiler = Compiler {
        fields,
        next: first_param,
        params: Vec::new(),
    };
    let sql = compiler.expr(expr)?;
    Ok(SqlFilter {
        sql,
        params: compiler.params,
    })
}

/// The map field whose keys `labels:KEY` and `labels:*` test for.
const LABELS: &str = "labels";

struct Compiler<'a> {
    fields: &'a dyn FieldResolver,
    next: usize,
    params: Vec<SqlParam>,
}

impl Compiler<'_> {
    /// Adds a parameter and returns its placeholder.
    fn bind(&mut self, param: SqlParam) -> String {
        let placeholder = format!("${}", self.next);
        self.next += 1;
        self.params.push(param);
        placeholder
    }

    fn expr(&mut self, expr: &Expr) -> Result<String, FilterError> {
        match expr {
            Expr::And(items) => self.join(items, "AND", "1 = 1"),
            Expr::Or(items) => self.join(items, "OR", "1 = 0"),
            Expr::Not(inner) => Ok(format!("NOT ({})", self.expr(inner)?)),
            Expr::Restriction {
                field,
                field_pos,
                op,
                value,
                value_pos,
            } => self.restriction(&Restriction {
                field,
                field_pos: *field_pos,
                op: *op,
                value,
                value_pos: *value_pos,
            }),
        }
    }

    /// `(a AND b ...)`; `empty` is the identity, for hand-built empty lists.
    fn join(&mut self, items: &[Expr], keyword: &str, empty: &str) -> Result<String, FilterError> {
        if items.is_empty() {
            return Ok(empty.to_owned());
        }
        let parts = items
            .iter()
            .map(|item| self.expr(item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(format!("({})", parts.join(&format!(" {keyword} "))))
    }

    fn restriction(&mut self, r: &Restriction<'_>) -> Result<String, FilterError> {
        let Some(target) = self.fields.resolve(r.field) else {
            if r.field == LABELS && r.op == Op::Has {
                return self.label_presence(r);
            }
            if let Some(why) = self.fields.not_filterable(r.field) {
                return Err(FilterError::new(
                    r.field_pos,
                    format!("field \"{}\" {why}", r.field),
                ));
            }
            return Err(self.unknown_field(r.field, r.field_pos));
        };
        if matches!(r.value, Value::Any) {
            return self.presence(r, &target);
        }
        if target.ty == ValueType::Messages {
            return Err(FilterError::new(
                r.field_pos,
                format!(
                    "field \"{0}\" is a list of messages: test it with {0}:* or name a field inside it",
                    r.field
                ),
            ));
        }
        match &target.storage {
            Storage::Column(column) => {
                check_op(r, &target.ty)?;
                let (lhs, param) = operand(&format!("r.{column}"), r, &target.ty, EnumAs::Number)?;
                if equals_no_stored_time(r, &target.ty) {
                    return Ok(if r.op == Op::Ne { "1 = 1" } else { "1 = 0" }.to_owned());
                }
                let placeholder = self.bind(param);
                Ok(format!("{lhs} {} {placeholder}", sql_op(r.op)))
            }
            Storage::Attr(name) => {
                check_op(r, &target.ty)?;
                let column = match target.ty {
                    ValueType::String | ValueType::Enum { .. } | ValueType::Messages => "a.str",
                    ValueType::Int | ValueType::Bool | ValueType::Timestamp => "a.num",
                };
                let (lhs, param) = operand(column, r, &target.ty, EnumAs::Name)?;
                if equals_no_stored_time(r, &target.ty) {
                    // `!=`: a scalar's one value differs; no element of a
                    // repeated field equals. `=`, `:`: nothing equals.
                    return Ok(match (r.op, target.repeated) {
                        (Op::Ne, false) => attr_exists(&self.bind(SqlParam::Text(name.clone()))),
                        (Op::Ne, true) => "1 = 1".to_owned(),
                        _ => "1 = 0".to_owned(),
                    });
                }
                let field = self.bind(SqlParam::Text(name.clone()));
                let value = self.bind(param);
                let rows = format!(
                    "SELECT 1 FROM record_attrs a WHERE a.record = r.id AND a.field = {field}"
                );
                // On a repeated field `!=` means "no element equals", which a
                // per-row `<>` would not express.
                Ok(if r.op == Op::Ne && target.repeated {
                    format!("NOT EXISTS ({rows} AND {lhs} = {value})")
                } else {
                    format!("EXISTS ({rows} AND {lhs} {} {value})", sql_op(r.op))
                })
            }
            Storage::Recipients => {
                let negate = match r.op {
                    Op::Eq | Op::Has => false,
                    Op::Ne => true,
                    _ => {
                        return Err(FilterError::new(
                            r.field_pos,
                            format!(
                                "operator '{}' cannot be used on field \"{}\"; use =, != or :",
                                r.op, r.field
                            ),
                        ));
                    }
                };
                let id = partner_id(r)?;
                let id = self.bind(SqlParam::Text(id.to_owned()));
                let exists = format!(
                    "EXISTS (SELECT 1 FROM record_recipients x WHERE x.record = r.id AND x.partner = {id})"
                );
                Ok(if negate {
                    format!("NOT {exists}")
                } else {
                    exists
                })
            }
        }
    }

    /// `field:*`: the field has at least one value.
    fn presence(
        &mut self,
        r: &Restriction<'_>,
        target: &FieldTarget,
    ) -> Result<String, FilterError> {
        if r.op != Op::Has {
            return Err(star_needs_has(r));
        }
        match &target.storage {
            Storage::Attr(name) => {
                let field = self.bind(SqlParam::Text(name.clone()));
                Ok(attr_exists(&field))
            }
            Storage::Recipients => {
                Ok("EXISTS (SELECT 1 FROM record_recipients x WHERE x.record = r.id)".to_owned())
            }
            // Every record has every column, so the test would be vacuous; an
            // error tells the user their filter does not do what they think.
            Storage::Column(_) => Err(FilterError::new(
                r.value_pos,
                format!(
                    "field \"{}\" is always present; ':*' applies to repeated fields and labels",
                    r.field
                ),
            )),
        }
    }

    /// `labels:KEY` (the record has label KEY) and `labels:*` (any label).
    fn label_presence(&mut self, r: &Restriction<'_>) -> Result<String, FilterError> {
        let Some(key) = r.value.text() else {
            let prefix = self.bind(SqlParam::Text(format!("{LABELS}.")));
            // substr() rather than LIKE: label keys may contain `_` and `%`.
            return Ok(format!(
                "EXISTS (SELECT 1 FROM record_attrs a WHERE a.record = r.id AND substr(a.field, 1, {}) = {prefix})",
                LABELS.len() + 1
            ));
        };
        let path = format!("{LABELS}.{key}");
        match self.fields.resolve(&path) {
            Some(FieldTarget {
                storage: Storage::Attr(name),
                ..
            }) => {
                let field = self.bind(SqlParam::Text(name));
                Ok(attr_exists(&field))
            }
            _ => Err(FilterError::new(
                r.value_pos,
                format!("\"{key}\" is not a valid label key"),
            )),
        }
    }

    fn unknown_field(&self, field: &str, position: usize) -> FilterError {
        let names = self.fields.field_names();
        let message = if names.is_empty() {
            format!("unknown field \"{field}\"")
        } else {
            format!(
                "unknown field \"{field}\"; filterable fields include {}",
                names.join(", ")
            )
        };
        FilterError::new(position, message)
    }
}

/// A restriction's parts, borrowed from the `Expr`.
struct Restriction<'a> {
    field: &'a str,
    field_pos: usize,
    op: Op,
    value: &'a Value,
    value_pos: usize,
}

/// How an enum value is bound.
#[derive(Clone, Copy)]
enum EnumAs {
    Number,
    Name,
}

fn attr_exists(field_placeholder: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM record_attrs a WHERE a.record = r.id AND a.field = {field_placeholder})"
    )
}

fn sql_op(op: Op) -> &'static str {
    match op {
        // On a single value `:` ("has") is equality.
        Op::Eq | Op::Has => "=",
        Op::Ne => "<>",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
    }
}

/// Orderings are meaningless on enums (their numbers are not an order users
/// know) and on booleans.
fn check_op(r: &Restriction<'_>, ty: &ValueType) -> Result<(), FilterError> {
    let kind = match ty {
        ValueType::Enum { .. } => "an enum",
        ValueType::Bool => "a boolean",
        ValueType::String | ValueType::Int | ValueType::Timestamp | ValueType::Messages => {
            return Ok(());
        }
    };
    match r.op {
        Op::Eq | Op::Ne | Op::Has => Ok(()),
        Op::Lt | Op::Le | Op::Gt | Op::Ge => Err(FilterError::new(
            r.field_pos,
            format!(
                "operator '{}' cannot be used on field \"{}\" ({kind}); use = or !=",
                r.op, r.field
            ),
        )),
    }
}

/// AIP-160's wildcard, at the end of a string value only: `name =
/// "partners/ecpat/*"` matches the names that start with `partners/ecpat/`.
/// The text before the `*`, when the value is one.
fn wildcard_prefix<'a>(
    r: &Restriction<'a>,
    ty: &ValueType,
) -> Result<Option<&'a str>, FilterError> {
    let prefix = match (ty, r.value.text()) {
        (ValueType::String, Some(text)) => text.strip_suffix('*'),
        _ => None,
    };
    match (prefix, r.op) {
        (None, _) | (Some(_), Op::Eq | Op::Ne | Op::Has) => Ok(prefix),
        (Some(_), op) => Err(FilterError::new(
            r.value_pos,
            format!("a value ending in '*' matches by prefix, with =, != or ':', not with '{op}'"),
        )),
    }
}

/// What a restriction compares, and with what: `column` and the value, or
/// for a prefix (`"partners/ecpat/*"`) the column's first characters and
/// the text before the `*`.
fn operand(
    column: &str,
    r: &Restriction<'_>,
    ty: &ValueType,
    enum_as: EnumAs,
) -> Result<(String, SqlParam), FilterError> {
    Ok(match wildcard_prefix(r, ty)? {
        Some(prefix) => (starts(column, prefix), SqlParam::Text(prefix.to_owned())),
        None => (column.to_owned(), convert(r, ty, enum_as)?),
    })
}

/// The first characters of `column`, as many as `prefix` has. substr()
/// rather than LIKE: LIKE ignores case on SQLite and not on PostgreSQL, and
/// `_` and `%` would need escaping; both count characters, not bytes.
fn starts(column: &str, prefix: &str) -> String {
    format!("substr({column}, 1, {})", prefix.chars().count())
}

fn star_needs_has(r: &Restriction<'_>) -> FilterError {
    FilterError::new(
        r.value_pos,
        format!(
            "'*' can only be used with ':' (e.g. {}:*), not with '{}'",
            r.field, r.op
        ),
    )
}

/// Converts a string or bare value to the parameter for a field of type `ty`.
fn convert(r: &Restriction<'_>, ty: &ValueType, enum_as: EnumAs) -> Result<SqlParam, FilterError> {
    let Some(text) = r.value.text() else {
        return Err(star_needs_has(r));
    };
    let invalid = |expected: &str| {
        FilterError::new(
            r.value_pos,
            format!("field \"{}\" needs {expected}, found \"{text}\"", r.field),
        )
    };
    match ty {
        ValueType::String => Ok(SqlParam::Text(text.to_owned())),
        ValueType::Int => text
            .parse::<i64>()
            .map(SqlParam::Int)
            .map_err(|_| invalid("an integer")),
        ValueType::Bool => match text {
            "true" => Ok(SqlParam::Int(1)),
            "false" => Ok(SqlParam::Int(0)),
            _ => Err(invalid("true or false")),
        },
        ValueType::Messages => Err(invalid("'*'")),
        ValueType::Timestamp => OffsetDateTime::parse(text, &Rfc3339)
            .ok()
            .and_then(|t| stored_micros(t.unix_timestamp_nanos(), r.op))
            .map(SqlParam::Int)
            .ok_or_else(|| invalid("an RFC 3339 timestamp such as 2024-01-01T00:00:00Z")),
        ValueType::Enum { values, prefix } => {
            let found = values
                .iter()
                .find(|(name, _)| name == text || name.strip_prefix(prefix.as_str()) == Some(text));
            match (found, enum_as) {
                (Some((_, number)), EnumAs::Number) => Ok(SqlParam::Int(i64::from(*number))),
                (Some((name, _)), EnumAs::Name) => Ok(SqlParam::Text(name.clone())),
                (None, _) => {
                    let allowed = values
                        .iter()
                        .map(|(name, _)| name.strip_prefix(prefix.as_str()).unwrap_or(name))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let message = if prefix.is_empty() {
                        format!("one of {allowed}")
                    } else {
                        format!("one of {allowed} (optionally prefixed with {prefix})")
                    };
                    Err(invalid(&message))
                }
            }
        }
    }
}

/// Times are stored in whole microseconds, but a filter may write a time
/// between two of them (`...00.0000005Z`). To compare the stored time with the
/// written one exactly, the bound is rounded up for `<` and `>=` and down for
/// the other operators; `=`, `:` and `!=` with such a time are decided by
/// [`equals_no_stored_time`] instead.
fn stored_micros(nanos: i128, op: Op) -> Option<i64> {
    let floor = nanos.div_euclid(1000);
    let between = nanos.rem_euclid(1000) != 0;
    let micros = match op {
        Op::Lt | Op::Ge if between => floor + 1,
        _ => floor,
    };
    i64::try_from(micros).ok()
}

/// Whether `r` tests a time field for (in)equality with a time between two
/// microseconds, which no stored time equals.
fn equals_no_stored_time(r: &Restriction<'_>, ty: &ValueType) -> bool {
    matches!(ty, ValueType::Timestamp)
        && matches!(r.op, Op::Eq | Op::Has | Op::Ne)
        && r.value
            .text()
            .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok())
            .is_some_and(|t| t.unix_timestamp_nanos().rem_euclid(1000) != 0)
}

/// The partner id of a `partners/{id}` value.
fn partner_id<'a>(r: &Restriction<'a>) -> Result<&'a str, FilterError> {
    let Some(text) = r.value.text() else {
        return Err(star_needs_has(r));
    };
    text.strip_prefix("partners/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| {
            FilterError::new(
                r.value_pos,
                format!(
                    "field \"{}\" needs a partner name such as \"partners/b\", found \"{text}\"",
                    r.field
                ),
            )
        })
}

#[cfg(test)]
mod tests;
