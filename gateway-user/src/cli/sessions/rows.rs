//! A session's rows in the fleet store, read a page at a time as one
//! stream of lines, as its file would be read: a recording is never held
//! whole, wherever it is kept.
use std::io::{self, BufRead, Read};

use super::source::Database;
use crate::recording::sink;

/// Rows of the first page, and the most of any page.
const FIRST_PAGE: i64 = 64;
const MAX_PAGE: i64 = 1024;
/// What a page aims to hold: the next one fetches as many rows as the
/// largest row of the last one fits in this, so a session of wide
/// results is read in fewer rows at a time. (A page is still at least
/// one row: memory follows the largest row, as a file's its longest line.)
const PAGE_BYTES: usize = 4 << 20;

/// Session `id`'s lines in the store, as a reader.
pub(super) struct Rows<'a> {
    db: &'a Database,
    session: String,
    /// The seq of the last row read (`None`: none yet).
    after: Option<i64>,
    limit: i64,
    page: Vec<u8>,
    at: usize,
    done: bool,
}

impl Database {
    /// Session `id`'s lines; an error when the store has none of them.
    pub(super) fn rows(&self, id: &str) -> Result<Rows<'_>, String> {
        let mut rows = Rows {
            db: self,
            session: id.to_owned(),
            after: None,
            limit: FIRST_PAGE,
            page: Vec::new(),
            at: 0,
            done: false,
        };
        rows.next_page()?;
        if rows.page.is_empty() {
            return Err(format!("no session {id:?} in the recording database"));
        }
        Ok(rows)
    }
}

impl Rows<'_> {
    fn next_page(&mut self) -> Result<(), String> {
        // From the last seq read, which comes again first: one more row.
        let ask = self.limit + i64::from(self.after.is_some());
        let mut rows = self.db.runtime.block_on(sink::page(
            &self.db.client,
            &self.session,
            self.after,
            ask,
        ))?;
        self.done = (rows.len() as i64) < ask;
        // Only one row of that seq was read already: any other is a row
        // more than the chain has, and goes to the checker.
        if let Some(after) = self.after
            && let Some(i) = rows.iter().position(|(seq, _)| *seq == after)
        {
            rows.remove(i);
            // A full page of that one seq would be asked for again and
            // again (found in review): the chain is broken by what it
            // holds already, so reading stops here.
            if rows.iter().all(|(seq, _)| *seq == after) {
                self.done = true;
            }
        }
        self.page.clear();
        self.at = 0;
        let mut largest = 1;
        for (seq, line) in rows {
            self.after = Some(seq);
            largest = line.len().max(largest);
            self.page.extend_from_slice(&line);
        }
        // Grows by doubling at most: one page of small rows says little
        // of the next.
        let fits = i64::try_from(PAGE_BYTES / largest).unwrap_or(MAX_PAGE);
        self.limit = fits.min(self.limit.saturating_mul(2)).clamp(1, MAX_PAGE);
        Ok(())
    }
}

impl BufRead for Rows<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.at == self.page.len() && !self.done {
            self.next_page().map_err(io::Error::other)?;
        }
        Ok(&self.page[self.at..])
    }

    fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.page.len());
    }
}

impl Read for Rows<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}
