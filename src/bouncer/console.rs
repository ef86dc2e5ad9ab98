//! PgBouncer's admin console: one connection, opened through the target's slot and the
//! fleet's cap ([`SlotConnect`]), and `SHOW` commands over the simple query protocol, the
//! only one the console speaks. The console has no transactions, no `statement_timeout` and
//! no `lock_timeout`, so the client bounds every step itself: the connection (start-up
//! included) and each command get a deadline, and a command that misses it drops the
//! connection, which a hung PgBouncer (accepting, never answering) would otherwise keep.

use std::time::Duration;

use deadpool_postgres::Connect;
use futures_util::StreamExt;
use tokio_postgres::{Client, Config, SimpleQueryMessage, SimpleQueryStream};

use crate::db::slots::SlotConnect;

/// Why a console command gave no table.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsoleError {
    /// No connection within the connect timeout, or the console refused it.
    #[error(
        "cannot connect to PgBouncer's admin console: {0}; check the target's url (host, port, \
         /pgbouncer), its auth's user and password_file, and that the user is in PgBouncer's \
         stats_users"
    )]
    Connect(String),
    /// The command had no answer within its deadline; the connection is dropped.
    #[error(
        "`{command}` had no answer within {timeout:?}: PgBouncer is hung or overloaded \
         (fleet.pgbouncer_timeout)"
    )]
    Timeout {
        /// The command.
        command: &'static str,
        /// Its deadline.
        timeout: Duration,
    },
    /// The console answered with an error.
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command.
        command: &'static str,
        /// PgBouncer's message.
        reason: String,
    },
}

/// The most rows of one answer kept (each pool is a few series): in `auto-database` mode
/// any client can make PgBouncer create pools, so an answer's size is not PgBouncer's
/// operator's alone. Rows past it are counted, not kept.
pub const MAX_ROWS: usize = 500;

/// The longest text value kept (PgBouncer's names are at most 63 bytes); longer ones are cut
/// at a character boundary.
const MAX_VALUE: usize = 256;

/// One answer of the console: its column names and rows (text values, `None` for NULL), at
/// most [`MAX_ROWS`] of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    over: u64,
}

impl Table {
    /// A table of `columns` and `rows` (rows as long as `columns`), kept as an answer is.
    pub fn new(columns: &[&str], rows: Vec<Vec<Option<String>>>) -> Self {
        let mut t = Self {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            ..Self::default()
        };
        for r in rows {
            t.push(r);
        }
        t
    }

    /// Keeps a row while under [`MAX_ROWS`], counts it otherwise.
    fn push(&mut self, row: Vec<Option<String>>) {
        if self.rows.len() < MAX_ROWS {
            self.rows.push(row);
        } else {
            self.over += 1;
        }
    }

    /// Rows of the answer past [`MAX_ROWS`], not kept.
    pub fn over(&self) -> u64 {
        self.over
    }

    /// The index of the column named `name`, if the answer has it.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The rows.
    pub fn rows(&self) -> &[Vec<Option<String>>] {
        &self.rows
    }

    /// Reads an answer, keeping at most [`MAX_ROWS`] rows of at most [`MAX_VALUE`]-byte
    /// values.
    async fn read(
        mut stream: std::pin::Pin<&mut SimpleQueryStream>,
    ) -> Result<Self, tokio_postgres::Error> {
        let mut t = Self::default();
        while let Some(m) = stream.next().await {
            match m? {
                SimpleQueryMessage::RowDescription(cols) => {
                    t.columns = cols.iter().map(|c| c.name().to_owned()).collect();
                }
                SimpleQueryMessage::Row(row) if t.rows.len() < MAX_ROWS => {
                    let values = (0..row.len()).map(|i| row.get(i).map(cut)).collect();
                    t.push(values);
                }
                SimpleQueryMessage::Row(_) => t.over += 1,
                _ => {}
            }
        }
        Ok(t)
    }
}

/// `v`, cut to [`MAX_VALUE`] bytes at a character boundary.
fn cut(v: &str) -> String {
    let mut end = v.len().min(MAX_VALUE);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_owned()
}

/// The console connection of one PgBouncer target.
pub(super) struct Console {
    connect: SlotConnect,
    config: Config,
    timeout: Duration,
    connect_timeout: Duration,
    client: Option<Client>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console reached with `config` through `connect`; each command may take `timeout`.
    pub(super) fn new(connect: SlotConnect, config: Config, timeout: Duration) -> Self {
        let connect_timeout = config.get_connect_timeout().copied().unwrap_or(timeout);
        Self {
            connect,
            config,
            timeout,
            connect_timeout,
            client: None,
        }
    }

    /// Whether a connection is open now (a new one means a new `SHOW VERSION`).
    pub(super) fn is_connected(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Drops the connection (its socket closes, its slot and permit come back).
    pub(super) fn close(&mut self) {
        self.client = None;
    }

    async fn client(&mut self) -> Result<&Client, ConsoleError> {
        if !self.is_connected() {
            self.client = None;
            let attempt = self.connect.connect(&self.config);
            let client = match tokio::time::timeout(self.connect_timeout, attempt).await {
                Err(_) => {
                    return Err(ConsoleError::Connect(format!(
                        "no answer within {:?} (connect_timeout)",
                        self.connect_timeout
                    )));
                }
                Ok(Err(e)) => return Err(ConsoleError::Connect(reason(&e))),
                // The task drives the connection until the client is dropped.
                Ok(Ok((client, _task))) => client,
            };
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| ConsoleError::Connect("closed".to_owned()))
    }

    /// Runs `command`, connecting first when needed.
    pub(super) async fn show(&mut self, command: &'static str) -> Result<Table, ConsoleError> {
        let timeout = self.timeout;
        let client = self.client().await?;
        let answer = async {
            let stream = client.simple_query_raw(command).await?;
            Table::read(std::pin::pin!(stream)).await
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(table)) => Ok(table),
            Ok(Err(e)) => {
                if client.is_closed() {
                    self.close();
                }
                Err(ConsoleError::Command {
                    command,
                    reason: reason(&e),
                })
            }
            Err(_) => {
                self.close();
                Err(ConsoleError::Timeout { command, timeout })
            }
        }
    }
}

/// The server's message when it sent one, else the driver's.
fn reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(200);
        let v = cut(&long);
        assert!(
            v.len() <= MAX_VALUE && v.len() >= MAX_VALUE - 1,
            "{}",
            v.len()
        );
        assert!(long.starts_with(&v));
        assert_eq!(cut("trade"), "trade");
    }
}
