//! What `pgpulse verify` checks about the monitoring schema's `SECURITY DEFINER` functions
//! (DESIGN §2.10, issue 24): each pins its `search_path` with `pg_temp` last, and
//! `monitoring.default_partition_rows` is the version of migration V011, which reads rows
//! only of plain tables its owner owns and runs no other role's policies or expressions.

use tokio_postgres::Client;

use super::check::Outcome;
use super::outcome::describe;

/// The line V011 put at the head of `default_partition_rows`' body.
pub(crate) const HARDENED_MARKER: &str = "pgpulse V011 hardened";

/// One row per `SECURITY DEFINER` function in `monitoring`: its signature, its `SET` options,
/// and whether it is `default_partition_rows` carrying the V011 marker.
const DEFINERS_SQL: &str = "\
SELECT p.oid::regprocedure::text,
       coalesce(p.proconfig, '{}'::text[]),
       p.proname = 'default_partition_rows' AND strpos(p.prosrc, $1) > 0
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'monitoring' AND p.prosecdef
 ORDER BY 1";

/// Whether a function's `SET` options (`proconfig`) pin `search_path` with `pg_temp` as its
/// last entry (before it, a schema the caller may write to could shadow a name).
pub(crate) fn search_path_pinned(config: &[String]) -> bool {
    config
        .iter()
        .filter_map(|c| c.strip_prefix("search_path="))
        .any(|path| {
            path.rsplit(',')
                .next()
                .is_some_and(|last| last.trim().trim_matches('"') == "pg_temp")
        })
}

/// Verify's check: every definer function pinned, `default_partition_rows` hardened.
pub(crate) async fn check(c: &Client) -> Result<(Outcome, String), String> {
    let rows = c
        .query(DEFINERS_SQL, &[&HARDENED_MARKER])
        .await
        .map_err(|e| describe(&e))?;
    let mut unpinned = Vec::new();
    let mut hardened = false;
    for r in &rows {
        let config: Vec<String> = r.get(1);
        if !search_path_pinned(&config) {
            unpinned.push(r.get::<_, String>(0));
        }
        hardened |= r.get::<_, bool>(2)
            && config.iter().any(|c| c == "row_security=off")
            && search_path_pinned(&config);
    }
    let next = "run `pgpulse migrate` (V011)";
    Ok(if !unpinned.is_empty() {
        (
            Outcome::Fail,
            format!(
                "SECURITY DEFINER without a search_path ending in pg_temp: {} (a schema writable by others \
                 could shadow what they call); {next}, and drop or fix any function pgpulse did not create",
                unpinned.join(", ")
            ),
        )
    } else if !hardened {
        (
            Outcome::Fail,
            format!(
                "monitoring.default_partition_rows is missing or not hardened: it may run other roles' \
                 row-level-security policies and index expressions with its owner's rights; {next}"
            ),
        )
    } else {
        (
            Outcome::Pass,
            format!(
                "every SECURITY DEFINER function ({}) pins search_path with pg_temp last; \
                 default_partition_rows reads rows only of its owner's plain tables, statistics for the rest",
                rows.len()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_a_search_path_ending_in_pg_temp_counts_as_pinned() {
        assert!(search_path_pinned(&config(&[
            "search_path=pg_catalog, pg_temp",
            "row_security=off"
        ])));
        assert!(search_path_pinned(&config(&["search_path=\"pg_temp\""])));
        assert!(!search_path_pinned(&config(&[])));
        assert!(!search_path_pinned(&config(&["search_path=pg_catalog"])));
        assert!(!search_path_pinned(&config(&[
            "search_path=pg_temp, pg_catalog"
        ])));
        assert!(!search_path_pinned(&config(&[
            "search_path=pg_catalog, public, \"$user\""
        ])));
        assert!(!search_path_pinned(&config(&["row_security=off"])));
    }
}
