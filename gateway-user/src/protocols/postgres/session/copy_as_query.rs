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
    /// short), Parse, Bind (binary results for a binary COPY), Describe,
    /// Execute, then Close of both. `sync`: the COPY came as a simple
    /// Query, which a Sync of the gateway's ends as the Query would have.
    /// The name is the session's own, which no job can guess.
    pub(super) fn run_copy_as_query(&mut self, mut running: Running, copy: CopyOut, sync: bool) {
        let name = &self.copy_name;
        let binary = matches!(copy.format, CopyFormat::Binary);
        let out = &mut self.to_upstream;
        push_close_statement(out, name);
        push_parse(out, name, &copy.query);
        // One format code for every column.
        push_bind(out, name, name, &[i16::from(binary)]);
        push_describe_portal(out, name);
        push_execute(out, name);
        push_close_portal(out, name);
        push_close_statement(out, name);
        if sync {
            push_sync(out);
        }
        running.copy = Some(Box::new(CopyRun {
            copy,
            encoder: None,
            refused: false,
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
        self.tracker.push(Pending::Own(2));
        if sync {
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

    /// The portal's RowDescription (`layout`, `description`) came: what
    /// the COPY sends is known, and the client gets its CopyOutResponse
    /// (and header), or an error in its place.
    pub(super) async fn start_copy(&mut self, description: &Bytes, layout: &Layout) {
        let Some(run) = self.front_copy() else {
            return;
        };
        let table = run.copy.table.clone();
        let format = run.copy.format.clone();
        let names: Vec<&str> = layout.columns.iter().map(String::as_str).collect();
        let keep = match table {
            Some(table) => self.table_columns(description, &table).await,
            None => Ok((0..names.len()).collect()),
        };
        let encoder = keep.and_then(|keep| Encoder::new(format, &names, keep));
        let encoder = match encoder {
            Ok(encoder) => encoder,
            Err(why) => return self.refuse_started_copy(&why),
        };
        put_message(&mut self.to_client, b'H', &encoder.response());
        if let Some(header) = encoder.header(&names) {
            put_message(&mut self.to_client, b'd', &header);
        }
        if let Some(run) = self.front_copy() {
            run.encoder = Some(encoder);
        }
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
        let mut keep = Vec::with_capacity(described.fields.len());
        for (i, field) in described.fields.iter().enumerate() {
            let source = catalog
                .source(field.table_oid, field.column_attr, &login)
                .await
                .map_err(|e| format!("its columns cannot be looked up: {e}"))?
                .ok_or_else(|| format!("cannot copy from \"{}\"", table.name))?;
            if !source.plain_table {
                return Err(format!(
                    "cannot copy from \"{}\": it is not a plain table; try the COPY (SELECT ...) TO variant",
                    table.name
                ));
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
        let line = self
            .front_copy()
            .and_then(|run| run.encoder.as_mut())
            .map(|encoder| encoder.row(&values));
        let Some(line) = line else {
            self.masked_row = masked;
            return self.out_of_step("a DataRow before its COPY began");
        };
        put_message(&mut self.to_client, b'd', &line);
        self.summary.bytes_down += line.len() as u64 + 5;
        self.count_row(changed);
        self.sample_values(values.into_iter());
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
        if run.refused {
            return self.complete(running, "COPY refused");
        }
        let Some(encoder) = run.encoder.as_mut() else {
            // No RowDescription: the query returns no rows (a COPY's
            // always does), and no CopyOutResponse went out.
            let why = "its query returns no rows";
            self.to_client.extend_from_slice(&copy_refusal(why));
            return self.complete(running, &format!("COPY refused: {why}"));
        };
        if let Some(trailer) = encoder.finish() {
            put_message(&mut self.to_client, b'd', &trailer);
        }
        put_message(&mut self.to_client, b'c', &[]);
        let tag = format!("COPY {}\0", running.rows);
        put_message(&mut self.to_client, b'C', tag.as_bytes());
        self.complete(running, "");
    }

    /// Refuses the COPY at the front once its columns are known: the
    /// client gets an error in its place, and the portal's rows and
    /// completion are dropped. (Behind an Execute, what the client
    /// pipelined after it still runs: the server saw no error.)
    fn refuse_started_copy(&mut self, why: &str) {
        warn!(flow_id = self.flow.id, "COPY TO STDOUT refused: {why}");
        self.to_client.extend_from_slice(&copy_refusal(why));
        if let Some(run) = self.front_copy() {
            run.refused = true;
        }
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
