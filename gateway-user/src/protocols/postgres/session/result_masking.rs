//! Masking on the way back: the plan for a result's columns (from the
//! catalog and the masking policy), masked DataRows, and COPY TO STDOUT
//! rows masked or refused.
use super::*;

impl Session<'_> {
    /// Forwards a DataRow through its masking plan, writing a masked row
    /// straight into the client's buffer. A row that cannot be read (the
    /// upstream broke the protocol) is not forwarded at all: the session
    /// ends rather than let unread values through.
    pub(super) fn forward_masked(&mut self, plan: &ResultPlan, frame: &Frame) {
        let Ok(row) = DataRow::parse(frame.body()) else {
            return self.upstream_malformed("a DataRow it cannot read");
        };
        let mut masked = std::mem::take(&mut self.masked_row);
        if plan.mask(row.columns(), &mut masked) {
            let start = self.to_client.len();
            if DataRow::encode_columns(masked.values(row.columns()), &mut self.to_client).is_err() {
                self.to_client.truncate(start);
                self.masked_row = masked;
                return self.upstream_malformed("a DataRow too large to mask");
            }
            self.summary.bytes_down += (self.to_client.len() - start) as u64;
            // What the client gets is what the recording keeps.
            self.sample_values(masked.values(row.columns()));
        } else {
            frame.encode_into(&mut self.to_client);
            self.summary.bytes_down += frame.raw().len() as u64;
            self.sample_values(row.columns());
        }
        self.masked_row = masked;
    }

    /// Ends the session: the upstream sent `what`.
    pub(super) fn upstream_malformed(&mut self, what: &str) {
        self.summary.error = Some(format!("upstream sent {what}"));
        self.to_client.extend_from_slice(&fatal(
            "08P01",
            "chokepoint: the upstream server sent a message the gateway cannot mask",
        ));
        self.upstream_broken = true;
    }

    /// The masking plan of the Execute at the front, computed at its first
    /// row from the layout the gateway asked for.
    pub(super) async fn execute_plan(&mut self) -> Option<Arc<ResultPlan>> {
        let Some(Pending::Execute { layout, plan, .. }) = self.tracker.pending.front() else {
            return None;
        };
        if let Some(plan) = plan {
            return Some(plan.clone());
        }
        let layout = layout.clone()?;
        let computed = self.plan_for(&layout).await;
        if let Some(Pending::Execute { plan, .. }) = self.tracker.pending.front_mut() {
            plan.clone_from(&computed);
        }
        computed
    }

    /// Resolves each column's source table and asks the masking policy.
    pub(super) async fn plan_for(&self, body: &Bytes) -> Option<Arc<ResultPlan>> {
        if self.ctx.masking.is_empty() {
            return None;
        }
        let description = RowDescription::parse(body).ok()?;
        let fields: Vec<_> = description
            .fields
            .iter()
            .map(|f| (f.name, f.table_oid, f.column_attr, f.type_oid, f.format))
            .collect();
        Some(self.plan_columns(&fields).await)
    }

    /// `(name, table OID, attribute number, type OID, format)` per column.
    pub(super) async fn plan_columns(
        &self,
        fields: &[(&str, u32, i16, u32, i16)],
    ) -> Arc<ResultPlan> {
        let login = self.catalog_login();
        let catalog = self.ctx.shared.catalog(&self.ctx.target.name);
        let mut sources = Vec::with_capacity(fields.len());
        for &(_, table_oid, attr, _, _) in fields {
            sources.push(catalog.source(table_oid, attr, &login).await);
        }
        let columns: Vec<ColumnInfo<'_>> = fields
            .iter()
            .zip(&sources)
            .map(|(&(name, _, _, type_oid, format), source)| ColumnInfo {
                source: source
                    .as_deref()
                    .map(|(s, t, c)| (s.as_str(), t.as_str(), c.as_str())),
                output_name: name,
                type_oid,
                format,
            })
            .collect();
        Arc::new(self.ctx.masking.plan(&columns))
    }

    pub(super) fn catalog_login(&self) -> CatalogLogin<'_> {
        let (route, role, database, password) = &self.login;
        CatalogLogin {
            route,
            user: role,
            database,
            password,
        }
    }

    /// A CopyOutResponse arrived: how its rows are masked. `Ok(None)`:
    /// nothing to mask. `Err`: the rows cannot be masked and must not
    /// reach the client.
    pub(super) async fn copy_out_rows(&mut self) -> Result<Option<CopyRows>, String> {
        if self.ctx.masking.is_empty() {
            return Ok(None);
        }
        let (sql, index) = match self.tracker.pending.front() {
            Some(Pending::Query(Some(r))) => (r.sql.clone(), self.copies_seen),
            Some(Pending::Execute {
                running: Some(r), ..
            }) => (r.sql.clone(), 0),
            _ => return Err("the COPY cannot be matched to its statement".into()),
        };
        self.copies_seen += 1;
        let copy = copy_out::copy_outs(&sql)?
            .into_iter()
            .nth(index)
            .ok_or("the COPY cannot be matched to its statement")?;
        let format = copy.format?;
        let described = self
            .ctx
            .shared
            .catalog(&self.ctx.target.name)
            .describe(&copy.layout_sql, &self.catalog_login())
            .await
            .map_err(|e| format!("its columns cannot be described ({e})"))?;
        let fields: Vec<_> = described
            .iter()
            .map(|c| (c.name.as_str(), c.table_oid, c.column_attr, c.type_oid, 0))
            .collect();
        let plan = self.plan_columns(&fields).await;
        CopyRows::new(plan, format).map(Some)
    }

    /// Ends a COPY whose rows may not be sent: the client gets an error in
    /// its place and the rest of the copy stream is dropped.
    pub(super) fn refuse_copy_out(&mut self, why: &str) {
        warn!(flow_id = self.flow.id, "COPY TO STDOUT refused: {why}");
        self.to_client.extend_from_slice(&deny_error(
            "copy-out-masked",
            &format!("COPY … TO STDOUT of masked data cannot be masked here: {why}; select the rows instead"),
            "",
        ));
        self.copy = CopyState::Refused;
    }
}
