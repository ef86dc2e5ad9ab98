//! A log file removed before the reader could read it: its unread bytes are counted as a gap
//! (`pgpulse_slow_log_gap_bytes_total`), its slow statements are never counted, and the reader
//! goes on with the next file.
//!
//! The test makes the file unreadable to the server (mode 000) while it is still listed, logs
//! slow statements into it, rotates, and removes it.

use super::count::{exposed_total, settled, start_reader};
use super::{as_user, log_cluster, rotate, setup};
use crate::harness::exec;
use crate::harness::{PATIENCE, connect, eventually, with_db};
use crate::service::{Running, sample};
use crate::signals::shipped;

const MARKER: &str = "gap-marker";

/// Waits until the reader failed twice more than now: at least one whole failed poll listed
/// the directory after everything on disk now.
async fn two_more_failures(svc: &Running) {
    let errors = |b: &str| sample(b, "pgpulse_slow_log_poll_errors_total").unwrap_or(0.0);
    let e0 = errors(&svc.metrics().await);
    svc.wait_for("two more failed polls", |b| errors(b) >= e0 + 2.0)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_file_removed_before_it_was_read_is_a_gap_and_its_statements_are_not_counted() {
    let cluster = log_cluster(&[("log_rotation_size", "0")]);
    let (one, _two) = setup(&cluster).await;
    let datadir = cluster.dir().join("data");
    let admin = connect(&with_db(&cluster.url("postgres"), &one.name)).await;
    let trader = connect(&as_user(&one.url, "trader_a")).await;
    let svc = start_reader(
        &as_user(&one.url, "pgpulse_login"),
        &shipped(&["statements_available"], "2s"),
    )
    .await;

    // A fresh file, read to its end.
    let doomed = rotate(&admin, &datadir).await;
    let body = settled(&svc).await;
    let (count0, gap0) = (
        exposed_total(&body),
        sample(&body, "pgpulse_slow_log_gap_bytes_total").unwrap(),
    );

    // The reader can list the file but no longer open it (mode 000 stops the server's user,
    // which is never root; the logger keeps writing through the descriptor it holds). Polls
    // fail from the first unread byte on; each failure logs an ERROR, so they go on.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&doomed, std::fs::Permissions::from_mode(0o000)).unwrap();
    for _ in 0..3 {
        exec(&trader, &format!("SELECT pg_sleep(0.15) /* {MARKER} */")).await;
    }
    let on_disk = || async {
        let text = std::fs::read_to_string(&doomed).ok()?;
        (text.matches(MARKER).count() >= 3).then_some(())
    };
    assert!(eventually(PATIENCE, on_disk).await.is_some());
    rotate(&admin, &datadir).await;
    two_more_failures(&svc).await;

    // Gone before it was read; then the reader may read again.
    let text = std::fs::read(&doomed).unwrap();
    std::fs::remove_file(&doomed).unwrap();
    let find = |needle: &str| {
        text.windows(needle.len())
            .position(|w| w == needle.as_bytes())
    };
    // Nothing from the first failed read (or the first marker, logged after the chmod) on was
    // read; everything before the chmod was (the file had been read to its end).
    let first_unread = [find("could not open file"), find(MARKER)]
        .into_iter()
        .flatten()
        .min()
        .expect("the doomed file holds the markers");
    let line_start = text[..first_unread]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let (lower, size) = ((text.len() - line_start) as f64, text.len() as f64);
    exec(&trader, "SELECT pg_sleep(0.15) /* after the gap */").await;
    svc.wait_for("the gap counted and the next slow statement read", |b| {
        sample(b, "pgpulse_slow_log_up") == Some(1.0)
            && sample(b, "pgpulse_slow_log_gap_bytes_total").unwrap_or(0.0) > gap0
            && exposed_total(b) > count0
    })
    .await;
    let body = settled(&svc).await;
    let gap = sample(&body, "pgpulse_slow_log_gap_bytes_total").unwrap() - gap0;
    eprintln!(
        "gap: {gap} bytes counted; the removed file had {size} bytes, {lower} of them certainly unread"
    );
    assert!(
        (lower..=size).contains(&gap),
        "the gap ({gap}) covers the unread tail ({lower}) and no more than the file ({size})"
    );
    assert_eq!(
        exposed_total(&body) - count0,
        1.0,
        "only the statement after the gap is counted, never the removed file's three"
    );
    svc.stop().await;
}
