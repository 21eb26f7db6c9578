//! Column provenance for masking: a RowDescription names each column's
//! table by OID and attribute number, and this cache turns that into
//! `schema.table.column` with one catalog round trip per unseen table,
//! plus the tables it is a partition or inheritance child of: a column
//! rule on a partitioned table must cover a job that reads one partition.
//!
//! OIDs are per database, so there is one catalog per target, database and
//! role (`PostgresShared::catalog`), each with its own connection; a policy
//! reload starts them all afresh. A table's entry is also looked up again
//! once it is [`MAX_AGE`] old: a table attached as a partition, or a column
//! renamed, after the gateway first saw it must reach the masks without
//! waiting for a reload.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_postgres::{
    Client, NoTls,
    types::{ToSql, Type},
};
use tracing::warn;

use super::{classify::DANGEROUS_FUNCTIONS, upstream::Route};

/// Where a result column comes from.
#[derive(Debug)]
pub struct SourceColumn {
    pub schema: String,
    pub table: String,
    pub column: String,
    /// `(schema, table)` of every ancestor of the table, nearest first.
    pub ancestors: Arc<[(String, String)]>,
    /// A generated column (`GENERATED ALWAYS AS …`): `COPY t` leaves it out.
    pub generated: bool,
    /// Its table is a plain one (a partition included), the only kind
    /// `COPY t TO` copies by name.
    pub plain_table: bool,
    /// A view or materialized view: its columns come from the relations
    /// its query reads (`view_bases`).
    pub view: bool,
    /// For a view's column: `(schema, table, column)` of every table
    /// column the view reads, through views it reads in turn. PostgreSQL
    /// names the view, not its base table, as a view column's source, and
    /// the catalog does not record which base column a view column is.
    pub view_bases: Arc<[(String, String, String)]>,
}

pub type ColumnSource = Arc<SourceColumn>;

/// Levels of `pg_inherits` and of views over views followed: PostgreSQL
/// sets no limit, and a deeper hierarchy than this is no partitioning
/// scheme anyone runs. Past it a relation counts as reading every table
/// (found in review: a job's chain of 66 views read a ruled column raw).
const MAX_ANCESTRY: i32 = 64;

/// What the lookups below answer, in place of a relation, for one that
/// may read any table: a chain deeper than [`MAX_ANCESTRY`], or a view or
/// rule that calls a function of the database's own (or a dangerous one,
/// which runs query text).
pub const READS_ANYTHING: &str = "*";

/// SQL: whether `pg_proc` row `p` is a function of the database's own,
/// which may read any table: not one PostgreSQL ships (OID below
/// `FirstNormalObjectId`), nor a member of an extension a superuser owns
/// (contrib and the like, installed by an administrator; a job that
/// creates a trusted extension owns it, and could add its own functions).
macro_rules! own_function {
    () => {
        "(p.oid >= 16384::oid AND NOT EXISTS ( \
            SELECT 1 FROM pg_catalog.pg_depend x \
            JOIN pg_catalog.pg_extension e ON e.oid = x.refobjid \
            JOIN pg_catalog.pg_roles o ON o.oid = e.extowner \
            WHERE x.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND x.objid = p.oid \
              AND x.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass \
              AND x.deptype = 'e' AND o.rolsuper))"
    };
}

/// SQL: whether the rules of relation `$rel` (those `$events` selects)
/// call a function that may read any table (see [`own_function!`];
/// `$dangerous` is a `text[]` of names).
macro_rules! rules_call_anything {
    ($rel:literal, $dangerous:literal, $events:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r \
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
               JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid \
               WHERE r.ev_class = ", $rel, $events, " AND (p.proname = ANY(", $dangerous, ") OR ",
            own_function!(),
            "))"
        )
    };
}

/// Entries kept before the cache starts over: a job allowed DDL could
/// otherwise grow it without end by creating tables, each seen once.
const MAX_COLUMNS: usize = 100_000;

/// How long a table's columns and ancestry are trusted: the longest a
/// partition attached (or a column renamed) after the first lookup goes
/// unmasked by its parent's rules. One query per table and minute costs
/// nothing next to the statements that make it.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// How long the catalog connection's server waits for a lock, and runs a
/// statement, before giving up: the session waits for the lookup, and
/// the lookup must not wait on something the session's own transaction
/// holds (found in review, when COPY layouts were described there).
const LOCK_TIMEOUT_MS: u32 = 2_000;
const STATEMENT_TIMEOUT_MS: u32 = 5_000;

