//! `pgpulse uninstall`: the rollback the specification lacks. Removes the monitoring schema,
//! the autovacuum settings the migrations made and the roles they created, under the
//! migration lock and in one transaction. Trade data is never touched.

use tokio_postgres::Client;

use super::migrate::{MigrateError, with_lock};
use super::outcome::describe;

/// The embedded uninstall script.
pub(crate) const UNINSTALL_SQL: &str = include_str!("../../migrations/uninstall.sql");

/// Removes everything the migrations created; returns whether anything was installed.
pub(crate) async fn uninstall(client: &mut Client) -> Result<bool, MigrateError> {
    with_lock(client, async |client: &mut Client| {
        let installed: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'monitoring')",
                &[],
            )
            .await
            .map_err(|e| MigrateError::Database {
                step: "look for the monitoring schema",
                reason: describe(&e),
            })?
            .get(0);
        if !installed {
            return Ok(false);
        }
        let failed = |e: tokio_postgres::Error| MigrateError::Database {
            step: "uninstall",
            reason: describe(&e),
        };
        let tx = client.transaction().await.map_err(failed)?;
        tx.batch_execute(UNINSTALL_SQL).await.map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(true)
    })
    .await
}
