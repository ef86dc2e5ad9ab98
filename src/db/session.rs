//! The read-only session of every sampling statement, bounded by server-side timeouts with a
//! pinned `search_path`: a read-only transaction for reads of several statements, and for a
//! statement of its own, the session's settings pinned again right before it ([`pin`]); and
//! the client's grace past them.

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

/// Pins the session's settings for the next statement, in one prepared statement: its
/// `statement_timeout`, `lock_timeout` and `search_path` as [`timeouts_sql`] sets them, and
/// `default_transaction_read_only`. The statement then runs in an implicit read-only
/// transaction: two statements where a transaction of its own took six (`START`, three `SET
/// LOCAL`s, `COMMIT`), at 60 runs a minute for each 1 s family. A session setting changed by
/// a catalog query (`set_config(..., false)`) lasts until the next run on that connection
/// pins it again, so no run ever starts under another statement's settings.
pub(crate) async fn pin(
    client: &Object,
    timeout: Duration,
    lock_timeout: Duration,
) -> Result<(), RunError> {
    let statement = client.prepare_cached(PIN).await.map_err(|e| classify(&e))?;
    let lock = format!("{}ms", millis(lock_timeout.min(timeout)));
    let timeout = format!("{}ms", millis(timeout));
    client
        .execute(&statement, &[&timeout, &lock])
        .await
        .map_err(|e| classify(&e))?;
    Ok(())
}

/// The statement of [`pin`]: each setting is set only when it differs (setting one costs the
/// server about 9 µs, `search_path` invalidating its cached path; comparing, well under one).
const PIN: &str = "SELECT \
     CASE WHEN current_setting('statement_timeout')::interval <> $1::text::interval \
          THEN set_config('statement_timeout', $1::text, false) END, \
     CASE WHEN current_setting('lock_timeout')::interval <> $2::text::interval \
          THEN set_config('lock_timeout', $2::text, false) END, \
     CASE WHEN current_setting('search_path') <> 'pg_catalog, public, pg_temp' \
          THEN set_config('search_path', 'pg_catalog, public, pg_temp', false) END, \
     CASE WHEN current_setting('default_transaction_read_only') <> 'on' \
          THEN set_config('default_transaction_read_only', 'on', false) END";

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
