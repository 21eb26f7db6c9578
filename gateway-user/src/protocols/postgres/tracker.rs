//! What the upstream still owes the client, in order. Every forwarded
//! message that the server answers becomes a [`Pending`] entry; responses
//! pop them. This is how a DataRow is tied to the portal whose result it
//! is (the extended protocol sends no RowDescription before Execute's
//! rows), and how a Describe the gateway added itself is kept from the
//! client.
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Instant,
};

use bytes::Bytes;

use crate::masking::{Reading, ResultPlan};

/// What logs and recordings show of a statement, worked out once per text:
/// a prepared statement's Binds and Executes reuse it instead of redacting
/// the text again each time.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    /// The text with password literals redacted.
    pub text: Arc<str>,
    /// Its statements' classes, comma-separated.
    pub class: Arc<str>,
}

/// What the session made of one RowDescription: the column names the
/// recording shows and how the rows are masked (`None`: no masking rules).
#[derive(Debug, Default)]
pub struct Layout {
    pub columns: Arc<[String]>,
    pub plan: Option<Arc<ResultPlan>>,
}

/// The layouts a session has planned, by their RowDescription's exact
/// bytes and the column rule its statement's unsourced columns take
/// ([`crate::masking::MaskingPolicy::reading_rule`]): the same columns
/// from `SELECT ''` and from a UNION over a ruled table are planned
/// apart. Bounded by count and by the memory they hold (a RowDescription
/// of a wide table is tens of KiB): past either it starts over rather than
/// track which are still in use, and a layout too large for the budget is
/// not kept at all.
///
/// A layout is used for at most the catalog's [`MAX_AGE`] after it was
/// planned, as the catalog's own entries are: the same RowDescription
/// bytes can mean other masks later (a table attached as a partition of a
/// ruled one, a renamed column), and a long session must pick that up
/// within a minute as a new one does (found in review: it kept its first
/// plan for good).
///
/// [`MAX_AGE`]: crate::protocols::postgres::catalog::MAX_AGE
#[derive(Debug, Default)]
pub struct LayoutCache {
    layouts: HashMap<(Option<Reading>, Bytes), (Arc<Layout>, Instant)>,
    bytes: usize,
}

impl LayoutCache {
    pub const MAX_LAYOUTS: usize = 256;
    pub const MAX_BYTES: usize = 256 * 1024;

    pub fn get(&self, reading: Option<Reading>, description: &Bytes) -> Option<Arc<Layout>> {
        self.get_at(reading, description, Instant::now())
    }

    fn get_at(
        &self,
        reading: Option<Reading>,
        description: &Bytes,
        now: Instant,
    ) -> Option<Arc<Layout>> {
        // A shared handle, not a copy: the key is only compared.
        let (layout, planned) = self.layouts.get(&(reading, description.clone()))?;
        let age = now.saturating_duration_since(*planned);
        (age < crate::protocols::postgres::catalog::MAX_AGE).then(|| Arc::clone(layout))
    }

    pub fn insert(&mut self, reading: Option<Reading>, description: &[u8], layout: Arc<Layout>) {
        // The key, the column names and a plan entry per column.
        let bytes = 2 * description.len() + 64 * layout.columns.len();
        if bytes > Self::MAX_BYTES {
            return;
        }
        if self.layouts.len() >= Self::MAX_LAYOUTS || self.bytes + bytes > Self::MAX_BYTES {
            self.layouts.clear();
            self.bytes = 0;
        }
        if self
            .layouts
            .insert(
                (reading, Bytes::copy_from_slice(description)),
                (layout, Instant::now()),
            )
            .is_none()
        {
            self.bytes += bytes;
        }
    }

    pub fn len(&self) -> usize {
        self.layouts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layouts.is_empty()
    }
}

