//! Who can alter the trade tables without a `lock_timeout`: the login roles that own a
//! configured trade table (or are members of its owner) and the superusers, each with the
//! `lock_timeout` it starts its sessions with (its own setting in this database or everywhere,
//! the database's, else the server's). Such a role's `ALTER TABLE` waits for its lock as long
//! as the lock's holder runs, and every write to the table queues behind it.

use tokio_postgres::Client;

use super::trade_tables::TradeTables;

/// The roles that can alter a configured trade table, with the tables and the settings that
/// decide their `lock_timeout`. The server's own default is `reset_val` of this session when
/// no role or database setting applies to its role, else unknown (NULL).
const ALTERERS_SQL: &str = "\
WITH t AS ( \
  SELECT c.relowner, format('%I.%I', n.nspname, c.relname) AS relation \
  FROM unnest($1::text[], $2::text[]) AS x(nsp, rel) \
  JOIN pg_catalog.pg_namespace n ON n.nspname = x.nsp \
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = x.rel \
), s AS ( \
  SELECT d.setrole, d.setdatabase, substr(cfg, 14) AS value \
  FROM pg_catalog.pg_db_role_setting d, unnest(d.setconfig) AS cfg \
  WHERE cfg LIKE 'lock_timeout=%' AND d.setdatabase IN \
    (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())) \
) \
SELECT r.rolname::text, string_agg(t.relation, ', ' ORDER BY t.relation), \
  (SELECT s.value FROM s WHERE s.setrole = r.oid ORDER BY s.setdatabase DESC LIMIT 1), \
  (SELECT s.value FROM s WHERE s.setrole = 0 LIMIT 1), \
  (SELECT p.reset_val FROM pg_catalog.pg_settings p WHERE p.name = 'lock_timeout' \
     AND NOT EXISTS (SELECT 1 FROM s WHERE s.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles \
                     WHERE rolname = current_user)))) \
FROM pg_catalog.pg_roles r JOIN t ON r.rolsuper OR pg_catalog.pg_has_role(r.oid, t.relowner, 'MEMBER') \
WHERE r.rolcanlogin \
GROUP BY r.oid, r.rolname ORDER BY r.rolname";

/// One role that can alter trade tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alterer {
    /// The role.
    pub(crate) role: String,
    /// The trade tables it can alter, quoted and comma-separated.
    pub(crate) tables: String,
    /// Its effective `lock_timeout` as set, or `None` when it has none (0 or unknown).
    pub(crate) lock_timeout: Option<String>,
}

/// Every login role that can alter a configured trade table, by name.
pub(crate) async fn alterers(
    c: &Client,
    tables: &TradeTables,
) -> Result<Vec<Alterer>, tokio_postgres::Error> {
    let nsps: Vec<&str> = tables.iter().map(|(_, t)| t.schema.as_str()).collect();
    let rels: Vec<&str> = tables.iter().map(|(_, t)| t.name.as_str()).collect();
    let rows = c.query(ALTERERS_SQL, &[&nsps, &rels]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let setting: Option<String> = r
                .get::<_, Option<String>>(2)
                .or_else(|| r.get(3))
                .or_else(|| r.get(4));
            Alterer {
                role: r.get(0),
                tables: r.get(1),
                lock_timeout: setting.filter(|v| !is_zero(v)),
            }
        })
        .collect())
}

/// Whether a `lock_timeout` value as PostgreSQL stores it (`0`, `2s`, `500`, `1min`) is zero,
/// the setting's "wait forever".
fn is_zero(value: &str) -> bool {
    let number: String = value
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse::<f64>().is_ok_and(|n| n == 0.0)
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_in_any_unit_is_no_timeout_and_anything_else_is_one() {
        for v in ["0", "0ms", " 0s", "0.0min"] {
            assert!(is_zero(v), "{v}");
        }
        for v in ["2s", "500", "1min", "0.5s", "garbage"] {
            assert!(!is_zero(v), "{v}");
        }
    }
}
