//! Masking on the way back: the plan for a result's columns (from the
//! catalog and the masking policy), masked DataRows, and what errors,
//! notices, notifications and reported settings may show.
use super::*;
use crate::protocols::postgres::{
    catalog::READS_ANYTHING,
    classify::{Access, Flag, StatementClass, TableRef, is_dangerous_function},
};

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

    /// Error and notice fields, notification payloads and parameter values
    /// carry data too: `SELECT email::int` echoes the email in its error,
    /// `current_setting(email)` or `email::regclass` name it as the setting
    /// or relation that does not exist, a unique violation names the
    /// duplicate in its detail, `pg_notify` and
    /// `set_config('application_name', …)` send any value back. With
    /// masking on, the detectors scan them; and where column rules mask
    /// data, see [`scrub_error_fields`] and [`scrub_setting`]. The message
    /// to send instead of `frame`, if any of it changed.
    pub(super) fn scrub_message(&self, frame: &Frame) -> Option<BytesMut> {
        let masking = &self.masking;
        if masking.is_empty() {
            return None;
        }
        let mut out = BytesMut::new();
        match frame.tag() {
            tag @ (b'E' | b'N') => {
                let fields = ErrorResponse::parse(frame.body()).ok()?.fields;
                let scrubbed = scrub_error_fields(masking, &fields)?;
                let fields = scrubbed.iter().map(|(c, v)| (*c, v.as_ref())).collect();
                let encoded = if tag == b'E' {
                    ErrorResponse { fields }.encode_into(&mut out)
                } else {
                    NoticeResponse { fields }.encode_into(&mut out)
                };
                encoded.ok()?;
            }
            b'A' => {
                let n = NotificationResponse::parse(frame.body()).ok()?;
                let channel = masking.scrub_text(n.channel);
                // A payload is any text a statement computed, from a row
                // as easily as a setting is (`pg_notify('c', salary::text)`),
                // and no detector knows a salary: withheld as those are. The
                // channel stays, so the client can still tell its
                // notifications apart.
                let payload = if masking.masks_columns() && !n.payload.is_empty() {
                    Some("***".to_owned())
                } else {
                    masking.scrub_text(n.payload)
                };
                if channel.is_none() && payload.is_none() {
                    return None;
                }
                NotificationResponse {
                    pid: n.pid,
                    channel: channel.as_deref().unwrap_or(n.channel),
                    payload: payload.as_deref().unwrap_or(n.payload),
                }
                .encode_into(&mut out)
                .ok()?;
            }
            b'S' => {
                let p = ParameterStatus::parse(frame.body()).ok()?;
                let value = scrub_setting(masking, p.name, p.value)?;
                ParameterStatus {
                    name: p.name,
                    value: &value,
                }
                .encode_into(&mut out)
                .ok()?;
            }
            _ => return None,
        }
        Some(out)
    }

    /// True, and the session ends, when a ParameterStatus reports a setting
    /// under which the server reads SQL differently from the gateway's
    /// parser (SET of it is refused, but a function may change it). What
    /// the client sent after the statement that changed it is already
    /// on its way: see the classifier's limits.
    pub(super) fn unsafe_setting(&mut self, frame: &Frame) -> bool {
        let Ok(p) = ParameterStatus::parse(frame.body()) else {
            return false;
        };
        let Some(why) = super::super::classify::lexer_setting_refusal(
            &p.name.to_ascii_lowercase(),
            Some(Some(p.value)),
        ) else {
            return false;
        };
        warn!(
            flow_id = self.flow.id,
            name = p.name,
            value = p.value,
            "the server changed a setting the gateway cannot read SQL under; ending the session"
        );
        self.summary.error = Some(format!("the server switched {} to {}", p.name, p.value));
        self.to_client.extend_from_slice(&fatal(
            "08P01",
            &format!(
                "chokepoint: the session set {} = {:?}: {why}, so the session ends",
                p.name, p.value
            ),
        ));
        self.upstream_broken = true;
        true
    }

    /// Ends the session: the upstream answered with `what` where nothing
    /// the gateway forwarded asked for it, so the gateway no longer knows
    /// which statement (and which masking plan) its rows belong to.
    pub(super) fn out_of_step(&mut self, what: &str) {
        warn!(
            flow_id = self.flow.id,
            what, "responses out of step with requests; ending the session"
        );
        self.upstream_malformed(&format!("{what} the gateway cannot match to a request"));
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

    /// What `description` (a RowDescription body) means for the rows that
    /// follow: their column names and masking plan. Cached by the exact
    /// bytes, so a prepared statement's executions (and a repeated query)
    /// skip parsing, catalog lookups and rule matching; a prepared
    /// statement's result layout cannot change under it (PostgreSQL fails
    /// the execution instead). `None`: the description cannot be read
    /// while masking is on, and the session is ending.
    ///
    /// `reading`: the column rule its statement's unsourced columns take
    /// ([`Session::reading_rule`]).
    pub(super) async fn layout(
        &mut self,
        description: &Bytes,
        reading: Option<Reading>,
    ) -> Option<Arc<Layout>> {
        self.drop_stale_plans();
        if let Some(known) = self.layouts.get(reading, description) {
            return Some(known);
        }
        let Ok(parsed) = RowDescription::parse(description) else {
            if self.masking.is_empty() {
                return Some(Arc::default());
            }
            self.upstream_malformed("a RowDescription it cannot read");
            return None;
        };
        let columns: Arc<[String]> = parsed.fields.iter().map(|f| f.name.to_owned()).collect();
        let (plan, complete) = if self.masking.is_empty() {
            (None, true)
        } else {
            let fields: Vec<_> = parsed
                .fields
                .iter()
                .map(|f| (f.name, f.table_oid, f.column_attr, f.type_oid, f.format))
                .collect();
            let (plan, complete) = self.plan_columns(&fields, reading).await;
            (Some(plan), complete)
        };
        let layout = Arc::new(Layout { columns, plan });
        // A plan made while the catalog could not be read falls back to
        // name rules; it is used once, not kept; nor one made while the
        // job's DDL may not be visible yet.
        if complete && !self.defined_code {
            self.layouts
                .insert(reading, description, Arc::clone(&layout));
        }
        Some(layout)
    }

    /// The column rule under which the unsourced columns of a result of
    /// `running` are redacted: one covering a table its statements name,
    /// read or written (`INSERT … SELECT … RETURNING` hands a written table's
    /// values back too). Every statement of a query string counts for
    /// each of its results: which statement a RowDescription belongs to is
    /// not tracked, and masking more is the safe direction. A statement
    /// the gateway did not classify counts as naming every table. A table
    /// named counts with its ancestors (a partition reads its parent's
    /// rows), from the catalog; if they cannot be looked up, as naming
    /// every table.
    pub(super) async fn reading_rule(
        &mut self,
        classification: Option<Arc<Classification>>,
    ) -> Option<Reading> {
        if !self.masking.has_column_rules() {
            return None;
        }
        self.drop_stale_plans();
        let every_table = self.masking.reading_rule([(None, None)]);
        let Some(classification) = classification else {
            // It may change data as well as read anything.
            return every_table.map(|rule| Reading {
                rule,
                changes_data: true,
            });
        };
        // Worked out once per statement and minute: a text of many
        // results, or a prepared statement run again and again, would
        // otherwise look its names up at every RowDescription (found in
        // review: quadratic work, and a catalog round trip per name each
        // time the name cache overflowed).
        if let Some((known, rule, at)) = &self.reading_memo
            && Arc::ptr_eq(known, &classification)
            && at.elapsed() < crate::protocols::postgres::catalog::MAX_AGE
        {
            return *rule;
        }
        let (rule, complete, own_code, direct) =
            self.reading_rule_of(&classification, every_table).await;
        if own_code {
            // Code of the database's own may run DDL itself (found in
            // review: a function that creates an overload of `lower`).
            self.schema_may_change();
        }
        // A change that can copy a stored value into a column it returns:
        // an UPDATE or MERGE (its SET reads the row), an upsert's DO
        // UPDATE, one that reads a table, a data-modifying CTE. An INSERT
        // of values (an ORM's `… RETURNING id`) copies nothing stored.
        // Reached any other way (a function, a view's or rule's reads), any
        // change may copy (found in review: `INSERT … VALUES (1,
        // first_email()) RETURNING note`).
        let changes_data = classification.statements.iter().any(|s| {
            s.class == StatementClass::Write
                && (!direct
                    || matches!(s.command, "UPDATE" | "MERGE")
                    || s.has_flag(Flag::DataModifyingCte)
                    || s.tables.iter().any(|t| t.access == Access::Read))
        });
        let reading = rule.map(|rule| Reading { rule, changes_data });
        // Not kept while the schema may change, nor for code of the
        // database's own, which must be noticed each time it runs.
        if complete && !own_code && !self.defined_code {
            self.reading_memo = Some((classification, reading, Instant::now()));
        }
        reading
    }

    /// [`Self::reading_rule`] worked out; `false` when a lookup failed
    /// (the answer is then every table's, and not kept); then whether the
    /// statement calls a function of the database's own; then whether the
    /// rule is that of a table the statement names itself (not one reached
    /// through a function, a view, a rule or a parent).
    async fn reading_rule_of(
        &self,
        classification: &Classification,
        every_table: Option<usize>,
    ) -> (Option<usize>, bool, bool, bool) {
        // A FETCH or MOVE reads what its cursor was declared over, which
        // its own text does not name (found in review: `DECLARE c CURSOR
        // FOR SELECT email FROM customers UNION ALL SELECT NULL`, then
        // `FETCH ALL FROM c`, returned the addresses raw). So does an
        // Execute of a cursor's portal, recorded under its DECLARE: a
        // function may have closed that portal and opened another of the
        // name over any query since.
        if classification
            .statements
            .iter()
            .any(|s| matches!(s.command, "FETCH" | "MOVE" | "DECLARE CURSOR"))
        {
            return (every_table, true, false, false);
        }
        let every = |name: &str| name == TableRef::EVERY;
        let mut named: Vec<(Option<&str>, Option<&str>)> = classification
            .tables()
            .map(|t| {
                (
                    t.schema.as_deref().filter(|s| !every(s)),
                    Some(t.name.as_str()).filter(|n| !every(n)),
                )
            })
            .collect();
        let login = self.catalog_login();
        let catalog = self.catalog();
        // A function of the database's own may read any table, and the
        // server reports what it returns as computed (found listed as
        // open: `SELECT * FROM customer_emails()` went out raw).
        let mut calls: Vec<(&str, bool)> = classification
            .statements
            .iter()
            .flat_map(|s| &s.functions)
            .map(|f| (f.name.as_str(), f.attribute))
            .collect();
        if !calls.is_empty() {
            calls.sort_unstable();
            calls.dedup();
            // What runs query text from a string may read anything (found
            // in review: `query_to_xml('select email …')` where a policy
            // allows dangerous functions).
            if self.defined_code || calls.iter().any(|(name, _)| is_dangerous_function(name)) {
                return (every_table, true, false, false);
            }
            if calls.len() > MAX_NAMES_LOOKED_UP {
                return (every_table, true, true, false);
            }
            match catalog.calls_database_function(&calls, &login).await {
                Ok(false) => {}
                Ok(true) => return (every_table, true, true, false),
                Err(_) => return (every_table, false, false, false),
            }
        }
        if let Some(rule) = self.masking.reading_rule(named.iter().copied()) {
            return (Some(rule), true, false, true);
        }
        named.sort_unstable();
        named.dedup();
        // Past this many names, the statement counts as naming every
        // table rather than cost a catalog query for each.
        if named.len() > MAX_NAMES_LOOKED_UP {
            return (every_table, true, false, false);
        }
        let mut ancestors = Vec::new();
        for (schema, name) in &named {
            let Some(name) = name else { continue };
            match catalog.ancestors_of_name(*schema, name, &login).await {
                Ok(found) => ancestors.push(found),
                // A job could make the lookup fail to get a rule skipped.
                Err(_) => return (every_table, false, false, false),
            }
        }
        // A relation that may read anything stands as every table.
        let any = |name: &str| name == READS_ANYTHING;
        let rule = self.masking.reading_rule(ancestors.iter().flat_map(|a| {
            a.iter().map(|(s, t)| {
                (
                    Some(s.as_str()).filter(|s| !any(s)),
                    Some(t.as_str()).filter(|t| !any(t)),
                )
            })
        }));
        (rule, true, false, false)
    }

    /// `(name, table OID, attribute number, type OID, format)` per column.
    /// Also whether every column's source could be looked up; when one
    /// could not and column rules exist, it is withheld (NULL). `reading`:
    /// see [`MaskingPolicy::plan_reading`].
    pub(super) async fn plan_columns(
        &self,
        fields: &[(&str, u32, i16, u32, i16)],
        reading: Option<Reading>,
    ) -> (Arc<ResultPlan>, bool) {
        let login = self.catalog_login();
        let catalog = self.catalog();
        let mut sources = Vec::with_capacity(fields.len());
        let mut unresolved = Vec::new();
        for (i, &(_, table_oid, attr, _, _)) in fields.iter().enumerate() {
            let source = catalog.source(table_oid, attr, &login).await;
            if source.is_err() {
                unresolved.push(i);
            }
            sources.push(source.ok().flatten());
        }
        let columns: Vec<ColumnInfo<'_>> = fields
            .iter()
            .zip(&sources)
            .map(|(&(name, _, _, type_oid, format), source)| ColumnInfo {
                source: source
                    .as_deref()
                    .map(|s| (s.schema.as_str(), s.table.as_str(), s.column.as_str())),
                ancestors: source.as_deref().map_or(&[], |s| &s.ancestors),
                output_name: name,
                type_oid,
                format,
            })
            .collect();
        let mut plan = self.masking.plan_reading(&columns, reading);
        if self.masking.has_column_rules() {
            for (i, source) in sources.iter().enumerate() {
                let rule = source.as_deref().and_then(|s| {
                    if self.defined_code && s.view {
                        // A view the job may have replaced in its open
                        // transaction (same OID, bases read before): only
                        // a ruled base column of its name is trusted
                        // (found in review: `CREATE OR REPLACE VIEW` over
                        // a ruled column, read in the same transaction).
                        view_rule(&self.masking, s)
                            .filter(|(_, same_name)| *same_name)
                            .or_else(|| self.masking.columns.first().map(|r| (r, false)))
                    } else {
                        view_rule(&self.masking, s)
                    }
                });
                if let Some((rule, same_name)) = rule {
                    // A renamed or computed value is redacted, as a value
                    // computed over a ruled table is: a partial or hash of
                    // it shows what the view chose.
                    let strategy = if same_name {
                        rule.strategy
                    } else {
                        crate::masking::Strategy::Redact
                    };
                    plan.mask_column_with(i, strategy, rule);
                }
            }
            // A whole-row reference (`SELECT c FROM customers c`) names its
            // table with attribute 0: its record holds every column, so a
            // rule on any of them masks it.
            for (i, &(_, table_oid, attr, _, _)) in fields.iter().enumerate() {
                if table_oid == 0 || attr != 0 {
                    continue;
                }
                match catalog.table_columns(table_oid, &login).await {
                    Ok(table) => {
                        if let Some(rule) = whole_row_rule(&self.masking, &table) {
                            plan.mask_column(i, rule);
                        }
                    }
                    Err(_) => unresolved.push(i),
                }
            }
            // A job could make the lookup fail (by using up the role's
            // connections, say) to get a column rule skipped.
            plan.withhold(unresolved.iter().copied());
        }
        (Arc::new(plan), unresolved.is_empty())
    }

    /// The catalog of this session's target, database and role.
    pub(super) fn catalog(&self) -> Arc<Catalog> {
        let (_, role, database, _) = &self.login;
        self.ctx
            .shared
            .catalog(&self.ctx.target.name, database, role)
    }

    /// At a CommandComplete: a data change, or a cursor's DECLARE (its
    /// FETCHes run the query), that called a function of the database's
    /// own may have run DDL the reading rule never saw, there being no
    /// RowDescription (found in review: `INSERT INTO sink VALUES
    /// (swap())`, a function replacing a view). Marks the session as
    /// [`Self::schema_may_change`] does.
    pub(super) async fn note_own_code_completed(&mut self) {
        if self.defined_code || !self.masking.has_column_rules() {
            return;
        }
        let Some(classification) = self.front_running().and_then(|r| r.classification.clone())
        else {
            return;
        };
        let mut calls: Vec<(&str, bool)> = classification
            .statements
            .iter()
            .filter(|s| s.class == StatementClass::Write || s.command == "DECLARE CURSOR")
            .flat_map(|s| &s.functions)
            .map(|f| (f.name.as_str(), f.attribute))
            .collect();
        if calls.is_empty() {
            return;
        }
        calls.sort_unstable();
        calls.dedup();
        let own = calls.len() > MAX_NAMES_LOOKED_UP || {
            let catalog = self.catalog();
            let login = self.catalog_login();
            catalog
                .calls_database_function(&calls, &login)
                .await
                .unwrap_or(true)
        };
        if own {
            self.schema_may_change();
        }
    }

    /// Drops the layouts and reading rule planned before another session's
    /// DDL made the catalogs forget.
    fn drop_stale_plans(&mut self) {
        let now = self.ctx.shared.schema_generation();
        if now != self.schema_seen {
            self.schema_seen = now;
            self.layouts = LayoutCache::default();
            self.reading_memo = None;
        }
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
}

/// Most distinct table names whose ancestors one statement looks up.
const MAX_NAMES_LOOKED_UP: usize = 32;

/// The column rule covering some column of a table whose whole row is a
/// result column, if any.
fn whole_row_rule<'p>(
    masking: &'p MaskingPolicy,
    table: &[crate::protocols::postgres::catalog::ColumnSource],
) -> Option<&'p ColumnRule> {
    table.iter().find_map(|c| {
        masking
            .column_rule(
                (c.schema.as_str(), c.table.as_str(), c.column.as_str()),
                &c.ancestors,
            )
            .or_else(|| view_rule(masking, c).map(|(rule, _)| rule))
    })
}

