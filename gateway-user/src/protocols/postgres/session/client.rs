//! The client's side of the loop: each frontend message is parsed,
//! decided by the statement policy, then forwarded, denied or held.
use super::prepared::executes;
use super::*;
use crate::protocols::postgres::{
    classify::{Flag, Prepared, StatementClass},
    tracker::NamedStatement,
};

impl Session<'_> {
    /// One client message: decide, then forward it or its denial.
    pub(super) async fn on_client(&mut self, frame: Frame) -> Step {
        self.refresh_policy();
        let message = match FrontendMessage::parse(&frame) {
            Ok(m) => m,
            Err(e) => return self.protocol_violation(&e),
        };
        if let Some(name) = names(&message).into_iter().find(|n| is_reserved(n)) {
            let error = deny_error(
                "reserved-name",
                &format!(
                    "the name {name:?} is reserved: names starting with {RESERVED_PREFIX} belong to the gateway"
                ),
                "",
            );
            self.refuse_execute(error);
            self.settle_discarded();
            return Step::Continue;
        }
        if overlong_name(&message).is_some() {
            // The server compares only the first MAX_NAME bytes, so a
            // longer name could reach another statement than the one
            // decided.
            return self.protocol_violation(&CodecError::Malformed {
                what: "a statement or portal name longer than 63 bytes (the server would compare only the first 63)",
            });
        }
        match message {
            FrontendMessage::Query(q) => {
                let sql: Arc<str> = Arc::from(q.sql);
                match self.decide_sql(&sql) {
                    Decided::Run(running) if let Some(why) = self.prepares_too_much(&running) => {
                        self.refuse(HeldKind::Query, limit_error(&why))
                    }
                    Decided::Run(running) => self.release(&frame, HeldKind::Query, running, None),
                    Decided::Refuse(error) => self.refuse(HeldKind::Query, error),
                    Decided::Hold(ask) => self.hold(frame, HeldKind::Query, *ask).await,
                }
            }
            FrontendMessage::Parse(p) => {
                let sql: Arc<str> = Arc::from(p.sql);
                let kind = HeldKind::Parse {
                    name: p.name.to_owned(),
                };
                if let Some(why) = self.prepared_limit(&[(p.name, sql.len())]) {
                    self.refuse(kind, limit_error(&why));
                } else {
                    match self.decide_sql(&sql) {
                        Decided::Run(running) => self.release(&frame, kind, running, None),
                        Decided::Refuse(error) => self.refuse(kind, error),
                        Decided::Hold(ask) => self.hold(frame, kind, *ask).await,
                    }
                }
            }
            FrontendMessage::Bind(b) => {
                // Decided again under the session's current rules: a
                // reload may have revoked what it was prepared under. The
                // name may hold a SQL PREPARE's statement (one namespace).
                let (verdict, gone) = match self.named_statement(b.statement) {
                    Some(named) => {
                        let text = named.2.text.clone();
                        match self.with_current_executes(named) {
                            Ok(named) => (Some(named), None),
                            Err(why) => (None, Some(self.refused_unweighed(&text, UNKNOWN, &why))),
                        }
                    }
                    None => (None, None),
                };
                let bound = verdict.clone();
                // A name the gateway does not know holds nothing it
                // decided (or a PREPARE still running): refused, as the
                // server would refuse a name it does not have.
                let unknown = verdict.is_none().then(|| {
                    gone.unwrap_or_else(|| {
                        let why = format!(
                            "Bind of {:?}: no statement of that name was prepared in this session",
                            b.statement
                        );
                        self.refused_unweighed("", UNKNOWN, &why)
                    })
                });
                // A statement that EXECUTEs a name is decided when its
                // portal runs (the Execute below), where the server looks
                // the name up: deciding it here as well would record it
                // twice.
                let refused = unknown.or_else(|| {
                    verdict.and_then(|named| {
                        if executes(&named.1) {
                            None
                        } else {
                            self.refusal(named)
                        }
                    })
                });
                let refused = refused.or_else(|| {
                    let new = !b.portal.is_empty() && !self.portals.contains_key(b.portal);
                    (new && self.portals.len() >= MAX_PORTALS).then(|| {
                        limit_error(&format!(
                            "this session already has {MAX_PORTALS} open portals, the most chokepoint keeps for one session: close some, or end the transaction"
                        ))
                    })
                });
                let mut undo = None;
                if let Some(error) = refused {
                    let nonce = self.deny(error);
                    push_bind(&mut self.to_upstream, b.portal, &nonce, &[]);
                } else if let Some(bound) = bound {
                    // If the server rejects it (a named portal still
                    // open), the undo puts back what the name held.
                    let name = b.portal.to_owned();
                    let previous = self.portals.insert(
                        name.clone(),
                        Portal {
                            bound,
                            ran: Arc::default(),
                        },
                    );
                    undo = Some((name, previous));
                    self.forward(&frame);
                }
                self.tracker.push(Pending::Bind(undo));
            }
            FrontendMessage::Describe(d) => {
                let (portal, statement) = match d.kind {
                    ObjectKind::Portal => (Some(d.name.to_owned()), None),
                    ObjectKind::Statement => (None, Some(d.name.to_owned())),
                };
                self.forward(&frame);
                self.tracker.push(Pending::Describe {
                    portal,
                    statement,
                    swallow: false,
                });
            }
            FrontendMessage::Execute(e) => {
                let portal = e.portal.to_owned();
                // The server looks an EXECUTE's name up when the portal
                // runs, not at its Bind: decided again here (found in
                // review: re-prepared between the two, it ran unchecked).
                let again = self
                    .portals
                    .get(&portal)
                    .filter(|p| !p.ran.load(std::sync::atomic::Ordering::Relaxed))
                    .map(|p| p.bound.clone())
                    .filter(|bound| executes(&bound.1));
                if let Some(bound) = again {
                    let text = bound.2.text.clone();
                    let refused = match self.with_current_executes(bound) {
                        Ok(current) => {
                            let refused = self.refusal(current.clone());
                            // Recorded as what runs now.
                            if let Some(p) = self.portals.get_mut(&portal) {
                                p.bound = current;
                            }
                            refused
                        }
                        Err(why) => Some(self.refused_unweighed(&text, UNKNOWN, &why)),
                    };
                    if let Some(error) = refused {
                        self.refuse_execute(error);
                        return Step::Continue;
                    }
                }
                // A portal no Bind of this session made is a SQL cursor's
                // (`DECLARE c CURSOR FOR …` names a portal the protocol can
                // run), or none at all (a refused Bind's): a cursor's query
                // was decided when it was declared, and this run of it is
                // recorded too, rows and all.
                let (sql, classification, shown, approved) = self.portals.get(&portal).map_or_else(
                    || {
                        let text: Arc<str> = Arc::from(format!(
                            "-- Execute of portal {portal:?}, which no Bind of this session made: a SQL cursor's, or none"
                        ));
                        (Arc::clone(&text), None, Shown { text, class: Arc::from("") }, None)
                    },
                    |p| {
                        let (sql, classification, shown, approved) = p.bound.clone();
                        (sql, Some(classification), shown, approved)
                    },
                );
                let running = Running {
                    sql,
                    classification,
                    shown,
                    rule: Arc::from(""),
                    started: Instant::now(),
                    rows: 0,
                    masked: false,
                    execute: true,
                    columns: Arc::default(),
                    sample: Default::default(),
                    approved,
                    prepared_done: 0,
                    cursors_done: 0,
                    cursor_changes: None,
                    names_taken: Vec::new(),
                    copy: None,
                };
                // No Sync of the gateway's for a COPY here: it would end
                // the client's implicit transaction, and its portal with it.
                match self.copy_to_run(&running) {
                    // PostgreSQL runs a portal's COPY once; another Execute
                    // of it fails (see `CopyRun::portal_ran`).
                    Ok(Some(_))
                        if self
                            .portals
                            .get(&portal)
                            .is_some_and(|p| p.ran.load(std::sync::atomic::Ordering::Relaxed)) =>
                    {
                        self.refuse_copy(
                            running,
                            &format!("portal {portal:?} cannot be run again"),
                            false,
                        );
                    }
                    Ok(Some(copy)) => {
                        let ran = self.portals.get(&portal).map(|p| Arc::clone(&p.ran));
                        self.run_copy_as_query(running, copy, false, ran);
                    }
                    Err(why) => self.refuse_copy(running, &why, false),
                    Ok(None) => {
                        // Masking needs this Execute's row layout. Asking right
                        // before it is the only answer that cannot belong to an
                        // earlier or later Bind of the same portal name.
                        if !self.masking.is_empty() {
                            push_describe_portal(&mut self.to_upstream, &portal);
                            self.tracker.push(Pending::Describe {
                                portal: Some(portal.clone()),
                                statement: None,
                                swallow: true,
                            });
                        }
                        let ran = self.portals.get(&portal).map(|p| Arc::clone(&p.ran));
                        self.forward(&frame);
                        self.tracker.push(Pending::Execute {
                            portal,
                            running: Some(running),
                            plan: None,
                            ran,
                        });
                    }
                }
            }
            FrontendMessage::Close(c) => {
                let pending = match c.kind {
                    ObjectKind::Portal => Pending::ClosePortal(
                        self.portals
                            .get(c.name)
                            .map(|portal| (c.name.to_owned(), Arc::clone(&portal.ran))),
                    ),
                    ObjectKind::Statement => Pending::Close(Some(self.close_statement(c.name))),
                };
                self.forward(&frame);
                self.tracker.push(pending);
            }
            FrontendMessage::Sync => {
                self.forward(&frame);
                self.tracker.push(Pending::Sync);
            }
            FrontendMessage::Flush => self.forward(&frame),
            FrontendMessage::CopyData(_) => {
                // COPY data belongs to a COPY statement already decided; the
                // server rejects copy messages outside copy-in mode.
                self.forward(&frame);
                self.tracker.copy_data();
            }
            FrontendMessage::CopyDone | FrontendMessage::CopyFail(_) => {
                self.forward(&frame);
                self.tracker.copy_end();
            }
            FrontendMessage::FunctionCall(_) => {
                let error = deny_error(
                    "function-call",
                    "the fastpath FunctionCall message is not allowed: call the function from SQL so policy can see it",
                    "",
                );
                let nonce = self.deny(error);
                push_query(&mut self.to_upstream, &format!("SELECT \"{nonce}\""));
                self.tracker.push(Pending::Query(None));
            }
            FrontendMessage::Terminate => {
                self.forward(&frame);
                self.terminated = true;
                return Step::End;
            }
        }
        self.settle_discarded();
        Step::Continue
    }

    /// Answers an Execute with `error` in its place in the stream.
    pub(super) fn refuse_execute(&mut self, error: Bytes) {
        let nonce = self.deny(error);
        // A portal of that name does not exist: the server's error
        // carries the nonce, and the server skips to the client's Sync.
        push_execute(&mut self.to_upstream, &nonce);
        self.tracker.push(Pending::Execute {
            portal: nonce,
            running: None,
            plan: None,
            ran: None,
        });
    }

    pub(super) fn forward(&mut self, frame: &Frame) {
        frame.encode_into(&mut self.to_upstream);
    }

    /// Registers a denial and returns the nonce the upstream error will carry.
    pub(super) fn deny(&mut self, error: Bytes) -> String {
        self.summary.denied += 1;
        let nonce = format!(
            "chokepoint_denied_{:08x}{:08x}",
            super::super::cancel::random_i32(),
            super::super::cancel::random_i32()
        );
        // The server is skipping everything up to the client's Sync, the
        // message standing in for this one included: no error will come
        // for it, so nothing waits for one (a client that never syncs
        // would otherwise pile up denials for the rest of the session).
        if self.tracker.is_discarding() {
            return nonce;
        }
        // The denial belongs to the batch ending at the next sync point.
        let sync_point = self.tracker.syncs_sent + 1;
        self.tracker.denials.push_back(Denial {
            nonce: nonce.clone(),
            error,
            sync_point,
        });
        nonce
    }

    /// What the session's rules and settings make of a classified text:
    /// the rules' verdict, then the session-wide denials (COPY … TO STDOUT
    /// of a masked target, a changed search_path).
    pub(super) fn statement_decision(
        &self,
        sql: &str,
        classification: &Classification,
    ) -> StatementDecision {
        let mut decision = self.rules.decide_all(classification, &self.search_path);
        if let Some(why) = names_reserved(sql, classification) {
            return StatementDecision {
                verdict: StatementVerdict::Deny,
                rule: Arc::from("reserved-name"),
                reason: format!(
                    "{why}: names starting with {RESERVED_PREFIX} belong to the gateway"
                ),
                statement_index: 0,
            };
        }
        // With copy_out_masked = "deny", COPY … TO STDOUT never runs on a
        // target with masking rules; with "mask" it runs as its query, its
        // rows masked (see `copy_out`), or not at all when it cannot.
        let copy = (decision.verdict == StatementVerdict::Allow
            && !self.masking.is_empty()
            && classification
                .statements
                .iter()
                .any(|s| s.command == "COPY"))
        .then(|| copy_out::masked_copy(sql))
        .filter(|copy| !matches!(copy, Ok(None)));
        match copy {
            Some(_) if self.copy_out_masked == CopyOutMasked::Deny => {
                decision = StatementDecision {
                    verdict: StatementVerdict::Deny,
                    rule: Arc::from("copy-out-masked"),
                    reason: "COPY … TO STDOUT of a target with masking rules is denied (copy_out_masked = \"deny\"): select the rows instead so they can be masked".into(),
                    statement_index: 0,
                };
            }
            Some(Err(why)) => {
                decision = StatementDecision {
                    verdict: StatementVerdict::Deny,
                    rule: Arc::from("copy-out-masked"),
                    reason: format!(
                        "COPY … TO STDOUT of masked data cannot be masked here: {why}; select the rows instead"
                    ),
                    statement_index: 0,
                };
            }
            _ => {}
        }
        if decision.verdict == StatementVerdict::Allow
            && !self.masking.is_empty()
            && let Some(view) = reads_column_statistics(classification)
        {
            decision = StatementDecision {
                verdict: StatementVerdict::Deny,
                rule: Arc::from("masked-statistics"),
                reason: format!(
                    "reading {view} is denied on a target with masking rules: its sampled values (most_common_vals, histogram_bounds) are column values that masking cannot see"
                ),
                statement_index: 0,
            };
        }
        if decision.verdict == StatementVerdict::Allow
            && !self.masking.is_empty()
            && classification.statements.iter().any(|s| s.computed_setting)
        {
            // Found in review: `SELECT set_config('my.x', email, false)
            // FROM customers`, then `SHOW my.x`, read the address back.
            decision = StatementDecision {
                verdict: StatementVerdict::Deny,
                rule: Arc::from("masked-setting"),
                reason: "on a target with masking rules, set_config takes a constant or a parameter only: a computed value would carry column values into a setting that SHOW, current_setting and pg_stat_activity read back unmasked".into(),
                statement_index: 0,
            };
        }
        if decision.verdict == StatementVerdict::Allow && changes_search_path(sql, classification) {
            decision = StatementDecision {
                verdict: StatementVerdict::Deny,
                rule: Arc::from("search-path"),
                reason: "changing search_path is not allowed through chokepoint: qualify table names instead".into(),
                statement_index: 0,
            };
        }
        decision
    }

    /// A statement that may change the schema: DDL (functions, views,
    /// rules, inheritance), a DO block, a CALL (see
    /// `Session::defined_code`). Noting one that is then refused only
    /// masks more until the session is idle.
    fn note_defined_code(&mut self, classification: &Classification) {
        if classification.statements.iter().any(|s| {
            s.class == StatementClass::Ddl
                || s.has_flag(Flag::ProceduralCode)
                || matches!(s.command, "DO" | "CALL")
        }) {
            self.schema_may_change();
        }
    }

    /// From now until the session is next idle outside a transaction,
    /// what the catalog connection reads may be stale or miss the job's
    /// uncommitted DDL: function calls count as the database's own, view
    /// columns as reading anything, nothing planned is kept, and the
    /// catalogs forget what they read (again after each completion that
    /// is not a row change, and at each ReadyForQuery).
    pub(super) fn schema_may_change(&mut self) {
        if !self.defined_code {
            self.layouts = LayoutCache::default();
        }
        self.defined_code = true;
        self.reading_memo = None;
        self.forget_schema();
    }

    /// Every catalog of this session's target and database forgets what
    /// it read, and every session drops what it planned from it.
    pub(super) fn forget_schema(&self) {
        let (_, _, database, _) = &self.login;
        self.ctx
            .shared
            .schema_changed(&self.ctx.target.name, database);
    }

    /// Takes the reloaded statement policy if there was a reload since
    /// the session's rules were made.
    pub(super) fn refresh_policy(&mut self) {
        let generation = self.ctx.shared.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let Some(refresh) = &self.ctx.refresh else {
            return;
        };
        let fresh = refresh(&self.login.1);
        self.mode = fresh.mode;
        self.copy_out_masked = fresh.copy_out_masked;
        if !Arc::ptr_eq(&self.masking, &fresh.masking) {
            self.masking = fresh.masking;
            self.layouts = LayoutCache::default();
            self.reading_memo = None;
        }
        match fresh.rules {
            Ok(rules) => {
                self.rules = rules;
                self.revoked = None;
                info!(
                    flow_id = self.flow.id,
                    "the session takes the reloaded statement policy"
                );
            }
            Err(why) => {
                warn!(
                    flow_id = self.flow.id,
                    "{why}: the session's statements are refused from now on"
                );
                self.revoked = Some(why);
            }
        }
    }

    /// Why a prepared statement (or a portal bound to one) may not run
    /// now, under the session's current rules: `None` when it may.
    fn refusal(&mut self, named: NamedStatement) -> Option<Bytes> {
        let (sql, classification, shown, approved) = named;
        // Run again later, after the session went idle (found in review:
        // a Parse'd CREATE OR REPLACE VIEW executed in a new transaction).
        self.note_defined_code(&classification);
        match self.decide_classified(&sql, &classification, shown) {
            Decided::Run(_) => None,
            Decided::Refuse(error) => Some(error),
            // Approved when it was prepared, by the approvers
            // of the rule that holds it now: that approval was
            // for exactly this text. Held by another rule (a
            // reload), its approvers have not decided.
            Decided::Hold(ask)
                if approved
                    .as_ref()
                    .is_some_and(|a| a.covers(&ask.rule, SystemTime::now())) =>
            {
                None
            }
            Decided::Hold(ask) if approved.as_ref().is_some_and(|a| *a.rule == *ask.rule) => {
                Some(deny_error(
                    &ask.rule,
                    &format!(
                        "statement needs approval by rule {} ({}), and the approval grant it was prepared under has ended: prepare it again to ask for approval",
                        ask.rule, ask.reason
                    ),
                    &ask.shown,
                ))
            }
            Decided::Hold(ask) => Some(deny_error(
                &ask.rule,
                &format!(
                    "statement needs approval by rule {} ({}), which it did not need when it was prepared: prepare it again to ask for approval",
                    ask.rule, ask.reason
                ),
                &ask.shown,
            )),
        }
    }

    /// A named statement as it runs now. An `EXECUTE name` in its text runs
    /// what `name` holds at this Bind, which a `DEALLOCATE` and `PREPARE`
    /// since the Parse may have changed (found in review: the Parse's
    /// resolution stood, so after a policy reload or an approval grant's
    /// end a re-prepared name ran as what it had held). `Err`: a name no
    /// longer prepared.
    fn with_current_executes(&self, named: NamedStatement) -> Result<NamedStatement, String> {
        let (sql, classification, shown, approved) = named;
        if !executes(&classification) {
            return Ok((sql, classification, shown, approved));
        }
        // The cache has the text from its Parse: no parse here.
        let raw = self
            .ctx
            .shared
            .classifier
            .classify(&sql)
            .map_err(|e| e.to_string())?;
        let current = self.resolve_executes(&raw)?;
        Ok((sql, current, shown, approved))
    }

    /// Classifies and decides SQL text.
    pub(super) fn decide_sql(&mut self, sql: &Arc<str>) -> Decided {
        self.summary.statements += 1;
        let resolved = match self.ctx.shared.classifier.classify(sql) {
            Ok(classification) => self
                .resolve_executes(&classification)
                .map_err(|why| (UNKNOWN, why)),
            Err(e) => Err(("unparsable", e.to_string())),
        };
        match resolved {
            Ok(classification) => {
                let shown = shown(sql, &classification);
                if !changes_role(&classification) {
                    let decided = self.decide_classified(sql, &classification, shown);
                    if !matches!(decided, Decided::Refuse(_)) {
                        self.note_defined_code(&classification);
                    }
                    return decided;
                }
                // A `"$user"` entry of the search path names whatever role
                // the session becomes: from this string on, unqualified
                // names are decided as if in any schema, unless the role
                // change is refused and never reaches the server.
                let before = self.search_path.clone();
                self.search_path.role_changed();
                let decided = self.decide_classified(sql, &classification, shown);
                if matches!(decided, Decided::Refuse(_)) {
                    self.search_path = before;
                } else {
                    self.note_defined_code(&classification);
                }
                decided
            }
            Err((rule, why)) => {
                let redacted = super::super::classify::redact_passwords(sql);
                Decided::Refuse(self.refused_unweighed(&redacted, rule, &why))
            }
        }
    }

    /// A statement refused before policy could weigh it (it does not
    /// parse, or it names a prepared statement the session does not have):
    /// logged, counted and recorded like any denial, since the job asked
    /// for it. `text` is already redacted.
    fn refused_unweighed(&self, text: &str, rule: &'static str, why: &str) -> Bytes {
        info!(flow_id = self.flow.id, statement = %super::logged(text), decision = "deny", rule, reason = %why, "statement");
        crate::admin::metrics::statement("deny", rule);
        self.recording.record(Body::Statement {
            text: text.to_owned(),
            class: String::new(),
            decision: "deny".into(),
            rule: rule.into(),
            reason: why.to_owned(),
        });
        let message = match rule {
            "unparsable" => format!("statement denied: {why}"),
            _ => format!("statement denied by rule {rule}: {why}"),
        };
        deny_error(rule, &message, text)
    }

    /// The refusal of a statement once the session's recording has failed.
    pub(super) fn unrecordable(&self) -> Option<Decided> {
        let why = self.recording.healthy().err()?;
        // Once per session: a job looping on it would write a line each.
        if !self
            .unrecordable_said
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            warn!(
                flow_id = self.flow.id,
                "statements refused from now on: recording failed: {why}"
            );
        }
        crate::admin::metrics::statement("deny", "recording");
        Some(Decided::Refuse(deny_error(
            "recording",
            &format!("statement refused: the session recording cannot be written ({why})"),
            "",
        )))
    }

    pub(super) fn decide_classified(
        &self,
        sql: &Arc<str>,
        classification: &Arc<Classification>,
        shown: Shown,
    ) -> Decided {
        // Fail closed: nothing is forwarded that the recording cannot hold.
        if let Some(refused) = self.unrecordable() {
            return refused;
        }
        if let Some(why) = &self.revoked {
            let reason = format!("statement refused: {why}");
            warn!(flow_id = self.flow.id, statement = %super::logged(&shown.text), "{reason}");
            crate::admin::metrics::statement("deny", "policy-reload");
            self.recording.record(Body::Statement {
                text: shown.text.to_string(),
                class: shown.class.to_string(),
                decision: "deny".into(),
                rule: "policy-reload".into(),
                reason: why.clone(),
            });
            return Decided::Refuse(deny_error("policy-reload", &reason, &shown.text));
        }
        let decision = self.statement_decision(sql, classification);
        let redacted = &shown.text;
        let class = &shown.class;
        // Audit mode forwards what policy would stop, but not a use of the
        // gateway's own names: that is no policy's to waive.
        let audit = self.mode == Mode::Audit && &*decision.rule != "reserved-name";
        // The recording holds every statement; the daemon log only needs
        // the ones policy stopped (or would have, in audit mode), and a log
        // line per allowed statement costs more than the rest of its path.
        macro_rules! statement_event {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    flow_id = self.flow.id,
                    statement = %super::logged(&redacted),
                    class = %class,
                    decision = %decision.verdict,
                    rule = %decision.rule,
                    reason = %decision.reason,
                    mode = %self.mode,
                    "statement"
                )
            };
        }
        if decision.verdict == StatementVerdict::Allow {
            statement_event!(Level::DEBUG);
        } else {
            statement_event!(Level::INFO);
        }
        crate::admin::metrics::statement(decision.verdict.as_str(), &decision.rule);
        if self.recording.is_on() {
            self.recording.record(Body::Statement {
                text: redacted.to_string(),
                class: class.to_string(),
                decision: decision.verdict.to_string(),
                rule: decision.rule.to_string(),
                reason: decision.reason.clone(),
            });
            // Its own event may be the one that did not fit (the session's
            // or everyone's bytes waiting for the disk): not forwarded then.
            if let Some(refused) = self.unrecordable() {
                return refused;
            }
        }
        let running = Running {
            sql: sql.clone(),
            classification: Some(Arc::clone(classification)),
            shown,
            rule: decision.rule.clone(),
            started: Instant::now(),
            rows: 0,
            masked: false,
            execute: false,
            columns: Arc::default(),
            sample: Default::default(),
            approved: None,
            prepared_done: 0,
            cursors_done: 0,
            cursor_changes: None,
            names_taken: Vec::new(),
            copy: None,
        };
        if decision.verdict == StatementVerdict::Allow || audit {
            return Decided::Run(running);
        }
        if decision.verdict == StatementVerdict::Approve
            && let Some(approval) = self.rules.approval(&decision.rule)
        {
            return Decided::Hold(Box::new(HoldAsk {
                rule: decision.rule.to_string(),
                reason: decision.reason,
                shown: running.shown.text.to_string(),
                running,
                approval: approval.clone(),
            }));
        }
        let message = format!(
            "statement denied by rule {}: {}",
            decision.rule, decision.reason
        );
        Decided::Refuse(deny_error(&decision.rule, &message, &running.shown.text))
    }
}