/// The backstop for one lookup, from queueing on the connection to its
/// answer (connecting included): a server that ignores the timeouts
/// above, or a lookup queued behind a stuck one, fails rather than stall
/// its session.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a lookup that ran out of time reports.
/// A lookup that read the catalog across a job's DDL (see
/// [`Catalog::forget_all`]).
const CHANGED: &str = "the catalog changed while it was read";

const TIMED_OUT: &str = "the catalog lookup timed out, likely because this session's own \
     transaction holds a lock on the table (LOCK TABLE or uncommitted DDL)";

/// Cache of one database's table OIDs to column names, shared by the
/// sessions that log in to it as the same role.
#[derive(Default)]
pub struct Catalog {
    cache: Mutex<Cache>,
    client: tokio::sync::Mutex<Option<Client>>,
    /// Bumped by [`Catalog::forget_all`]: a lookup that was in flight
    /// across it may have read the catalog before a job's DDL was
    /// committed, and its answer is neither kept nor trusted.
    forgotten: AtomicU64,
}

#[derive(Default)]
struct Cache {
    tables: HashMap<u32, Table>,
    /// Columns held in `tables`, for [`MAX_COLUMNS`].
    columns: usize,
    /// Ancestors of the tables of a name, per schema (`None`: not
    /// qualified), and when they were read. By name first, so a lookup
    /// on every statement allocates nothing.
    named: HashMap<String, Vec<(Option<String>, Ancestors, Instant)>>,
    /// Entries in `named`, for [`MAX_NAMES`].
    names: usize,
    /// Per function name: whether the database has any function of that
    /// name, and any of its own (not shipped with PostgreSQL), and when
    /// that was read.
    functions: HashMap<String, ((bool, bool), Instant)>,
}

/// `(schema, table)` pairs.
pub type Ancestors = Arc<[(String, String)]>;

/// Names kept in [`Cache::named`] before it starts over.
const MAX_NAMES: usize = 10_000;

/// One table's columns as read at `loaded`; empty for an OID that is not
/// a table (dropped), remembered so it does not cost a query per row
/// description.
struct Table {
    loaded: Instant,
    columns: HashMap<i16, ColumnSource>,
}

impl Cache {
    /// What is known of `(oid, attnum)` if its table was read within
    /// [`MAX_AGE`]: `Some(None)` when it is not a column (system column,
    /// dropped table).
    fn fresh(&self, oid: u32, attnum: i16, now: Instant) -> Option<Option<ColumnSource>> {
        let table = self.tables.get(&oid)?;
        if now.saturating_duration_since(table.loaded) >= MAX_AGE {
            return None;
        }
        Some(table.columns.get(&attnum).cloned())
    }

    /// Every column of table `oid` if it was read within [`MAX_AGE`].
    fn fresh_table(&self, oid: u32, now: Instant) -> Option<Vec<ColumnSource>> {
        let table = self.tables.get(&oid)?;
        if now.saturating_duration_since(table.loaded) >= MAX_AGE {
            return None;
        }
        Some(table.columns.values().cloned().collect())
    }

    /// Replaces what is known of table `oid` with `sources` (by attnum), so
    /// a column dropped since the last read does not keep its name.
    fn store(&mut self, oid: u32, sources: Vec<(i16, ColumnSource)>, now: Instant) {
        if let Some(old) = self.tables.remove(&oid) {
            self.columns -= old.columns.len();
        }
        if self.columns + sources.len() > MAX_COLUMNS {
            // Forgetting costs only repeated lookups; plans already made
            // keep the names they resolved.
            self.tables.clear();
            self.columns = 0;
        }
        self.columns += sources.len();
        let columns = sources.into_iter().collect();
        self.tables.insert(
            oid,
            Table {
                loaded: now,
                columns,
            },
        );
    }
}

/// How to open the catalog connection (same role and database as the session).
pub struct CatalogLogin<'a> {
    pub route: &'a Route,
    pub user: &'a str,
    pub database: &'a str,
    pub password: &'a str,
}