/// The column rule a view's column takes from the table columns the view
/// reads (found in review: PostgreSQL names the view as a view column's
/// source, so a rule on `customers.email` missed `SELECT email FROM
/// customer_view`). Which base column a view column is, the catalog does
/// not record: a column named like a ruled base column takes its rule,
/// and one named like none of them (`email AS contact`, `upper(email)`)
/// takes the first rule any of them has. One named like an unruled base
/// column (`id`) is kept as it is: a view built to hide a ruled value
/// under such a name needs CREATE, which copies a column out anyway (see
/// README). Also whether the rule is a same-named column's.
fn view_rule<'p>(
    masking: &'p MaskingPolicy,
    column: &crate::protocols::postgres::catalog::SourceColumn,
) -> Option<(&'p ColumnRule, bool)> {
    let bases = &column.view_bases;
    let rule_of = |(schema, table, name): &(String, String, String)| {
        masking.column_rule((schema.as_str(), table.as_str(), name.as_str()), &[])
    };
    let same_name = || bases.iter().filter(|b| b.2 == column.column);
    if let Some(rule) = same_name().find_map(rule_of) {
        return Some((rule, true));
    }
    // A view that may read any table (it calls a function of the
    // database's own, or nests past the lookup's depth): any of its
    // columns may be any value (found in review: `CREATE VIEW v AS SELECT
    // customer_emails() AS contact` read raw).
    if bases.iter().any(|b| b.0 == READS_ANYTHING) {
        return masking.columns.first().map(|rule| (rule, false));
    }
    if same_name().next().is_some() {
        return None;
    }
    bases.iter().find_map(rule_of).map(|rule| (rule, false))
}