/// A statement being executed, for its completion event.
#[derive(Debug)]
pub struct Running {
    pub sql: Arc<str>,
    /// Kept so a prepared statement is classified once, at Parse.
    pub classification: Option<Arc<crate::protocols::postgres::classify::Classification>>,
    pub shown: Shown,
    pub rule: Arc<str>,
    pub started: Instant,
    pub rows: u64,
    pub masked: bool,
    /// Created by an Execute: its recording names the statement again.
    pub execute: bool,
    /// Column names and the first rows as the client received them, for
    /// the recording.
    pub columns: Arc<[String]>,
    pub sample: crate::recording::sample::Sample,
    /// The rule whose approvers approved it before it ran: a statement it
    /// PREPAREs runs later without asking that rule again.
    pub approved: Option<Approved>,
    /// How many of its statements' `PREPARE` / `DEALLOCATE` completions
    /// were seen: the next one's CommandComplete belongs to the statement
    /// after them.
    pub prepared_done: usize,
    /// How many of its `DECLARE` / `CLOSE` completions were seen: the
    /// next one's CommandComplete belongs to the cursor statement after them.
    pub cursors_done: usize,
    /// Its `DECLARE` / `CLOSE` statements, read from its text at the first
    /// such completion and kept for the rest (found in review: read again
    /// at each, a string of thousands of DECLAREs cost quadratic time).
    pub cursor_changes: Option<Arc<[CursorChange]>>,
    /// What each of its `PREPARE` / `DEALLOCATE` / `DISCARD ALL`
    /// statements (by index) took from the session's names when it was
    /// sent: put back if that statement never ran (an error), since the
    /// server then still has what it had.
    pub names_taken: Vec<(usize, Undo)>,
    /// A `COPY … TO STDOUT` the gateway runs as a query, masking on
    /// (see [`crate::protocols::postgres::copy_out`]). Boxed: most
    /// statements have none, and every one carries the field.
    pub copy: Option<Box<CopyRun>>,
}

/// What a cursor statement does to the portal names, and its index among
/// its text's statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorChange {
    Declare(usize, String),
    /// `CLOSE name`, or `CLOSE ALL` (`None`).
    Close(usize, Option<String>),
}

/// A `COPY … TO STDOUT` running as its query: the portal's rows become the
/// COPY's once its Describe said what they are.
#[derive(Debug)]
pub struct CopyRun {
    pub copy: crate::protocols::postgres::copy_out::CopyOut,
    /// Made from the portal's RowDescription, when the CopyOutResponse
    /// went to the client (and the Execute to the server).
    pub encoder: Option<crate::protocols::postgres::copy_out::encode::Encoder>,
    /// The client's portal's [`Portal::ran`] (an Execute's COPY): set when
    /// the COPY is sent, so a second Execute of the portal, even pipelined,
    /// fails as in PostgreSQL; cleared again if the server skips it (found
    /// in review: after `ROLLBACK TO SAVEPOINT` the portal is still there
    /// and may run).
    pub portal_ran: Option<Arc<std::sync::atomic::AtomicBool>>,
}

#[derive(Debug)]
pub enum Pending {
    /// A simple Query: any number of results, then ReadyForQuery.
    Query(Option<Running>),
    /// `None` when the Parse changed nothing the session knows.
    Parse(Option<Undo>),
    /// The portal name it bound and what it held before, put back if the
    /// server rejects or skips the Bind.
    Bind(Option<(String, Option<Portal>)>),
    /// `swallow`: added by the gateway to learn a portal's row layout.
    Describe {
        portal: Option<String>,
        statement: Option<String>,
        swallow: bool,
    },
    /// `plan`: from the portal's RowDescription, which the Describe the
    /// gateway sends right before this Execute when masking is on returns
    /// (so pipelined Binds to the same portal name cannot mix up layouts).
    Execute {
        portal: String,
        running: Option<Running>,
        plan: Option<Arc<ResultPlan>>,
        /// The portal's [`Portal::ran`], if the gateway bound it.
        ran: Option<Arc<std::sync::atomic::AtomicBool>>,
    },
    /// `Some` for a statement's Close.
    Close(Option<Undo>),
    /// A portal's Close: the portal goes once the server has closed it
    /// (found in review: forgotten when the Close was sent, an Execute
    /// pipelined after it, or after a skipped Close and a `ROLLBACK TO
    /// SAVEPOINT`, ran undecided). Which portal: its [`Portal::ran`], so a
    /// Bind of the name sent after the Close keeps its own.
    ClosePortal(Option<(String, Arc<std::sync::atomic::AtomicBool>)>),
    Sync,
    /// Answers (ParseComplete, BindComplete, CloseComplete) to messages
    /// the gateway sent to run a COPY as its query: this many still to
    /// come, none for the client.
    Own(u8),
    /// The client ended a COPY (CopyDone or CopyFail), which nothing
    /// answers: it tells which Syncs the server ignored while it was
    /// taking COPY data ([`Tracker::copy_in_started`]).
    CopyEnd,
    /// The client sent COPY data (one marker for a run of it) before the
    /// server said a COPY takes it: tells which Syncs came after data.
    CopyData,
}

impl Pending {
    /// Whether this entry ends with ReadyForQuery.
    pub fn is_sync_point(&self) -> bool {
        matches!(self, Pending::Query(_) | Pending::Sync)
    }

    /// Whether this entry is a Sync: what the server stops discarding at.
    fn is_sync(&self) -> bool {
        matches!(self, Pending::Sync)
    }
}

