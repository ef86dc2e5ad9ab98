//! The shapes of `plans.yaml` as written ([`RawPlans`]) and as used ([`PlanSpec`]), and the
//! semantic checks between them (names, parameter types and expressions, expectations), and
//! the trade-table placeholders of the SQL (`{orders}`, `{orders.partition_column}`), replaced
//! by the configured, quoted names.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::db::trade_tables::{Role, TableRef, TradeTables, quote_ident};

/// Statement timeout of a key query that sets none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The file: a list of key queries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlans {
    pub queries: Vec<Spanned<RawPlan>>,
}

/// One key query as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlan {
    pub name: Spanned<String>,
    pub help: Option<String>,
    pub sql: Spanned<String>,
    #[serde(default)]
    pub params: Vec<Spanned<RawParam>>,
    pub expect: Option<Spanned<RawExpect>>,
    pub target: Option<Spanned<String>>,
    pub objective: Option<Spanned<f64>>,
    pub timeout: Option<Spanned<String>>,
}

/// A parameter as written: a type and exactly one of `value` and `expr`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawParam {
    #[serde(rename = "type")]
    pub ty: Spanned<String>,
    pub value: Option<Scalar>,
    pub expr: Option<Spanned<String>>,
}

/// A YAML scalar used as a literal parameter value.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// The expectations as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExpect {
    #[serde(default)]
    pub indexes: Vec<Spanned<String>>,
    pub max_partitions: Option<u32>,
}

/// How a parameter gets its value when the check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    /// A literal, sent as a quoted SQL string and cast by the parameter's type.
    Literal(String),
    /// An SQL expression evaluated when the check runs, e.g. `now() - interval '1 day'`.
    Expr(String),
}

/// One typed parameter of a key query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The type given to PREPARE, e.g. `bigint`, `timestamptz`.
    pub ty: String,
    /// Its value.
    pub value: ParamValue,
}

impl Param {
    /// The parameter as an argument of EXECUTE.
    pub fn sql(&self) -> String {
        match &self.value {
            ParamValue::Literal(v) => format!("'{}'", v.replace('\'', "''")),
            ParamValue::Expr(e) => format!("({e})"),
        }
    }
}

/// One validated key query.
#[derive(Debug, Clone)]
pub struct PlanSpec {
    /// Unique name (the `query` label of the pg_plan_* metrics).
    pub name: String,
    /// What the query is.
    pub help: String,
    /// The SQL text with `$1`.. placeholders, trade-table placeholders replaced.
    pub sql: String,
    /// The trade tables the SQL names through placeholders, in order of first use: the query
    /// applies only where each of them exists with its configured shape.
    pub tables: Vec<(Role, TableRef)>,
    /// The parameters, in placeholder order.
    pub params: Vec<Param>,
    /// Indexes the plan must use, as written (optionally schema-qualified).
    pub indexes: Vec<String>,
    /// The most leaf partitions the plan may scan.
    pub max_partitions: Option<u32>,
    /// Latency target (planning + execution), checked with ANALYZE only; with a target the
    /// query also has a latency SLO (see [`super::slo`]).
    pub target: Option<Duration>,
    /// The share of executions that must finish within `target` (the SLO's objective).
    pub objective: f64,
    /// Server-side statement timeout of the check.
    pub timeout: Duration,
    /// Line and column of the query in its file.
    pub location: (u64, u64),
}

type Loc = (u64, u64);

fn at(l: &Location) -> Loc {
    (l.line(), l.column())
}

/// A PREPARE parameter type: letters, digits, `_`, spaces, `.`, `,`, `()`, `[]`, `"`.
fn is_type_name(s: &str) -> bool {
    !s.trim().is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " _.,()[]\"".contains(c))
}

/// Whether `sql` holds a `;` outside quotes and comments (trailing ones ignored).
fn has_semicolon(sql: &str) -> bool {
    let body = sql.trim().trim_end_matches(';');
    let (mut quote, mut chars) = (None::<char>, body.chars().peekable());
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '-') if chars.peek() == Some(&'-') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            (None, ';') => return true,
            _ => {}
        }
    }
    false
}