/// An error's or notice's fields as the client may see them, `None` when
/// nothing changed. The detectors scan every text field. Where column (or
/// name) rules exist, the detail is withheld and the quoted parts of the
/// message and context become `***`, whatever the SQLSTATE: nearly any
/// runtime error can quote a value computed from a row (a class 22 bad
/// input, a class 23 duplicate key, a 42704 unrecognized setting or 42P01
/// unknown relation from `current_setting(email)` or `email::regclass`, a
/// 3F000 unknown schema, a RAISE with any code), and only the column rules
/// know which values are sensitive. Severity, code, position and source
/// location are the server's own and stay, so the error keeps its shape.
/// The gateway's own errors never come through here.
fn scrub_error_fields<'a>(
    masking: &MaskingPolicy,
    fields: &[(u8, &'a str)],
) -> Option<Vec<(u8, Cow<'a, str>)>> {
    let values_quoted = masking.masks_columns();
    let mut changed = false;
    let mut scrubbed: Vec<(u8, Cow<'a, str>)> = Vec::with_capacity(fields.len());
    for &(code, value) in fields {
        if matches!(code, b'S' | b'V' | b'C' | b'P' | b'p' | b'F' | b'L' | b'R') {
            scrubbed.push((code, Cow::Borrowed(value)));
            continue;
        }
        // The detail, the context and an internal query can hold a value
        // unquoted (found in review: `email::json` fails with the context
        // `JSON data, line 1: alice…`).
        if values_quoted && matches!(code, b'D' | b'W' | b'q') {
            changed = true;
            scrubbed.push((code, Cow::Borrowed(WITHHELD)));
            continue;
        }
        let mut value = Cow::Borrowed(value);
        if values_quoted
            && matches!(code, b'M' | b'H')
            && let Some(redacted) = redact_quoted(&value)
        {
            value = Cow::Owned(redacted);
            changed = true;
        }
        if let Some(clean) = masking.scrub_text(&value) {
            value = Cow::Owned(clean);
            changed = true;
        }
        scrubbed.push((code, value));
    }
    changed.then_some(scrubbed)
}

/// Reported settings a statement can set to any text: `set_config(
/// 'application_name', email, false)` would send the email back in a
/// ParameterStatus. (search_path is reported from PostgreSQL 18 on.)
const FREE_TEXT_SETTINGS: [&str; 2] = ["application_name", "search_path"];

/// The value a ParameterStatus reported after startup may carry, `None`
/// when it goes as it is. Where column (or name) rules exist, a free-text
/// setting's value is withheld as `***`: it may have been set from a row,
/// and no client needs it back (those a driver reads, such as
/// client_encoding or DateStyle, take only values the server knows).
/// Otherwise the detectors scan it.
fn scrub_setting<'a>(masking: &MaskingPolicy, name: &str, value: &'a str) -> Option<Cow<'a, str>> {
    let free_text = FREE_TEXT_SETTINGS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
        // A POSIX zone spec (`<ALICE>+0`) carries any letters (found in
        // review); drivers read the zone, so a zone name the host's
        // tzdata knows goes as it is.
        || (name.eq_ignore_ascii_case("TimeZone") && !is_zone_name(value));
    if masking.masks_columns() && !value.is_empty() && free_text {
        return Some(Cow::Borrowed("***"));
    }
    masking.scrub_text(value).map(Cow::Owned)
}

