//! Connection slots that cover connection attempts too: the pool's connector takes one of
//! `size` slots before it opens a socket and gives it back only when that socket is closed.
//!
//! The pool alone counts only the connections it holds. A connection attempt that its connect
//! timeout abandons frees the pool's slot at once, although the server process it started may
//! live on: a new session reads `pg_database` while it starts, so under a lock on that catalog
//! the server process waits for the lock and notices the closed socket only once it gets it.
//! The next attempt would open one server process more than the budget, and every retry one
//! more again. Here the attempt runs in a task of its own that holds its slot: when the caller
//! gives up, the task keeps waiting for the server's answer (then closes the connection it no
//! longer needs) or for the socket to close, and only then frees the slot. Meanwhile further
//! attempts wait for a slot within their own connect timeout and fail, so pgpulse reports the
//! database down instead of opening more. A server that never answers keeps its slot: pgpulse
//! then has fewer connections, never more.
//!
//! A fleet adds a second, process-wide semaphore, the [`Cap`] over every target's
//! connections: a socket takes one permit of it after its pool's slot and gives both back when
//! it closes, so however many targets a fleet samples, pgpulse never has more sockets open to
//! its servers than `fleet.max_connections`. A connector may also read its password from a
//! file on every new connection ([`SlotConnect::with_password_file`]): a rotated password needs
//! no restart.
//!
//! An established connection keeps its slot in the task that drives it; the task ends, and the
//! slot comes free, when the connection is dropped (deadpool aborts the task, closing the
//! socket) or when the server closes the socket. The slot follows the socket, not the server
//! process: what keeps the server process and the socket together is [`super::lease`] (a
//! connection is dropped only once the server has answered everything sent on it) and, on the
//! network's side, TCP keepalives (`super::connect::DEFAULT_KEEPALIVES_IDLE`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use deadpool_postgres::Connect;
use futures_util::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, Error};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The process-wide connection cap of a fleet: every target's sockets, attempts included,
/// hold one of its permits; cheap to clone (clones share the permits).
#[derive(Debug, Clone)]
pub struct Cap {
    permits: Arc<Semaphore>,
    max: usize,
    waiting: Arc<AtomicUsize>,
}

/// Counts one waiter of the cap while it lives (also when the wait is cancelled).
struct Waiter(Arc<AtomicUsize>);

impl Waiter {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cap {
    /// A cap of `max` sockets.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            waiting: Arc::default(),
        }
    }

    /// Connection attempts waiting for a permit now: while there are any, the fleet closes
    /// idle connections so that the permits go round.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The most sockets at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Sockets (and attempts) holding a permit now.
    pub fn in_use(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }
}

/// The pool's connector: every socket it opens holds one of the budget's slots (and a permit
/// of the fleet's cap, when there is one) from before the first byte until it is closed.
#[derive(Clone)]
pub(crate) struct SlotConnect {
    tls: MakeRustlsConnect,
    slots: Arc<Semaphore>,
    cap: Option<Cap>,
    password_file: Option<PathBuf>,
}

/// What a socket holds while it is open: its pool's slot and its permit of the cap.
struct Held {
    _slot: OwnedSemaphorePermit,
    _cap: Option<OwnedSemaphorePermit>,
}

impl SlotConnect {
    /// A connector allowing at most `size` sockets, attempts included.
    pub(crate) fn new(tls: MakeRustlsConnect, size: usize) -> Self {
        Self {
            tls,
            slots: Arc::new(Semaphore::new(size)),
            cap: None,
            password_file: None,
        }
    }

    /// Every socket also holds a permit of `cap`.
    pub(crate) fn within(mut self, cap: Option<Cap>) -> Self {
        self.cap = cap;
        self
    }

    /// Every connection reads its password from `file` first (a rotated password needs no
    /// restart).
    pub(crate) fn with_password_file(mut self, file: Option<PathBuf>) -> Self {
        self.password_file = file;
        self
    }

