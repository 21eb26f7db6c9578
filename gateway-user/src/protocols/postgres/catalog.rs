//! Column provenance for masking: a RowDescription names each column's
//! table by OID and attribute number, and this cache turns that into
//! `schema.table.column` with one catalog query per unseen table, plus
//! the tables it is a partition or inheritance child of: a column rule
//! on a partitioned table must cover a job that reads one partition.
//!
//! OIDs are per database, so there is one catalog per target, database and
//! role (`PostgresShared::catalog`), each with its own connection; a policy
//! reload starts them all afresh.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio_postgres::{Client, NoTls};
use tracing::warn;

use super::upstream::Route;

/// Where a result column comes from.
#[derive(Debug)]
pub struct SourceColumn {
    pub schema: String,
    pub table: String,
    pub column: String,
    /// `(schema, table)` of every ancestor of the table, nearest first.
    pub ancestors: Arc<[(String, String)]>,
}

pub type ColumnSource = Arc<SourceColumn>;

/// Levels of `pg_inherits` followed: PostgreSQL sets no limit, and a
/// deeper hierarchy than this is no partitioning scheme anyone runs.
const MAX_ANCESTRY: i32 = 64;

/// Entries kept before the cache starts over: a job allowed DDL could
/// otherwise grow it without end by creating tables, each seen once.
const MAX_COLUMNS: usize = 100_000;

/// Cache of one database's table OIDs to column names, shared by the
/// sessions that log in to it as the same role.
#[derive(Default)]
pub struct Catalog {
    columns: Mutex<HashMap<(u32, i16), Option<ColumnSource>>>,
    client: tokio::sync::Mutex<Option<Client>>,
}

/// One result column of a described query.
#[derive(Debug, Clone)]
pub struct DescribedColumn {
    pub name: String,
    pub type_oid: u32,
    /// 0 when the column is computed.
    pub table_oid: u32,
    pub column_attr: i16,
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
        if let Err(e) = self.load_table(table_oid, attnum, login).await {
            warn!(error = %e, table_oid, "catalog lookup failed; the table's columns are withheld (NULL) where column rules exist");
            return Err(e);
        }
        Ok(self.cached(table_oid, attnum).flatten())
    }

    /// The result columns `sql` would have, from a Parse/Describe on the
    /// catalog connection (nothing is executed).
    pub async fn describe(
        &self,
        sql: &str,
        login: &CatalogLogin<'_>,
    ) -> Result<Vec<DescribedColumn>, String> {
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = Some(connect(login).await?);
        }
        let Some(c) = client.as_ref() else {
            return Err("no catalog connection".into());
        };
        let statement = c.prepare(sql).await.map_err(|e| match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => e.to_string(),
        })?;
        Ok(statement
            .columns()
            .iter()
            .map(|c| DescribedColumn {
                name: c.name().to_owned(),
                type_oid: c.type_().oid(),
                table_oid: c.table_oid().unwrap_or(0),
                column_attr: c.column_id().unwrap_or(0),
            })
            .collect())
    }

    fn cached(&self, oid: u32, attnum: i16) -> Option<Option<ColumnSource>> {
        self.columns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(oid, attnum))
            .cloned()
    }

    async fn load_table(
        &self,
        oid: u32,
        wanted: i16,
        login: &CatalogLogin<'_>,
    ) -> Result<(), String> {
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = Some(connect(login).await?);
        }
        let Some(c) = client.as_ref() else {
            return Ok(());
        };
        let rows = c
            .query(
                "SELECT n.nspname::text, c.relname::text, a.attname::text, a.attnum \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE a.attrelid = $1 AND a.attnum > 0",
                &[&oid],
            )
            .await
            .map_err(|e| e.to_string())?;
        let ancestors: Arc<[(String, String)]> = c
            .query(
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
                &[&oid, &MAX_ANCESTRY],
            )
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let mut columns = self.columns.lock().unwrap_or_else(|p| p.into_inner());
        if columns.len() + rows.len() + 1 > MAX_COLUMNS {
            // Forgetting costs only repeated lookups; plans already made
            // keep the names they resolved.
            columns.clear();
        }
        for row in rows {
            let (schema, table, column, attnum): (String, String, String, i16) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let source = SourceColumn {
                schema,
                table,
                column,
                ancestors: Arc::clone(&ancestors),
            };
            columns.insert((oid, attnum), Some(Arc::new(source)));
        }
        // Remember the miss too (dropped table, system column) so it does
        // not cost a query per row description.
        columns.entry((oid, wanted)).or_insert(None);
        Ok(())
    }
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
    Ok(client)
}