/// Whether `value` names a zone of the host's tzdata (`UTC`,
/// `Europe/Paris`, `Etc/GMT+3`): no spec a job could spell a value in.
fn is_zone_name(value: &str) -> bool {
    value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
        && !value.starts_with('/')
        && !value.contains("..")
        && std::path::Path::new("/usr/share/zoneinfo")
            .join(value)
            .is_file()
}

/// What a withheld error detail, context or internal query reads.
const WITHHELD: &str = "chokepoint: withheld (it may quote masked values)";

/// `text` with everything from its first double quote to its last
/// replaced by `"***"`; `None` when it has none. Quotes are not paired: a
/// value may hold quotes itself (found in review: `('"' || email)::int`
/// put the email outside the pairs).
fn redact_quoted(text: &str) -> Option<String> {
    let first = text.find(QUOTES)?;
    // An odd count: the last quote opens a part that runs to the end.
    let closed = text.matches(QUOTES).count().is_multiple_of(2);
    let last = text.rfind(QUOTES).filter(|&last| closed && last > first);
    let rest = last.map_or("", |last| {
        let width = text[last..].chars().next().map_or(1, char::len_utf8);
        &text[last + width..]
    });
    Some(format!("{}\"***\"{rest}", &text[..first]))
}

/// What the server's messages quote with: `"` in English, and in its
/// translations (`lc_messages`) « », » «, „ “, “ ”, 「 」, 『 』 (found in
/// review: a server speaking French quoted values in « »).
const QUOTES: &[char] = &['"', '«', '»', '„', '“', '”', '「', '」', '『', '』'];

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::{WITHHELD, redact_quoted, scrub_error_fields, scrub_setting};
    use crate::masking::{ColumnRule, MaskingPolicy, Strategy};

    fn emails_masked() -> MaskingPolicy {
        MaskingPolicy {
            columns: vec![
                ColumnRule::parse("customers.email", Strategy::Redact, "emails").unwrap(),
            ],
            ..MaskingPolicy::default()
        }
    }

    fn field<'a>(fields: &'a [(u8, Cow<'_, str>)], code: u8) -> Option<&'a str> {
        fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_ref())
    }

    #[test]
    fn errors_of_every_class_lose_quoted_values_where_column_rules_exist() {
        let masking = emails_masked();
        for (code, message, expected) in [
            (
                "42704",
                r#"unrecognized configuration parameter "alice@example.com""#,
                r#"unrecognized configuration parameter "***""#,
            ),
            (
                "42P01",
                r#"relation "bob@example.org" does not exist"#,
                r#"relation "***" does not exist"#,
            ),
            (
                "3F000",
                r#"schema "alice@example" does not exist"#,
                r#"schema "***" does not exist"#,
            ),
            (
                "42883",
                r#"function "alice@example.com" does not exist"#,
                r#"function "***" does not exist"#,
            ),
            (
                "22P02",
                r#"invalid input syntax for type integer: "alice@example.com""#,
                r#"invalid input syntax for type integer: "***""#,
            ),
        ] {
            let fields = [
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', code),
                (b'M', message),
                (b'D', "Key (email)=(alice@example.com) already exists."),
                (
                    b'W',
                    r#"SQL function "f" statement 1, value "alice@example.com""#,
                ),
                (b'F', "namespace.c"),
            ];
            let scrubbed = scrub_error_fields(&masking, &fields).expect("scrubbed");
            assert_eq!(field(&scrubbed, b'M'), Some(expected), "{code}");
            assert_eq!(field(&scrubbed, b'D'), Some(WITHHELD), "{code}");
            assert_eq!(field(&scrubbed, b'W'), Some(WITHHELD), "{code}");
            // The error keeps its shape: severity, code and source stay.
            assert_eq!(field(&scrubbed, b'C'), Some(code));
            assert_eq!(field(&scrubbed, b'S'), Some("ERROR"));
            assert_eq!(field(&scrubbed, b'F'), Some("namespace.c"));
            assert_eq!(scrubbed.len(), fields.len());
        }
    }

    #[test]
    fn errors_go_untouched_without_column_rules_or_quotes() {
        let fields = [
            (b'S', "ERROR"),
            (b'C', "42P01"),
            (b'M', r#"relation "bob@example.org" does not exist"#),
        ];
        assert!(scrub_error_fields(&MaskingPolicy::default(), &fields).is_none());
        let plain = [
            (b'S', "ERROR"),
            (b'C', "57014"),
            (b'M', "canceling statement due to user request"),
        ];
        assert!(scrub_error_fields(&emails_masked(), &plain).is_none());
    }

    #[test]
    fn free_text_settings_are_withheld_where_column_rules_exist() {
        let masking = emails_masked();
        assert_eq!(
            scrub_setting(&masking, "application_name", "alice@example.com").as_deref(),
            Some("***")
        );
        assert_eq!(
            scrub_setting(&masking, "search_path", "\"alice@example.com\"").as_deref(),
            Some("***")
        );
        // Settings drivers read keep their value.
        assert_eq!(scrub_setting(&masking, "DateStyle", "ISO, MDY"), None);
        assert_eq!(scrub_setting(&masking, "client_encoding", "UTF8"), None);
        // A zone tzdata names goes; a POSIX spec, which can spell anything,
        // does not (found in review).
        if std::path::Path::new("/usr/share/zoneinfo/UTC").is_file() {
            assert_eq!(scrub_setting(&masking, "TimeZone", "UTC"), None);
        }
        for spec in [
            "<ALICEAEXAMPLEBCOM>+0",
            "ALICE+0",
            "../../etc/passwd",
            "/etc/passwd",
        ] {
            assert_eq!(
                scrub_setting(&masking, "TimeZone", spec).as_deref(),
                Some("***"),
                "{spec}"
            );
        }
        assert_eq!(
            scrub_setting(
                &MaskingPolicy::default(),
                "application_name",
                "alice@example.com"
            ),
            None
        );
    }

    #[test]
    fn a_whole_row_takes_the_rule_of_any_of_its_columns() {
        use crate::protocols::postgres::catalog::SourceColumn;
        use std::sync::Arc;

        let column = |table: &str, column: &str, parent: Option<&str>| {
            Arc::new(SourceColumn {
                schema: "public".into(),
                table: table.into(),
                column: column.into(),
                ancestors: parent
                    .map(|p| vec![("public".to_owned(), p.to_owned())])
                    .unwrap_or_default()
                    .into(),
                generated: false,
                plain_table: true,
                view: false,
                view_bases: std::sync::Arc::default(),
            })
        };
        let masking = MaskingPolicy {
            columns: vec![ColumnRule::parse("customers.salary", Strategy::Redact, "pay").unwrap()],
            ..MaskingPolicy::default()
        };
        let customers = [
            column("customers", "id", None),
            column("customers", "salary", None),
        ];
        let rule = super::whole_row_rule(&masking, &customers).expect("salary");
        assert_eq!(&*rule.name, "pay");
        let partition = [column("customers_2026", "salary", Some("customers"))];
        assert!(super::whole_row_rule(&masking, &partition).is_some());
        let orders = [
            column("orders", "id", None),
            column("orders", "total", None),
        ];
        assert!(super::whole_row_rule(&masking, &orders).is_none());
        assert!(super::whole_row_rule(&masking, &[]).is_none());
    }

    #[test]
    fn quoted_parts_are_redacted() {
        assert_eq!(
            redact_quoted(r#"invalid input syntax for type integer: "alice@x.io""#).as_deref(),
            Some(r#"invalid input syntax for type integer: "***""#)
        );
        assert_eq!(
            redact_quoted(r#"a "b" c "d"#).as_deref(),
            Some(r#"a "***""#)
        );
        // Translated messages quote otherwise.
        assert_eq!(
            redact_quoted("syntaxe en entrée invalide pour le type integer : « alice@x.io »")
                .as_deref(),
            Some(r#"syntaxe en entrée invalide pour le type integer : "***""#)
        );
        assert_eq!(
            redact_quoted("型integerに対する無効な入力構文: 「alice@x.io」").as_deref(),
            Some(r#"型integerに対する無効な入力構文: "***""#)
        );
        // Found in review: a value that starts with a quote.
        assert_eq!(
            redact_quoted(r#"invalid input syntax for type integer: ""alice@x.io""#).as_deref(),
            Some(r#"invalid input syntax for type integer: "***""#)
        );
        assert_eq!(
            redact_quoted(r#"column "a" of relation "t" does not exist"#).as_deref(),
            Some(r#"column "***" does not exist"#)
        );
        assert_eq!(redact_quoted("no quotes"), None);
    }
}
