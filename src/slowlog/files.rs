//! Where the reader is in each log file: an offset per file, the bytes of an incomplete last
//! line, and the bookkeeping of rotations and removals. Pure state, no I/O; the poll lists the
//! log directory, asks [`Tracker::reconcile`] what to read, reads, and feeds the bytes back.
//!
//! - At start (and after the reader was off) every listed file is taken as read to its end:
//!   only what is logged from then on is counted, so a restart of pgpulse never counts a line
//!   twice (and never counts what was logged while it was down).
//! - A file that appears later (a rotation) is read from its first byte, so several rotations
//!   between two polls lose nothing.
//! - Only complete lines are handed on: bytes after the last newline wait for the next read.
//! - Bytes known to exist but never read, because their file was removed (or truncated)
//!   first, are a gap.

use std::collections::HashMap;

/// The longest line kept whole; a longer line is skipped and counted, never split.
pub const MAX_LINE: usize = 8 * 1024 * 1024;

/// One file of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its plain name.
    pub name: String,
    /// Its size in bytes when listed.
    pub size: u64,
}

#[derive(Debug, Default, Clone)]
struct FileState {
    /// The next byte to read.
    offset: u64,
    /// The size when last listed.
    size: u64,
    /// Bytes of the line in progress.
    carry: Vec<u8>,
    /// Inside a line longer than [`MAX_LINE`]: drop bytes up to its newline.
    skipping: bool,
}

/// Offsets of every file of the log directory.
#[derive(Debug, Default)]
pub struct Tracker {
    files: HashMap<String, FileState>,
    started: bool,
}

/// What feeding bytes did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Lines longer than [`MAX_LINE`], skipped.
    pub oversized: u64,
}

impl Tracker {
    /// Forgets every offset: the next [`Tracker::reconcile`] starts at the end of every file.
    pub fn restart(&mut self) {
        self.files.clear();
        self.started = false;
    }

    /// Takes a new listing (in the order to read): new files start at their first byte (at
    /// their end on the first listing), files gone from it are forgotten. Returns the gap:
    /// bytes of vanished or truncated files that were known and never read.
    pub fn reconcile(&mut self, listing: &[Listed]) -> u64 {
        let mut gap = 0;
        let started = self.started;
        self.files.retain(|name, st| {
            let keep = listing.iter().any(|l| &l.name == name);
            if !keep {
                gap += st.size.saturating_sub(st.offset);
            }
            keep
        });
        for l in listing {
            let st = self
                .files
                .entry(l.name.clone())
                .or_insert_with(|| FileState {
                    offset: if started { 0 } else { l.size },
                    ..FileState::default()
                });
            if l.size < st.offset {
                // Truncated and rewritten under the same name (log_truncate_on_rotation).
                gap += st.size.saturating_sub(st.offset);
                *st = FileState::default();
            }
            st.size = l.size;
        }
        self.started = true;
        gap
    }

    /// The next read of `name`: its offset, and how many bytes are known to be unread.
    pub fn next_read(&self, name: &str) -> Option<(u64, u64)> {
        self.files
            .get(name)
            .map(|st| (st.offset, st.size.saturating_sub(st.offset)))
            .filter(|(_, left)| *left > 0)
    }

