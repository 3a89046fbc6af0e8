//! Parser for the AIP-160 filter subset accepted by `List` calls.
//!
//! The grammar, loosest binding first:
//!
//! ```text
//! expression  = factor { [ "AND" ] factor }      (juxtaposition is an implicit AND)
//! factor      = term { "OR" term }                (OR binds tighter than AND)
//! term        = [ "NOT" | "-" ] simple
//! simple      = restriction | "(" expression ")"
//! restriction = field op value
//! field       = name { "." name }                 (name: letters, digits, "_")
//! op          = "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
//! value       = "\"" string "\"" | bare | "*"
//! ```
//!
//! Positions in errors are 0-based character (not byte) offsets, so they can be
//! shown to a user under the filter they typed.

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    /// `field op value`, e.g. `year >= 2012`, `labels.region:*`, `regions:"KE"`.
    Restriction {
        /// Dotted path as written, e.g. `labels.region`, `sharing.tlp`.
        field: String,
        field_pos: usize,
        op: Op,
        value: Value,
        value_pos: usize,
    },
}

impl Expr {
    /// How many comparisons (restrictions) the expression holds: what it
    /// costs the database, each one a test, often a subquery, per record.
    pub fn comparisons(&self) -> usize {
        match self {
            Expr::And(items) | Expr::Or(items) => items.iter().map(Expr::comparisons).sum(),
            Expr::Not(inner) => inner.comparisons(),
            Expr::Restriction { .. } => 1,
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `:`, "has".
    Has,
}

impl Op {
    /// The operator as written in a filter.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Has => ":",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The right-hand side of a restriction.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A "quoted" string, with escapes (`\"`, `\\`, `\n`, `\t`, `\r`) resolved.
    String(String),
    /// Unquoted text: numbers, enum names, RFC 3339 timestamps, `true`/`false`.
    Bare(String),
    /// `*`, only meaningful with `:`.
    Any,
}

impl Value {
    /// The text of a string or bare value; `None` for `*`.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::Bare(s) => Some(s),
            Value::Any => None,
        }
    }
}

/// Why a filter was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at position {position})")]
pub struct FilterError {
    /// 0-based character offset into the filter.
    pub position: usize,
    pub message: String,
}

impl FilterError {
    pub fn new(position: usize, message: impl Into<String>) -> Self {
        FilterError {
            position,
            message: message.into(),
        }
    }
}

/// Longest filter accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 8192;

/// Deepest nesting of parentheses and negations accepted.
pub const MAX_DEPTH: usize = 32;

const GLOBAL_RESTRICTION: &str = "a restriction needs a field and an operator, e.g. title = \"x\"";

/// Parses a filter. An empty or all-whitespace filter is `Ok(None)`.
///
/// # Errors
///
/// A syntax error, or a filter longer than [`MAX_FILTER_LEN`] bytes or nested
/// deeper than [`MAX_DEPTH`], positioned where it was found.
pub fn parse(input: &str) -> Result<Option<Expr>, FilterError> {
    if input.len() > MAX_FILTER_LEN {
        // Positions count characters, not bytes: point at the first character
        // that does not fit, which is inside the input even when it is made of
        // multi-byte characters.
        let position = input
            .char_indices()
            .take_while(|(at, c)| at + c.len_utf8() <= MAX_FILTER_LEN)
            .count();
        return Err(FilterError::new(
            position,
            format!(
                "filter is too long ({} bytes; at most {MAX_FILTER_LEN})",
                input.len()
            ),
        ));
    }
    // PostgreSQL text cannot hold U+0000, so a value with it would fail there
    // as an internal error; no stored value can contain it anyway.
    if let Some(position) = input.chars().position(|c| c == '\0') {
        return Err(FilterError::new(
            position,
            "a filter cannot contain the NUL character (U+0000)",
        ));
    }
    let mut parser = Parser {
        chars: input.chars().collect(),
        pos: 0,
    };
    parser.skip_ws();
    if parser.at_end() {
        return Ok(None);
    }
    let expr = parser.expression(0)?;
    parser.skip_ws();
    match parser.peek() {
        None => Ok(Some(expr)),
        // `expression` stops only at the end or at a `)`.
        Some(')') => Err(parser.error("unbalanced parenthesis: ')' has no matching '('")),
        Some(c) => Err(parser.error(format!("unexpected '{c}' after the end of the filter"))),
    }
}