/// The denial of a name the session does not hold (any more).
/// The rule a refusal of a prepared statement the session does not have
/// names.
const UNKNOWN: &str = "unknown-prepared";

/// Prepared statements (protocol and SQL) one session may keep, and their
/// text in all: each is kept whole, with its classification, until it is
/// closed or the session ends.
const MAX_PREPARED: usize = 10_000;
const MAX_PREPARED_BYTES: usize = 64 << 20;
/// Named portals one session may keep open (within a transaction).
pub(super) const MAX_PORTALS: usize = 10_000;

impl Session<'_> {
    /// Why the statements `new` (name, text length) may not be prepared:
    /// the session would keep more than [`MAX_PREPARED`] statements or
    /// [`MAX_PREPARED_BYTES`] of text. The unnamed statement and a name
    /// already in use (which replaces or fails) add nothing.
    fn prepared_limit(&self, new: &[(&str, usize)]) -> Option<String> {
        let new: Vec<&(&str, usize)> = new
            .iter()
            .filter(|(name, _)| {
                !name.is_empty()
                    && !self.statements.contains_key(*name)
                    && !self.sql_prepared.contains_key(*name)
            })
            .collect();
        if new.is_empty() {
            return None;
        }
        let count = self.statements.len() + self.sql_prepared.len();
        if count + new.len() > MAX_PREPARED {
            return Some(format!(
                "this session already has {count} prepared statements, the most chokepoint keeps for one session is {MAX_PREPARED}: close some first (Close, DEALLOCATE)"
            ));
        }
        let held: usize = self.statements.values().map(|s| s.sql.len()).sum::<usize>()
            + self
                .sql_prepared
                .values()
                .map(|s| s.sql.len())
                .sum::<usize>();
        let adding: usize = new.iter().map(|(_, len)| len).sum();
        if held + adding > MAX_PREPARED_BYTES {
            return Some(format!(
                "this session's prepared statements already hold {held} bytes of text, and chokepoint keeps at most {MAX_PREPARED_BYTES} for one session: close some first (Close, DEALLOCATE)"
            ));
        }
        self.hold_prepared(held + adding)
    }

    /// Counts `want` bytes of prepared text against the job's budget once
    /// they are more than a small message: a job's thousand connections
    /// keeping 64 MiB each would otherwise hold 64 GiB of the gateway.
    fn hold_prepared(&self, want: usize) -> Option<String> {
        let mut held = self.prepared_held.lock().unwrap_or_else(|p| p.into_inner());
        if want > super::LARGE_MESSAGE && held.as_ref().is_none_or(|h| h.bytes() < want) {
            // Given back first: the session's own share must not count twice.
            drop(held.take());
            match self.ctx.budget.take(want) {
                Ok(h) => *held = Some(h),
                Err(spent) => {
                    return Some(format!(
                        "this job's connections already hold {} MiB of messages and prepared statements, and [daemon] max_buffered_mb_per_job = {} for all of them: close some prepared statements first (Close, DEALLOCATE)",
                        spent.used >> 20,
                        spent.limit >> 20
                    ));
                }
            }
        }
        None
    }

    /// [`prepared_limit`](Self::prepared_limit) for the SQL `PREPARE`s of a query string.
    fn prepares_too_much(&self, running: &Running) -> Option<String> {
        let defines: Vec<(&str, usize)> = running
            .classification
            .as_ref()?
            .statements
            .iter()
            .filter_map(|s| match &s.prepared {
                Some(Prepared::Define(name)) => Some((name.as_str(), running.sql.len())),
                _ => None,
            })
            .collect();
        self.prepared_limit(&defines)
    }
}