/// Who released a held statement: the rule whose approvers approved it
/// and, when an approval grant did (`approve --for`), when that grant
/// ends. A prepared statement runs again without asking only under the
/// same rule and, for a grant, only until then.
#[derive(Debug, Clone, PartialEq)]
pub struct Approved {
    pub rule: Arc<str>,
    pub until: Option<std::time::SystemTime>,
}

impl Approved {
    /// Whether it still releases what `rule` holds at `now`.
    pub fn covers(&self, rule: &str, now: std::time::SystemTime) -> bool {
        *self.rule == *rule && self.until.is_none_or(|until| now < until)
    }
}

/// A prepared statement as the gateway knows it.
#[derive(Debug, Default)]
pub struct PreparedStatement {
    pub sql: Arc<str>,
    pub classification: Option<Arc<crate::protocols::postgres::classify::Classification>>,
    pub shown: Shown,
    /// Held at Parse and approved (by this rule's approvers): its Binds
    /// run without asking that rule again.
    pub approved: Option<Approved>,
}

/// A statement prepared with SQL `PREPARE`, known once its CommandComplete
/// came: `EXECUTE` and Bind of its name are decided by what it holds.
#[derive(Debug, Clone)]
pub struct SqlPrepared {
    /// What the PREPARE defined (the inner statement's class, flags and
    /// tables) as a one-statement classification, made once so each Bind
    /// and EXECUTE of the name shares it.
    pub classification: Arc<crate::protocols::postgres::classify::Classification>,
    /// The whole text that prepared it.
    pub sql: Arc<str>,
    pub shown: Shown,
    pub approved: Option<Approved>,
}

/// What a statement name meant before a Parse or Close changed it, put
/// back when the server rejects or skips that message. SQL and protocol
/// prepared statements share one namespace on the server.
#[derive(Debug, Default)]
pub struct Undo {
    pub name: String,
    pub protocol: Option<PreparedStatement>,
    pub sql: Option<SqlPrepared>,
}

/// A bound portal.
#[derive(Debug, Default)]
pub struct Portal {
    /// What its statement's name held at the Bind: what runs at its
    /// Execute, whatever the name is given to later.
    pub bound: NamedStatement,
    /// The server answered an Execute of it (rows done or suspended),
    /// having looked up the names its `EXECUTE` runs then: a later Execute
    /// only fetches more rows of that run, so it is not decided again.
    /// Set from the answer, not when the Execute is sent (found in review:
    /// an Execute the server skipped left it set, and the portal's real
    /// run went undecided). Shared with the Execute's [`Pending`] entry,
    /// so only this portal is marked, whatever holds its name by then.
    pub ran: Arc<std::sync::atomic::AtomicBool>,
}

/// A prepared statement as a Bind or Execute uses it: its text, how it
/// was classified, what the recording shows, and the rule whose approvers
/// approved it, if a human did.
pub type NamedStatement = (
    Arc<str>,
    Arc<crate::protocols::postgres::classify::Classification>,
    Shown,
    Option<Approved>,
);

/// A denial waiting for the upstream error that carries its nonce.
#[derive(Debug)]
pub struct Denial {
    pub nonce: String,
    pub error: Bytes,
    /// The sync point (count) whose ReadyForQuery ends this denial's batch.
    pub sync_point: u64,
}

/// The server answered something the gateway cannot match to a request:
/// the session must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfStep;

#[derive(Debug, Default)]
pub struct Tracker {
    pub pending: VecDeque<Pending>,
    pub denials: VecDeque<Denial>,
    /// Sync points forwarded so far (Query, Sync, FunctionCall).
    pub syncs_sent: u64,
    /// ReadyForQuery messages seen so far.
    pub syncs_done: u64,
    /// The server is taking COPY data and ignores Sync (and Flush) until
    /// the client's CopyDone or CopyFail.
    copy_in: bool,
    /// The client sent COPY data during the running COPY
    /// ([`Tracker::copy_data`]); data sent before the server's
    /// CopyInResponse is marked in `pending` ([`Pending::CopyData`]).
    copy_data_sent: bool,
    /// A COPY FROM STDIN started and its CommandComplete or ErrorResponse
    /// has not come yet.
    copy_outcome_pending: bool,
    /// During that COPY the client sent, after COPY data, a Sync (which the
    /// server ignores only while the COPY runs) or any message but COPY
    /// data (which fails it). Should any of that data fail the COPY, the
    /// server answers each later Sync after all, and which of them came
    /// after the failure the gateway cannot know (found in review: extra
    /// ReadyForQuery messages put the tracker ahead of the server, and a
    /// masked row went out under another result's plan).
    copy_in_mixed: bool,
    /// An extended-protocol message failed with no Sync pending: the
    /// server discards whatever the client sends until its next Sync.
    discarding: bool,
    /// What was pushed while discarding: never run, never answered. The
    /// session takes them ([`Tracker::take_discarded`]) to undo what it
    /// assumed when it forwarded them.
    discarded: Vec<Pending>,
}