impl Catalog {
    /// Source of `(table_oid, attnum)`, querying the upstream on a miss:
    /// `Ok(None)` when the OID is not a table column, `Err` when the lookup
    /// failed (the caller then withholds the column when column rules
    /// exist, applies name rules and detectors otherwise, and
    /// must not keep that fallback: the next lookup may succeed).
    pub async fn source(
        &self,
        table_oid: u32,
        attnum: i16,
        login: &CatalogLogin<'_>,
    ) -> Result<Option<ColumnSource>, String> {
        if table_oid == 0 {
            return Ok(None);
        }
        if let Some(hit) = self.cached(table_oid, attnum) {
            return Ok(hit);
        }
        if let Err(e) = self.load_table(table_oid, login).await {
            warn!(error = %e, table_oid, "catalog lookup failed; the table's columns are withheld (NULL) where column rules exist");
            return Err(e);
        }
        Ok(self.cached(table_oid, attnum).flatten())
    }

    /// Every column of table `table_oid` (none when it is not a table), for
    /// a whole-row reference (`SELECT c FROM customers c`: attribute 0),
    /// whose value carries them all.
    pub async fn table_columns(
        &self,
        table_oid: u32,
        login: &CatalogLogin<'_>,
    ) -> Result<Vec<ColumnSource>, String> {
        let cached = |catalog: &Self| {
            catalog
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .fresh_table(table_oid, Instant::now())
        };
        if let Some(columns) = cached(self) {
            return Ok(columns);
        }
        self.load_table(table_oid, login).await?;
        cached(self).ok_or_else(|| "the table's columns could not be read".to_owned())
    }

    /// Every ancestor (`pg_inherits`, any depth) of every table named
    /// `name` (in `schema`, or in any schema when it is not qualified: the
    /// job's search_path is not the catalog connection's, and any schema
    /// masks more, never less). A partition or child table named directly
    /// reads its parent's rows, and its parent's column rules cover a
    /// value computed from them (found in review: `SELECT email || ''
    /// FROM customers_2026` went out raw). So does a view or materialized
    /// view of the tables its query reads (the relations its `_RETURN`
    /// rule depends on), through views of views (found in review:
    /// `SELECT upper(email) FROM customer_view` went out raw).
    pub async fn ancestors_of_name(
        &self,
        schema: Option<&str>,
        name: &str,
        login: &CatalogLogin<'_>,
    ) -> Result<Ancestors, String> {
        retried(|| self.ancestors_of_name_once(schema, name, login)).await
    }

    async fn ancestors_of_name_once(
        &self,
        schema: Option<&str>,
        name: &str,
        login: &CatalogLogin<'_>,
    ) -> Result<Ancestors, String> {
        let cached = |catalog: &Self| {
            let cache = catalog.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .named
                .get(name)?
                .iter()
                .find(|(s, _, read)| s.as_deref() == schema && read.elapsed() < MAX_AGE)
                .map(|(_, ancestors, _)| Arc::clone(ancestors))
        };
        if let Some(hit) = cached(self) {
            return Ok(hit);
        }
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let mut client = within(deadline, self.client.lock()).await?;
        if let Some(hit) = cached(self) {
            return Ok(hit);
        }
        let c = usable(&mut client, login, deadline).await?;
        let generation = self.generation();
        let params = [
            (&name as &(dyn ToSql + Sync), Type::TEXT),
            (&schema as &(dyn ToSql + Sync), Type::TEXT),
            (&MAX_ANCESTRY as &(dyn ToSql + Sync), Type::INT4),
            (
                &DANGEROUS_FUNCTIONS as &(dyn ToSql + Sync),
                Type::TEXT_ARRAY,
            ),
        ];
        // Rules of every event count: an INSTEAD rule on a table hands
        // back what its actions read (found in review: `INSERT INTO inbox`
        // returned `SELECT email || '' FROM customers` raw).
        let query = c.query_typed(
            concat!(
                "WITH RECURSIVE named AS ( \
                   SELECT c.oid FROM pg_catalog.pg_class c \
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                   WHERE c.relname = $1 AND ($2::text IS NULL OR n.nspname = $2)), \
                 up(relid, depth) AS ( \
                   SELECT named.oid, 0 FROM named \
                   UNION \
                   SELECT read.relid, up.depth + 1 FROM up, LATERAL ( \
                       SELECT i.inhparent AS relid FROM pg_catalog.pg_inherits i \
                       WHERE i.inhrelid = up.relid \
                       UNION ALL \
                       SELECT d.refobjid FROM pg_catalog.pg_rewrite r \
                       JOIN pg_catalog.pg_depend d \
                         ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                        AND d.objid = r.oid \
                        AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                       WHERE r.ev_class = up.relid AND d.refobjid <> up.relid) AS read \
                   WHERE up.depth < $3) \
                 SELECT DISTINCT n.nspname::text, c.relname::text \
                 FROM up \
                 JOIN pg_catalog.pg_class c ON c.oid = up.relid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE up.depth > 0 \
                 UNION ALL \
                 SELECT '*', '*' \
                 WHERE EXISTS (SELECT 1 FROM up WHERE up.depth >= $3) \
                    OR EXISTS (SELECT 1 FROM up WHERE ",
                rules_call_anything!("up.relid", "$4", ""),
                ")"
            ),
            &params,
        );
        let rows = match within(deadline, query).await {
            Ok(answer) => answer.map_err(|e| lookup_error(&e))?,
            Err(e) => {
                *client = None;
                return Err(e);
            }
        };
        let ancestors: Ancestors = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation {
            return Err(CHANGED.to_owned());
        }
        if cache.names >= MAX_NAMES {
            // Expired entries first; only a cache full of fresh ones starts
            // over (found in review: clearing it whole let a statement of
            // more names than it holds miss every time).
            cache.named.retain(|_, entries| {
                entries.retain(|(_, _, read)| read.elapsed() < MAX_AGE);
                !entries.is_empty()
            });
            cache.names = cache.named.values().map(Vec::len).sum();
            if cache.names >= MAX_NAMES {
                cache.named.clear();
                cache.names = 0;
            }
        }
        let entries = cache.named.entry(name.to_owned()).or_default();
        let before = entries.len();
        entries.retain(|(s, _, _)| s.as_deref() != schema);
        entries.push((
            schema.map(str::to_owned),
            Arc::clone(&ancestors),
            Instant::now(),
        ));
        let added = entries.len() as isize - before as isize;
        cache.names = cache.names.saturating_add_signed(added);
        Ok(ancestors)
    }

