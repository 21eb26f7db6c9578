//! The client's side of the loop: each frontend message is parsed,
//! decided by the statement policy, then forwarded, denied or held.
use super::*;

impl Session<'_> {
    /// One client message: decide, then forward it or its denial.
    pub(super) async fn on_client(&mut self, frame: Frame) -> Step {
        let message = match FrontendMessage::parse(&frame) {
            Ok(m) => m,
            Err(e) => return self.protocol_violation(&e),
        };
        match message {
            FrontendMessage::Query(q) => {
                let sql: Arc<str> = Arc::from(q.sql);
                match self.decide_sql(&sql) {
                    Decided::Run(running) => self.release(&frame, HeldKind::Query, running, false),
                    Decided::Refuse(error) => self.refuse(HeldKind::Query, error),
                    Decided::Hold(ask) => self.hold(frame, HeldKind::Query, *ask).await,
                }
            }
            FrontendMessage::Parse(p) => {
                let sql: Arc<str> = Arc::from(p.sql);
                let kind = HeldKind::Parse {
                    name: p.name.to_owned(),
                };
                match self.decide_sql(&sql) {
                    Decided::Run(running) => self.release(&frame, kind, running, false),
                    Decided::Refuse(error) => self.refuse(kind, error),
                    Decided::Hold(ask) => self.hold(frame, kind, *ask).await,
                }
            }
            FrontendMessage::Bind(b) => {
                // Re-decide under the current policy: a reload may have
                // revoked what the statement was prepared under.
                let verdict = self.statements.get(b.statement).and_then(|s| {
                    let c = s.classification.clone()?;
                    Some((s.sql.clone(), c, s.approved))
                });
                let refused = verdict.and_then(|(sql, classification, approved)| {
                    match self.decide_classified(&sql, &classification) {
                        Decided::Run(_) => None,
                        Decided::Refuse(error) => Some(error),
                        // Approved when it was prepared: that approval
                        // was for exactly this text.
                        Decided::Hold(_) if approved => None,
                        Decided::Hold(ask) => Some(deny_error(
                            &ask.rule,
                            &format!("statement needs approval by rule {} ({}), which it did not need when it was prepared: prepare it again to ask for approval", ask.rule, ask.reason),
                            &ask.shown,
                        )),
                    }
                });
                if let Some(error) = refused {
                    let nonce = self.deny(error);
                    push_bind(&mut self.to_upstream, b.portal, &nonce);
                } else {
                    self.portals.insert(
                        b.portal.to_owned(),
                        Portal {
                            statement: b.statement.to_owned(),
                        },
                    );
                    self.forward(&frame);
                }
                self.tracker.push(Pending::Bind);
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
                // Masking needs this Execute's row layout. Asking right
                // before it is the only answer that cannot belong to an
                // earlier or later Bind of the same portal name.
                if !self.ctx.masking.is_empty() {
                    push_describe_portal(&mut self.to_upstream, &portal);
                    self.tracker.push(Pending::Describe {
                        portal: Some(portal.clone()),
                        statement: None,
                        swallow: true,
                    });
                }
                let running = self
                    .portals
                    .get(&portal)
                    .and_then(|p| self.statements.get(&p.statement))
                    .map(|s| Running {
                        sql: s.sql.clone(),
                        classification: s.classification.clone(),
                        class: class_names(s.classification.as_deref()),
                        rule: Arc::from(""),
                        started: Instant::now(),
                        rows: 0,
                        masked: false,
                        execute: true,
                        columns: Vec::new(),
                        sample: Default::default(),
                    });
                self.forward(&frame);
                self.tracker.push(Pending::Execute {
                    portal,
                    running,
                    layout: None,
                    plan: None,
                });
            }
            FrontendMessage::Close(c) => {
                match c.kind {
                    ObjectKind::Portal => self.portals.remove(c.name),
                    ObjectKind::Statement => {
                        self.statements.remove(c.name);
                        None
                    }
                };
                self.forward(&frame);
                self.tracker.push(Pending::Close);
            }
            FrontendMessage::Sync => {
                self.forward(&frame);
                self.tracker.push(Pending::Sync);
            }
            FrontendMessage::Flush
            | FrontendMessage::CopyData(_)
            | FrontendMessage::CopyDone
            | FrontendMessage::CopyFail(_) => {
                // COPY data belongs to a COPY statement already decided; the
                // server rejects copy messages outside copy-in mode.
                self.forward(&frame);
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
        Step::Continue
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
        // The denial belongs to the batch ending at the next sync point.
        let sync_point = self.tracker.syncs_sent + 1;
        self.tracker.denials.push_back(Denial {
            nonce: nonce.clone(),
            error,
            sync_point,
        });
        nonce
    }

    /// Classifies and decides SQL text.
    pub(super) fn decide_sql(&mut self, sql: &Arc<str>) -> Decided {
        self.summary.statements += 1;
        match self.ctx.shared.classifier.classify(sql) {
            Ok(classification) => self.decide_classified(sql, &classification),
            Err(e) => {
                let redacted = super::super::classify::redact_passwords(sql);
                info!(flow_id = self.flow.id, statement = %redacted, decision = "deny", rule = "unparsable", reason = %e, "statement");
                self.recording.record(Body::Statement {
                    text: redacted.into_owned(),
                    class: String::new(),
                    decision: "deny".into(),
                    rule: "unparsable".into(),
                    reason: e.to_string(),
                });
                Decided::Refuse(deny_error(
                    "unparsable",
                    &format!("statement denied: {e}"),
                    "",
                ))
            }
        }
    }

    pub(super) fn decide_classified(
        &self,
        sql: &Arc<str>,
        classification: &Arc<Classification>,
    ) -> Decided {
        // Fail closed: nothing is forwarded that the recording cannot hold.
        if let Err(why) = self.recording.healthy() {
            warn!(
                flow_id = self.flow.id,
                "statement refused: recording failed: {why}"
            );
            return Decided::Refuse(deny_error(
                "recording",
                &format!("statement refused: the session recording cannot be written ({why})"),
                "",
            ));
        }
        let mut decision = self.rules.decide_all(classification);
        // With copy_out_masked = "deny", COPY … TO STDOUT never runs on a
        // target with masking rules; with "mask" its rows are masked as
        // they stream (see `copy_out_rows`).
        if decision.verdict == StatementVerdict::Allow
            && self.ctx.copy_out_masked == CopyOutMasked::Deny
            && !self.ctx.masking.is_empty()
            && classification
                .statements
                .iter()
                .any(|s| s.command == "COPY")
            && copy_out::copy_outs(sql).map_or(true, |c| !c.is_empty())
        {
            decision = StatementDecision {
                verdict: StatementVerdict::Deny,
                rule: Arc::from("copy-out-masked"),
                reason: "COPY … TO STDOUT of a target with masking rules is denied (copy_out_masked = \"deny\"): select the rows instead so they can be masked".into(),
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
        let class = class_names(Some(classification));
        let redacted = super::super::classify::redact_passwords(sql);
        let audit = self.ctx.mode == Mode::Audit;
        // The recording holds every statement; the daemon log only needs
        // the ones policy stopped (or would have, in audit mode), and a log
        // line per allowed statement costs more than the rest of its path.
        macro_rules! statement_event {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    flow_id = self.flow.id,
                    statement = %redacted,
                    class = %class,
                    decision = %decision.verdict,
                    rule = %decision.rule,
                    reason = %decision.reason,
                    mode = %self.ctx.mode,
                    "statement"
                )
            };
        }
        if decision.verdict == StatementVerdict::Allow {
            statement_event!(Level::DEBUG);
        } else {
            statement_event!(Level::INFO);
        }
        self.recording.record(Body::Statement {
            text: redacted.clone().into_owned(),
            class: class.clone(),
            decision: decision.verdict.to_string(),
            rule: decision.rule.to_string(),
            reason: decision.reason.clone(),
        });
        let running = Running {
            sql: sql.clone(),
            classification: Some(Arc::clone(classification)),
            class,
            rule: decision.rule.clone(),
            started: Instant::now(),
            rows: 0,
            masked: false,
            execute: false,
            columns: Vec::new(),
            sample: Default::default(),
        };
        if decision.verdict == StatementVerdict::Allow || audit {
            return Decided::Run(running);
        }
        if decision.verdict == StatementVerdict::Approve
            && let Some(approval) = self.rules.approval(&decision.rule)
        {
            return Decided::Hold(Box::new(HoldAsk {
                running,
                rule: decision.rule.to_string(),
                reason: decision.reason,
                shown: redacted.into_owned(),
                approval: approval.clone(),
            }));
        }
        let message = format!(
            "statement denied by rule {}: {}",
            decision.rule, decision.reason
        );
        Decided::Refuse(deny_error(&decision.rule, &message, &redacted))
    }
}

/// Whether a statement changes `search_path`. Table rules match unqualified
/// names as schema public, so a changed search path would let
/// `DELETE FROM invoices` reach `billing.invoices` unseen.
pub(super) fn changes_search_path(sql: &str, classification: &Classification) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.contains("search_path")
        && (lower.contains("set_config")
            || classification
                .statements
                .iter()
                .any(|s| s.class != super::super::classify::StatementClass::Read))
}
