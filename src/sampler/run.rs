//! Running one query. The catalog's SQL is sent over the extended protocol, so the server
//! accepts exactly one statement (a `;`-separated second statement is a parse error, whatever
//! quotes or comments hide it), in an implicit transaction right after the session's
//! settings are pinned ([`crate::db::session::pin`]: server-side `statement_timeout` and
//! `lock_timeout`, `search_path`, `default_transaction_read_only`). Rows are streamed as
//! the server sends them (the driver reads the socket only as fast as they are taken) and
//! decoded one at a time, so memory is bounded by the query's budget.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Object;
use futures_util::{StreamExt, pin_mut};

use super::decode::{Decoder, RunStats};
use crate::catalog::{Binds, QuerySpec};
use crate::db::lease::Budget;
use crate::db::outcome::{ErrorKind, RunError, classify, pool_error};
use crate::db::session::{CLIENT_GRACE, pin};
use crate::db::trade_tables::TradeTables;
use crate::snapshot::QueryResult;

/// What one successful run produced.
#[derive(Debug)]
pub struct Sampled {
    /// The series (per object, before any roll-up).
    pub result: QueryResult,
    /// Counters of the run and the histogram's statement samples.
    pub stats: RunStats,
}

/// The values bound to a query's parameters (see [`Binds`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bound {
    arrays: Vec<Vec<String>>,
    ids: Option<Vec<i64>>,
    int: Option<i32>,
}

impl Bound {
    /// What `spec` asks to have bound, from the sampler's settings.
    pub fn of(spec: &QuerySpec, settings: &super::SamplerSettings) -> Self {
        match spec.binds {
            None => Self::default(),
            Some(Binds::TradeTables) => Self {
                arrays: trade_tables(&settings.trade_tables),
                ..Self::default()
            },
            Some(Binds::LockRoots) => Self {
                int: Some(settings.lock_roots_named),
                ..Self::default()
            },
            Some(Binds::KeyQueries) => {
                let keys = settings.key_queries.current();
                Self {
                    arrays: vec![keys.iter().map(|k| k.name.clone()).collect()],
                    ids: Some(keys.iter().map(|k| k.query_id).collect()),
                    int: None,
                }
            }
        }
    }

    fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        let arrays = self
            .arrays
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync));
        let ids = self
            .ids
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync));
        let int = self
            .int
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync));
        arrays.chain(ids).chain(int).collect()
    }
}

/// The trade tables as three `text[]`: role keys, schemas, names.
fn trade_tables(tables: &TradeTables) -> Vec<Vec<String>> {
    vec![
        tables.iter().map(|(r, _)| r.key().to_owned()).collect(),
        tables.iter().map(|(_, t)| t.schema.clone()).collect(),
        tables.iter().map(|(_, t)| t.name.clone()).collect(),
    ]
}

/// Runs `spec` once on a pooled connection and turns its rows into a result. A run that is
/// cancelled, or gets no answer within its guard, leaves its connection to settle (see
/// [`crate::db::lease`]): it keeps its slot of the budget until the server has answered.
pub async fn sample_once(
    budget: &Budget,
    spec: &Arc<QuerySpec>,
    lock_timeout: Duration,
    binds: &Bound,
) -> Result<Sampled, RunError> {
    let guard = spec.timeout + CLIENT_GRACE;
    let mut checkout = budget
        .lease(Some(spec.timeout), guard)
        .await
        .map_err(pool_error)?;
    let Some(client) = checkout.client() else {
        return Err(RunError::new(ErrorKind::Connection, "no connection"));
    };
    match tokio::time::timeout(guard, run_pinned(client, spec, lock_timeout, binds)).await {
        Ok(Ok(sampled)) => {
            checkout.release();
            Ok(sampled)
        }
        Ok(Err(err)) => {
            // A failed statement is prepared afresh next time (a cached plan whose result
            // type changed keeps failing until it is).
            if let Some(c) = checkout.client() {
                c.statement_cache.remove(&spec.sql, &[]);
            }
            // A failed statement ended its implicit transaction; a connection that closed or
            // failed otherwise is discarded with the checkout.
            if err.leaves_connection_usable() && checkout.client().is_some_and(|c| !c.is_closed()) {
                checkout.release();
            }
            Err(err)
        }
        // Dropping the lease lets the connection settle: its state is unknown.
        Err(_) => Err(RunError::new(
            ErrorKind::Timeout,
            format!(
                "no answer within {}s; the connection settles",
                guard.as_secs()
            ),
        )),
    }
}

async fn run_pinned(
    client: &mut Object,
    spec: &Arc<QuerySpec>,
    lock_timeout: Duration,
    binds: &Bound,
) -> Result<Sampled, RunError> {
    pin(client, spec.timeout, lock_timeout).await?;
    // Prepared once per connection (under the pinned timeouts): later runs skip parsing and,
    // for a statement without parameters, planning (a generic plan).
    let statement = client
        .prepare_cached(&spec.sql)
        .await
        .map_err(|e| classify(&e))?;
    let columns: Vec<(String, tokio_postgres::types::Type)> = statement
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), c.type_().clone()))
        .collect();
    if columns.is_empty() {
        return Err(RunError::new(
            ErrorKind::Decode,
            format!("query \"{}\" returns no rows (is it a SELECT?)", spec.name),
        ));
    }
    let mut decoder = Decoder::new(spec, &columns)?;
    let rows = client
        .query_raw(&statement, binds.params())
        .await
        .map_err(|e| classify(&e))?;
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| classify(&e))?;
        decoder.push(&row)?;
    }
    let (result, stats) = decoder.finish();
    Ok(Sampled { result, stats })
}