/// The longest statement or portal name the server tells apart
/// (`NAMEDATALEN - 1`): its tables compare only this many bytes.
const MAX_NAME: usize = 63;

/// The statement and portal names `message` uses.
fn names<'m>(message: &FrontendMessage<'m>) -> [&'m str; 2] {
    match message {
        FrontendMessage::Parse(p) => [p.name, ""],
        FrontendMessage::Bind(b) => [b.portal, b.statement],
        FrontendMessage::Describe(d) => [d.name, ""],
        FrontendMessage::Execute(e) => [e.portal, ""],
        FrontendMessage::Close(c) => [c.name, ""],
        _ => ["", ""],
    }
}

/// A statement or portal name in `message` longer than [`MAX_NAME`].
fn overlong_name<'m>(message: &FrontendMessage<'m>) -> Option<&'m str> {
    names(message).into_iter().find(|n| n.len() > MAX_NAME)
}

/// How the gateway's own statement and portal names start (a COPY run as
/// its query): no job may use such a name, in the protocol or in SQL.
/// Found in review: the COPY's query showed its statement's name in
/// `pg_prepared_statements`; a job that PREPAREd that name first had the
/// gateway's query replace its statement, then EXECUTEd the COPY's query
/// under the decision and reading rule of its own `SELECT 1`.
pub(super) const RESERVED_PREFIX: &str = "chokepoint_";

