//! The trade tables as configuration (`trade_tables:`): which tables of the database are the
//! orders, trades, order book, market data and candles (schema, name, partition column),
//! defaulting to the reference schema (examples/trade-engine/schema.sql); their names quoted
//! for SQL; and the shape in which a database holds them (found, missing, of another shape).
//!
//! Names come from configuration, so they are never trusted: every name is always quoted as an
//! identifier ([`quote_ident`]) when it goes into SQL text, and the catalog lookups take them
//! as bound parameters, compared with `pg_namespace.nspname` / `pg_class.relname` exactly
//! (no `to_regclass` parsing), so a quote, dot or semicolon in a name is just a character.

use std::fmt;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// The five trade tables, in the order pgpulse reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The orders (reference: `public.orders`, partitioned by `created_at`).
    Orders,
    /// The trades (reference: `public.trades`, partitioned by `executed_at`).
    Trades,
    /// The order book (reference: `public.order_book`, not partitioned).
    OrderBook,
    /// Market data ticks (reference: `public.market_data`, not partitioned).
    MarketData,
    /// Candles (reference: `public.candles`, not partitioned).
    Candles,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Orders,
        Role::Trades,
        Role::OrderBook,
        Role::MarketData,
        Role::Candles,
    ];

    /// The key under `trade_tables:` and the placeholder name in plans.yaml (`{orders}`).
    pub fn key(self) -> &'static str {
        match self {
            Role::Orders => "orders",
            Role::Trades => "trades",
            Role::OrderBook => "order_book",
            Role::MarketData => "market_data",
            Role::Candles => "candles",
        }
    }

    /// The role of a key, if it is one.
    pub fn from_key(key: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.key() == key)
    }

    /// The autovacuum scale factors pgpulse sets on the table (vacuum, analyze) as the
    /// specification gives them (V006); `None` when it tunes nothing.
    pub fn autovacuum(self) -> Option<(&'static str, &'static str)> {
        match self {
            Role::Orders => Some(("0.1", "0.05")),
            Role::Trades => Some(("0.05", "0.02")),
            Role::OrderBook => Some(("0.02", "0.01")),
            Role::MarketData => Some(("0.2", "0.1")),
            Role::Candles => None,
        }
    }
}

/// One trade table as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableRef {
    /// Its schema.
    pub schema: String,
    /// Its name within the schema.
    pub name: String,
    /// The one column it is partitioned by; empty: a table that is not partitioned.
    pub partition_column: String,
}

impl Default for TableRef {
    fn default() -> Self {
        Self::new("public", "", "")
    }
}

impl TableRef {
    fn new(schema: &str, name: &str, partition_column: &str) -> Self {
        Self {
            schema: schema.to_owned(),
            name: name.to_owned(),
            partition_column: partition_column.to_owned(),
        }
    }

    /// The table as a quoted SQL name: `"schema"."name"`.
    pub fn sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The partition column, if the table is expected to be partitioned.
    pub fn partition_column(&self) -> Option<&str> {
        Some(self.partition_column.as_str()).filter(|c| !c.is_empty())
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.sql())
    }
}

/// The `trade_tables:` section: every role's table; defaults are the reference schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TradeTables {
    /// The orders.
    pub orders: TableRef,
    /// The trades.
    pub trades: TableRef,
    /// The order book.
    pub order_book: TableRef,
    /// Market data.
    pub market_data: TableRef,
    /// Candles.
    pub candles: TableRef,
}

impl Default for TradeTables {
    fn default() -> Self {
        Self {
            orders: TableRef::new("public", "orders", "created_at"),
            trades: TableRef::new("public", "trades", "executed_at"),
            order_book: TableRef::new("public", "order_book", ""),
            market_data: TableRef::new("public", "market_data", ""),
            candles: TableRef::new("public", "candles", ""),
        }
    }
}

/// PostgreSQL's longest identifier (NAMEDATALEN - 1 bytes); a longer one would be truncated.
const MAX_IDENT: usize = 63;