    /// Whether one of `calls` may run a function of the database's own
    /// (see [`own_function!`]) rather than one PostgreSQL or an
    /// administrator's extension ships.
    /// Each call is `(name, attribute)`: a call by name runs the
    /// database's own unless every function of that name is the server's
    /// (a name with no function the catalog connection can see, such as
    /// one created in a job's open transaction, is not); `x.name` calls a
    /// function only when `x` has no column of that name, so it counts
    /// only when the database has a function of that name. What the server
    /// ships runs no query the statement's text does not show (those that
    /// do, `query_to_xml` and the like, are refused as dangerous); a
    /// database's own function may read any table.
    pub async fn calls_database_function(
        &self,
        calls: &[(&str, bool)],
        login: &CatalogLogin<'_>,
    ) -> Result<bool, String> {
        retried(|| self.calls_database_function_once(calls, login)).await
    }

    async fn calls_database_function_once(
        &self,
        calls: &[(&str, bool)],
        login: &CatalogLogin<'_>,
    ) -> Result<bool, String> {
        let own = |(any, user): (bool, bool), attribute: bool| user || (!attribute && !any);
        // `Err(())`: a fresh entry already answers yes.
        let misses = |catalog: &Self| -> Result<Vec<String>, ()> {
            let cache = catalog.cache.lock().unwrap_or_else(|p| p.into_inner());
            let mut misses = Vec::new();
            for &(name, attribute) in calls {
                match cache.functions.get(name) {
                    Some(&(kind, read)) if read.elapsed() < MAX_AGE => {
                        if own(kind, attribute) {
                            return Err(());
                        }
                    }
                    _ => misses.push(name.to_owned()),
                }
            }
            misses.sort_unstable();
            misses.dedup();
            Ok(misses)
        };
        match misses(self) {
            Err(()) => return Ok(true),
            Ok(m) if m.is_empty() => return Ok(false),
            Ok(_) => {}
        }
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let mut client = within(deadline, self.client.lock()).await?;
        let missing = match misses(self) {
            Err(()) => return Ok(true),
            Ok(m) if m.is_empty() => return Ok(false),
            Ok(m) => m,
        };
        let c = usable(&mut client, login, deadline).await?;
        let generation = self.forgotten.load(Ordering::Acquire);
        let params = [(&missing as &(dyn ToSql + Sync), Type::TEXT_ARRAY)];
        let query = c.query_typed(
            concat!(
                "SELECT n, count(p.oid) > 0, COALESCE(bool_or(",
                own_function!(),
                "), false) \
                 FROM unnest($1::text[]) AS n \
                 LEFT JOIN pg_catalog.pg_proc p ON p.proname = n \
                 GROUP BY n"
            ),
            &params,
        );
        let rows = match within(deadline, query).await {
            Ok(answer) => answer.map_err(|e| lookup_error(&e))?,
            Err(e) => {
                *client = None;
                return Err(e);
            }
        };
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if self.forgotten.load(Ordering::Acquire) != generation {
            // Read before a job's function was committed, maybe.
            return Err(CHANGED.to_owned());
        }
        if cache.functions.len() + rows.len() > MAX_NAMES {
            cache
                .functions
                .retain(|_, (_, read)| read.elapsed() < MAX_AGE);
            if cache.functions.len() + rows.len() > MAX_NAMES {
                cache.functions.clear();
            }
        }
        for row in &rows {
            let name: String = row.get(0);
            cache
                .functions
                .insert(name, ((row.get(1), row.get(2)), now));
        }
        // A name the answer left out cannot be vouched for.
        Ok(calls.iter().any(|&(name, attribute)| {
            cache
                .functions
                .get(name)
                .is_none_or(|&(kind, _)| own(kind, attribute))
        }))
    }