pub(super) fn is_reserved(name: &str) -> bool {
    name.get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
}

/// Why `sql` may not run because it names a statement or cursor of the
/// gateway's, if it does.
fn names_reserved(sql: &str, classification: &Classification) -> Option<String> {
    if let Some(name) = classification
        .statements
        .iter()
        .filter_map(|s| s.prepared_name())
        .find(|n| is_reserved(n))
    {
        return Some(format!("it names the prepared statement {name:?}"));
    }
    if let Some(name) = classification
        .statements
        .iter()
        .flat_map(|s| &s.current_of)
        .find(|n| is_reserved(n))
    {
        return Some(format!("its WHERE CURRENT OF names the cursor {name:?}"));
    }
    // Cursor statements name portals, which the classifier does not
    // report: read once from the text, as the server reads them (found in
    // review: `U&"\0063hokepoint_x"` got past a search of the raw text).
    let cursors = classification
        .statements
        .iter()
        .any(|s| matches!(s.command, "DECLARE CURSOR" | "FETCH" | "MOVE" | "CLOSE"));
    if cursors
        && let Some(name) = super::cursors::cursor_names(sql)
            .into_iter()
            .find(|n| is_reserved(n))
    {
        return Some(format!("it names the cursor {name:?}"));
    }
    None
}