/// A hand-written recursive-descent parser over characters. Recursion only
/// happens through `(` and negation, both of which check `MAX_DEPTH` first.
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn error(&self, message: impl Into<String>) -> FilterError {
        FilterError::new(self.pos, message)
    }

    /// Describes what is at the cursor, for "expected X, found Y" messages.
    fn found(&self) -> String {
        match self.peek() {
            None => "the end of the filter".to_owned(),
            Some(c) => format!("'{c}'"),
        }
    }

    /// The identifier path (`a.b.c`) starting at the cursor, without consuming
    /// it; empty if none starts here. Used to spot keywords.
    fn peek_word(&self) -> String {
        self.chars[self.pos..]
            .iter()
            .take_while(|&&c| is_name_char(c) || c == '.')
            .collect()
    }

    /// Whether the keyword `kw` is at the cursor as a whole word (so `ORDER`
    /// and `OR.x` are not the keyword `OR`).
    fn at_keyword(&self, kw: &str) -> bool {
        self.peek_word() == kw
    }

    fn check_depth(&self, depth: usize) -> Result<(), FilterError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!(
                "filter is nested too deeply (at most {MAX_DEPTH} levels of parentheses and NOT)"
            )));
        }
        Ok(())
    }

    /// `factor { [AND] factor }`, stopping at the end or before a `)`.
    fn expression(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut items = vec![self.factor(depth)?];
        loop {
            self.skip_ws();
            if matches!(self.peek(), None | Some(')')) {
                break;
            }
            if self.at_keyword("AND") {
                self.pos += 3;
                self.skip_ws();
            }
            items.push(self.factor(depth)?);
        }
        Ok(join(items, Join::And))
    }

    /// `term { OR term }`.
    fn factor(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut items = vec![self.term(depth)?];
        loop {
            let before = self.pos;
            self.skip_ws();
            if !self.at_keyword("OR") {
                // Leave the whitespace for `expression`, which needs no
                // separator check of its own.
                self.pos = before;
                break;
            }
            self.pos += 2;
            self.skip_ws();
            items.push(self.term(depth)?);
        }
        Ok(join(items, Join::Or))
    }

    /// `[NOT | -] simple`.
    fn term(&mut self, depth: usize) -> Result<Expr, FilterError> {
        self.skip_ws();
        let negated = if self.at_keyword("NOT") {
            self.check_depth(depth + 1)?;
            self.pos += 3;
            true
        } else if self.peek() == Some('-') {
            self.check_depth(depth + 1)?;
            self.pos += 1;
            true
        } else {
            false
        };
        if negated {
            self.skip_ws();
            let inner = self.term(depth + 1)?;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.simple(depth)
    }

    /// `restriction | ( expression )`.
    fn simple(&mut self, depth: usize) -> Result<Expr, FilterError> {
        match self.peek() {
            Some('(') => {
                self.check_depth(depth + 1)?;
                let open = self.pos;
                self.pos += 1;
                self.skip_ws();
                match self.peek() {
                    Some(')') => {
                        return Err(FilterError::new(open, "empty parentheses"));
                    }
                    None => {
                        return Err(FilterError::new(
                            open,
                            "unbalanced parenthesis: this '(' is never closed",
                        ));
                    }
                    Some(_) => {}
                }
                let inner = self.expression(depth + 1)?;
                self.skip_ws();
                if self.peek() != Some(')') {
                    return Err(FilterError::new(
                        open,
                        "unbalanced parenthesis: this '(' is never closed",
                    ));
                }
                self.pos += 1;
                Ok(inner)
            }
            Some('"') => {
                // Report an unterminated string before complaining about the
                // missing field: it is the more fundamental mistake.
                let start = self.pos;
                self.string()?;
                Err(FilterError::new(start, GLOBAL_RESTRICTION))
            }
            Some(c) if is_name_char(c) => self.restriction(),
            _ => Err(self.error(format!(
                "expected a restriction such as title = \"x\", found {}",
                self.found()
            ))),
        }
    }

    fn restriction(&mut self) -> Result<Expr, FilterError> {
        let field_pos = self.pos;
        let field = self.field()?;
        if field == "AND" || field == "OR" {
            return Err(FilterError::new(
                field_pos,
                format!("expected a restriction such as title = \"x\", found {field}"),
            ));
        }
        self.skip_ws();
        let op = self.op(field_pos)?;
        self.skip_ws();
        let value_pos = self.pos;
        let value = self.value(op)?;
        Ok(Expr::Restriction {
            field,
            field_pos,
            op,
            value,
            value_pos,
        })
    }

    /// `name { . name }`; the cursor is on a name character.
    fn field(&mut self) -> Result<String, FilterError> {
        let mut field = String::new();
        loop {
            let start = self.pos;
            while let Some(c) = self.peek().filter(|&c| is_name_char(c)) {
                field.push(c);
                self.pos += 1;
            }
            if self.pos == start {
                return Err(self.error(format!(
                    "expected a field name after '.', found {}",
                    self.found()
                )));
            }
            if self.peek() != Some('.') {
                return Ok(field);
            }
            field.push('.');
            self.pos += 1;
        }
    }

    fn op(&mut self, field_pos: usize) -> Result<Op, FilterError> {
        let (op, len) = match (self.peek(), self.peek_at(1)) {
            (Some('<'), Some('=')) => (Op::Le, 2),
            (Some('>'), Some('=')) => (Op::Ge, 2),
            (Some('!'), Some('=')) => (Op::Ne, 2),
            (Some('<'), _) => (Op::Lt, 1),
            (Some('>'), _) => (Op::Gt, 1),
            (Some('='), _) => (Op::Eq, 1),
            (Some(':'), _) => (Op::Has, 1),
            (Some('!'), _) => {
                return Err(self.error("expected '!=' (a lone '!' is not an operator)"));
            }
            // A name with no operator is an AIP-160 "global restriction",
            // which this hub does not support.
            _ => return Err(FilterError::new(field_pos, GLOBAL_RESTRICTION)),
        };
        self.pos += len;
        if self.peek() == Some('=') {
            return Err(self.error(format!(
                "unexpected '=' after '{op}' (equality is a single '=')"
            )));
        }
        Ok(op)
    }

    fn value(&mut self, op: Op) -> Result<Value, FilterError> {
        match self.peek() {
            None => Err(self.error(format!("missing value after '{op}'"))),
            Some(c @ ('(' | ')')) => {
                Err(self.error(format!("missing value after '{op}' (found '{c}')")))
            }
            Some('"') => Ok(Value::String(self.string()?)),
            Some(_) => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| !c.is_whitespace() && !matches!(c, '(' | ')' | '"'))
                {
                    self.pos += 1;
                }
                let text: String = self.chars[start..self.pos].iter().collect();
                match text.as_str() {
                    "*" => Ok(Value::Any),
                    // Almost always a forgotten value, e.g. `a = AND b = 1`.
                    "AND" | "OR" | "NOT" => Err(FilterError::new(
                        start,
                        format!(
                            "missing value after '{op}' (to match the word {text}, quote it: \"{text}\")"
                        ),
                    )),
                    _ => Ok(Value::Bare(text)),
                }
            }
        }
    }

    /// A double-quoted string; the cursor is on the opening quote.
    fn string(&mut self) -> Result<String, FilterError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(FilterError::new(start, "unterminated string")),
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    let escaped = match self.peek_at(1) {
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        None => return Err(FilterError::new(start, "unterminated string")),
                        Some(c) => {
                            return Err(self.error(format!(
                                "unknown escape '\\{c}' in string (use \\\" \\\\ \\n \\t or \\r)"
                            )));
                        }
                    };
                    out.push(escaped);
                    self.pos += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Join {
    And,
    Or,
}

/// Builds an `And`/`Or` of `items`, splicing in children of the same kind so
/// that `(a AND b) AND c` is one flat `And`.
fn join(items: Vec<Expr>, kind: Join) -> Expr {
    let mut flat = Vec::with_capacity(items.len());
    for item in items {
        match (kind, item) {
            (Join::And, Expr::And(children)) | (Join::Or, Expr::Or(children)) => {
                flat.extend(children);
            }
            (_, other) => flat.push(other),
        }
    }
    if flat.len() == 1
        && let Some(only) = flat.pop()
    {
        return only;
    }
    match kind {
        Join::And => Expr::And(flat),
        Join::Or => Expr::Or(flat),
    }
}

#[cfg(test)]
mod tests;