    /// Forgets everything read: a job's DDL may have added a function of a
    /// name the server ships, replaced a view (same OID) or changed a
    /// table's inheritance.
    pub fn forget_all(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.forgotten.fetch_add(1, Ordering::AcqRel);
        *cache = Cache::default();
    }

    /// The generation [`Self::forget_all`] bumps, read before a lookup.
    fn generation(&self) -> u64 {
        self.forgotten.load(Ordering::Acquire)
    }

    fn cached(&self, oid: u32, attnum: i16) -> Option<Option<ColumnSource>> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fresh(oid, attnum, Instant::now())
    }

    async fn load_table(&self, oid: u32, login: &CatalogLogin<'_>) -> Result<(), String> {
        retried(|| self.load_table_once(oid, login)).await
    }

    async fn load_table_once(&self, oid: u32, login: &CatalogLogin<'_>) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let mut client = within(deadline, self.client.lock()).await?;
        // Sessions that missed together queue on the connection: only the
        // first asks, the rest find its answer.
        if self.cached(oid, 0).is_some() {
            return Ok(());
        }
        let c = usable(&mut client, login, deadline).await?;
        let generation = self.generation();
        // Both queries go out together, unprepared (tokio-postgres
        // pipelines what is polled at once): one round trip per unseen
        // table instead of four.
        let table = [(&oid as &(dyn ToSql + Sync), Type::OID)];
        let depth = [
            (&oid as &(dyn ToSql + Sync), Type::OID),
            (&MAX_ANCESTRY as &(dyn ToSql + Sync), Type::INT4),
        ];
        let bases_params = [
            (&oid as &(dyn ToSql + Sync), Type::OID),
            (&MAX_ANCESTRY as &(dyn ToSql + Sync), Type::INT4),
            (
                &DANGEROUS_FUNCTIONS as &(dyn ToSql + Sync),
                Type::TEXT_ARRAY,
            ),
        ];
        let columns = c.query_typed(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, a.attnum, \
                    a.attgenerated <> '', c.relkind = 'r', c.relkind IN ('v', 'm') \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
            &table,
        );
        let ancestry = c.query_typed(
            "WITH RECURSIVE up(relid, depth) AS ( \
                   SELECT inhparent, 1 FROM pg_catalog.pg_inherits WHERE inhrelid = $1 \
                   UNION \
                   SELECT i.inhparent, up.depth + 1 \
                   FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.relid \
                   WHERE up.depth < $2) \
                 SELECT n.nspname::text, c.relname::text \
                 FROM up \
                 JOIN pg_catalog.pg_class c ON c.oid = up.relid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 ORDER BY up.depth, c.oid",
            &depth,
        );
        // A base that is an inheritance child counts with its ancestors
        // (found in review: a view over `customers_archive`, a child of
        // `customers`, read `email` raw).
        let bases = c.query_typed(
            concat!(
                "WITH RECURSIVE reads(relid, depth) AS ( \
                   SELECT $1::oid, 0 \
                   UNION \
                   SELECT next.relid, reads.depth + 1 FROM reads, LATERAL ( \
                       SELECT d.refobjid AS relid FROM pg_catalog.pg_rewrite r \
                       JOIN pg_catalog.pg_depend d \
                         ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                        AND d.objid = r.oid \
                        AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                       WHERE r.ev_class = reads.relid AND r.ev_type = '1' \
                         AND d.refobjid <> reads.relid \
                       UNION ALL \
                       SELECT i.inhparent FROM pg_catalog.pg_inherits i \
                       WHERE i.inhrelid = reads.relid AND reads.depth > 0) AS next \
                   WHERE reads.depth < $2) \
                 SELECT DISTINCT n.nspname::text, c.relname::text, a.attname::text \
                 FROM reads \
                 JOIN pg_catalog.pg_class c ON c.oid = reads.relid AND c.relkind NOT IN ('v', 'm') \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
                      AND NOT a.attisdropped \
                 WHERE reads.depth > 0 \
                 UNION ALL \
                 SELECT '*', '*', '*' \
                 WHERE EXISTS (SELECT 1 FROM reads WHERE reads.depth >= $2) \
                    OR EXISTS (SELECT 1 FROM reads WHERE ",
                rules_call_anything!("reads.relid", "$3", " AND r.ev_type = '1'"),
                ")"
            ),
            &bases_params,
        );
        let (rows, ancestry, bases) = match within(deadline, async {
            tokio::try_join!(columns, ancestry, bases)
        })
        .await
        {
            Ok(answer) => answer.map_err(|e| lookup_error(&e))?,
            Err(e) => {
                *client = None;
                return Err(e);
            }
        };
        let ancestors: Arc<[(String, String)]> = ancestry
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let view_bases: Arc<[(String, String, String)]> = bases
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        let sources = rows
            .iter()
            .map(|row| {
                let source = SourceColumn {
                    schema: row.get(0),
                    table: row.get(1),
                    column: row.get(2),
                    ancestors: Arc::clone(&ancestors),
                    generated: row.get(4),
                    plain_table: row.get(5),
                    view: row.get(6),
                    view_bases: Arc::clone(&view_bases),
                };
                (row.get(3), Arc::new(source))
            })
            .collect();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation {
            return Err(CHANGED.to_owned());
        }
        cache.store(oid, sources, Instant::now());
        Ok(())
    }
}