/// What logs and recordings show of `sql`. Text without a password literal
/// is shared, not copied.
pub(super) fn shown(sql: &Arc<str>, classification: &Classification) -> Shown {
    let text = match super::super::classify::redact_passwords(sql) {
        Cow::Borrowed(_) => Arc::clone(sql),
        Cow::Owned(redacted) => Arc::from(redacted),
    };
    Shown {
        text,
        class: Arc::from(class_names(Some(classification))),
    }
}

/// Whether a statement changes `search_path`. Table rules match unqualified
/// names in the schemas of the path read at login, so a changed path would
/// let `DELETE FROM invoices` reach `billing.invoices` unseen. The parse sees
/// every spelling PostgreSQL accepts (`SET SCHEMA`, escaped literals); the
/// text check also catches what the parse cannot see into, such as a DO body.
pub(super) fn changes_search_path(sql: &str, classification: &Classification) -> bool {
    classification.statements.iter().any(|s| s.sets_search_path)
        || contains_ignore_case(sql, b"search_path")
            && (contains_ignore_case(sql, b"set_config")
                || classification
                    .statements
                    .iter()
                    .any(|s| s.class != super::super::classify::StatementClass::Read))
}

/// Whether a statement may change the session's role (SET ROLE, SET
/// SESSION AUTHORIZATION, their RESETs, DISCARD ALL, `set_config('role')`).
fn changes_role(classification: &Classification) -> bool {
    classification
        .statements
        .iter()
        .any(|s| s.flags.contains(&super::super::classify::Flag::SetRole))
}

