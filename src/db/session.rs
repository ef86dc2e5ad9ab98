//! The read-only session of every sampling statement: a read-only transaction bounded by
//! server-side timeouts with a pinned `search_path`, and the client's grace past them.

use std::time::Duration;

use deadpool_postgres::Object;

use super::outcome::{RunError, classify};

/// Extra time past the statement timeout before the client gives up on the connection: the
/// server cancels the statement itself; this only catches a dead network.
pub(crate) const CLIENT_GRACE: Duration = Duration::from_secs(5);

/// The `SET LOCAL` statements that bound a transaction by server-side timeouts and pin its
/// `search_path` to `pg_catalog, public, pg_temp`: built-ins are found first, and a schema
/// named like the login (`"$user"`, which any role with CREATE on the database can make) is
/// never searched, so no tenant's function or operator stands in for one a query names.
/// `public` stays for custom catalogs that name their tables without a schema (since
/// PostgreSQL 15 only its owner and roles granted CREATE can add objects there).
pub(crate) fn timeouts_sql(timeout: Duration, lock_timeout: Duration) -> String {
    format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}; \
         SET LOCAL search_path = pg_catalog, public, pg_temp",
        millis(timeout),
        millis(lock_timeout.min(timeout))
    )
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// Starts a read-only transaction on `client` and runs `settings` (its `SET LOCAL`s) in it.
/// The transaction prepares through the connection's statement cache (`prepare_cached`).
pub(crate) async fn begin_read_only<'a>(
    client: &'a mut Object,
    settings: &str,
) -> Result<deadpool_postgres::Transaction<'a>, RunError> {
    let client: &mut deadpool_postgres::ClientWrapper = client;
    let txn = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| classify(&e))?;
    txn.batch_execute(settings)
        .await
        .map_err(|e| classify(&e))?;
    Ok(txn)
}
