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
    pub(super) fn parse_would_clash(&self, name: &str) -> bool {
        !name.is_empty()
            && (self.statements.contains_key(name) || self.sql_prepared.contains_key(name))
    }

    /// A statement text on its way to the server: every name its PREPAREs
    /// and DEALLOCATEs touch (all of them for `DEALLOCATE ALL` and
    /// `DISCARD ALL`) is forgotten now, so messages sent before the
    /// answer comes back find it unknown and are refused, rather than
    /// decided by what the name held before. A PREPARE's name comes back
    /// with its CommandComplete.
    pub(super) fn names_in_flight(&mut self, running: &Running) {
        let Some(classification) = &running.classification else {
            return;
        };
        for statement in &classification.statements {
            match &statement.prepared {
                Some(Prepared::Define(name) | Prepared::Deallocate(Some(name))) => {
                    self.statements.remove(name);
                    self.sql_prepared.remove(name);
                }
                Some(Prepared::Deallocate(None)) => self.forget_all(),
                _ if statement.command == "DISCARD" && statement.has_flag(Flag::SetRole) => {
                    self.forget_all();
                }
                _ => {}
            }
        }
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
        let executes = || {
            classification
                .statements
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match &s.prepared {
                    Some(Prepared::Execute(name)) => Some((i, s, name)),
                    _ => None,
                })
        };
        if executes().next().is_none() {
            return Ok(Arc::clone(classification));
        }
        let mut resolved = classification.statements.clone();
        for (i, outer, name) in executes() {
            // `PREPARE x AS …; EXECUTE x` in one string: the PREPARE before
            // it in the same string, which runs first.
            let earlier = classification.statements[..i]
                .iter()
                .rev()
                .find(|s| matches!(&s.prepared, Some(Prepared::Define(n)) if n == name));
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
            // Approved when prepared, and nothing but that rule's hold
            // stands in its way now.
            if let Some(rule) = approved {
                let now = self.rules.decide_all(&stored);
                if now.verdict == StatementVerdict::Allow
                    || (now.verdict == StatementVerdict::Approve && *now.rule == *rule)
                {
                    continue;
                }
            }
            for inner in &stored.statements {
                // The session follows names from its own PREPARE and
                // DEALLOCATE statements; one run through EXECUTE (of a
                // Parse'd utility statement) would change names unseen.
                if inner.prepared.is_some() {
                    return Err(format!(
                        "EXECUTE {name} runs a {}, which chokepoint does not follow through EXECUTE: send it directly",
                        inner.command
                    ));
                }
                let mut inner = inner.clone();
                inner.prepared = None;
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