impl TradeTables {
    /// The table of `role`.
    pub fn get(&self, role: Role) -> &TableRef {
        match role {
            Role::Orders => &self.orders,
            Role::Trades => &self.trades,
            Role::OrderBook => &self.order_book,
            Role::MarketData => &self.market_data,
            Role::Candles => &self.candles,
        }
    }

    /// Every role with its table.
    pub fn iter(&self) -> impl Iterator<Item = (Role, &TableRef)> {
        Role::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    /// Checks every name; the error is `(key, reason)` with the dotted key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (role, t) in self.iter() {
            let fields = [
                ("schema", &t.schema, false),
                ("name", &t.name, false),
                ("partition_column", &t.partition_column, true),
            ];
            for (field, value, may_be_empty) in fields {
                let key = format!("trade_tables.{}.{field}", role.key());
                if value.is_empty() && !may_be_empty {
                    return Err((key, "must not be empty".to_owned()));
                }
                if value.contains('\0') {
                    return Err((key, "must not contain a NUL character".to_owned()));
                }
                if value.len() > MAX_IDENT {
                    return Err((
                        key,
                        format!("`{value}` is longer than PostgreSQL's {MAX_IDENT}-byte names"),
                    ));
                }
            }
            if let Some((other, _)) = self
                .iter()
                .take_while(|(r, _)| *r != role)
                .find(|(_, o)| o.schema == t.schema && o.name == t.name)
            {
                return Err((
                    format!("trade_tables.{}", role.key()),
                    format!("{t} is also trade_tables.{}", other.key()),
                ));
            }
        }
        Ok(())
    }
}

/// `s` as a quoted SQL identifier: always double-quoted, inner quotes doubled.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// How a database holds a configured trade table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    /// It exists with the expected shape (partitioned by the configured column, or a plain
    /// table when no partition column is configured).
    Found,
    /// No relation of that schema and name.
    Missing,
    /// A relation of that name that is not what the configuration describes; why.
    Wrong(String),
}

impl Shape {
    /// Whether the table exists with the expected shape.
    pub(crate) fn is_found(&self) -> bool {
        *self == Shape::Found
    }
}

/// Relation kind and partition key (strategy, one column or none) of each table, by position.
const SHAPES_SQL: &str = "\
SELECT t.i::int, c.relkind::text, pt.partstrat::text, pt.partnatts::int, a.attname::text \
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(nsp, rel, i) \
JOIN pg_catalog.pg_namespace n ON n.nspname = t.nsp \
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.rel \
LEFT JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid = c.oid \
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND pt.partnatts = 1 \
                                   AND a.attnum = pt.partattrs[0]";

/// The shape of each table of `tables`, in order. One catalog query; the caller's session or
/// transaction carries the timeouts.
pub(crate) async fn shapes(
    client: &Client,
    tables: &[&TableRef],
) -> Result<Vec<Shape>, tokio_postgres::Error> {
    let nsps: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let rels: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client.query(SHAPES_SQL, &[&nsps, &rels]).await?;
    let mut out = vec![Shape::Missing; tables.len()];
    for row in rows {
        let i = (row.get::<_, i32>(0) as usize).wrapping_sub(1);
        if let (Some(slot), Some(t)) = (out.get_mut(i), tables.get(i)) {
            *slot = judge(
                t,
                &row.get::<_, String>(1),
                row.get(2),
                row.get(3),
                row.get(4),
            );
        }
    }
    Ok(out)
}

