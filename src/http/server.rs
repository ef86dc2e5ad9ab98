//! The HTTP server: the accept loop, the cap on concurrent connections, the deadline of every
//! connection, the TLS handshake, HTTP/1.1, and the graceful shutdown.
//!
//! **Every phase of a connection has a deadline** of `web.request_timeout`: from the accept
//! (TLS handshake included) to complete request headers; from the headers to the answer
//! handed to the socket; from an answer to the next request's headers (idle keep-alive). A
//! connection that overruns a phase is dropped, whatever it sent or did not send: nothing, half
//! a request, a TLS handshake and then silence, an HTTP/2 preface. The watchdog is ours, not
//! hyper's `header_read_timeout`, which starts only once the first byte has arrived.
//!
//! **HTTP/1.1 only.** Prometheus scrapes over HTTP/1.1 (HTTP/2 is off in its scrape
//! configuration by default), and the body is a pre-rendered copy, so HTTP/2 brings nothing but
//! a second protocol to harden: a client that sends the HTTP/2 preface gets an error and the
//! connection is closed. Over TLS, ALPN offers only `http/1.1`.
//!
//! **The connection cap** (`web.max_connections`) is enforced at accept. When it is reached,
//! the oldest connection that is not in a request (it has sent no complete headers yet, or it
//! idles between requests) is closed to make room: a scraper sends its headers within
//! milliseconds of connecting, so clients that hold connections without asking anything
//! are the ones evicted, oldest first, and a legitimate scrape still answers while others
//! flood the port. Only when every connection is in a request is the new one refused
//! (closed at once, before any read). Each connection costs one task and one descriptor.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::HttpMetrics;

/// How long a shutdown waits for open requests before it closes their connections.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The pause after a failed accept (out of descriptors), so the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The HTTPS configuration; swapped whole on reload, read at every handshake.
pub(crate) type TlsConfig = Arc<ArcSwap<rustls::ServerConfig>>;

/// What bounds the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The deadline of each phase of a connection (`web.request_timeout`).
    pub phase_timeout: Duration,
    /// The most connections open at once (`web.max_connections`).
    pub max_connections: usize,
}

/// One open connection as the cap sees it.
#[derive(Debug)]
struct Conn {
    /// True while a request is being answered.
    busy: AtomicBool,
    /// When the current phase ends, in milliseconds since the server started.
    deadline_ms: AtomicU64,
    /// Cancelled to evict it.
    evict: CancellationToken,
}

/// The open connections, by accept order.
#[derive(Debug)]
struct Registry {
    epoch: Instant,
    limits: Limits,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Conn>>>,
    metrics: HttpMetrics,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts a new phase of `conn`: its deadline is one timeout from now.
    fn phase(&self, conn: &Conn, busy: bool) {
        let timeout = u64::try_from(self.limits.phase_timeout.as_millis()).unwrap_or(u64::MAX);
        conn.busy.store(busy, Ordering::SeqCst);
        conn.deadline_ms
            .store(self.now_ms().saturating_add(timeout), Ordering::SeqCst);
    }

    /// Admits a new connection, evicting the oldest idle one when the cap is reached;
    /// `None` when every open connection is in a request.
    fn admit(&self) -> Option<(u64, Arc<Conn>)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let live = open.values().filter(|c| !c.evict.is_cancelled()).count();
        if live >= self.limits.max_connections {
            let victim = open
                .values()
                .find(|c| !c.evict.is_cancelled() && !c.busy.load(Ordering::SeqCst));
            match victim {
                Some(v) => {
                    v.evict.cancel();
                    self.metrics.closed("evicted");
                }
                None => {
                    self.metrics.closed("refused");
                    return None;
                }
            }
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let conn = Arc::new(Conn {
            busy: AtomicBool::new(false),
            deadline_ms: AtomicU64::new(0),
            evict: CancellationToken::new(),
        });
        self.phase(&conn, false);
        open.insert(id, conn.clone());
        self.metrics.set_open(open.len());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&id);
        self.metrics.set_open(open.len());
    }

    /// Completes when `conn` overruns its current phase.
    async fn overrun(&self, conn: &Conn) {
        loop {
            let deadline = conn.deadline_ms.load(Ordering::SeqCst);
            let now = self.now_ms();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(deadline - now)).await;
        }
    }
}

/// Serves `router` on `listener` (HTTPS when `tls` is given) until `shutdown` completes. On
/// shutdown the listener closes, idle connections close at once and open requests get
/// [`SHUTDOWN_GRACE`] to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsConfig>,
    limits: Limits,
    metrics: HttpMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        limits,
        next: AtomicU64::new(0),
        open: Mutex::new(BTreeMap::new()),
        metrics,
    });
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Some((id, conn)) = registry.admit() else {
            drop(tcp);
            continue;
        };
        let ctx = ConnCtx {
            registry: registry.clone(),
            conn,
            stop: stop.clone(),
        };
        let (router, tls) = (router.clone(), tls.clone());
        tasks.spawn(async move {
            ctx.run(tcp, router, tls).await;
            ctx.registry.remove(id);
        });
    }
    drop(listener);
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// What a connection's task holds.
struct ConnCtx {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
    stop: CancellationToken,
}

/// Why a connection ended before its client closed it.
enum Cut {
    Deadline,
    Evicted,
}

impl ConnCtx {
    async fn run(&self, tcp: TcpStream, router: axum::Router, tls: Option<TlsConfig>) {
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            self.http(tcp, router).await;
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
        let handshake = tokio::select! {
            h = acceptor.accept(tcp) => h,
            cut = self.cut() => {
                self.count(cut);
                return;
            }
            () = self.stop.cancelled() => return,
        };
        match handshake {
            Ok(stream) => self.http(stream, router).await,
            Err(e) => tracing::debug!(error = %e, "tls handshake failed"),
        }
    }

    /// Completes when the connection must go: its phase overran, or it was evicted.
    async fn cut(&self) -> Cut {
        tokio::select! {
            () = self.registry.overrun(&self.conn) => Cut::Deadline,
            () = self.conn.evict.cancelled() => Cut::Evicted,
        }
    }

    fn count(&self, cut: Cut) {
        if let Cut::Deadline = cut {
            self.registry.metrics.closed("deadline");
        }
    }

    async fn http<S>(&self, io: S, router: axum::Router)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let registry = self.registry.clone();
        let conn = self.conn.clone();
        let service = hyper::service::service_fn(move |req| {
            registry.phase(&conn, true);
            let answer = tower::ServiceExt::oneshot(router.clone(), req);
            let (registry, conn) = (registry.clone(), conn.clone());
            async move {
                let resp = answer.await;
                registry.phase(&conn, false);
                resp
            }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(served);
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
            }
            cut = self.cut() => self.count(cut),
            () = self.stop.cancelled() => {
                served.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, served).await;
            }
        }
    }
}