/// `lookup`, again while it read the catalog across a forget (another
/// session's DDL completing), a few times: under a job's busy migration
/// every lookup of every session would otherwise fail (and mask all).
async fn retried<T, F>(lookup: impl Fn() -> F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    for _ in 0..4 {
        match lookup().await {
            Err(e) if e == CHANGED => continue,
            done => return done,
        }
    }
    Err(CHANGED.to_owned())
}

/// `work`, or the timed-out error once `deadline` passes.
async fn within<T>(
    deadline: tokio::time::Instant,
    work: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| TIMED_OUT.to_owned())
}

/// The open catalog connection in `slot`, connecting first if there is
/// none (or it closed).
async fn usable<'c>(
    slot: &'c mut Option<Client>,
    login: &CatalogLogin<'_>,
    deadline: tokio::time::Instant,
) -> Result<&'c Client, String> {
    if slot.as_ref().is_none_or(|c| c.is_closed()) {
        *slot = None;
        *slot = Some(within(deadline, connect(login)).await??);
    }
    slot.as_ref()
        .ok_or_else(|| "no catalog connection".to_owned())
}

/// A failed lookup's reason: the server's message, or [`TIMED_OUT`] when
/// the server gave up waiting for a lock or on the statement.
fn lookup_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) if timed_out(db.code().code()) => TIMED_OUT.to_owned(),
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    }
}

/// Whether `sqlstate` is the server cancelling a statement for one of the
/// catalog connection's timeouts: 55P03 (lock_not_available, from
/// lock_timeout) or 57014 (query_canceled, from statement_timeout).
fn timed_out(sqlstate: &str) -> bool {
    matches!(sqlstate, "55P03" | "57014")
}