    /// Feeds `bytes` read from `name` at its offset; calls `line` with every complete line
    /// (without its newline).
    pub fn feed(&mut self, name: &str, bytes: &[u8], mut line: impl FnMut(&[u8])) -> Fed {
        let mut fed = Fed::default();
        let Some(st) = self.files.get_mut(name) else {
            return fed;
        };
        st.offset += bytes.len() as u64;
        st.size = st.size.max(st.offset);
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            if st.skipping {
                st.skipping = false;
            } else if st.carry.is_empty() {
                line(head);
            } else {
                st.carry.extend_from_slice(head);
                line(&st.carry);
                st.carry.clear();
            }
            rest = tail.get(1..).unwrap_or_default();
        }
        if !st.skipping {
            st.carry.extend_from_slice(rest);
            if st.carry.len() > MAX_LINE {
                st.carry = Vec::new();
                st.skipping = true;
                fed.oversized += 1;
            }
        }
        fed
    }

    /// `name` was removed while being read: forgets it and returns its unread bytes (a gap).
    pub fn vanished(&mut self, name: &str) -> u64 {
        self.files
            .remove(name)
            .map_or(0, |st| st.size.saturating_sub(st.offset))
    }

    /// `name` ended before its listed size (it was listed while being truncated).
    pub fn ended(&mut self, name: &str) {
        if let Some(st) = self.files.get_mut(name) {
            st.size = st.offset;
        }
    }

    /// Bytes listed and not read yet.
    pub fn lag(&self) -> u64 {
        self.files
            .values()
            .map(|st| st.size.saturating_sub(st.offset))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(files: &[(&str, u64)]) -> Vec<Listed> {
        files
            .iter()
            .map(|(n, s)| Listed {
                name: (*n).into(),
                size: *s,
            })
            .collect()
    }

    fn lines(t: &mut Tracker, name: &str, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        t.feed(name, bytes, |l| {
            out.push(String::from_utf8_lossy(l).into_owned())
        });
        out
    }

    #[test]
    fn the_first_listing_starts_at_the_end_and_later_files_at_their_start() {
        let mut t = Tracker::default();
        assert_eq!(t.reconcile(&listed(&[("a.json", 100)])), 0);
        assert_eq!(t.next_read("a.json"), None, "nothing before the start");
        // a grew by 10; two rotations since: b and c are new.
        t.reconcile(&listed(&[("a.json", 110), ("b.json", 5), ("c.json", 7)]));
        assert_eq!(t.next_read("a.json"), Some((100, 10)));
        assert_eq!(t.next_read("b.json"), Some((0, 5)));
        assert_eq!(t.next_read("c.json"), Some((0, 7)));
        assert_eq!(t.lag(), 22);
    }

    #[test]
    fn only_complete_lines_are_handed_on_across_small_chunks() {
        let mut t = Tracker::default();
        t.reconcile(&[]);
        t.reconcile(&listed(&[("a.json", 20)]));
        let text = "{\"é\":1}\n{\"x\":22}\n{\"y\"";
        let bytes = text.as_bytes();
        let mut got = Vec::new();
        // Three bytes at a time: chunks end inside lines and inside 'é'.
        for chunk in bytes.chunks(3) {
            got.extend(lines(&mut t, "a.json", chunk));
        }
        assert_eq!(got, vec!["{\"é\":1}", "{\"x\":22}"]);
        assert_eq!(t.next_read("a.json"), None);
        assert_eq!(lines(&mut t, "a.json", b":3}\n"), vec!["{\"y\":3}"]);
    }

    #[test]
    fn removed_and_truncated_files_count_their_unread_bytes_as_a_gap() {
        let mut t = Tracker::default();
        t.reconcile(&[]);
        t.reconcile(&listed(&[("a.json", 50), ("b.json", 30)]));
        lines(&mut t, "a.json", &[b'x'; 20]);
        // a removed with 30 bytes unread; b truncated to 10 with all 30 unread.
        assert_eq!(t.reconcile(&listed(&[("b.json", 40)])), 30);
        lines(&mut t, "b.json", &[b'y'; 40]);
        assert_eq!(t.reconcile(&listed(&[("b.json", 10)])), 0);
        assert_eq!(t.next_read("b.json"), Some((0, 10)));
        assert_eq!(t.vanished("b.json"), 10);
        assert_eq!(t.lag(), 0);
    }

    #[test]
    fn an_oversized_line_is_skipped_whole_and_counted() {
        let mut t = Tracker::default();
        t.reconcile(&[]);
        t.reconcile(&listed(&[("a.json", (MAX_LINE * 2) as u64)]));
        let big = vec![b'z'; MAX_LINE + 1];
        let fed = t.feed("a.json", &big, |_| panic!("no line yet"));
        assert_eq!(fed.oversized, 1);
        assert_eq!(
            lines(&mut t, "a.json", b"zz\n{\"ok\":1}\n"),
            vec!["{\"ok\":1}"]
        );
    }

    #[test]
    fn a_restart_starts_at_the_end_again() {
        let mut t = Tracker::default();
        t.reconcile(&[]);
        t.reconcile(&listed(&[("a.json", 10)]));
        t.restart();
        t.reconcile(&listed(&[("a.json", 10)]));
        assert_eq!(t.next_read("a.json"), None);
    }
}
