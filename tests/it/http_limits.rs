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
