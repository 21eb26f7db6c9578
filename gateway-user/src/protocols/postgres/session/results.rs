//! The upstream's side of the loop: each backend message ends, counts or
//! samples the statement it answers (for the recording) on its way to the
//! client.
use super::*;

impl Session<'_> {
    /// One upstream message: track, mask, forward.
    pub(super) async fn on_upstream(&mut self, frame: Frame) {
        self.tracker.drop_stray_copy_ends();
        if let Some(Pending::Own(left)) = self.tracker.pending.front_mut()
            && matches!(frame.tag(), b'1' | b'2' | b'3')
        {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.tracker.pending.pop_front();
            }
            return;
        }
        // A COMMIT (or the DDL itself, outside a transaction) may just
        // have run, and a lookup made since the job's DDL was sent may
        // hold what was there before it (found in review: `COMMIT; SELECT
        // pg_sleep(25)` kept the session from going idle; a Flush'd DDL
        // whose Sync came pipelined with more). So after every completion
        // but a row change's (an INSERT … VALUES burst in a migration
        // would clear the catalogs at each row) and at every
        // ReadyForQuery (a Sync commits an implicit transaction).
        if frame.tag() == b'C' {
            self.note_own_code_completed().await;
        }
        if self.defined_code
            && (frame.tag() == b'Z' || frame.tag() == b'C' && !row_change(frame.body()))
        {
            self.forget_schema();
        }
        // The tag first: this runs for every row of every result.
        if matches!(frame.tag(), b'D' | b'C') && self.front_copy().is_some() {
            return match frame.tag() {
                b'C' => self.copy_done(),
                _ => match self.tracker.pending.front() {
                    Some(Pending::Execute {
                        plan: Some(plan), ..
                    }) => {
                        let plan = Arc::clone(plan);
                        self.copy_row(&plan, &frame)
                    }
                    _ => self.out_of_step("a DataRow no RowDescription announced"),
                },
            };
        }
        match frame.tag() {
            b'Z' => {
                match self.tracker.ready() {
                    Ok(Pending::Query(Some(running))) => self.complete(running, ""),
                    Ok(_) => {}
                    Err(_) => return self.out_of_step("a ReadyForQuery"),
                }
                // Idle with nothing in flight: the transaction that held
                // the portals is over, and so are they.
                if frame.body().first() == Some(&b'I') && self.tracker.pending.is_empty() {
                    self.portals.clear();
                    if self.defined_code {
                        // Committed or rolled back: the catalog connection
                        // now sees what the job's DDL left, once every
                        // catalog forgets what it read before (found in
                        // review: another session read the names while
                        // the transaction was open, and kept that answer).
                        self.defined_code = false;
                        self.reading_memo = None;
                        self.layouts = LayoutCache::default();
                        self.forget_schema();
                    }
                }
                self.query_plan = None;
            }
            // With masking on, every COPY TO STDOUT runs as its query or
            // is refused before it is sent: one the server runs itself
            // began before a reload turned masking on.
            b'H' if self.masking.is_empty() => self.copy = CopyState::Unplanned,
            b'H' => {
                return self.refuse_copy_out("it began before masking rules were loaded");
            }
            b'd' => match &mut self.copy {
                CopyState::Idle => self.count_row(false),
                CopyState::Unplanned if self.masking.is_empty() => self.count_row(false),
                CopyState::Unplanned => {
                    return self.out_of_step("COPY data begun before a reload turned masking on");
                }
                CopyState::Refused => return,
            },
            b'G' => self.tracker.copy_in_started(),
            b'c' => {
                if let CopyState::Refused = self.copy {
                    return;
                }
                self.copy = CopyState::Idle;
            }
            b'E' => {
                if self.tracker.copy_outcome(true).is_err() {
                    return self.out_of_step(
                        "an error ending a COPY the client had sent Sync or other messages into",
                    );
                }
                self.copy = CopyState::Idle;
                let message_of = |body: &Bytes| {
                    ErrorResponse::parse(body)
                        .ok()
                        .and_then(|e| e.message().map(str::to_owned))
                        .unwrap_or_default()
                };
                let raw_message = message_of(frame.body());
                let replacement = self.tracker.take_denial(&raw_message);
                // The recording keeps the error as the client gets it.
                let scrubbed = match replacement {
                    Some(_) => None,
                    None => self.scrub_message(&frame),
                };
                let message = match &scrubbed {
                    Some(m) => message_of(&Bytes::copy_from_slice(&m[5..])),
                    None => raw_message,
                };
                // Extended protocol: the server now skips to Sync.
                let skipped = self.tracker.skip_to_sync();
                self.not_run(skipped, &message);
                if let Some(Pending::Query(running)) = self.tracker.pending.front_mut()
                    && let Some(mut running) = running.take()
                {
                    self.names_not_changed(&mut running);
                    self.complete(running, &message);
                }
                match (replacement, scrubbed) {
                    (Some(error), _) => self.to_client.extend_from_slice(&error),
                    (None, Some(scrubbed)) => self.to_client.extend_from_slice(&scrubbed),
                    (None, None) => frame.encode_into(&mut self.to_client),
                }
                self.copy_skipped();
                return;
            }
            b'1' | b'2' | b'3' => {
                // Each answers its own kind of request only: popping
                // whatever is in front would hide that the server and the
                // gateway disagree on what is answered.
                let answers = matches!(
                    (frame.tag(), self.tracker.pending.front()),
                    (b'1', Some(Pending::Parse(_)))
                        | (b'2', Some(Pending::Bind(_)))
                        | (b'3', Some(Pending::Close(_) | Pending::ClosePortal(_)))
                );
                if !answers {
                    return self.out_of_step(match frame.tag() {
                        b'1' => "a ParseComplete",
                        b'2' => "a BindComplete",
                        _ => "a CloseComplete",
                    });
                }
                match self.tracker.pending.pop_front() {
                    // A statement's Close: the server holds no such name
                    // now, whatever a failed PREPARE left uncertain.
                    Some(Pending::Close(Some(undo))) => {
                        self.uncertain_names.remove(&undo.name);
                    }
                    Some(Pending::ClosePortal(Some((name, closed))))
                        if self
                            .portals
                            .get(&name)
                            .is_some_and(|p| Arc::ptr_eq(&p.ran, &closed)) =>
                    {
                        self.portals.remove(&name);
                    }
                    _ => {}
                }
            }
            b'T' => match self.tracker.pending.front() {
                Some(Pending::Describe { swallow, .. }) => {
                    let swallow = *swallow;
                    self.tracker.pending.pop_front();
                    // No simple Query's rows come before the next one's
                    // own RowDescription.
                    self.query_plan = None;
                    if swallow {
                        // Ours: the layout of the Execute that follows.
                        let reading = match self.tracker.pending.front() {
                            Some(Pending::Execute { running, .. }) => {
                                let classification =
                                    running.as_ref().and_then(|r| r.classification.clone());
                                self.reading_rule(classification).await
                            }
                            _ => None,
                        };
                        let Some(layout) = self.layout(frame.body(), reading).await else {
                            return;
                        };
                        self.note_columns(&layout);
                        if let Some(Pending::Execute { plan, .. }) =
                            self.tracker.pending.front_mut()
                        {
                            plan.clone_from(&layout.plan);
                        }
                        if self.front_copy().is_some() {
                            self.copy_described(Some((frame.body(), &layout))).await;
                        }
                        return;
                    }
                }
                Some(Pending::Query(running)) => {
                    let classification = running.as_ref().and_then(|r| r.classification.clone());
                    let reading = self.reading_rule(classification).await;
                    let Some(layout) = self.layout(frame.body(), reading).await else {
                        return;
                    };
                    self.note_columns(&layout);
                    // None without masking, like an Execute's: if a reload
                    // turns masking on before the rows are through, the
                    // rest of them ends the session instead of going out
                    // unmasked (found in review: the job picks the moment,
                    // since any message it sends takes the reload).
                    self.query_plan.clone_from(&layout.plan);
                }
                _ => return self.out_of_step("a RowDescription"),
            },
            b'n' => {
                if let Some(Pending::Describe { swallow, .. }) = self.tracker.pending.front() {
                    let swallow = *swallow;
                    self.tracker.pending.pop_front();
                    if swallow {
                        if self.front_copy().is_some() {
                            self.copy_described(None).await;
                        }
                        return;
                    }
                }
            }
            b'D' => {
                let plan = match self.tracker.pending.front() {
                    Some(Pending::Execute { plan, .. }) => plan.clone(),
                    Some(Pending::Query(_)) => self.query_plan.clone(),
                    _ => return self.out_of_step("a DataRow"),
                };
                if plan.is_none() && !self.masking.is_empty() {
                    // Every result is planned when masking is on (its
                    // RowDescription, or the Describe sent before its
                    // Execute): rows without one were never described,
                    // or were described before a reload turned masking
                    // on (found in review: an Execute sent just before
                    // such a reload had its rows forwarded unmasked).
                    return self.out_of_step("a DataRow no RowDescription announced");
                }
                self.count_row(plan.as_deref().is_some_and(|p| !p.is_noop()));
                if let Some(plan) = plan
                    && !plan.is_noop()
                {
                    return self.forward_masked(&plan, &frame);
                }
                if self.sampling()
                    && let Ok(row) = DataRow::parse(frame.body())
                {
                    self.sample_values(row.columns());
                }
            }
            b'C' | b'I' | b's' => {
                if frame.tag() == b'C' {
                    // Success: whatever was sent into the COPY, the server
                    // ignored or refused it as the tracker expects.
                    let _ = self.tracker.copy_outcome(false);
                    self.prepared_completed(frame.body());
                    self.cursor_completed(frame.body());
                }
                // The end of a refused COPY was already answered with an error.
                let refused = matches!(
                    std::mem::replace(&mut self.copy, CopyState::Idle),
                    CopyState::Refused
                );
                if frame.tag() != b'I'
                    && let Some(Pending::Execute { ran: Some(ran), .. }) =
                        self.tracker.pending.front()
                {
                    ran.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(Pending::Execute { .. }) = self.tracker.pending.front()
                    && let Some(Pending::Execute {
                        running: Some(running),
                        ..
                    }) = self.tracker.pending.pop_front()
                {
                    self.complete(running, if refused { "COPY refused" } else { "" });
                }
                self.query_plan = None;
                if refused {
                    return;
                }
            }
            b'N' | b'A' | b'S' => {
                if frame.tag() == b'S' && self.unsafe_setting(&frame) {
                    return;
                }
                if let Some(scrubbed) = self.scrub_message(&frame) {
                    self.summary.bytes_down += scrubbed.len() as u64;
                    self.to_client.extend_from_slice(&scrubbed);
                    return;
                }
            }
            _ => {}
        }
        frame.encode_into(&mut self.to_client);
        self.summary.bytes_down += frame.raw().len() as u64;
    }

    pub(super) fn count_row(&mut self, masked: bool) {
        let running = match self.tracker.pending.front_mut() {
            Some(Pending::Execute {
                running: Some(r), ..
            })
            | Some(Pending::Query(Some(r))) => r,
            _ => return,
        };
        running.rows += 1;
        running.masked |= masked;
    }

    /// Messages the server skipped (after an error, up to Sync): what
    /// the session assumed when it forwarded them is put back, and their
    /// statements are recorded as not run. `error` is the error that made
    /// the server skip; an Execute reports it as its own.
    pub(super) fn not_run(&mut self, skipped: Vec<Pending>, error: &str) {
        let (mut undos, mut portal_undos) = (Vec::new(), Vec::new());
        for entry in skipped {
            match entry {
                Pending::Parse(Some(undo)) | Pending::Close(Some(undo)) => undos.push(undo),
                Pending::Bind(Some(undo)) => portal_undos.push(undo),
                Pending::Execute {
                    running: Some(r), ..
                } => {
                    // A COPY the server skipped did not run its portal.
                    if let Some(ran) = r.copy.as_ref().and_then(|c| c.portal_ran.as_ref()) {
                        ran.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.complete(r, error)
                }
                Pending::Query(Some(mut r)) => {
                    self.names_not_changed(&mut r);
                    self.complete(r, "not run: an earlier message of the pipeline failed");
                }
                _ => {}
            }
        }
        // Latest first, so a name changed twice ends as before both.
        for undo in undos.into_iter().rev() {
            self.undo(undo);
        }
        for (name, previous) in portal_undos.into_iter().rev() {
            match previous {
                Some(portal) => self.portals.insert(name, portal),
                None => self.portals.remove(&name),
            };
        }
    }

    /// Takes back what was forwarded while the server discards messages
    /// (an extended-protocol error with no Sync sent yet).
    pub(super) fn settle_discarded(&mut self) {
        let discarded = self.tracker.take_discarded();
        if !discarded.is_empty() {
            self.not_run(
                discarded,
                "not run: an earlier message of the pipeline failed",
            );
        }
    }

    pub(super) fn complete(&self, running: Running, error: &str) {
        let duration_us = u64::try_from(running.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        debug!(
            flow_id = self.flow.id,
            statement = %super::logged(&running.shown.text),
            class = %running.shown.class,
            rows = running.rows,
            masked = running.masked,
            duration_ms = duration_us as f64 / 1000.0,
            error,
            "statement done"
        );
        if self.recording.is_on() {
            self.recording.record(Body::Result {
                text: running.execute.then(|| running.shown.text.to_string()),
                rows: running.rows,
                duration_us,
                error: (!error.is_empty()).then(|| error.to_owned()),
                masked: running.masked,
                columns: running.columns.to_vec(),
                sample: running.sample,
            });
        }
    }

    /// The statement the front response belongs to, if it is recorded.
    pub(super) fn front_running(&mut self) -> Option<&mut Running> {
        match self.tracker.pending.front_mut() {
            Some(Pending::Execute {
                running: Some(r), ..
            })
            | Some(Pending::Query(Some(r))) => Some(r),
            _ => None,
        }
    }

    /// Keeps a result's column names for the recording.
    pub(super) fn note_columns(&mut self, layout: &Layout) {
        if let Some(running) = self.front_running() {
            running.columns = Arc::clone(&layout.columns);
            running.sample.clear();
        }
    }

    /// Whether the statement at the front still records the rows it returns.
    pub(super) fn sampling(&mut self) -> bool {
        let limit = self.recording.result_rows();
        self.front_running().is_some_and(|r| r.sample.len() < limit)
    }

    /// Keeps a row, as the client receives it, while the sample has room.
    pub(super) fn sample_values<'v>(
        &mut self,
        values: impl ExactSizeIterator<Item = Option<&'v [u8]>>,
    ) {
        let limit = self.recording.result_rows();
        let Some(running) = self.front_running() else {
            return;
        };
        if running.sample.len() < limit {
            running.sample.push_row(values);
        }
    }
}

/// Whether a CommandComplete tag is a row change's (`INSERT 0 1`,
/// `UPDATE 3`, `DELETE 0`, `MERGE 2`, `COPY 5`): its statement defined no
/// schema object.
fn row_change(tag: &[u8]) -> bool {
    [&b"INSERT "[..], b"UPDATE ", b"DELETE ", b"MERGE ", b"COPY "]
        .iter()
        .any(|p| tag.starts_with(p))
}
