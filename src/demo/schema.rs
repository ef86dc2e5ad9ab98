//! The reference trade-engine schema and its sample data, embedded from
//! `examples/trade-engine/`.

use tokio_postgres::Client;

/// The trade-engine tables, partitions around today, and the seven indexes.
pub const SCHEMA_SQL: &str = include_str!("../../examples/trade-engine/schema.sql");
/// A small deterministic data set.
pub const SEED_SQL: &str = include_str!("../../examples/trade-engine/seed_data.sql");

/// Production-like volume on top of the sample data (for the key-query plan checks).
pub const SCALE_SQL: &str = include_str!("../../examples/trade-engine/scale_data.sql");

/// Adds the production-like volume (a few seconds), then ANALYZE.
pub async fn scale(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(SCALE_SQL).await
}

/// Creates the trade-engine schema and loads the sample data.
pub async fn install(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(SCHEMA_SQL).await?;
    client.batch_execute(SEED_SQL).await
}
