//! Prepared statements by name, as the server has them. SQL `PREPARE` and
//! the protocol's Parse share one namespace on the server, so `EXECUTE x`
//! can run a Parse'd statement and a Bind can bind a `PREPARE`d one: both
//! are decided by what the name holds, under the policy of the moment
//! (a reload may have revoked what was allowed when it was prepared).
//!
//! The session's view follows the server's answers: a `PREPARE` counts
//! from its CommandComplete, a Parse or Close the server rejects or skips
//! is undone ([`Undo`]), and `DEALLOCATE` / `DISCARD ALL` forget names
//! once they completed.
use std::collections::HashSet;

use super::*;
use crate::protocols::postgres::{
    classify::{Flag, Prepared, StatementClass},
    tracker::{NamedStatement, SqlPrepared, Undo},
};

/// The undo of a Parse: the unnamed statement is dropped even when a
/// Parse of it fails, so only a named one comes back.
pub(super) fn parse_undo(name: String, previous: Option<PreparedStatement>) -> Option<Undo> {
    let protocol = if name.is_empty() { None } else { previous };
    Some(Undo {
        name,
        protocol,
        sql: None,
    })
}

impl Session<'_> {
    /// Whether the server will reject a Parse of `name` because a
    /// statement of that name exists (only the unnamed one is replaced).
    /// Messages pipelined after it are decided before its error comes
    /// back, so they must see the statement that stays.
    ///
    /// A name a statement on its way may have changed counts as taken: if
    /// the server keeps its statement (the PREPARE failed, say), a Parse
    /// taken to define it would have later Binds decided by a text the
    /// server does not run. A Bind of it is refused until the answer.
    pub(super) fn parse_would_clash(&self, name: &str) -> bool {
        !name.is_empty()
            && (self.statements.contains_key(name)
                || self.sql_prepared.contains_key(name)
                || self.all_names_uncertain
                || self.uncertain_names.contains(name))
    }

    /// A statement text on its way to the server: every name its PREPAREs
    /// and DEALLOCATEs touch (all of them for `DEALLOCATE ALL` and
    /// `DISCARD ALL`) is forgotten now, so messages sent before the
    /// answer comes back find it unknown and are refused, rather than
    /// decided by what the name held before. A PREPARE's name comes back
    /// with its CommandComplete; what a statement that fails took comes
    /// back with its error ([`Session::names_not_changed`]).
    pub(super) fn names_in_flight(&mut self, running: &mut Running) {
        // Split borrows: the statements are read while `names_taken` grows,
        // with no Arc clone per statement sent.
        let Running {
            classification: Some(classification),
            names_taken,
            ..
        } = running
        else {
            return;
        };
        for (i, statement) in classification.statements.iter().enumerate() {
            match &statement.prepared {
                Some(Prepared::Define(name) | Prepared::Deallocate(Some(name))) => {
                    names_taken.push((i, self.close_statement(name)));
                    self.uncertain_names.insert(name.clone());
                }
                _ if forgets_all(statement) => {
                    let named: Vec<String> = self
                        .statements
                        .keys()
                        .chain(self.sql_prepared.keys())
                        .filter(|n| !n.is_empty())
                        .cloned()
                        .collect();
                    for name in named {
                        names_taken.push((i, self.close_statement(&name)));
                    }
                    self.all_names_uncertain = true;
                }
                _ => {}
            }
        }
    }

    /// `running` failed: its statements from the one that failed on did
    /// not run, so the names they took are the server's as before. A name
    /// a statement before them changed (or every name, after a completed
    /// `DEALLOCATE ALL`) is as that statement left it.
    pub(super) fn names_not_changed(&mut self, running: &mut Running) {
        let taken = std::mem::take(&mut running.names_taken);
        if taken.is_empty() {
            return;
        }
        let done = running.prepared_done;
        let all_done = running
            .classification
            .as_ref()
            .is_some_and(|c| c.statements.iter().take(done).any(forgets_all));
        let settled: Vec<String> = taken
            .iter()
            .filter(|(i, _)| *i < done)
            .map(|(_, u)| u.name.clone())
            .collect();
        // Latest first, so a name taken twice ends as before both.
        for (i, undo) in taken.into_iter().rev() {
            self.uncertain_names.remove(&undo.name);
            if i >= done && !all_done && !settled.contains(&undo.name) {
                self.undo(undo);
            }
        }
        self.all_names_uncertain = false;
    }

    /// `DEALLOCATE ALL` and `DISCARD ALL` drop every named statement;
    /// the unnamed one lives apart on the server and stays.
    fn forget_all(&mut self) {
        self.statements.retain(|name, _| name.is_empty());
        self.sql_prepared.clear();
    }

    /// Puts a name back as it was before a message the server did not
    /// carry out.
    pub(super) fn undo(&mut self, undo: Undo) {
        match undo.protocol {
            Some(statement) => {
                self.statements.insert(undo.name.clone(), statement);
            }
            None => {
                self.statements.remove(&undo.name);
            }
        }
        if let Some(sql) = undo.sql {
            self.sql_prepared.insert(undo.name, sql);
        }
    }

    /// A Close of statement `name`: forgotten now, back if skipped.
    pub(super) fn close_statement(&mut self, name: &str) -> Undo {
        Undo {
            name: name.to_owned(),
            protocol: self.statements.remove(name),
            sql: self.sql_prepared.remove(name),
        }
    }

    /// What statement `name` holds, for a Bind or an Execute of it:
    /// `(sql, classification, shown, approved)`.
    pub(super) fn named_statement(&self, name: &str) -> Option<NamedStatement> {
        if let Some(s) = self.statements.get(name) {
            let c = s.classification.clone()?;
            return Some((s.sql.clone(), c, s.shown.clone(), s.approved.clone()));
        }
        let p = self.sql_prepared.get(name)?;
        Some((
            p.sql.clone(),
            p.classification.clone(),
            p.shown.clone(),
            p.approved.clone(),
        ))
    }

    /// `classification` with what each `EXECUTE name` in it runs added as
    /// statements of their own, so policy decides those too. A name that
    /// was approved when prepared is left out unless policy now denies it
    /// outright. `Err`: a name this session never prepared (the server
    /// would fail it too; nothing unknown is let through).
    pub(super) fn resolve_executes(
        &self,
        classification: &Arc<Classification>,
    ) -> Result<Arc<Classification>, String> {
        if !executes(classification) {
            return Ok(Arc::clone(classification));
        }
        let mut resolved = classification.statements.clone();
        // `PREPARE x AS …; EXECUTE x` in one string: the PREPARE before it
        // in the same string, which runs first.
        let mut defined_at: HashMap<&str, usize> = HashMap::new();
        // Each name is resolved once per string (per PREPARE of it, and
        // per EXPLAIN ANALYZE or not): `EXECUTE x` repeated 100,000 times
        // adds what x runs once, not 100,000 copies of it.
        let mut seen: HashSet<(&str, Option<usize>, bool)> = HashSet::new();
        for (i, outer) in classification.statements.iter().enumerate() {
            let name = match &outer.prepared {
                Some(Prepared::Define(name)) => {
                    defined_at.insert(name, i);
                    continue;
                }
                Some(Prepared::Execute(name)) => name.as_str(),
                _ => continue,
            };
            let earlier_at = defined_at.get(name).copied();
            if !seen.insert((name, earlier_at, outer.command == "EXPLAIN ANALYZE")) {
                continue;
            }
            let earlier = earlier_at.map(|at| &classification.statements[at]);
            let (stored, approved) = match (earlier, self.named_statement(name)) {
                (Some(define), _) => {
                    // What it defines, not the definition itself.
                    let mut inner = define.clone();
                    inner.prepared = None;
                    (
                        Arc::new(Classification {
                            statements: vec![inner],
                        }),
                        None,
                    )
                }
                (None, Some((_, stored, _, approved))) => (stored, approved),
                (None, None) => {
                    return Err(format!(
                        "EXECUTE {name}: no statement of that name was prepared in this session"
                    ));
                }
            };
            // The session follows names from its own PREPARE and
            // DEALLOCATE statements; one run through EXECUTE (of a
            // Parse'd utility statement) would change names unseen, and
            // an EXECUTE inside runs its name as it is now, not as this
            // stored resolution says. Checked before an approval's
            // shortcut (found in review: approved, a nested EXECUTE ran
            // a name re-prepared since).
            if let Some(inner) = stored.statements.iter().find(|s| s.prepared.is_some()) {
                return Err(format!(
                    "EXECUTE {name} runs a {}, which chokepoint does not follow through EXECUTE: send it directly",
                    inner.command
                ));
            }
            // Approved when prepared, and nothing but that rule's hold
            // stands in its way now.
            if let Some(approved) = approved {
                let now = self.rules.decide_all(&stored, &self.search_path);
                if now.verdict == StatementVerdict::Allow
                    || (now.verdict == StatementVerdict::Approve
                        && approved.covers(&now.rule, SystemTime::now()))
                {
                    continue;
                }
            }
            for inner in &stored.statements {
                let mut inner = inner.clone();
                inner.prepared = None;
                // EXECUTE binds the parameters to values the server
                // computes (found in review: a Parse'd `SELECT
                // set_config('my.p', $1, false)` run by `EXECUTE s0(…)`).
                if inner
                    .functions
                    .iter()
                    .any(|f| f.name.eq_ignore_ascii_case("set_config"))
                {
                    inner.computed_setting = true;
                }
                if outer.command == "EXPLAIN ANALYZE"
                    && inner.class != StatementClass::Read
                    && !inner.flags.contains(&Flag::ExplainAnalyzeWrite)
                {
                    inner.flags.push(Flag::ExplainAnalyzeWrite);
                    inner.flags.sort();
                }
                resolved.push(inner);
            }
        }
        Ok(Arc::new(Classification {
            statements: resolved,
        }))
    }

    /// A CommandComplete: `PREPARE`, `DEALLOCATE` and `DISCARD ALL` change
    /// the names the server holds once they completed.
    pub(super) fn prepared_completed(&mut self, body: &[u8]) {
        let tag = body.strip_suffix(&[0]).unwrap_or(body);
        let defines = match tag {
            b"PREPARE" => true,
            b"DEALLOCATE" | b"DEALLOCATE ALL" => false,
            b"DISCARD ALL" => {
                self.forget_all();
                self.uncertain_names.clear();
                self.all_names_uncertain = false;
                if let Some(running) = self.front_running()
                    && let Some(c) = running.classification.clone()
                    && let Some(i) = c
                        .statements
                        .iter()
                        .skip(running.prepared_done)
                        .position(forgets_all)
                {
                    // Counted like a DEALLOCATE ALL: what it took is settled.
                    running.prepared_done += i + 1;
                }
                return;
            }
            _ => return,
        };
        let Some(running) = self.front_running() else {
            return;
        };
        let Some(classification) = running.classification.clone() else {
            return;
        };
        // Statements complete in order: this answers the first PREPARE
        // or DEALLOCATE not answered yet.
        let Some((i, statement)) = classification
            .statements
            .iter()
            .enumerate()
            .skip(running.prepared_done)
            .find(|(_, s)| {
                matches!(
                    s.prepared,
                    Some(Prepared::Define(_) | Prepared::Deallocate(_))
                )
            })
        else {
            return;
        };
        running.prepared_done = i + 1;
        // What it defines: its class, flags and tables, not the PREPARE.
        let mut defined = statement.clone();
        defined.prepared = None;
        let entry = SqlPrepared {
            classification: Arc::new(Classification {
                statements: vec![defined],
            }),
            sql: running.sql.clone(),
            shown: running.shown.clone(),
            approved: running.approved.clone(),
        };
        match &statement.prepared {
            Some(Prepared::Define(name) | Prepared::Deallocate(Some(name))) => {
                self.uncertain_names.remove(name);
            }
            Some(Prepared::Deallocate(None)) => {
                self.uncertain_names.clear();
                self.all_names_uncertain = false;
            }
            _ => {}
        }
        match (&statement.prepared, defines) {
            (Some(Prepared::Define(name)), true) => {
                // The server had no statement of this name, or the
                // PREPARE would have failed: anything kept here is stale.
                self.statements.remove(name);
                self.sql_prepared.insert(name.clone(), entry);
            }
            (Some(Prepared::Deallocate(Some(name))), false) => {
                self.statements.remove(name);
                self.sql_prepared.remove(name);
            }
            (Some(Prepared::Deallocate(None)), false) => self.forget_all(),
            _ => {}
        }
    }
}

/// Whether `classification` runs a prepared statement by name (`EXECUTE`).
pub(super) fn executes(classification: &Classification) -> bool {
    classification
        .statements
        .iter()
        .any(|s| matches!(s.prepared, Some(Prepared::Execute(_))))
}

/// `DEALLOCATE ALL`, or `DISCARD ALL` (which also drops every name).
fn forgets_all(statement: &crate::protocols::postgres::classify::Statement) -> bool {
    matches!(statement.prepared, Some(Prepared::Deallocate(None)))
        || (statement.command == "DISCARD" && statement.has_flag(Flag::SetRole))
}