/// The highest `$n` placeholder of `sql` outside quotes (0 when none).
fn max_placeholder(sql: &str) -> usize {
    let (mut quote, mut max) = (None::<char>, 0);
    let chars: Vec<char> = sql.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '$' => {
                let digits: String = chars
                    .iter()
                    .skip(i + 1)
                    .take_while(|d| d.is_ascii_digit())
                    .collect();
                if let Ok(n) = digits.parse::<usize>() {
                    max = max.max(n);
                }
            }
            None => {}
        }
    }
    max
}

/// The placeholders a plans file may use, for messages.
fn known_placeholders() -> String {
    Role::ALL
        .iter()
        .map(|r| format!("{{{}}}", r.key()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The replacement of one placeholder `{word}` (without braces), or `None` when `word` is not
/// shaped like a placeholder at all (e.g. an array literal's content).
fn placeholder(word: &str, tables: &TradeTables) -> Option<Result<(Role, String), String>> {
    let shaped = word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !shaped {
        return None;
    }
    let (key, field) = word.split_once('.').unwrap_or((word, ""));
    let Some(role) = Role::from_key(key) else {
        return Some(Err(format!(
            "unknown placeholder {{{word}}} (known: {}, each also with .partition_column)",
            known_placeholders()
        )));
    };
    let t = tables.get(role);
    Some(match field {
        "" => Ok((role, t.sql())),
        "partition_column" => match t.partition_column() {
            Some(c) => Ok((role, quote_ident(c))),
            None => Err(format!(
                "{{{word}}}: trade_tables.{key}.partition_column is not set"
            )),
        },
        _ => Err(format!(
            "unknown placeholder {{{word}}} (known: {}, each also with .partition_column)",
            known_placeholders()
        )),
    })
}

/// `sql` with every `{orders}`-style placeholder outside quotes replaced by the quoted name of
/// the configured table (or its partition column), and the tables it names.
pub(crate) fn substitute(
    sql: &str,
    tables: &TradeTables,
) -> Result<(String, Vec<(Role, TableRef)>), String> {
    let (mut out, mut used) = (
        String::with_capacity(sql.len()),
        Vec::<(Role, TableRef)>::new(),
    );
    let (mut quote, mut rest) = (None::<char>, sql);
    while let Some(c) = rest.chars().next() {
        let close = rest.find('}').filter(|_| quote.is_none() && c == '{');
        if let Some(end) = close
            && let Some(r) = placeholder(&rest[1..end], tables)
        {
            let (role, text) = r?;
            if !used.iter().any(|(u, _)| *u == role) {
                used.push((role, tables.get(role).clone()));
            }
            out.push_str(&text);
            rest = &rest[end + 1..];
            continue;
        }
        quote = match (quote, c) {
            (Some(q), c) if c == q => None,
            (None, '\'' | '"') => Some(c),
            (q, _) => q,
        };
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok((out, used))
}

fn duration(s: &Spanned<String>, key: &str) -> Result<Duration, (Loc, String)> {
    let d = humantime::parse_duration(s.value.trim()).map_err(|e| {
        (
            at(&s.referenced),
            format!(
                "{key}: invalid duration `{}`: {e} (write e.g. 50ms, 5s)",
                s.value
            ),
        )
    })?;
    if d.is_zero() {
        return Err((at(&s.referenced), format!("{key} must be above zero")));
    }
    Ok(d)
}

fn param(p: Spanned<RawParam>, n: usize) -> Result<Param, (Loc, String)> {
    let loc = at(&p.referenced);
    let p = p.value;
    let ty = p.ty.value.trim().to_owned();
    if !is_type_name(&ty) {
        return Err((
            at(&p.ty.referenced),
            format!("parameter ${n}: `{ty}` is not a type name"),
        ));
    }
    let value = match (p.value, p.expr) {
        (Some(_), Some(e)) => {
            return Err((
                at(&e.referenced),
                format!("parameter ${n}: set either value or expr, not both"),
            ));
        }
        (None, None) => {
            return Err((loc, format!("parameter ${n}: needs a value or an expr")));
        }
        (Some(v), None) => ParamValue::Literal(match v {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(t) => t,
        }),
        (None, Some(e)) => {
            if e.value.trim().is_empty() || has_semicolon(&e.value) {
                return Err((
                    at(&e.referenced),
                    format!("parameter ${n}: expr must be one SQL expression"),
                ));
            }
            ParamValue::Expr(e.value.trim().to_owned())
        }
    };
    Ok(Param { ty, value })
}

/// The expected indexes (each a plausible name) and the most partitions, as written; at least
/// one of them, unless the query has a latency target (its SLO is then what is checked; `qloc`:
/// the query, for the message).
fn expectations(
    e: Option<Spanned<RawExpect>>,
    qloc: Loc,
    has_target: bool,
) -> Result<(Vec<String>, Option<u32>), (Loc, String)> {
    let nothing = || {
        let why = "expect needs indexes or max_partitions, or the query a target (there is nothing to check)";
        (qloc, why.to_owned())
    };
    let e = match e {
        Some(e) => e.value,
        None if has_target => return Ok((Vec::new(), None)),
        None => return Err(nothing()),
    };
    for i in &e.indexes {
        if i.value.trim().is_empty() || !is_type_name(&i.value) {
            return Err((
                at(&i.referenced),
                format!("`{}` is not an index name", i.value),
            ));
        }
    }
    let idx: Vec<String> = e.indexes.into_iter().map(|i| i.value).collect();
    if idx.is_empty() && e.max_partitions.is_none() {
        return Err(nothing());
    }
    Ok((idx, e.max_partitions))
}

/// The objective of a key query that sets none: 99 % of executions within the target.
pub(crate) const DEFAULT_OBJECTIVE: f64 = 0.99;

/// The latency target and the SLO objective as written: an objective in (0.5, 1) and only
/// with a target.
fn slo(
    target: Option<&Spanned<String>>,
    objective: Option<&Spanned<f64>>,
) -> Result<(Option<Duration>, f64), (Loc, String)> {
    let target = target.map(|t| duration(t, "target")).transpose()?;
    let Some(o) = objective else {
        return Ok((target, DEFAULT_OBJECTIVE));
    };
    if target.is_none() {
        let msg = "objective needs a target (the latency its executions must meet)";
        return Err((at(&o.referenced), msg.into()));
    }
    if !(o.value > 0.5 && o.value < 1.0) {
        let msg = format!(
            "objective must be a share between 0.5 and 1, e.g. 0.99 for 99 %, not {}",
            o.value
        );
        return Err((at(&o.referenced), msg));
    }
    Ok((target, o.value))
}

/// Checks a parsed file into key queries.
pub(crate) fn validate(
    raw: RawPlans,
    tables: &TradeTables,
) -> Result<Vec<PlanSpec>, (Loc, String)> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    if raw.queries.is_empty() {
        return Err(((0, 0), "no queries".to_owned()));
    }
    for q in raw.queries {
        let qloc = at(&q.referenced);
        let q = q.value;
        let name = q.name.value.clone();
        let ctx = |(loc, msg): (Loc, String)| (loc, format!("query \"{name}\": {msg}"));
        if !crate::catalog::is_label_name(&name) {
            return Err(ctx((
                at(&q.name.referenced),
                "name must match [a-zA-Z_][a-zA-Z0-9_]*".into(),
            )));
        }
        if !names.insert(name.clone()) {
            return Err(ctx((at(&q.name.referenced), "duplicate query name".into())));
        }
        let sql = q.sql.value.trim().trim_end_matches(';').trim().to_owned();
        if sql.is_empty() || has_semicolon(&sql) {
            return Err(ctx((
                at(&q.sql.referenced),
                "sql must be one statement".into(),
            )));
        }
        let nparams = q.params.len();
        let used = max_placeholder(&sql);
        if used != nparams {
            return Err(ctx((
                at(&q.sql.referenced),
                format!(
                    "sql uses ${used} as its highest placeholder but {nparams} params are given"
                ),
            )));
        }
        let (sql, used) = substitute(&sql, tables).map_err(|m| ctx((at(&q.sql.referenced), m)))?;
        let params = q
            .params
            .into_iter()
            .enumerate()
            .map(|(i, p)| param(p, i + 1))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ctx)?;
        let (target, objective) = slo(q.target.as_ref(), q.objective.as_ref()).map_err(ctx)?;
        let (indexes, max_partitions) =
            expectations(q.expect, qloc, target.is_some()).map_err(ctx)?;
        let timeout = q
            .timeout
            .as_ref()
            .map(|t| duration(t, "timeout"))
            .transpose()
            .map_err(ctx)?
            .unwrap_or(DEFAULT_TIMEOUT);
        out.push(PlanSpec {
            name,
            help: q.help.unwrap_or_default().trim().to_owned(),
            sql,
            tables: used,
            params,
            indexes,
            max_partitions,
            target,
            objective,
            timeout,
            location: qloc,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_inside_quotes_are_not_counted() {
        assert_eq!(
            max_placeholder("SELECT $1, '$5', $2 FROM t WHERE a = $10"),
            10
        );
        assert_eq!(max_placeholder("SELECT 1"), 0);
        assert_eq!(max_placeholder("SELECT '$3'"), 0);
    }

    #[test]
    fn placeholders_become_quoted_configured_names_and_hostile_names_stay_one_identifier() {
        let mut t = TradeTables::default();
        t.orders.schema = "ex\"; DROP TABLE x; --".into();
        t.orders.name = "client orders".into();
        t.orders.partition_column = "placed\"at".into();
        let (sql, used) = substitute(
            "SELECT {orders.partition_column} FROM {orders} o JOIN {trades} t ON true \
             WHERE '{orders}' = '{1,2}' AND {orders}.x",
            &t,
        )
        .unwrap();
        assert_eq!(
            sql,
            "SELECT \"placed\"\"at\" FROM \"ex\"\"; DROP TABLE x; --\".\"client orders\" o \
             JOIN \"public\".\"trades\" t ON true WHERE '{orders}' = '{1,2}' AND \
             \"ex\"\"; DROP TABLE x; --\".\"client orders\".x"
        );
        assert!(
            !has_semicolon(&sql),
            "the semicolon stays inside the identifier"
        );
        let roles: Vec<Role> = used.iter().map(|(r, _)| *r).collect();
        assert_eq!(roles, [Role::Orders, Role::Trades]);
    }

    #[test]
    fn an_unknown_placeholder_or_a_missing_partition_column_is_an_error() {
        let t = TradeTables::default();
        let e = substitute("SELECT 1 FROM {order}", &t).unwrap_err();
        assert!(e.contains("{order}") && e.contains("{orders}"), "{e}");
        let e = substitute("SELECT {candles.partition_column} FROM {candles}", &t).unwrap_err();
        assert!(e.contains("trade_tables.candles.partition_column"), "{e}");
        assert!(substitute("SELECT 1 FROM {orders.name}", &t).is_err());
        let (same, used) = substitute("SELECT '{x}', ARRAY[1] FROM t", &t).unwrap();
        assert_eq!(same, "SELECT '{x}', ARRAY[1] FROM t");
        assert!(used.is_empty());
    }

    #[test]
    fn literal_parameters_are_quoted_and_expressions_parenthesised() {
        let p = Param {
            ty: "text".into(),
            value: ParamValue::Literal("it's".into()),
        };
        assert_eq!(p.sql(), "'it''s'");
        let e = Param {
            ty: "timestamptz".into(),
            value: ParamValue::Expr("now()".into()),
        };
        assert_eq!(e.sql(), "(now())");
    }
}
