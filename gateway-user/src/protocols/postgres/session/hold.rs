//! Statements a rule holds for a human decision: asking, waiting while
//! the session keeps serving the upstream, then releasing or refusing.
use super::*;

impl Session<'_> {
    /// Sends a decided statement on: forwards it and tracks its answer.
    /// `approved`: the rule that held it, when its approvers approved it (a
    /// prepared one keeps that).
    pub(super) fn release(
        &mut self,
        frame: &Frame,
        kind: HeldKind,
        mut running: Running,
        approved: Option<Approved>,
    ) {
        running.approved = approved;
        self.names_in_flight(&mut running);
        match kind {
            HeldKind::Query => match self.copy_to_run(&running) {
                Ok(None) => {
                    self.forward(frame);
                    self.tracker.push(Pending::Query(Some(running)));
                }
                // The gateway's Sync would end the client's unfinished
                // batch early (commit its implicit transaction, or stop
                // the server's discarding short).
                Ok(Some(_)) if !self.tracker.between_batches() => self.refuse_copy(
                    running,
                    "it was sent inside an unfinished extended-protocol batch (no Sync before it)",
                    true,
                ),
                Ok(Some(copy)) => self.run_copy_as_query(running, copy, true, None),
                Err(why) => self.refuse_copy(running, &why, true),
            },
            HeldKind::Parse { name } if self.parse_would_clash(&name) => {
                self.forward(frame);
                self.tracker.push(Pending::Parse(None));
            }
            HeldKind::Parse { name } => {
                // Classified once here; Bind reuses it. Put back as it
                // was if the server rejects the Parse (an error in the
                // text, or the pipeline failed before it).
                let previous = self.statements.insert(
                    name.clone(),
                    PreparedStatement {
                        sql: running.sql,
                        classification: running.classification,
                        shown: running.shown,
                        approved: running.approved,
                    },
                );
                self.forward(frame);
                self.tracker
                    .push(Pending::Parse(parse_undo(name, previous)));
            }
        }
    }

    /// Releases a held statement its approvers (or a grant) let run. A
    /// hold can last minutes, and the disk may have filled meanwhile (the
    /// approval's own event included): nothing unrecorded runs.
    fn release_held(&mut self, frame: &Frame, kind: HeldKind, running: Running, by: Approved) {
        match self.unrecordable() {
            Some(Decided::Refuse(error)) => self.refuse(kind, error),
            _ => self.release(frame, kind, running, Some(by)),
        }
    }

    /// Answers a statement with `error` in its place in the stream.
    pub(super) fn refuse(&mut self, kind: HeldKind, error: Bytes) {
        let nonce = self.deny(error);
        match kind {
            HeldKind::Query => {
                push_query(&mut self.to_upstream, &format!("SELECT \"{nonce}\""));
                self.tracker.push(Pending::Query(None));
            }
            HeldKind::Parse { name } => {
                // Same statement name, so a later Bind/Execute of it fails
                // upstream as "does not exist".
                push_parse(&mut self.to_upstream, &name, &format!("SELECT \"{nonce}\""));
                let undo = if self.parse_would_clash(&name) {
                    None
                } else {
                    parse_undo(name.clone(), self.statements.remove(&name))
                };
                self.tracker.push(Pending::Parse(undo));
            }
        }
    }

    /// The job's identity as approvals and grants know it: the bound CI
    /// job, else the process's uid.
    pub(super) fn identity(&self) -> String {
        if let Some(job) = &self.ctx.job {
            return job.describe();
        }
        let uid = self.flow.uid;
        match self.user_name() {
            Some(name) => format!("uid {uid} ({name})"),
            None => format!("uid {uid}"),
        }
    }

    /// The user name of the job's uid on this host.
    fn user_name(&self) -> Option<String> {
        nix::unistd::User::from_uid(self.flow.uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
    }

    /// A statement a rule holds: runs at once under a grant, else waits
    /// for a decision while the session keeps serving the upstream.
    pub(super) async fn hold(&mut self, frame: Frame, kind: HeldKind, mut ask: HoldAsk) {
        if matches!(kind, HeldKind::Parse { .. }) {
            // Approvers must know what they are saying yes to.
            ask.reason.push_str(
                "; a prepared statement (Parse): approved, it runs at each Bind in this session, with any parameter values",
            );
        }
        let Some(approvals) = self.ctx.approvals.clone() else {
            let message = format!(
                "statement needs approval by rule {}: {} (this gateway runs no approval service, so it is denied)",
                ask.rule, ask.reason
            );
            return self.refuse(kind, deny_error(&ask.rule, &message, &ask.shown));
        };
        if *ask.shown != *ask.running.sql {
            // Approvers see the text with password literals redacted, and
            // what they cannot read they cannot approve: a job could hide
            // `OR 'password=' = 'password='` behind the redaction.
            let message = format!(
                "statement needs approval by rule {} ({}), but it holds a password literal, which approvers cannot be shown: send the password another way (a parameter) or ask the policy owners",
                ask.rule, ask.reason
            );
            return self.refuse(kind, deny_error(&ask.rule, &message, &ask.shown));
        }
        let identity = self.identity();
        let target = self.rules.target().to_owned();
        let scope = match &self.ctx.job {
            Some(job) => format!("job {}", job.replay_key),
            None => format!("cgroup {} on {}", self.flow.cgroup_id, approvals.gateway()),
        };
        // A string holding more than one statement is asked about whole:
        // a grant covers one rule's one reason, never what rides along.
        let one_hold = ask
            .running
            .classification
            .as_ref()
            .is_some_and(|c| self.rules.holds(c, &self.search_path) == 1);
        let query = GrantQuery {
            scope: &scope,
            identity: &identity,
            target: &target,
            role: &self.login.1,
            database: &self.login.2,
            class: &ask.running.shown.class,
            rule: &ask.rule,
            reason: &ask.reason,
            max_grant: ask.approval.max_grant.unwrap_or_default(),
        };
        // The rule as it is now must still allow grants: one reloaded
        // without max_grant takes them back.
        let grant = if one_hold && ask.approval.max_grant.is_some() {
            let requester = self.user_name().unwrap_or_default();
            approvals.grant(&query, &ask.approval, &requester).await
        } else {
            None
        };
        if let Some(grant) = grant {
            let by: Vec<&str> = grant.votes.iter().map(|v| v.by.as_str()).collect();
            self.recording.record(Body::Approval {
                id: grant.id.clone(),
                event: "grant_used".into(),
                by: Some(by.join(", ")),
                detail: format!(
                    "class {} on {target} granted until {}",
                    grant.class,
                    grant.grant_until.as_deref().unwrap_or("?")
                ),
            });
            info!(flow_id = self.flow.id, id = %grant.id, "statement runs under an approval grant");
            // What it prepares runs again only while the grant lasts.
            let approved = Approved {
                rule: Arc::from(ask.rule.as_str()),
                until: grant.grant_end(ask.approval.max_grant),
            };
            self.release_held(&frame, kind, ask.running, approved);
            return;
        }
        let request = Ask {
            who: Requester {
                identity,
                uid: self.flow.uid,
                user: self.user_name().unwrap_or_default(),
                pid: self.flow.pid,
                comm: self.flow.comm.clone(),
                cgroup_id: self.flow.cgroup_id,
                session: self.recording.id().to_owned(),
                scope,
            },
            target,
            role: self.login.1.clone(),
            database: self.login.2.clone(),
            sql: ask.running.sql.to_string(),
            shown: ask.shown.clone(),
            class: ask.running.shown.class.to_string(),
            rule: ask.rule.clone(),
            reason: ask.reason.clone(),
            approval: ask.approval.clone(),
        };
        match approvals.hold(request).await {
            Err(e) => {
                warn!(flow_id = self.flow.id, error = %e, "cannot create an approval request");
                self.recording.record(Body::Approval {
                    id: String::new(),
                    event: "failed".into(),
                    by: None,
                    detail: e.to_string(),
                });
                let message = format!(
                    "statement needs approval by rule {} ({}), but {e}",
                    ask.rule, ask.reason
                );
                self.refuse(kind, deny_error(&ask.rule, &message, &ask.shown));
            }
            Ok(held) => {
                let r = &held.request;
                let id = &r.id;
                self.recording.record(Body::Approval {
                    id: id.clone(),
                    event: "requested".into(),
                    by: None,
                    detail: format!(
                        "rule {}: {}; approvers {}; expires {}; digest {}",
                        r.rule,
                        r.reason,
                        r.approvers.join(", "),
                        r.expires,
                        r.digest
                    ),
                });
                let message = format!(
                    "chokepoint: waiting for approval {id}: run \"chokepoint approvals approve {id}\""
                );
                let detail = format!(
                    "rule {}: {}; approvers: {}; expires {}",
                    r.rule,
                    r.reason,
                    r.approvers.join(", "),
                    r.expires
                );
                let _ = ErrorFields {
                    severity: codec::Severity::Notice,
                    code: "00000",
                    message: &message,
                    detail: Some(&detail),
                    hint: None,
                }
                .encode_notice_into(&mut self.to_client);
                self.held = Some(HeldStatement {
                    frame,
                    kind,
                    running: ask.running,
                    shown: ask.shown,
                    rule: ask.rule,
                    held,
                });
            }
        }
    }

    /// One event of the held statement; true once it is decided and the
    /// client's next messages may be read.
    pub(super) fn on_held(&mut self, event: HeldEvent) -> bool {
        let request = match event {
            HeldEvent::Notified { url, error } => {
                let (event, detail) = match error {
                    None => ("notified", url),
                    Some(e) => ("notify_failed", format!("{url}: {e}")),
                };
                if let Some(h) = &self.held {
                    self.recording.record(Body::Approval {
                        id: h.held.id().to_owned(),
                        event: event.into(),
                        by: None,
                        detail,
                    });
                }
                return false;
            }
            HeldEvent::Ended(request) => *request,
        };
        let Some(held) = self.held.take() else {
            return true;
        };
        let by: Vec<&str> = request.votes.iter().map(|v| v.by.as_str()).collect();
        let by = (!by.is_empty()).then(|| by.join(", "));
        let id = request.id.clone();
        let mut approved = request.state == ApprovalState::Approved
            && request.digest == crate::approvals::digest(&held.running.sql);
        let mut forged = None;
        if approved
            && let Err(why) =
                crate::approvals::authorize::check_approved(&held.held.request, &request)
        {
            warn!(flow_id = self.flow.id, id = %request.id, "the store says approved, but {why}: the statement stays refused");
            forged = Some(format!(
                "the approval store says approved, but {why} (was the store altered?)"
            ));
            approved = false;
        }
        let detail = if let Some(why) = &forged {
            why.clone()
        } else if approved {
            let comments: Vec<String> = request
                .votes
                .iter()
                .filter_map(|v| v.text.as_ref().map(|t| format!("{}: {t}", v.by)))
                .collect();
            match &request.grant_until {
                Some(until) => format!("{}; grant until {until}", comments.join("; ")),
                None => comments.join("; "),
            }
        } else {
            request.outcome()
        };
        self.recording.record(Body::Approval {
            id: id.clone(),
            event: request.state.to_string(),
            by,
            detail,
        });
        info!(flow_id = self.flow.id, id = %id, state = %request.state, "held statement decided");
        let HeldStatement {
            frame,
            kind,
            running,
            shown,
            rule,
            held: _handle,
        } = held;
        // A reload while it waited may have taken the session's
        // permission away, or denied the statement outright: an approval
        // does not bring either back.
        self.refresh_policy();
        let denied_now = running.classification.as_ref().and_then(|c| {
            let d = self.statement_decision(&running.sql, c);
            // Held by another rule now: its approvers have not decided.
            let held_by_another = d.verdict == StatementVerdict::Approve && *d.rule != *rule;
            ((d.verdict == StatementVerdict::Deny || held_by_another) && self.mode != Mode::Audit)
                .then(|| format!("the reloaded policy decides it {d}"))
        });
        if let (true, Some(why)) = (approved, self.revoked.clone().or(denied_now)) {
            let message = format!("statement refused although approved ({id}): {why}");
            warn!(flow_id = self.flow.id, "{message}");
            // The recording said "approved" a moment ago: without this, a
            // reader would take the statement to have run.
            self.recording.record(Body::Statement {
                text: shown.clone(),
                class: running.shown.class.to_string(),
                decision: "deny".into(),
                rule: "policy-reload".into(),
                reason: message.clone(),
            });
            let error = deny_error("policy-reload", &message, &shown);
            self.refuse(kind, error);
        } else if approved {
            // Approved with `--for`: what it prepares runs again only
            // while that grant lasts.
            let approved = Approved {
                rule: Arc::from(rule.as_str()),
                until: request.grant_end(None),
            };
            self.release_held(&frame, kind, running, approved);
        } else {
            let message = format!(
                "statement not approved ({id}, rule {rule}): {}",
                forged.unwrap_or_else(|| request.outcome())
            );
            self.refuse(kind, deny_error(&rule, &message, &shown));
        }
        self.settle_discarded();
        true
    }
}