fn judge(
    t: &TableRef,
    relkind: &str,
    strategy: Option<String>,
    columns: Option<i32>,
    column: Option<String>,
) -> Shape {
    let kind = match relkind {
        "r" => "a plain table",
        "p" => "a partitioned table",
        "v" => "a view",
        "m" => "a materialized view",
        "f" => "a foreign table",
        _ => "not a table",
    };
    let key = match (strategy.as_deref(), columns, &column) {
        (Some(_), Some(1), Some(c)) => format!("partitioned by {}", quote_ident(c)),
        (Some(_), _, _) => "partitioned by an expression or several columns".to_owned(),
        _ => String::new(),
    };
    match (t.partition_column(), relkind) {
        (None, "r") => Shape::Found,
        (Some(want), "p") if column.as_deref() == Some(want) && columns == Some(1) => Shape::Found,
        (Some(want), "p") => Shape::Wrong(format!(
            "{key}, expected partitioned by {}",
            quote_ident(want)
        )),
        (Some(want), _) => Shape::Wrong(format!(
            "{kind}, expected partitioned by {}",
            quote_ident(want)
        )),
        (None, "p") => Shape::Wrong(format!(
            "{key}, expected a plain table (no partition_column is configured)"
        )),
        (None, _) => Shape::Wrong(format!("{kind}, expected a plain table")),
    }
}

/// One line of `verify` / `migrate` about a table: `orders "public"."orders": found ...`.
pub(crate) fn describe(role: Role, t: &TableRef, shape: &Shape) -> String {
    let expected = match t.partition_column() {
        Some(c) => format!("partitioned by {}", quote_ident(c)),
        None => "a plain table".to_owned(),
    };
    match shape {
        Shape::Found => format!("{} {t}: found, {expected}", role.key()),
        Shape::Missing => format!("{} {t}: missing", role.key()),
        Shape::Wrong(why) => format!("{} {t}: wrong shape: {why}", role.key()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_quoted_as_one_identifier() {
        let t = TableRef::new("ex\"; DROP TABLE x; --", "a.b\"c", "");
        assert_eq!(t.sql(), r#""ex""; DROP TABLE x; --"."a.b""c""#);
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn the_defaults_are_the_reference_schema_and_validate() {
        let d = TradeTables::default();
        assert_eq!(d.orders.sql(), "\"public\".\"orders\"");
        assert_eq!(d.trades.partition_column(), Some("executed_at"));
        assert_eq!(d.candles.partition_column(), None);
        assert!(d.validate().is_ok());
    }

    #[test]
    fn empty_long_nul_and_duplicate_names_are_refused_naming_the_key() {
        let mut t = TradeTables::default();
        t.trades.name = String::new();
        assert_eq!(t.validate().unwrap_err().0, "trade_tables.trades.name");
        let mut t = TradeTables::default();
        t.candles.schema = "a\0b".into();
        assert_eq!(t.validate().unwrap_err().0, "trade_tables.candles.schema");
        let mut t = TradeTables::default();
        t.orders.partition_column = "x".repeat(64);
        assert_eq!(
            t.validate().unwrap_err().0,
            "trade_tables.orders.partition_column"
        );
        let mut t = TradeTables::default();
        t.candles.name = "orders".into();
        let (key, why) = t.validate().unwrap_err();
        assert_eq!(key, "trade_tables.candles");
        assert!(why.contains("trade_tables.orders"), "{why}");
    }

    #[test]
    fn a_shape_is_found_only_when_kind_and_partition_column_match() {
        let part = TableRef::new("s", "o", "placed_at");
        let plain = TableRef::new("s", "b", "");
        let by = |c: &str| (Some("r".to_owned()), Some(1), Some(c.to_owned()));
        let (s, n, c) = by("placed_at");
        assert_eq!(judge(&part, "p", s, n, c), Shape::Found);
        let (s, n, c) = by("created_at");
        assert!(
            matches!(judge(&part, "p", s, n, c), Shape::Wrong(w) if w.contains("\"created_at\""))
        );
        assert!(matches!(
            judge(&part, "r", None, None, None),
            Shape::Wrong(_)
        ));
        assert_eq!(judge(&plain, "r", None, None, None), Shape::Found);
        assert!(
            matches!(judge(&plain, "v", None, None, None), Shape::Wrong(w) if w.contains("view"))
        );
        let (s, n, c) = by("x");
        assert!(matches!(judge(&plain, "p", s, n, c), Shape::Wrong(_)));
    }
}
