//! Where the reader is in each log file: an offset per file and whether it is inside a line
//! too long to count, and the bookkeeping of rotations and removals. Pure state, no I/O; the
//! poll lists the log directory, asks [`Tracker::reconcile`] what to read, has the server
//! tally a window from [`Tracker::next_read`], and moves on by what the server consumed
//! ([`Tracker::advance`]). No byte of the log passes through here.
//!
//! - At start (and after the reader was off) every listed file is taken as read to its end:
//!   only what is logged from then on is counted, so a restart of pgpulse never counts a line
//!   twice (and never counts what was logged while it was down).
//! - A file that appears later (a rotation) is read from its first byte, so several rotations
//!   between two polls lose nothing.
//! - An offset only moves past complete lines (the server consumes through a newline), or
//!   through a line longer than the server's largest window, which is skipped to its end.
//! - Bytes known to exist but never read, because their file was removed (or truncated)
//!   first, are a gap.

use std::collections::HashMap;

/// One file of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its plain name.
    pub name: String,
    /// Its size in bytes when listed.
    pub size: u64,
}

/// Where the next read of a file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The byte offset.
    pub offset: u64,
    /// Inside a line too long to count: the next read drops bytes through its newline.
    pub skipping: bool,
}

#[derive(Debug, Default, Clone)]
struct FileState {
    /// The next byte to read: the start of a line, or inside a line being skipped.
    offset: u64,
    /// The size when last listed.
    size: u64,
    /// Inside a line too long to count.
    skipping: bool,
}

/// Offsets of every file of the log directory.
#[derive(Debug, Default)]
pub struct Tracker {
    files: HashMap<String, FileState>,
    started: bool,
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

    /// Where the next read of `name` starts, when it has bytes listed and not read yet.
    pub fn next_read(&self, name: &str) -> Option<Position> {
        self.files
            .get(name)
            .filter(|st| st.size > st.offset)
            .map(|st| Position {
                offset: st.offset,
                skipping: st.skipping,
            })
    }

    /// The server consumed `consumed` bytes of `name` from its offset (complete lines, or a
    /// part of a line being skipped) and is `skipping` or not at the new offset.
    pub fn advance(&mut self, name: &str, consumed: u64, skipping: bool) {
        if let Some(st) = self.files.get_mut(name) {
            st.offset += consumed;
            st.size = st.size.max(st.offset);
            st.skipping = skipping;
        }
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

    /// Bytes listed and not consumed yet (a line still being written included).
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

    fn at(offset: u64, skipping: bool) -> Option<Position> {
        Some(Position { offset, skipping })
    }

    #[test]
    fn the_first_listing_starts_at_the_end_and_later_files_at_their_start() {
        let mut t = Tracker::default();
        assert_eq!(t.reconcile(&listed(&[("a.json", 100)])), 0);
        assert_eq!(t.next_read("a.json"), None, "nothing before the start");
        // a grew by 10; two rotations since: b and c are new.
        t.reconcile(&listed(&[("a.json", 110), ("b.json", 5), ("c.json", 7)]));
        assert_eq!(t.next_read("a.json"), at(100, false));
        assert_eq!(t.next_read("b.json"), at(0, false));
        assert_eq!(t.next_read("c.json"), at(0, false));
        assert_eq!(t.lag(), 22);
    }

    #[test]
    fn an_offset_moves_by_what_was_consumed_and_a_line_being_written_stays_unread() {
        let mut t = Tracker::default();
        t.reconcile(&[]);
        t.reconcile(&listed(&[("a.json", 30)]));
        // 30 bytes listed: two complete lines of 12 bytes, then 6 bytes of a third.
        t.advance("a.json", 24, false);
        assert_eq!(t.next_read("a.json"), at(24, false));
        assert_eq!(t.lag(), 6, "the line being written is lag, not read");
        // The line was finished and another written since.
        t.reconcile(&listed(&[("a.json", 48)]));
        t.advance("a.json", 24, false);
        assert_eq!(t.next_read("a.json"), None);
        assert_eq!(t.lag(), 0);
    }

    #[test]
    fn a_line_being_skipped_is_carried_to_the_next_read() {
        let mut t = Tracker::default();
        t.reconcile(&[]);
        t.reconcile(&listed(&[("a.json", 100)]));
        t.advance("a.json", 60, true);
        assert_eq!(t.next_read("a.json"), at(60, true));
        t.advance("a.json", 40, false);
        assert_eq!(t.next_read("a.json"), None);
        t.reconcile(&listed(&[("a.json", 120)]));
        assert_eq!(t.next_read("a.json"), at(100, false));
    }

    #[test]
    fn removed_and_truncated_files_count_their_unread_bytes_as_a_gap() {
        let mut t = Tracker::default();
        t.reconcile(&[]);
        t.reconcile(&listed(&[("a.json", 50), ("b.json", 30)]));
        t.advance("a.json", 20, false);
        // a removed with 30 bytes unread; b truncated to 10 with all 30 unread.
        assert_eq!(t.reconcile(&listed(&[("b.json", 40)])), 30);
        t.advance("b.json", 40, true);
        assert_eq!(t.reconcile(&listed(&[("b.json", 10)])), 0);
        assert_eq!(t.next_read("b.json"), at(0, false), "a new file: no skip");
        assert_eq!(t.vanished("b.json"), 10);
        assert_eq!(t.lag(), 0);
    }

    #[test]
    fn a_file_that_ended_before_its_listed_size_has_nothing_left() {
        let mut t = Tracker::default();
        t.reconcile(&[]);
        t.reconcile(&listed(&[("a.json", 50)]));
        t.advance("a.json", 10, false);
        t.ended("a.json");
        assert_eq!(t.next_read("a.json"), None);
        assert_eq!(t.lag(), 0);
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
