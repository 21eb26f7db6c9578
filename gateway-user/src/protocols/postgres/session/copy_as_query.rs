//! `COPY … TO STDOUT` on a target with masking rules, run as its query
//! (see [`copy_out`]): what is sent in the COPY's place, and the portal's
//! answers turned into the COPY the client asked for.
use super::*;
use crate::protocols::postgres::{copy_out::encode::Encoder, tracker::CopyRun};

impl Session<'_> {
    /// The COPY `running` is, if it must run as its query: `Err` when it
    /// cannot (its rows could not be masked, so it must not run at all).
    pub(super) fn copy_to_run(&self, running: &Running) -> Result<Option<CopyOut>, String> {
        if self.masking.is_empty() {
            return Ok(None);
        }
        // A cursor's portal (no classification) runs no COPY: the server
        // refuses `DECLARE … CURSOR FOR COPY`.
        let Some(classification) = running.classification.as_ref() else {
            return Ok(None);
        };
        if !classification
            .statements
            .iter()
            .any(|s| s.command == "COPY")
        {
            return Ok(None);
        }
        copy_out::masked_copy(&running.sql)
    }

    /// Sends, in place of `running`'s COPY, its query as a portal of the
    /// gateway's: Close of any leftover of the name (a run an error cut
    /// short), Parse, Bind (binary results for a binary COPY) and
    /// Describe, then a Flush; the client's messages wait meanwhile. Only
    /// once the portal's description came and passed the checks that need
    /// it ([`Self::copy_described`]) does its Execute go: found in review,
    /// a COPY refused on its description after its Execute was sent had
    /// already run (a DELETE's rows were gone, and its transaction went
    /// on as if nothing had failed). `sync`: the COPY came as a simple
    /// Query, which a Sync of the gateway's ends as the Query would have.
    /// `portal_ran`: see [`CopyRun::portal_ran`].
    pub(super) fn run_copy_as_query(
        &mut self,
        mut running: Running,
        copy: CopyOut,
        sync: bool,
        portal_ran: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) {
        // An earlier message of the client's batch failed: the server
        // discards everything up to the client's Sync, which must not wait
        // behind a description that will never come.
        if self.tracker.is_discarding() {
            self.tracker.push(Pending::Execute {
                portal: String::new(),
                running: Some(running),
                plan: None,
                ran: None,
            });
            return;
        }
        let name = &self.copy_name;
        let binary = matches!(copy.format, CopyFormat::Binary);
        let out = &mut self.to_upstream;
        push_close_statement(out, name);
        push_parse(out, name, &copy.query);
        // One format code for every column.
        push_bind(out, name, name, &[i16::from(binary)]);
        push_describe_portal(out, name);
        push_flush(out);
        if let Some(ran) = &portal_ran {
            ran.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        running.copy = Some(Box::new(CopyRun {
            copy,
            encoder: None,
            portal_ran,
        }));
        self.tracker.push(Pending::Own(3));
        self.tracker.push(Pending::Describe {
            portal: Some(name.clone()),
            statement: None,
            swallow: true,
        });
        self.tracker.push(Pending::Execute {
            portal: name.clone(),
            running: Some(running),
            plan: None,
            ran: None,
        });
        self.copy_waiting = Some(sync);
    }

    /// The portal's description came (`None`: NoData): its Execute goes,
    /// and the client gets the CopyOutResponse (and header); or, when the
    /// COPY cannot be sent as asked, an Execute of a portal that does not
    /// exist goes instead, so the server fails (and skips to the Sync, or
    /// aborts the transaction) exactly as it would have for the COPY, and
    /// the client gets the gateway's error in its place.
    pub(super) async fn copy_described(&mut self, described: Option<(&Bytes, &Layout)>) {
        let Some(sync) = self.copy_waiting.take() else {
            return;
        };
        let encoder = match described {
            Some((description, layout)) => self.copy_encoder(description, layout).await,
            None => Err("its query returns no rows".to_owned()),
        };
        match encoder {
            Ok((encoder, header)) => {
                put_message(&mut self.to_client, b'H', &encoder.response());
                if let Some(header) = header {
                    put_message(&mut self.to_client, b'd', &header);
                }
                let columns: Arc<[String]> = match &described {
                    Some((_, layout)) => encoder
                        .kept()
                        .iter()
                        .filter_map(|&i| layout.columns.get(i).cloned())
                        .collect(),
                    None => Arc::default(),
                };
                if let Some(running) = self.front_running() {
                    running.columns = columns;
                }
                if let Some(run) = self.front_copy() {
                    run.encoder = Some(encoder);
                }
                let (name, out) = (&self.copy_name, &mut self.to_upstream);
                push_execute(out, name);
                push_close_portal(out, name);
                push_close_statement(out, name);
                self.tracker.push(Pending::Own(2));
            }
            Err(why) => {
                warn!(flow_id = self.flow.id, "COPY TO STDOUT refused: {why}");
                let nonce = self.deny(copy_refusal(&why));
                push_execute(&mut self.to_upstream, &nonce);
            }
        }
        if sync {
            push_sync(&mut self.to_upstream);
            self.tracker.push(Pending::Sync);
        }
    }

    /// After an error: if it made the server skip the gateway's COPY
    /// batch (its own, or an earlier message of the client's), the wait
    /// for its description is over, and a simple Query's Sync goes now
    /// (the server discards until one).
    pub(super) fn copy_skipped(&mut self) {
        let Some(sync) = self.copy_waiting else {
            return;
        };
        let ours_pending =
            self.tracker.pending.iter().any(
                |p| matches!(p, Pending::Execute { running: Some(r), .. } if r.copy.is_some()),
            );
        if ours_pending {
            return;
        }
        self.copy_waiting = None;
        if sync {
            push_sync(&mut self.to_upstream);
            self.tracker.push(Pending::Sync);
        }
    }

    /// Answers `running`'s COPY, which cannot run as its query, with an
    /// error in its place: `sync`, a simple Query (the server answers it
    /// with an error of the nonce and ReadyForQuery); else an Execute.
    pub(super) fn refuse_copy(&mut self, running: Running, why: &str, sync: bool) {
        warn!(flow_id = self.flow.id, "COPY TO STDOUT refused: {why}");
        self.complete(running, &format!("COPY refused: {why}"));
        if sync {
            self.refuse(HeldKind::Query, copy_refusal(why));
        } else {
            self.refuse_execute(copy_refusal(why));
        }
    }

    /// Whether the front entry is a COPY run as its query.
    pub(super) fn front_copy(&mut self) -> Option<&mut CopyRun> {
        match self.tracker.pending.front_mut() {
            Some(Pending::Execute {
                running: Some(r), ..
            }) => r.copy.as_deref_mut(),
            _ => None,
        }
    }

    /// How the COPY at the front is spelled, from its portal's
    /// description, and its header line; `Err`: why it cannot be sent.
    async fn copy_encoder(
        &mut self,
        description: &Bytes,
        layout: &Layout,
    ) -> Result<(Encoder, Option<Vec<u8>>), String> {
        // A reload emptied the masking rules since the COPY was sent: its
        // rows were planned under none.
        if layout.plan.is_none() {
            return Err("the masking rules changed as it started; run it again".into());
        }
        let Some(run) = self.front_copy() else {
            return Err("it cannot be matched to its statement".into());
        };
        let table = run.copy.table.clone();
        let format = run.copy.format.clone();
        let names: Vec<&str> = layout.columns.iter().map(String::as_str).collect();
        let keep = match table {
            Some(table) => self.table_columns(description, &table).await?,
            None => (0..names.len()).collect(),
        };
        let encoder = Encoder::new(format, &names, keep)?;
        let header = encoder.header(&names);
        Ok((encoder, header))
    }

    /// Which of a `COPY t`'s columns it sends, from their sources: the
    /// catalog's, by the OIDs the portal's own description gave (no name
    /// is looked up again). PostgreSQL copies a plain table only, and
    /// leaves its generated columns out (a listed one it refuses).
    async fn table_columns(
        &self,
        description: &Bytes,
        table: &TableCopy,
    ) -> Result<Vec<usize>, String> {
        let described = RowDescription::parse(description)
            .map_err(|_| "its description cannot be read".to_owned())?;
        let login = self.catalog_login();
        let catalog = self.catalog();
        let not_plain = || {
            format!(
                "cannot copy from \"{}\": it is not a plain table; try the COPY (SELECT ...) TO variant",
                table.name
            )
        };
        let mut keep = Vec::with_capacity(described.fields.len());
        for (i, field) in described.fields.iter().enumerate() {
            // A view's column comes from its base table, or from none.
            if field.table_oid == 0 {
                return Err(not_plain());
            }
            let source = catalog
                .source(field.table_oid, field.column_attr, &login)
                .await
                .map_err(|e| format!("its columns cannot be looked up: {e}"))?
                .ok_or_else(|| {
                    format!(
                        "cannot copy from \"{}\": the gateway cannot see it in the catalog (created in this transaction?)",
                        table.name
                    )
                })?;
            let named = source.table == table.name
                && table.schema.as_ref().is_none_or(|s| *s == source.schema);
            if !source.plain_table || !named {
                return Err(not_plain());
            }
            match (source.generated, table.columns_listed) {
                (false, _) => keep.push(i),
                (true, false) => {}
                (true, true) => {
                    return Err(format!(
                        "column \"{}\" is a generated column: generated columns cannot be used in COPY",
                        source.column
                    ));
                }
            }
        }
        Ok(keep)
    }

    /// One row of the COPY's query, masked by `plan`, to the client as a
    /// row of the COPY.
    pub(super) fn copy_row(&mut self, plan: &ResultPlan, frame: &Frame) {
        let Ok(row) = DataRow::parse(frame.body()) else {
            return self.upstream_malformed("a DataRow it cannot read");
        };
        let mut masked = std::mem::take(&mut self.masked_row);
        let changed = plan.mask(row.columns(), &mut masked);
        let values: Vec<Option<&[u8]>> = if changed {
            masked.values(row.columns()).collect()
        } else {
            row.columns().collect()
        };
        let encoded = self
            .front_copy()
            .and_then(|run| run.encoder.as_mut())
            .map(|encoder| {
                let line = encoder.row(&values);
                // What the client gets is what the recording keeps: not a
                // generated column the COPY leaves out.
                let sent: Vec<Option<&[u8]>> = encoder
                    .kept()
                    .iter()
                    .map(|&i| values.get(i).copied().flatten())
                    .collect();
                (line, sent)
            });
        let Some((line, sent)) = encoded else {
            self.masked_row = masked;
            return self.out_of_step("a DataRow before its COPY began");
        };
        put_message(&mut self.to_client, b'd', &line);
        self.summary.bytes_down += line.len() as u64 + 5;
        self.count_row(changed);
        self.sample_values(sent.into_iter());
        self.masked_row = masked;
    }

    /// The query's CommandComplete: the COPY's end (binary COPY's trailer,
    /// CopyDone, `COPY n`) to the client, and the statement's completion.
    pub(super) fn copy_done(&mut self) {
        let Some(Pending::Execute {
            running: Some(mut running),
            ..
        }) = self.tracker.pending.pop_front()
        else {
            return;
        };
        let Some(mut run) = running.copy.take() else {
            return;
        };
        // Its Execute went only with an encoder.
        let Some(encoder) = run.encoder.as_mut() else {
            return self.out_of_step("a CommandComplete for a COPY never begun");
        };
        if let Some(trailer) = encoder.finish() {
            put_message(&mut self.to_client, b'd', &trailer);
        }
        put_message(&mut self.to_client, b'c', &[]);
        let tag = format!("COPY {}\0", running.rows);
        put_message(&mut self.to_client, b'C', tag.as_bytes());
        self.complete(running, "");
    }

    /// Ends a COPY the server began on its own (one the gateway did not
    /// run as its query while masking is on: begun before a reload turned
    /// masking on): the client gets an error in its place and the rest of
    /// the copy stream is dropped.
    pub(super) fn refuse_copy_out(&mut self, why: &str) {
        warn!(flow_id = self.flow.id, "COPY TO STDOUT refused: {why}");
        self.to_client.extend_from_slice(&copy_refusal(why));
        self.copy = CopyState::Refused;
    }
}

/// The error a client gets for a COPY TO STDOUT whose rows cannot be masked.
pub(super) fn copy_refusal(why: &str) -> Bytes {
    deny_error(
        "copy-out-masked",
        &format!(
            "COPY … TO STDOUT of masked data cannot be masked here: {why}; select the rows instead"
        ),
        "",
    )
}