impl Tracker {
    pub fn push(&mut self, pending: Pending) {
        if self.copy_in {
            if matches!(pending, Pending::Sync) {
                // Never answered while the COPY runs: the server ignores it.
                self.copy_in_mixed |= self.copy_data_sent;
                return;
            }
            self.copy_in_mixed = true;
        }
        if self.discarding {
            if !matches!(pending, Pending::Sync) {
                // A Query too: no ReadyForQuery will answer it.
                self.discarded.push(pending);
                return;
            }
            self.discarding = false;
        }
        if pending.is_sync_point() {
            self.syncs_sent += 1;
        }
        self.pending.push_back(pending);
    }

    /// Whether the server is discarding what the client sends (until its Sync).
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// Whether everything sent so far ends in a sync point and the server
    /// is neither taking COPY data nor discarding: a Sync the gateway adds
    /// now ends no batch of the client's (no implicit transaction commits
    /// early, no unnamed portal goes, no discarding stops short).
    pub fn between_batches(&self) -> bool {
        !self.copy_in && !self.discarding && self.pending.back().is_none_or(Pending::is_sync_point)
    }

    /// Entries the server discarded unseen, oldest first.
    pub fn take_discarded(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.discarded)
    }

    /// The client sent CopyData. Where no COPY could take it (nothing
    /// pending, or the server discarding up to a Sync) it is ignored by the
    /// server, and here (found in review: a flag left set by data sent after
    /// a failed COPY made the next COPY's first Sync count as after data).
    pub fn copy_data(&mut self) {
        if self.copy_in {
            self.copy_data_sent = true;
        } else if !self.discarding && !matches!(self.pending.back(), None | Some(Pending::CopyData))
        {
            self.pending.push_back(Pending::CopyData);
        }
    }

    /// The server's CommandComplete or ErrorResponse (`failed`). `Err` when
    /// it is the one ending a COPY FROM STDIN that failed while the client
    /// had sent messages whose answers now cannot be told apart
    /// (`copy_in_mixed`): the session must end.
    pub fn copy_outcome(&mut self, failed: bool) -> Result<(), OutOfStep> {
        if !std::mem::take(&mut self.copy_outcome_pending) {
            return Ok(());
        }
        let mixed = std::mem::take(&mut self.copy_in_mixed);
        self.copy_data_sent = false;
        if failed && mixed {
            Err(OutOfStep)
        } else {
            Ok(())
        }
    }

    /// The client sent CopyDone or CopyFail.
    pub fn copy_end(&mut self) {
        if self.discarding {
            return;
        }
        if self.copy_in {
            self.copy_in = false;
        } else if self
            .pending
            .iter()
            .any(|p| matches!(p, Pending::Query(_) | Pending::Execute { .. }))
        {
            // Sent ahead of the server's CopyInResponse (pipelined), or
            // stray: only a statement still to run could be a COPY.
            self.pending.push_back(Pending::CopyEnd);
        }
    }

    /// CopyInResponse: the front entry's COPY takes data now. The server
    /// ignores every Sync the client sent after it until its CopyDone or
    /// CopyFail, so those are dropped here (and, if the client has not
    /// ended the COPY yet, the ones still to come).
    pub fn copy_in_started(&mut self) {
        self.copy_outcome_pending = true;
        self.copy_in_mixed = false;
        self.copy_data_sent = false;
        let mut i = 1;
        let mut sync_points = 0;
        while i < self.pending.len() {
            match self.pending[i] {
                Pending::CopyEnd => {
                    self.pending.remove(i);
                    return;
                }
                Pending::CopyData => {
                    self.pending.remove(i);
                    self.copy_data_sent = true;
                }
                Pending::Sync => {
                    // Before any data (tokio-postgres: Bind, Execute, Sync,
                    // then the data) the server ignores it unless the COPY
                    // fails before reading input at all (a trigger, a
                    // timeout): a case left to the strict answer checks.
                    self.copy_in_mixed |= self.copy_data_sent;
                    // The (syncs_done + ordinal)-th sync point never comes.
                    let never = self.syncs_done + sync_points + 1;
                    self.pending.remove(i);
                    self.syncs_sent -= 1;
                    for d in &mut self.denials {
                        if d.sync_point >= never {
                            d.sync_point -= 1;
                        }
                    }
                }
                ref p => {
                    // Anything but COPY data fails the COPY.
                    self.copy_in_mixed = true;
                    sync_points += u64::from(p.is_sync_point());
                    i += 1;
                }
            }
        }
        self.copy_in = true;
    }

    /// After an ErrorResponse to an extended-protocol message the server
    /// discards every message up to the next Sync, simple Queries
    /// included: drop what it will never answer (the Sync itself stays).
    /// An error answering a Query or a Sync skips nothing. Either way the
    /// server is out of copy-in mode.
    pub fn skip_to_sync(&mut self) -> Vec<Pending> {
        self.copy_in = false;
        let mut skipped = Vec::new();
        if self.pending.front().is_some_and(Pending::is_sync_point) {
            return skipped;
        }
        while let Some(front) = self.pending.front() {
            if front.is_sync() {
                break;
            }
            if front.is_sync_point() {
                // A discarded Query: no ReadyForQuery will count it.
                self.syncs_done += 1;
            }
            skipped.extend(self.pending.pop_front());
        }
        // No Sync sent yet: what the client sends next is discarded too,
        // up to its Sync, and must not wait for answers.
        self.discarding = self.pending.is_empty();
        skipped
    }

    /// Leading [`Pending::CopyEnd`] and [`Pending::CopyData`] entries: no
    /// COPY claimed them, and no response answers them.
    pub fn drop_stray_copy_ends(&mut self) {
        while matches!(
            self.pending.front(),
            Some(Pending::CopyEnd | Pending::CopyData)
        ) {
            self.pending.pop_front();
        }
    }

    /// ReadyForQuery: the front sync point is done; denials of that batch
    /// that never met their error (e.g. the transaction was already
    /// aborted) are forgotten. `Err` when the front entry is not a sync
    /// point, or nothing is pending: every message before one is answered
    /// (or skipped after an error) before its ReadyForQuery, so the server
    /// and the gateway no longer agree on what is answered, and the
    /// session must end.
    pub fn ready(&mut self) -> Result<Pending, OutOfStep> {
        self.discarding = false;
        self.syncs_done += 1;
        let done = self.syncs_done;
        self.denials.retain(|d| d.sync_point > done);
        match self.pending.front() {
            Some(front) if front.is_sync_point() => self.pending.pop_front().ok_or(OutOfStep),
            _ => Err(OutOfStep),
        }
    }

    /// The error for a denial whose nonce appears in `message`, if any.
    pub fn take_denial(&mut self, message: &str) -> Option<Bytes> {
        let i = self
            .denials
            .iter()
            .position(|d| message.contains(&d.nonce))?;
        self.denials.remove(i).map(|d| d.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_skips_to_sync_and_ready_pops_it() {
        let mut t = Tracker::default();
        t.push(Pending::Parse(None));
        t.push(Pending::Bind(None));
        t.push(Pending::Execute {
            portal: String::new(),
            running: None,
            plan: None,
            ran: None,
        });
        t.push(Pending::Sync);
        t.pending.pop_front(); // ParseComplete
        let skipped = t.skip_to_sync();
        assert_eq!(skipped.len(), 2);
        assert!(matches!(t.ready(), Ok(Pending::Sync)));
        assert!(t.pending.is_empty());
    }

    fn execute() -> Pending {
        Pending::Execute {
            portal: String::new(),
            running: None,
            plan: None,
            ran: None,
        }
    }

    fn tags(t: &Tracker) -> String {
        t.pending
            .iter()
            .map(|p| match p {
                Pending::Query(_) => 'Q',
                Pending::Parse(_) => 'P',
                Pending::Bind(_) => 'B',
                Pending::Describe { .. } => 'D',
                Pending::Execute { .. } => 'E',
                Pending::Close(_) | Pending::ClosePortal(_) => 'C',
                Pending::Sync => 'S',
                Pending::Own(_) => 'o',
                Pending::CopyEnd => 'c',
                Pending::CopyData => 'd',
            })
            .collect()
    }

    #[test]
    fn an_extended_error_discards_queries_up_to_the_sync() {
        let mut t = Tracker::default();
        t.push(execute());
        t.push(Pending::Query(None));
        t.push(Pending::Sync);
        t.push(Pending::Query(None));
        let skipped = t.skip_to_sync();
        assert_eq!(skipped.len(), 2);
        assert_eq!(tags(&t), "SQ");
        // The discarded Query counts as done: the next ReadyForQuery is the Sync's.
        assert!(matches!(t.ready(), Ok(Pending::Sync)));
        assert_eq!(t.syncs_done + 1, t.syncs_sent);
    }

    /// Parse fails after a Flush, with no Sync sent: what the client sends
    /// next is discarded by the server up to its Sync, so it must not wait
    /// for answers (a later ReadyForQuery would complete the wrong entry,
    /// and a later COPY would take a skipped statement's layout).
    #[test]
    fn messages_sent_after_an_extended_error_are_discarded_up_to_the_sync() {
        let mut t = Tracker::default();
        t.push(Pending::Parse(None));
        assert_eq!(t.skip_to_sync().len(), 1);
        t.push(Pending::Bind(Some(("p".into(), None))));
        t.push(Pending::Query(None));
        t.push(Pending::Query(None));
        t.copy_end();
        assert_eq!(tags(&t), "", "nothing waits for an answer");
        assert_eq!(t.take_discarded().len(), 3);
        t.push(Pending::Sync);
        assert_eq!(tags(&t), "S");
        assert_eq!(t.syncs_sent, t.syncs_done + 1, "only the Sync is answered");
        assert!(matches!(t.ready(), Ok(Pending::Sync)));
        // After the Sync the server reads messages again.
        t.push(Pending::Query(None));
        assert_eq!(tags(&t), "Q");
        assert!(t.take_discarded().is_empty());
    }

    /// A Sync already sent ends the discarding: what comes after it runs.
    #[test]
    fn an_extended_error_with_a_sync_pending_discards_nothing_later() {
        let mut t = Tracker::default();
        t.push(Pending::Parse(None));
        t.push(Pending::Sync);
        assert_eq!(t.skip_to_sync().len(), 1);
        t.push(Pending::Query(None));
        assert_eq!(tags(&t), "SQ");
        assert!(t.take_discarded().is_empty());
    }

    #[test]
    fn an_error_answering_a_query_skips_nothing() {
        let mut t = Tracker::default();
        t.push(Pending::Query(None));
        t.push(Pending::Parse(None));
        t.push(Pending::Sync);
        assert!(t.skip_to_sync().is_empty());
        assert_eq!(tags(&t), "QPS");
    }

    #[test]
    fn syncs_sent_during_copy_in_are_never_answered() {
        // tokio-postgres: Bind, Execute, Sync; the data; CopyDone, Sync.
        let mut t = Tracker::default();
        t.push(Pending::Bind(None));
        t.push(execute());
        t.push(Pending::Sync);
        t.pending.pop_front(); // BindComplete
        t.copy_in_started();
        assert_eq!(tags(&t), "E");
        t.push(Pending::Sync); // still in copy-in mode: ignored by the server
        assert_eq!(tags(&t), "E");
        t.copy_end();
        t.push(Pending::Sync);
        assert_eq!(tags(&t), "ES");
        assert_eq!(t.syncs_sent, 1);
    }

    #[test]
    fn a_pipelined_copy_end_bounds_the_ignored_syncs() {
        let mut t = Tracker::default();
        t.push(execute());
        t.push(Pending::Sync);
        t.copy_end(); // sent before the server's CopyInResponse
        t.push(Pending::Sync);
        t.push(Pending::Query(None));
        assert_eq!(tags(&t), "EScSQ");
        t.copy_in_started();
        assert_eq!(tags(&t), "ESQ");
        assert_eq!(t.syncs_sent, 2);
        // Not in copy-in mode any more: later Syncs count.
        t.push(Pending::Sync);
        assert_eq!(tags(&t), "ESQS");
    }

    #[test]
    fn stray_copy_ends_are_not_tracked() {
        let mut t = Tracker::default();
        t.copy_end();
        assert_eq!(tags(&t), "");
        t.push(execute());
        t.copy_end();
        t.pending.pop_front(); // CommandComplete: it was not a COPY
        t.drop_stray_copy_ends();
        assert_eq!(tags(&t), "");
    }

    #[test]
    fn an_error_in_copy_in_mode_ends_it() {
        let mut t = Tracker::default();
        t.push(execute());
        t.copy_in_started();
        t.skip_to_sync();
        t.push(Pending::Sync);
        assert_eq!(tags(&t), "S");
    }

    /// Found in review: a COPY that fails on its data leaves copy-in mode
    /// at once, and the server answers the Syncs sent after that data
    /// after all. Only a failure with such messages sent ends the session.
    #[test]
    fn a_copy_failing_after_syncs_sent_into_it_cannot_be_followed() {
        // psql-like: the data, then a Sync and more, into the COPY.
        let mut t = Tracker::default();
        t.push(Pending::Query(None));
        t.copy_in_started();
        t.copy_data();
        t.push(Pending::Sync);
        t.push(Pending::Bind(None));
        assert_eq!(t.copy_outcome(true), Err(OutOfStep));
        // The same, pipelined ahead of the CopyInResponse.
        let mut t = Tracker::default();
        t.push(Pending::Query(None));
        t.copy_data();
        t.push(Pending::Sync);
        t.copy_in_started();
        assert_eq!(tags(&t), "Q");
        assert_eq!(t.copy_outcome(true), Err(OutOfStep));
        // Had the COPY succeeded, the server ignored them as expected.
        let mut t = Tracker::default();
        t.push(Pending::Query(None));
        t.copy_in_started();
        t.copy_data();
        t.push(Pending::Sync);
        assert_eq!(t.copy_outcome(false), Ok(()));
        // tokio-postgres: its Sync comes before any data, and the server
        // surely ignored it; a failure is followed as before.
        let mut t = Tracker::default();
        t.push(execute());
        t.push(Pending::Sync);
        t.copy_in_started();
        t.copy_data();
        t.copy_end();
        t.push(Pending::Sync);
        assert_eq!(t.copy_outcome(true), Ok(()));
        assert_eq!(tags(&t), "ES");
        // Only the COPY's own outcome counts.
        assert_eq!(t.copy_outcome(true), Ok(()));
    }

    /// Found in review: COPY data the client kept sending after the server
    /// failed the COPY left a flag set, and the next COPY's first Sync
    /// (sent before its data) then counted as sent after data; and a
    /// pipelined Sync before the data counted as after it.
    #[test]
    fn only_syncs_after_data_make_a_failed_copy_unfollowable() {
        let mut t = Tracker::default();
        driver_copy_started(&mut t);
        t.copy_data();
        assert_eq!(t.copy_outcome(true), Ok(()));
        t.skip_to_sync();
        t.copy_data(); // still streaming: the server discards it
        t.copy_end();
        t.push(Pending::Sync);
        assert!(matches!(t.ready(), Ok(Pending::Sync)));
        // The next COPY, the same way.
        driver_copy_started(&mut t);
        t.copy_data();
        assert_eq!(t.copy_outcome(true), Ok(()));

        // All pipelined ahead of the CopyInResponse: Sync, data, CopyDone, Sync.
        let mut t = Tracker::default();
        t.push(execute());
        t.push(Pending::Sync);
        t.copy_data();
        t.copy_data();
        t.copy_end();
        t.push(Pending::Sync);
        assert_eq!(tags(&t), "ESdcS");
        t.copy_in_started();
        assert_eq!(tags(&t), "ES");
        assert_eq!(t.copy_outcome(true), Ok(()));
    }

    /// tokio-postgres: Bind, Execute, Sync; BindComplete; CopyInResponse.
    fn driver_copy_started(t: &mut Tracker) {
        t.push(Pending::Bind(None));
        t.push(execute());
        t.push(Pending::Sync);
        t.pending.pop_front();
        t.copy_in_started();
    }

    #[test]
    fn a_ready_for_query_before_its_sync_point_is_out_of_step() {
        let mut t = Tracker::default();
        t.push(Pending::Parse(None));
        t.push(Pending::Sync);
        assert!(matches!(t.ready(), Err(OutOfStep)));
        t.pending.pop_front(); // ParseComplete
        assert!(matches!(t.ready(), Ok(Pending::Sync)));
        // A ReadyForQuery nothing asked for.
        assert!(matches!(t.ready(), Err(OutOfStep)));
    }

    #[test]
    fn denials_after_an_ignored_sync_keep_their_batch() {
        let mut t = Tracker::default();
        t.push(execute());
        t.push(Pending::Sync); // ignored (copy-in), sync point 1 on paper
        t.copy_end();
        t.push(Pending::Parse(None));
        t.push(Pending::Sync); // sync point 2 on paper, 1 in fact
        t.denials.push_back(Denial {
            nonce: "n".into(),
            error: Bytes::new(),
            sync_point: t.syncs_sent,
        });
        t.copy_in_started();
        assert_eq!(tags(&t), "EPS");
        assert_eq!(t.denials[0].sync_point, 1);
        assert_eq!(t.syncs_sent, 1);
    }

    fn layout(columns: usize) -> Arc<Layout> {
        Arc::new(Layout {
            columns: (0..columns).map(|i| format!("c{i}")).collect(),
            plan: None,
        })
    }

    fn reading(rule: usize) -> Reading {
        Reading {
            rule,
            changes_data: false,
        }
    }

    #[test]
    fn layout_cache_finds_exact_bytes_only() {
        let mut cache = LayoutCache::default();
        let first = layout(1);
        cache.insert(None, b"T-one", Arc::clone(&first));
        let key = |k: &'static [u8]| Bytes::from_static(k);
        assert!(Arc::ptr_eq(
            &cache.get(None, &key(b"T-one")).unwrap(),
            &first
        ));
        assert!(cache.get(None, &key(b"T-on")).is_none());
        assert!(cache.get(None, &key(b"T-one!")).is_none());
        // Planned for a statement reading no ruled table: not the plan of
        // one that does, nor of one whose unsourced columns take another rule.
        assert!(cache.get(Some(reading(0)), &key(b"T-one")).is_none());
        let ruled = layout(1);
        cache.insert(Some(reading(0)), b"T-one", Arc::clone(&ruled));
        assert!(Arc::ptr_eq(
            &cache.get(Some(reading(0)), &key(b"T-one")).unwrap(),
            &ruled
        ));
        assert!(cache.get(Some(reading(1)), &key(b"T-one")).is_none());
        assert!(Arc::ptr_eq(
            &cache.get(None, &key(b"T-one")).unwrap(),
            &first
        ));
    }

    #[test]
    fn a_cached_layout_is_planned_again_after_the_catalogs_max_age() {
        let mut cache = LayoutCache::default();
        let first = layout(1);
        cache.insert(None, b"T-one", Arc::clone(&first));
        let key = Bytes::from_static(b"T-one");
        let max_age = crate::protocols::postgres::catalog::MAX_AGE;
        let soon = Instant::now() + max_age / 2;
        assert!(Arc::ptr_eq(
            &cache.get_at(None, &key, soon).unwrap(),
            &first
        ));
        assert!(cache.get_at(None, &key, soon + max_age).is_none());
        // Planned again, it is used again.
        let again = layout(1);
        cache.insert(None, b"T-one", Arc::clone(&again));
        assert!(Arc::ptr_eq(&cache.get(None, &key).unwrap(), &again));
    }

    #[test]
    fn layout_cache_is_bounded_by_count_and_bytes() {
        let mut cache = LayoutCache::default();
        for i in 0..LayoutCache::MAX_LAYOUTS + 10 {
            cache.insert(None, format!("T{i}").as_bytes(), layout(1));
            assert!(cache.len() <= LayoutCache::MAX_LAYOUTS);
        }
        assert!(
            cache
                .get(
                    None,
                    &Bytes::from(format!("T{}", LayoutCache::MAX_LAYOUTS + 9))
                )
                .is_some()
        );

        let mut cache = LayoutCache::default();
        let wide = vec![b'x'; LayoutCache::MAX_BYTES / 5];
        for i in 0..10u8 {
            let mut key = wide.clone();
            key[0] = i;
            cache.insert(None, &key, layout(1));
            assert!(cache.bytes <= LayoutCache::MAX_BYTES, "{}", cache.bytes);
        }
        assert!(cache.len() < 10);
        // Too large for the budget on its own: used, never kept.
        let mut cache = LayoutCache::default();
        cache.insert(None, &vec![b'y'; LayoutCache::MAX_BYTES], layout(1));
        assert!(cache.is_empty());
    }

    #[test]
    fn denials_match_by_nonce_and_expire_at_their_sync_point() {
        let mut t = Tracker::default();
        t.push(Pending::Query(None));
        t.denials.push_back(Denial {
            nonce: "n1".into(),
            error: Bytes::from_static(b"x"),
            sync_point: 1,
        });
        assert!(t.take_denial("column \"n2\" does not exist").is_none());
        assert!(matches!(t.ready(), Ok(Pending::Query(None))));
        assert!(t.denials.is_empty());
        t.denials.push_back(Denial {
            nonce: "n3".into(),
            error: Bytes::from_static(b"y"),
            sync_point: 2,
        });
        assert_eq!(
            t.take_denial("column \"n3\" does not exist").as_deref(),
            Some(&b"y"[..])
        );
    }

    /// A COPY run as its query: the gateway's own answers are skipped with
    /// the rest after an error, up to the Sync (the gateway's, before a
    /// simple Query, is a sync point like the Query it stands for).
    #[test]
    fn a_copy_run_as_a_query_skips_to_its_sync() {
        let mut t = Tracker::default();
        t.push(Pending::Own(3));
        t.push(execute());
        t.push(Pending::Own(2));
        t.push(Pending::Sync);
        assert!(t.between_batches());
        assert_eq!(t.skip_to_sync().len(), 3);
        assert_eq!(tags(&t), "S");
        assert!(matches!(t.ready(), Ok(Pending::Sync)));
        assert_eq!(t.syncs_sent, t.syncs_done);
    }
}
