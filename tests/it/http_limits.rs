//! The HTTP server against clients that misbehave: a half-sent request is cut off after
//! `web.request_timeout` (it holds no memory or descriptor for long) while other scrapes are
//! answered, and a shutdown completes although such clients are connected.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{PATIENCE, TestDb};
use crate::service::{Running, sample, start};
use crate::signals::shipped;

/// Opens `n` connections that send the start of a request and never finish its headers.
async fn half_requests(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: pgpulse\r\nX-Slow: ")
            .await
            .unwrap();
        out.push(s);
    }
    out
}

/// pgpulse with `request_timeout` and `n` half-sent requests open, once a scrape was answered
/// beside them.
async fn serving_beside(
    db: &TestDb,
    request_timeout: Duration,
    n: usize,
) -> (Running, Vec<TcpStream>) {
    let svc = start(&db.url, &shipped(&["database_cache"], "2s"), |c| {
        c.request_timeout = request_timeout;
    })
    .await;
    let slow = half_requests(svc.addr, n).await;
    svc.wait_for("a scrape answered beside them", |b| {
        sample(b, "pg_up") == Some(1.0)
    })
    .await;
    (svc, slow)
}

/// Reads until the server closes `s`; the bytes it sent (none, or an error status).
async fn until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut got))
        .await
        .ok()?
        .ok()?;
    Some(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_is_cut_off_after_the_request_timeout_while_scrapes_go_on() {
    let db = TestDb::trade_migrated().await;
    let (svc, mut slow) = serving_beside(&db, Duration::from_secs(1), 50).await;
    for s in &mut slow {
        let sent = until_closed(s)
            .await
            .expect("the server closes a connection whose headers never end");
        let text = String::from_utf8_lossy(&sent);
        assert!(
            sent.is_empty() || text.starts_with("HTTP/1.1 408"),
            "nothing or 408 Request Timeout: {text}"
        );
    }
    assert_eq!(sample(&svc.metrics().await, "pg_up"), Some(1.0));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_completes_while_clients_hold_half_sent_requests() {
    let db = TestDb::trade_migrated().await;
    let (svc, _slow) = serving_beside(&db, Duration::from_secs(3600), 20).await;
    assert!(
        svc.stop_within(PATIENCE).await,
        "the service did not stop while 20 clients held half-sent requests"
    );
}

/// Opens `n` TCP connections that send nothing.
async fn silent(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.unwrap());
    }
    out
}

/// Opens `n` connections that speak HTTP/2 with prior knowledge: the preface, an empty
/// SETTINGS frame, then silence.
async fn h2c(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        out.push(s);
    }
    out
}

/// Opens `n` connections that ask one question and then idle with keep-alive.
async fn idle_keep_alive(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: pgpulse\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        out.push(s);
    }
    out
}

/// Reads until the server closes `s` (EOF or reset); false when it is still open after the
/// test patience.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut sink))
        .await
        .is_ok()
}

/// One scrape on a new connection of its own (`Connection: close`); the status line.
async fn raw_scrape(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: pgpulse\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut got))
        .await
        .expect("the scrape is answered")
        .unwrap();
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_h2c_and_idle_keep_alive_connections_are_closed_by_the_request_timeout() {
    let db = TestDb::trade_migrated().await;
    let svc = start(&db.url, &shipped(&["database_cache"], "2s"), |c| {
        c.request_timeout = Duration::from_secs(1);
    })
    .await;
    let mut held = silent(svc.addr, 20).await;
    held.extend(h2c(svc.addr, 20).await);
    held.extend(idle_keep_alive(svc.addr, 20).await);
    held.extend(half_requests(svc.addr, 20).await);
    for (i, s) in held.iter_mut().enumerate() {
        assert!(closed_by_server(s).await, "connection {i} was never closed");
    }
    let body = svc
        .wait_for("the closed connections counted", |b| {
            sample(
                b,
                "pgpulse_http_connections_closed_total{reason=\"deadline\"}",
            )
            .is_some_and(|n| n >= 60.0)
        })
        .await;
    assert_eq!(
        sample(
            &body,
            "pgpulse_http_connections_closed_total{reason=\"refused\"}"
        ),
        Some(0.0)
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_answers_while_silent_clients_hold_every_connection_slot() {
    let db = TestDb::trade_migrated().await;
    let cap = 16;
    let svc = start(&db.url, &shipped(&["database_cache"], "2s"), |c| {
        c.request_timeout = Duration::from_secs(3600);
        c.max_http_connections = cap;
    })
    .await;
    let mut held = silent(svc.addr, 3 * cap).await;
    for round in 0..5 {
        assert_eq!(
            raw_scrape(svc.addr).await,
            "HTTP/1.1 200 OK",
            "scrape {round} beside {} held connections",
            held.len()
        );
        held.extend(silent(svc.addr, cap).await);
    }
    // Every held connection beyond the cap was evicted (they never time out here).
    let mut closed = 0;
    let evictable = held.len() - cap;
    for s in held.iter_mut().take(evictable) {
        closed += usize::from(closed_by_server(s).await);
    }
    assert_eq!(closed, evictable);
    let body = svc
        .wait_for("the evictions counted", |b| {
            sample(
                b,
                "pgpulse_http_connections_closed_total{reason=\"evicted\"}",
            )
            .is_some_and(|n| n >= closed as f64)
        })
        .await;
    let open = sample(&body, "pgpulse_http_open_connections").unwrap();
    assert!(
        open <= cap as f64 + 1.0,
        "{open} open connections, cap {cap}"
    );
    svc.stop().await;
}