async fn connect(login: &CatalogLogin<'_>) -> Result<Client, String> {
    // Already over TLS when the target asks for it, so tokio-postgres
    // itself negotiates nothing.
    let stream = login.route.connect().await.map_err(|e| e.to_string())?;
    let mut config = tokio_postgres::Config::new();
    config
        .user(login.user)
        .dbname(login.database)
        .password(login.password)
        .application_name("chokepoint-catalog");
    let (client, connection) = config
        .connect_raw(stream, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // Set by statement, not as startup options, which a pooler in front
    // of the server may refuse.
    client
        .batch_execute(&format!(
            "SET lock_timeout = {LOCK_TIMEOUT_MS}; SET statement_timeout = {STATEMENT_TIMEOUT_MS}"
        ))
        .await
        .map_err(|e| format!("the catalog connection's timeouts cannot be set: {e}"))?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(table: &str, column: &str, ancestors: &[(&str, &str)]) -> ColumnSource {
        Arc::new(SourceColumn {
            schema: "public".into(),
            table: table.into(),
            column: column.into(),
            ancestors: ancestors
                .iter()
                .map(|(s, t)| ((*s).to_owned(), (*t).to_owned()))
                .collect(),
            generated: false,
            plain_table: true,
            view: false,
            view_bases: Arc::default(),
        })
    }

    fn column(hit: Option<Option<ColumnSource>>) -> Option<String> {
        hit.flatten().map(|s| s.column.clone())
    }

    #[tokio::test]
    async fn a_lookup_across_a_forget_is_tried_again_a_few_times() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let flaky = || async {
            match tries.fetch_add(1, Ordering::Relaxed) {
                0 | 1 => Err(CHANGED.to_owned()),
                n => Ok(n),
            }
        };
        assert_eq!(retried(flaky).await, Ok(2));
        let always = || async { Err::<(), _>(CHANGED.to_owned()) };
        assert_eq!(retried(always).await, Err(CHANGED.to_owned()));
        let other = || async { Err::<(), _>("no".to_owned()) };
        assert_eq!(retried(other).await, Err("no".to_owned()));
    }

    #[tokio::test]
    async fn a_lookup_that_outlives_its_deadline_fails_as_timed_out() {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        let stuck = within(deadline, std::future::pending::<()>()).await;
        assert_eq!(stuck.unwrap_err(), TIMED_OUT);
        let quick = within(deadline, async { 7 }).await;
        assert_eq!(quick, Ok(7));
    }

    #[test]
    fn the_servers_timeouts_read_as_timed_out() {
        assert!(timed_out("55P03"), "lock_timeout");
        assert!(timed_out("57014"), "statement_timeout");
        assert!(!timed_out("42P01"));
    }

    #[test]
    fn a_whole_table_is_served_while_fresh() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        cache.store(
            7,
            vec![
                (1, source("customers", "id", &[])),
                (3, source("customers", "salary", &[])),
            ],
            t0,
        );
        let mut names: Vec<String> = cache
            .fresh_table(7, t0)
            .expect("fresh")
            .iter()
            .map(|c| c.column.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["id", "salary"]);
        assert!(cache.fresh_table(8, t0).is_none());
        assert!(cache.fresh_table(7, t0 + MAX_AGE).is_none());
    }

    #[test]
    fn a_table_is_read_again_once_its_entry_is_max_age_old() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        cache.store(7, vec![(1, source("orders_2027", "email", &[]))], t0);
        assert_eq!(column(cache.fresh(7, 1, t0)), Some("email".into()));
        // A table that is gone is remembered as such, not asked again.
        cache.store(9, Vec::new(), t0);
        assert!(matches!(cache.fresh(9, 3, t0), Some(None)));
        let almost = t0 + MAX_AGE - Duration::from_millis(1);
        assert_eq!(column(cache.fresh(7, 1, almost)), Some("email".into()));
        assert!(
            cache.fresh(7, 1, t0 + MAX_AGE).is_none(),
            "stale entry served"
        );
        assert!(cache.fresh(8, 1, t0).is_none(), "unknown table served");

        // Read again after being attached as a partition: the ancestry and
        // a renamed column replace the old entry, and a column that is gone
        // does not linger under its old name.
        let t1 = t0 + MAX_AGE;
        cache.store(
            7,
            vec![(2, source("orders_2027", "email", &[("public", "orders")]))],
            t1,
        );
        assert!(
            matches!(cache.fresh(7, 1, t1), Some(None)),
            "a dropped column kept its name"
        );
        let fresh = cache.fresh(7, 2, t1).flatten().expect("attnum 2");
        assert_eq!(
            &*fresh.ancestors,
            &[("public".to_owned(), "orders".to_owned())]
        );
    }
}