/// The planner's statistics: they hold sampled values of every column the
/// role may read (most common values, histogram bounds), unmasked and in
/// types (`anyarray`) detectors do not read.
const COLUMN_STATISTICS: [&str; 6] = [
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
];

/// The statistics view or table a statement reads, if any: unqualified (the
/// server looks in pg_catalog first) or in pg_catalog.
pub(super) fn reads_column_statistics(classification: &Classification) -> Option<&str> {
    classification
        .statements
        .iter()
        .flat_map(|s| &s.tables)
        .find(|t| {
            t.schema.as_deref().is_none_or(|s| s == "pg_catalog")
                && COLUMN_STATISTICS.contains(&t.name.as_str())
        })
        .map(|t| t.name.as_str())
}

/// ASCII case-insensitive substring search without lowercasing a copy of
/// the text (this runs for every statement and every Bind).
fn contains_ignore_case(text: &str, needle: &[u8]) -> bool {
    let text = text.as_bytes();
    let (lower, upper) = (
        needle[0].to_ascii_lowercase(),
        needle[0].to_ascii_uppercase(),
    );
    memchr::memchr2_iter(lower, upper, text).any(|i| {
        text[i..]
            .get(..needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::classify::ClassifierCache;

    #[test]
    fn names_the_server_would_cut_short_are_found() {
        let parse = |name| {
            FrontendMessage::Parse(codec::Parse {
                name,
                sql: "SELECT 1",
                param_types: Vec::new(),
            })
        };
        let at_limit = "s".repeat(MAX_NAME);
        let over = "s".repeat(MAX_NAME + 1);
        assert_eq!(overlong_name(&parse(&at_limit)), None);
        assert_eq!(overlong_name(&parse(&over)), Some(over.as_str()));
        assert_eq!(overlong_name(&FrontendMessage::Sync), None);
    }

    fn changes(sql: &str) -> bool {
        let classification = ClassifierCache::new(0).classify(sql).unwrap();
        changes_search_path(sql, &classification)
    }

    #[test]
    fn search_path_changes_are_seen_in_any_case() {
        assert!(changes("SET search_path TO billing"));
        assert!(changes("set SEARCH_PATH = billing, public"));
        assert!(changes("SeT sEaRcH_pAtH tO billing"));
        assert!(changes(
            "SELECT set_config('search_path', 'billing', false)"
        ));
        assert!(changes("SELECT SET_CONFIG('Search_Path', 'billing', true)"));
        assert!(changes("ALTER ROLE ci SET search_path = billing"));
    }

    #[test]
    fn search_path_changes_are_seen_however_they_are_spelled() {
        // PostgreSQL's own spellings that never write "search_path".
        assert!(changes("SET SCHEMA 'billing'"));
        assert!(changes("SET LOCAL SCHEMA 'billing'"));
        assert!(changes("SET U&\"search\\005fpath\" = billing"));
        assert!(changes(
            "SELECT set_config(U&'search\\005fpath', 'billing', false)"
        ));
        assert!(changes(
            "SELECT set_config(E'search\\137path', 'billing', false)"
        ));
        assert!(changes(
            "SELECT set_config('search_'\n'path', 'billing', false)"
        ));
        // pg_settings' update rule calls set_config with the row's name.
        assert!(changes(
            "UPDATE pg_settings SET setting = 'billing' WHERE name = E'search\\137path'"
        ));
        assert!(changes(
            "update PG_CATALOG.PG_SETTINGS set setting = 'billing' where name = 'x'"
        ));
    }

    #[test]
    fn statistics_views_are_found_however_they_are_reached() {
        let reads = |sql: &str| {
            let classification = ClassifierCache::new(0).classify(sql).unwrap();
            reads_column_statistics(&classification).map(str::to_owned)
        };
        let stats = Some("pg_stats".to_owned());
        assert_eq!(reads("SELECT histogram_bounds FROM pg_stats"), stats);
        assert_eq!(reads("select * from PG_CATALOG.PG_STATS"), stats);
        assert_eq!(
            reads("WITH s AS (SELECT * FROM pg_stats) SELECT most_common_vals FROM s"),
            stats
        );
        assert_eq!(
            reads("SELECT 1 WHERE EXISTS (SELECT 1 FROM pg_statistic)"),
            Some("pg_statistic".to_owned())
        );
        assert_eq!(
            reads("SELECT * FROM pg_catalog.pg_stats_ext"),
            Some("pg_stats_ext".to_owned())
        );
        // A job's own table of that name elsewhere is its own business.
        assert_eq!(reads("SELECT * FROM public.pg_stats"), None);
        assert_eq!(reads("SELECT * FROM customers"), None);
    }

    #[test]
    fn reading_search_path_is_not_a_change() {
        assert!(!changes("SHOW search_path"));
        assert!(!changes("SELECT current_setting('search_path')"));
        assert!(!changes("SELECT 1"));
        assert!(!changes("SELECT 's'"));
        assert!(!changes("SET statement_timeout = 0"));
    }

    #[test]
    fn case_insensitive_search_stops_at_the_end_of_the_text() {
        assert!(contains_ignore_case("xx SEARCH_PATH", b"search_path"));
        assert!(!contains_ignore_case("xx search_pat", b"search_path"));
        assert!(!contains_ignore_case("", b"search_path"));
        assert!(contains_ignore_case("ſ search_path", b"search_path"));
        assert!(!contains_ignore_case("ſearch_path", b"search_path"));
    }

    #[test]
    fn shown_text_is_shared_unless_a_password_is_redacted() {
        let plain: Arc<str> = Arc::from("SELECT 1");
        let c = ClassifierCache::new(0).classify(&plain).unwrap();
        let plain_shown = shown(&plain, &c);
        assert!(Arc::ptr_eq(&plain_shown.text, &plain));
        assert_eq!(&*plain_shown.class, "read");
        let secret: Arc<str> = Arc::from("ALTER ROLE ci PASSWORD 'hunter2'");
        let c = ClassifierCache::new(0).classify(&secret).unwrap();
        let secret_shown = shown(&secret, &c);
        assert!(
            !secret_shown.text.contains("hunter2"),
            "{}",
            secret_shown.text
        );
    }
}