    /// Takes the pool's slot, then the cap's permit; waiting is cancelled with the caller.
    async fn hold(&self) -> Held {
        // The semaphores are never closed; should one be, nothing ever comes free and the
        // pool's connect timeout ends the wait.
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return std::future::pending().await;
        };
        let cap = match &self.cap {
            None => None,
            Some(c) => {
                let _waiter = Waiter::new(&c.waiting);
                match c.permits.clone().acquire_owned().await {
                    Ok(p) => Some(p),
                    Err(_) => return std::future::pending().await,
                }
            }
        };
        Held {
            _slot: slot,
            _cap: cap,
        }
    }

    /// The connection settings with the password read from the password file, if any; an
    /// unreadable file is logged (its path, never its content) and the server's answer
    /// tells the rest.
    fn settings(&self, config: &Config) -> Config {
        let mut config = config.clone();
        if let Some(file) = &self.password_file {
            match super::connect::read_secret(file) {
                Ok(pw) => {
                    config.password(pw);
                }
                Err(reason) => tracing::warn!(
                    file = %file.display(),
                    %reason,
                    "cannot read the password file; connecting without a password"
                ),
            }
        }
        config
    }

    /// Slots not held by a socket or an attempt.
    pub(crate) fn free(&self) -> usize {
        self.slots.available_permits()
    }
}

impl std::fmt::Debug for SlotConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotConnect")
            .field("free", &self.free())
            .finish_non_exhaustive()
    }
}

impl Connect for SlotConnect {
    fn connect(&self, config: &Config) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), Error>> {
        let config = self.settings(config);
        Box::pin(async move {
            // Waiting here is cancelled with the caller (the pool's connect timeout): nothing
            // is held yet.
            let held = self.hold().await;
            let (answer, client) = oneshot::channel();
            let task = tokio::spawn(attempt(config, self.tls.clone(), held, answer));
            match client.await {
                Ok(Ok(client)) => Ok((client, task)),
                Ok(Err(e)) => Err(e),
                // The task ended without an answer (it cannot panic short of a driver bug):
                // leave the failure to the pool's connect timeout.
                Err(_) => std::future::pending().await,
            }
        })
    }
}

/// Connects holding `_held` (given back when this returns), hands the client to whoever still
/// waits for it and then drives the connection until its socket closes. When nobody waits any
/// longer, the client is dropped at once, which ends the session (and with it the task and the
/// slot) as soon as the server has answered the start-up.
async fn attempt(
    config: Config,
    tls: MakeRustlsConnect,
    _held: Held,
    answer: oneshot::Sender<Result<Client, Error>>,
) {
    let (client, connection) = match config.connect(tls).await {
        Ok(pair) => pair,
        Err(e) => {
            let _ = answer.send(Err(e));
            return;
        }
    };
    if answer.send(Ok(client)).is_err() {
        tracing::debug!("a connection attempt finished after its caller gave up; closing it");
    }
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "database connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A listener that accepts TCP and never answers, as a server process waiting for a lock.
    async fn silent_server() -> (tokio::net::TcpListener, Config) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(listener.local_addr().unwrap().port())
            .user("nobody")
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        (listener, config)
    }

    #[tokio::test]
    async fn an_abandoned_attempt_keeps_its_slot_until_the_socket_closes() {
        let (listener, config) = silent_server().await;
        let tls = crate::db::tls::PgTls::disabled().connector();
        let connect = SlotConnect::new(tls, 1);
        // The caller gives up (as the pool's connect timeout does) once the server has the
        // connection; the attempt goes on in its task.
        let mut first = connect.connect(&config);
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => accepted.unwrap(),
            _ = &mut first => panic!("a silent server cannot complete a connection"),
        };
        drop(first);
        assert_eq!(
            connect.free(),
            0,
            "the abandoned attempt still holds its slot"
        );
        // A second attempt gets no slot, so it opens no socket.
        let second = tokio::time::timeout(Duration::from_millis(200), connect.connect(&config));
        assert!(second.await.is_err(), "no slot: the attempt waits");
        let no_accept = tokio::time::timeout(Duration::from_millis(200), listener.accept());
        assert!(no_accept.await.is_err(), "no second socket was opened");
        // The server closes the socket: the attempt fails and gives its slot back.
        drop(socket);
        let free = async {
            while connect.free() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), free)
            .await
            .expect("the slot comes back once the socket is closed");
    }
}
