//! Kubernetes label selectors and field selectors.
//!
//! Label selector syntax and validation follow
//! `k8s.io/apimachinery/pkg/labels`; field selectors follow
//! `k8s.io/apimachinery/pkg/fields`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use thiserror::Error;

/// A selector that cannot be parsed. The message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SelectorError {
    /// A string label selector (`?labelSelector=`).
    #[error("invalid label selector {selector:?}: {reason}")]
    Label { selector: String, reason: String },
    /// A `metav1.LabelSelector` object (`matchLabels`/`matchExpressions`).
    #[error("invalid label selector: {reason}")]
    LabelObject { reason: String },
    /// A field selector (`?fieldSelector=`).
    #[error("invalid field selector {selector:?}: {reason}")]
    Field { selector: String, reason: String },
}

/// Operator of one label requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `key=value`, `key==value`, `key in (a,b)`, and `In` in objects.
    In,
    /// `key!=value`, `key notin (a,b)`, and `NotIn` in objects.
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>5` (the label must be an integer greater than the value).
    GreaterThan,
    /// `key<5`
    LessThan,
}

/// One ANDed part of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: BTreeSet<String>,
    /// The bound for `GreaterThan`/`LessThan`, parsed once.
    bound: i64,
}

impl Requirement {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.operator
    }

    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(String::as_str)
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // Absent labels satisfy negative requirements, as in Kubernetes.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > self.bound),
            Operator::LessThan => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < self.bound),
        }
    }
}

/// A parsed label selector: a conjunction of requirements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    /// A null `metav1.LabelSelector` selects nothing (unlike an empty one).
    nothing: bool,
}

impl LabelSelector {
    /// The selector matching every object.
    pub fn everything() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            nothing: false,
        }
    }

    /// The selector matching no object.
    pub fn nothing() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Parses the string syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
    /// `a notin (x)`, `a`, `!a`, `a>1`, `a<1`, joined by commas (AND).
    /// The empty string selects everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let err = |reason: String| SelectorError::Label {
            selector: s.to_string(),
            reason,
        };
        let tokens = lex(s);
        let requirements = Parser {
            tokens: &tokens,
            pos: 0,
        }
        .parse()
        .map_err(err)?;
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// Converts a `metav1.LabelSelector` JSON object. `null` selects
    /// nothing; `{}` selects everything.
    pub fn from_label_selector_json(v: &Value) -> Result<Self, SelectorError> {
        let err = |reason: String| SelectorError::LabelObject { reason };
        let obj = match v {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(o) => o,
            other => {
                return Err(err(format!("expected an object, got {}", json_type(other))));
            }
        };
        let mut requirements = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (key, value) in labels {
                    let Value::String(value) = value else {
                        return Err(err(format!(
                            "matchLabels[{key:?}]: expected a string, got {}",
                            json_type(value)
                        )));
                    };
                    let values = BTreeSet::from([value.clone()]);
                    requirements.push(
                        new_requirement(key, Operator::In, values)
                            .map_err(|r| err(format!("matchLabels: {r}")))?,
                    );
                }
            }
            Some(other) => {
                return Err(err(format!(
                    "matchLabels: expected an object, got {}",
                    json_type(other)
                )));
            }
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for (i, expr) in exprs.iter().enumerate() {
                    let r = expression_requirement(expr)
                        .map_err(|r| err(format!("matchExpressions[{i}]: {r}")))?;
                    requirements.push(r);
                }
            }
            Some(other) => {
                return Err(err(format!(
                    "matchExpressions: expected a list, got {}",
                    json_type(other)
                )));
            }
        }
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// True when every label set matches (no requirements).
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn expression_requirement(expr: &Value) -> Result<Requirement, String> {
    let Value::Object(expr) = expr else {
        return Err(format!("expected an object, got {}", json_type(expr)));
    };
    let key = match expr.get("key") {
        Some(Value::String(k)) => k,
        None | Some(Value::Null) => return Err("key: required".to_string()),
        Some(other) => return Err(format!("key: expected a string, got {}", json_type(other))),
    };
    let operator = match expr.get("operator") {
        Some(Value::String(op)) => match op.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(format!(
                    "operator: unsupported value {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                ));
            }
        },
        None | Some(Value::Null) => return Err("operator: required".to_string()),
        Some(other) => {
            return Err(format!(
                "operator: expected a string, got {}",
                json_type(other)
            ));
        }
    };
    let mut values = BTreeSet::new();
    match expr.get("values") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let Value::String(s) = item else {
                    return Err(format!("values: expected strings, got {}", json_type(item)));
                };
                values.insert(s.clone());
            }
        }
        Some(other) => {
            return Err(format!("values: expected a list, got {}", json_type(other)));
        }
    }
    new_requirement(key, operator, values)
}

/// Builds a requirement after the checks `labels.NewRequirement` makes.
fn new_requirement(
    key: &str,
    operator: Operator,
    values: BTreeSet<String>,
) -> Result<Requirement, String> {
    validate_label_key(key)?;
    let mut bound = 0;
    match operator {
        Operator::In | Operator::NotIn => {
            if values.is_empty() {
                return Err(format!(
                    "key {key:?}: values must be non-empty for the {} operator",
                    op_name(operator)
                ));
            }
            for v in &values {
                validate_label_value(v)?;
            }
        }
        Operator::Exists | Operator::DoesNotExist => {
            if !values.is_empty() {
                return Err(format!(
                    "key {key:?}: values must be empty for the {} operator",
                    op_name(operator)
                ));
            }
        }
        Operator::GreaterThan | Operator::LessThan => {
            let mut it = values.iter();
            let (Some(v), None) = (it.next(), it.next()) else {
                return Err(format!(
                    "key {key:?}: exactly one value is needed for the {} operator",
                    op_name(operator)
                ));
            };
            bound = v.parse::<i64>().map_err(|_| {
                format!(
                    "key {key:?}: the value for the {} operator must be an integer, got {v:?}",
                    op_name(operator)
                )
            })?;
        }
    }
    Ok(Requirement {
        key: key.to_string(),
        operator,
        values,
        bound,
    })
}

fn op_name(op: Operator) -> &'static str {
    match op {
        Operator::In => "'in'",
        Operator::NotIn => "'notin'",
        Operator::Exists => "'exists'",
        Operator::DoesNotExist => "'!'",
        Operator::GreaterThan => "'>'",
        Operator::LessThan => "'<'",
    }
}

// ---------------------------------------------------------------------------
// Label key and value validation (IsQualifiedName / IsValidLabelValue).

const NAME_MAX: usize = 63;
const PREFIX_MAX: usize = 253;

fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err(format!(
                "invalid label key {key:?}: prefix part must be non-empty"
            ));
        }
        if !is_dns_subdomain(prefix) {
            return Err(format!(
                "invalid label key {key:?}: prefix part must be a lowercase DNS subdomain of at most {PREFIX_MAX} characters (e.g. 'example.com')"
            ));
        }
    }
    if name.is_empty() {
        return Err(format!(
            "invalid label key {key:?}: name part must be non-empty"
        ));
    }
    if name.len() > NAME_MAX {
        return Err(format!(
            "invalid label key {key:?}: name part must be no more than {NAME_MAX} characters"
        ));
    }
    if !is_label_token(name) {
        return Err(format!(
            "invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn validate_label_value(value: &str) -> Result<(), String> {
    if value.len() > NAME_MAX {
        return Err(format!(
            "invalid label value {value:?}: must be no more than {NAME_MAX} characters"
        ));
    }
    if !value.is_empty() && !is_label_token(value) {
        return Err(format!(
            "invalid label value {value:?}: must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn is_label_token(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// RFC 1123 subdomain: dot-separated lowercase labels, each
/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 253 characters in all.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= PREFIX_MAX
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            match (b.first(), b.last()) {
                (Some(first), Some(last)) => {
                    is_lower_alnum(*first)
                        && is_lower_alnum(*last)
                        && b.iter().all(|c| is_lower_alnum(*c) || *c == b'-')
                }
                _ => false,
            }
        })
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

// ---------------------------------------------------------------------------
// Label selector lexer and parser.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok<'a> {
    Ident(&'a str),
    Bang,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

impl Tok<'_> {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("{s:?}"),
            Tok::Bang => "'!'".to_string(),
            Tok::Eq => "'='".to_string(),
            Tok::DoubleEq => "'=='".to_string(),
            Tok::NotEq => "'!='".to_string(),
            Tok::Gt => "'>'".to_string(),
            Tok::Lt => "'<'".to_string(),
            Tok::Open => "'('".to_string(),
            Tok::Close => "')'".to_string(),
            Tok::Comma => "','".to_string(),
        }
    }
}

/// Kubernetes only treats these four as whitespace.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_special(c: char) -> bool {
    matches!(c, '!' | '=' | '(' | ')' | ',' | '>' | '<')
}

fn lex(s: &str) -> Vec<Tok<'_>> {
    let mut tokens = Vec::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if is_space(c) {
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if is_special(c) {
            // Longest match: the two-character operators first.
            let (tok, len) = if rest.starts_with("!=") {
                (Tok::NotEq, 2)
            } else if rest.starts_with("==") {
                (Tok::DoubleEq, 2)
            } else {
                let tok = match c {
                    '!' => Tok::Bang,
                    '=' => Tok::Eq,
                    '(' => Tok::Open,
                    ')' => Tok::Close,
                    ',' => Tok::Comma,
                    '>' => Tok::Gt,
                    _ => Tok::Lt,
                };
                (tok, 1)
            };
            tokens.push(tok);
            rest = &rest[len..];
            continue;
        }
        let end = rest
            .find(|c: char| is_space(c) || is_special(c))
            .unwrap_or(rest.len());
        tokens.push(Tok::Ident(&rest[..end]));
        rest = &rest[end..];
    }
    tokens
}

struct Parser<'t, 'a> {
    tokens: &'t [Tok<'a>],
    pos: usize,
}

impl<'a> Parser<'_, 'a> {
    fn peek(&self) -> Option<&Tok<'a>> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok<'a>> {
        let t = self.tokens.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn parse(mut self) -> Result<Vec<Requirement>, String> {
        let mut out = Vec::new();
        if self.peek().is_none() {
            return Ok(out);
        }
        loop {
            out.push(self.requirement()?);
            match self.next() {
                None => return Ok(out),
                Some(Tok::Comma) => {
                    if self.peek().is_none() {
                        return Err("trailing ',' must be followed by a requirement".to_string());
                    }
                }
                Some(t) => {
                    return Err(format!(
                        "found {}, expected ',' or end of selector",
                        t.describe()
                    ));
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        match self.next() {
            Some(Tok::Bang) => {
                let key = match self.next() {
                    Some(Tok::Ident(k)) => k,
                    Some(t) => {
                        return Err(format!(
                            "found {} after '!', expected a label key",
                            t.describe()
                        ));
                    }
                    None => return Err("missing label key after '!'".to_string()),
                };
                new_requirement(key, Operator::DoesNotExist, BTreeSet::new())
            }
            Some(Tok::Ident(key)) => self.restriction(key),
            Some(t) => Err(format!(
                "found {}, expected a label key or '!'",
                t.describe()
            )),
            None => Err("expected a label key or '!'".to_string()),
        }
    }

    fn restriction(&mut self, key: &str) -> Result<Requirement, String> {
        let op_tok = match self.peek() {
            None | Some(Tok::Comma) => {
                return new_requirement(key, Operator::Exists, BTreeSet::new());
            }
            Some(t) => t.clone(),
        };
        self.pos += 1;
        match op_tok {
            Tok::Ident("in") => {
                let values = self.value_set()?;
                new_requirement(key, Operator::In, values)
            }
            Tok::Ident("notin") => {
                let values = self.value_set()?;
                new_requirement(key, Operator::NotIn, values)
            }
            Tok::Eq | Tok::DoubleEq | Tok::NotEq => {
                // `a=` (nothing before the next ',' or the end) means the
                // empty value, as in Kubernetes.
                let value = match self.peek() {
                    None | Some(Tok::Comma) => "",
                    Some(Tok::Ident(v)) => {
                        let v = *v;
                        self.pos += 1;
                        v
                    }
                    Some(t) => {
                        return Err(format!(
                            "found {} after {}, expected a value",
                            t.describe(),
                            op_tok.describe()
                        ));
                    }
                };
                let op = if op_tok == Tok::NotEq {
                    Operator::NotIn
                } else {
                    Operator::In
                };
                new_requirement(key, op, BTreeSet::from([value.to_string()]))
            }
            Tok::Gt | Tok::Lt => {
                let value = match self.next() {
                    Some(Tok::Ident(v)) => v,
                    _ => {
                        return Err(format!("expected an integer after {}", op_tok.describe()));
                    }
                };
                let op = if op_tok == Tok::Gt {
                    Operator::GreaterThan
                } else {
                    Operator::LessThan
                };
                new_requirement(key, op, BTreeSet::from([value.to_string()]))
            }
            t => Err(format!(
                "found {} after key {key:?}, expected an operator ('=', '==', '!=', 'in', 'notin', '>', '<'), ',' or end of selector",
                t.describe()
            )),
        }
    }

    /// `( v1, v2, ... )`; empty items between commas are empty values.
    fn value_set(&mut self) -> Result<BTreeSet<String>, String> {
        match self.next() {
            Some(Tok::Open) => {}
            Some(t) => return Err(format!("found {}, expected '('", t.describe())),
            None => return Err("expected '(' after 'in'/'notin'".to_string()),
        }
        let mut values = BTreeSet::new();
        let mut current: Option<&str> = None;
        let mut saw_comma = false;
        loop {
            match self.next() {
                Some(Tok::Ident(v)) => {
                    if current.is_some() {
                        return Err(format!("found {v:?}, expected ',' or ')'"));
                    }
                    current = Some(v);
                }
                Some(Tok::Comma) => {
                    values.insert(current.take().unwrap_or_default().to_string());
                    saw_comma = true;
                }
                Some(Tok::Close) => {
                    if current.is_some() || saw_comma {
                        values.insert(current.take().unwrap_or_default().to_string());
                    }
                    return Ok(values);
                }
                Some(t) => {
                    return Err(format!(
                        "found {} in value list, expected a value, ',' or ')'",
                        t.describe()
                    ));
                }
                None => return Err("missing closing parenthesis".to_string()),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Field selectors.

/// A parsed field selector: ANDed `field=value` / `field!=value` terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    equal: bool,
    value: String,
}

impl FieldSelector {
    /// Parses `a=b`, `a==b`, `a!=b` joined by commas. In values, `\,`,
    /// `\=`, `\!` and `\\` stand for the character itself; a bare `,` ends
    /// the term and a bare `=` is an error. The empty string selects
    /// everything, and empty terms (`a=b,,c=d`) are skipped as Kubernetes
    /// does.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let err = |reason: String| SelectorError::Field {
            selector: s.to_string(),
            reason,
        };
        let mut terms = Vec::new();
        for term in split_terms(s) {
            if term.is_empty() {
                continue;
            }
            let (field, equal, raw_value) = split_term(term)
                .ok_or_else(|| err(format!("{term:?} has no '=', '==' or '!=' operator")))?;
            let field = field.trim_matches(is_space);
            if field.is_empty() {
                return Err(err(format!("{term:?} has an empty field name")));
            }
            let value = unescape_value(raw_value).map_err(&err)?;
            terms.push(FieldTerm {
                field: field.to_string(),
                equal,
                value,
            });
        }
        Ok(FieldSelector { terms })
    }

    /// `(field, true for =/==, value)` for each term.
    pub fn requirements(&self) -> impl Iterator<Item = (&str, bool, &str)> {
        self.terms
            .iter()
            .map(|t| (t.field.as_str(), t.equal, t.value.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// `get` returns a field's value; a missing field compares as "".
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|t| {
            let actual = get(&t.field).unwrap_or_default();
            (actual == t.value) == t.equal
        })
    }
}

/// Splits on commas not preceded by a backslash escape.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits a term at its first operator. Field names never contain `!` or
/// `=`, so the first occurrence is the operator, as in Kubernetes.
fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, equal) in [("!=", false), ("==", true), ("=", true)] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], equal, value));
            }
        }
    }
    None
}

fn unescape_value(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=' | '!')) => out.push(e),
                Some(e) => {
                    return Err(format!(
                        "invalid escape sequence \"\\{e}\" in value {raw:?}"
                    ));
                }
                None => {
                    return Err(format!("value {raw:?} ends with an unfinished escape '\\'"));
                }
            },
            '=' => {
                return Err(format!(
                    "value {raw:?} contains an unescaped '='; write it as '\\='"
                ));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        match LabelSelector::parse(s) {
            Ok(sel) => sel,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn label_err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(sel) => panic!("{s:?} should not parse, got {sel:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn field(s: &str) -> FieldSelector {
        match FieldSelector::parse(s) {
            Ok(sel) => sel,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn field_err(s: &str) -> String {
        match FieldSelector::parse(s) {
            Ok(sel) => panic!("{s:?} should not parse, got {sel:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn json_sel(v: Value) -> LabelSelector {
        match LabelSelector::from_label_selector_json(&v) {
            Ok(sel) => sel,
            Err(e) => panic!("{v} should convert: {e}"),
        }
    }

    #[test]
    fn equality_requirement_matches_only_the_same_value() {
        let s = sel("app=web");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "x")])));
        assert!(!s.matches(&labels(&[("app", "db")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn double_equals_means_the_same_as_equals() {
        assert_eq!(sel("app==web"), sel("app=web"));
    }

    #[test]
    fn not_equals_matches_a_different_value_or_an_absent_label() {
        let s = sel("app!=web");
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(s.matches(&labels(&[("app", "db")])));
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn in_requirement_matches_any_listed_value() {
        let s = sel("env in (prod, staging)");
        assert!(s.matches(&labels(&[("env", "prod")])));
        assert!(s.matches(&labels(&[("env", "staging")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn notin_requirement_matches_other_values_and_absent_labels() {
        let s = sel("env notin (prod)");
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert!(s.matches(&labels(&[("env", "dev")])));
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn bare_key_requires_the_label_to_exist() {
        let s = sel("app");
        assert!(s.matches(&labels(&[("app", "")])));
        assert!(!s.matches(&labels(&[("other", "x")])));
    }

    #[test]
    fn bang_key_requires_the_label_to_be_absent() {
        let s = sel("!app");
        assert!(!s.matches(&labels(&[("app", "x")])));
        assert!(s.matches(&labels(&[("other", "x")])));
    }

    #[test]
    fn greater_and_less_than_compare_integer_label_values() {
        let s = sel("gen>3,gen<10");
        assert!(s.matches(&labels(&[("gen", "5")])));
        assert!(!s.matches(&labels(&[("gen", "3")])));
        assert!(!s.matches(&labels(&[("gen", "10")])));
        assert!(!s.matches(&labels(&[("gen", "five")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn requirements_are_anded() {
        let s = sel("app=web,tier in (frontend),!canary");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "frontend")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "backend")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("tier", "frontend"),
            ("canary", "1")
        ])));
        assert_eq!(s.requirements().len(), 3);
    }

    #[test]
    fn empty_selector_matches_everything() {
        for s in ["", "   ", "\t\n"] {
            let parsed = sel(s);
            assert!(parsed.is_empty());
            assert!(parsed.matches(&labels(&[])));
        }
        assert!(!sel("a").is_empty());
    }

    #[test]
    fn whitespace_around_tokens_is_tolerated() {
        assert_eq!(
            sel("  app = web ,  env  in  ( a ,b )  "),
            sel("app=web,env in (a,b)")
        );
        assert_eq!(sel(" ! app "), sel("!app"));
    }

    #[test]
    fn empty_value_after_equals_matches_an_empty_label() {
        let s = sel("app=,tier=x");
        assert!(s.matches(&labels(&[("app", ""), ("tier", "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "x")])));
    }

    #[test]
    fn empty_items_in_a_value_set_are_empty_values() {
        let s = sel("app in (web,)");
        assert!(s.matches(&labels(&[("app", "")])));
        assert!(s.matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn prefixed_keys_are_accepted() {
        let s = sel("app.kubernetes.io/name=web");
        assert!(s.matches(&labels(&[("app.kubernetes.io/name", "web")])));
    }

    #[test]
    fn requirement_accessors_expose_the_parsed_parts() {
        let s = sel("env notin (b,a)");
        let r = &s.requirements()[0];
        assert_eq!(r.key(), "env");
        assert_eq!(r.operator(), Operator::NotIn);
        assert_eq!(r.values().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn missing_closing_parenthesis_is_reported() {
        assert_eq!(
            label_err("a in ("),
            "invalid label selector \"a in (\": missing closing parenthesis"
        );
        assert!(label_err("a in (x, y").contains("missing closing parenthesis"));
    }

    #[test]
    fn empty_value_set_is_rejected() {
        assert!(label_err("a in ()").contains("values must be non-empty"));
    }

    #[test]
    fn in_without_parenthesis_is_rejected() {
        assert!(label_err("a in x").contains("expected '('"));
    }

    #[test]
    fn values_in_a_set_need_commas() {
        assert!(label_err("a in (x y)").contains("expected ',' or ')'"));
    }

    #[test]
    fn trailing_comma_is_rejected() {
        assert!(label_err("a=b,").contains("trailing ','"));
    }

    #[test]
    fn leading_or_doubled_comma_is_rejected() {
        label_err(",a");
        label_err("a,,b");
    }

    #[test]
    fn missing_key_after_bang_is_rejected() {
        assert!(label_err("!").contains("missing label key"));
        label_err("!=b");
    }

    #[test]
    fn unknown_operator_word_is_rejected() {
        assert!(label_err("a within (b)").contains("expected an operator"));
    }

    #[test]
    fn two_values_after_equals_are_rejected() {
        assert!(label_err("a=b c").contains("expected ',' or end of selector"));
    }

    #[test]
    fn bang_requirement_cannot_take_a_value() {
        label_err("!a=b");
    }

    #[test]
    fn invalid_label_keys_are_rejected() {
        assert!(label_err("-app=x").contains("invalid label key \"-app\""));
        assert!(label_err(&format!("{}=x", "k".repeat(64))).contains("no more than 63"));
        assert!(label_err("Example.com/app=x").contains("prefix part"));
        assert!(label_err("/app=x").contains("prefix part must be non-empty"));
        assert!(label_err("example.com/=x").contains("name part must be non-empty"));
        label_err("a/b/c=x");
        label_err("ключ=x");
    }

    #[test]
    fn invalid_label_values_are_rejected() {
        assert!(label_err("app=-web").contains("invalid label value \"-web\""));
        assert!(label_err(&format!("app={}", "v".repeat(64))).contains("no more than 63"));
        label_err("app in (ok, bad!)");
    }

    #[test]
    fn non_integer_bound_for_greater_than_is_rejected() {
        assert!(label_err("a>b").contains("must be an integer"));
        assert!(label_err("a<").contains("expected an integer"));
        label_err("a>99999999999999999999");
    }

    #[test]
    fn json_selector_combines_match_labels_and_match_expressions() {
        let s = json_sel(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                {"key": "tier", "operator": "NotIn", "values": ["db"]},
                {"key": "team", "operator": "Exists"},
                {"key": "canary", "operator": "DoesNotExist", "values": []}
            ]
        }));
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev"), ("team", "a")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("team", "a"),
            ("tier", "db")
        ])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("team", "a"),
            ("canary", "y")
        ])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
    }

    #[test]
    fn empty_json_selector_matches_everything_and_null_matches_nothing() {
        let empty = json_sel(json!({}));
        assert!(empty.is_empty());
        assert!(empty.matches(&labels(&[("a", "b")])));
        let none = json_sel(Value::Null);
        assert!(!none.is_empty());
        assert!(!none.matches(&labels(&[])));
        assert_eq!(
            json_sel(json!({"matchLabels": null, "matchExpressions": null})),
            empty
        );
    }

    #[test]
    fn json_selector_errors_name_the_bad_part() {
        let err = |v: Value| match LabelSelector::from_label_selector_json(&v) {
            Ok(s) => panic!("{v} should fail, got {s:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}))
                .contains("matchExpressions[0]: operator: unsupported value \"Near\"")
        );
        assert!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}))
                .contains("values must be non-empty")
        );
        assert!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}))
                .contains("values must be empty")
        );
        assert!(
            err(json!({"matchExpressions": [{"operator": "Exists"}]})).contains("key: required")
        );
        assert!(err(json!({"matchLabels": {"app": 1}})).contains("matchLabels[\"app\"]"));
        assert!(err(json!({"matchLabels": {"bad key": "x"}})).contains("invalid label key"));
        assert!(err(json!({"matchLabels": ["a"]})).contains("matchLabels: expected an object"));
        assert!(err(json!({"matchExpressions": {}})).contains("expected a list"));
        assert!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}))
                .contains("values: expected strings")
        );
        assert!(err(json!("app=web")).contains("expected an object"));
    }

    #[test]
    fn field_selector_equality_and_inequality() {
        let s = field("status.phase=Running,spec.nodeName!=node-1");
        let pod = |phase: &str, node: &str| {
            let (phase, node) = (phase.to_string(), node.to_string());
            move |f: &str| match f {
                "status.phase" => Some(phase.clone()),
                "spec.nodeName" => Some(node.clone()),
                _ => None,
            }
        };
        assert!(s.matches(pod("Running", "node-2")));
        assert!(!s.matches(pod("Running", "node-1")));
        assert!(!s.matches(pod("Pending", "node-2")));
    }

    #[test]
    fn field_selector_double_equals_means_equals() {
        assert_eq!(FieldSelector::parse("a==b"), FieldSelector::parse("a=b"));
    }

    #[test]
    fn missing_field_compares_as_empty_string() {
        let s = field("spec.nodeName=");
        assert!(s.matches(|_| None));
        let s = field("spec.nodeName!=");
        assert!(!s.matches(|_| None));
        assert!(s.matches(|_| Some("n1".to_string())));
    }

    #[test]
    fn field_selector_requirements_are_listed_in_order() {
        let s = field("metadata.name=a, metadata.namespace!=b");
        let reqs: Vec<_> = s.requirements().collect();
        assert_eq!(
            reqs,
            [
                ("metadata.name", true, "a"),
                ("metadata.namespace", false, "b")
            ]
        );
    }

    #[test]
    fn backslash_escapes_in_field_values_are_decoded() {
        let s = field(r"metadata.name=a\,b\=c\!d\\e,x=y");
        let reqs: Vec<_> = s.requirements().collect();
        assert_eq!(
            reqs,
            [("metadata.name", true, r"a,b=c!d\e"), ("x", true, "y")]
        );
    }

    #[test]
    fn empty_field_selector_and_empty_terms_select_everything() {
        let s = field("");
        assert!(s.is_empty());
        assert!(s.matches(|_| None));
        let s = field("a=b,,");
        assert_eq!(s.requirements().count(), 1);
    }

    #[test]
    fn field_term_without_operator_is_rejected() {
        assert_eq!(
            field_err("metadata.name"),
            "invalid field selector \"metadata.name\": \"metadata.name\" has no '=', '==' or '!=' operator"
        );
    }

    #[test]
    fn unescaped_equals_in_field_value_is_rejected() {
        assert!(field_err("a=b=c").contains("unescaped '='"));
    }

    #[test]
    fn unknown_or_unfinished_field_escapes_are_rejected() {
        assert!(field_err(r"a=b\n").contains("invalid escape sequence"));
        assert!(field_err(r"a=b\").contains("unfinished escape"));
    }

    #[test]
    fn empty_field_name_is_rejected() {
        assert!(field_err("=x").contains("empty field name"));
    }

    proptest! {
        #[test]
        fn label_parse_never_panics(s in any::<String>()) {
            let _ = LabelSelector::parse(&s);
        }

        #[test]
        fn label_parse_never_panics_on_selector_like_input(
            s in r"[a-c/.!=(), \tinot<>0-9-]{0,24}"
        ) {
            if let Ok(sel) = LabelSelector::parse(&s) {
                let _ = sel.matches(&labels(&[("a", "1"), ("b", "")]));
            }
        }

        #[test]
        fn field_parse_never_panics(s in any::<String>()) {
            let _ = FieldSelector::parse(&s);
        }

        #[test]
        fn field_parse_never_panics_on_selector_like_input(s in r"[a-c.!=,\\ ]{0,24}") {
            if let Ok(sel) = FieldSelector::parse(&s) {
                let _ = sel.matches(|f| Some(f.to_string()));
            }
        }
    }
}
