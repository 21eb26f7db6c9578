//! The fleet store: one table in PostgreSQL, row locks for decisions, and
//! `NOTIFY chokepoint_approvals` so the gateway holding a statement wakes
//! when an approver on another machine decides.
use std::sync::Mutex as StdMutex;

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::{AsyncMessage, Client};
use tracing::warn;

use super::{ApprovalStore, Change, StoreError};
use crate::{
    approvals::{Request, State},
    recording::sink::{SinkSettings, connect},
};

const CHANNEL: &str = "chokepoint_approvals";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chokepoint_approvals (
    id      text PRIMARY KEY,
    state   text NOT NULL,
    created text NOT NULL,
    target  text NOT NULL,
    body    text NOT NULL
);
CREATE INDEX IF NOT EXISTS chokepoint_approvals_state ON chokepoint_approvals (state);
";

pub struct PostgresStore {
    settings: SinkSettings,
    /// `None` after a failure: the next call reconnects.
    client: Mutex<Option<Client>>,
    changes: StdMutex<Option<mpsc::UnboundedReceiver<String>>>,
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("postgres: {e}"))
}

fn decode(body: &str) -> Result<Request, StoreError> {
    serde_json::from_str(body)
        .map_err(|e| StoreError::Io(format!("stored request is malformed: {e}")))
}

/// The request in a row's first column (`body`). The table is shared by
/// every gateway and approver host, and `CREATE TABLE IF NOT EXISTS` keeps
/// whatever shape it already has: `Row::get` panics on a NULL or a column
/// that is not text, so both are read with `try_get` and refused.
fn row_body(row: &tokio_postgres::Row) -> Result<Request, StoreError> {
    let body = row
        .try_get::<_, Option<&str>>(0)
        .map_err(|e| StoreError::Io(format!("stored request is malformed: {e}")))?;
    decode_nullable(body)
}

fn decode_nullable(body: Option<&str>) -> Result<Request, StoreError> {
    decode(body.ok_or_else(|| {
        StoreError::Io("stored request is malformed: its body is NULL".to_owned())
    })?)
}

impl PostgresStore {
    /// Connects, creates the table if needed and starts listening.
    pub async fn connect(settings: &SinkSettings) -> Result<PostgresStore, StoreError> {
        let mut client = connect(settings).await.map_err(db)?;
        // Two gateways starting at once must not race on CREATE TABLE.
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock(4350415052)", &[])
            .await
            .map_err(db)?;
        tx.batch_execute(SCHEMA).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(listen(settings.clone(), tx));
        Ok(PostgresStore {
            settings: settings.clone(),
            client: Mutex::new(Some(client)),
            changes: StdMutex::new(Some(rx)),
        })
    }

    async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(connect(&self.settings).await.map_err(db)?);
        }
        let client = slot.as_mut().expect("connected above");
        let result = f(client).await;
        if matches!(result, Err(StoreError::Io(_))) && client.is_closed() {
            *slot = None;
        }
        result
    }
}

/// Forwards notified ids; reconnects while the store lives.
async fn listen(settings: SinkSettings, tx: mpsc::UnboundedSender<String>) {
    let mut delay = std::time::Duration::from_millis(200);
    while !tx.is_closed() {
        match listen_once(&settings, &tx).await {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %e, "approval store: LISTEN connection lost; reconnecting");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

async fn listen_once(
    settings: &SinkSettings,
    tx: &mpsc::UnboundedSender<String>,
) -> Result<(), String> {
    let mut config: tokio_postgres::Config = settings
        .conninfo
        .parse()
        .map_err(|e: tokio_postgres::Error| e.to_string())?;
    if let Some(file) = &settings.password_file {
        let password = crate::regular_file::read_secret(file)
            .map_err(|e| format!("password_file {}: {e}", file.display()))?;
        config.password(password);
    }
    config.connect_timeout(std::time::Duration::from_secs(5));
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let tx2 = tx.clone();
    let pump = tokio::spawn(async move {
        loop {
            let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx2.send(n.payload().to_owned()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("connection closed".to_owned()),
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| e.to_string())?;
    // The client must live as long as the connection is pumped.
    let result = pump.await.map_err(|e| e.to_string())?;
    drop(client);
    result
}

#[async_trait]
impl ApprovalStore for PostgresStore {
    async fn create(&self, request: &Request) -> Result<(), StoreError> {
        let body = serde_json::to_string(request).map_err(|e| StoreError::Io(e.to_string()))?;
        self.with_client(async |c: &mut Client| {
            c.execute(
                "INSERT INTO chokepoint_approvals (id, state, created, target, body) VALUES ($1, $2, $3, $4, $5)",
                &[&request.id, &request.state.to_string(), &request.created, &request.target, &body],
            )
            .await
            .map(|_| ())
            .map_err(db)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<Request>, StoreError> {
        self.with_client(async |c: &mut Client| {
            let row = c
                .query_opt(
                    "SELECT body FROM chokepoint_approvals WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(db)?;
            row.as_ref().map(row_body).transpose()
        })
        .await
    }

    async fn list(&self, all: bool) -> Result<Vec<Request>, StoreError> {
        self.with_client(async |c: &mut Client| {
            let rows = if all {
                c.query("SELECT body FROM chokepoint_approvals ORDER BY created, id", &[])
                    .await
            } else {
                c.query(
                    "SELECT body FROM chokepoint_approvals WHERE state = 'pending' ORDER BY created, id",
                    &[],
                )
                .await
            }
            .map_err(db)?;
            rows.iter().map(row_body).collect()
        })
        .await
    }

    async fn update(&self, id: &str, change: Change<'_>) -> Result<Request, StoreError> {
        self.with_client(async |c: &mut Client| {
            let tx = c.transaction().await.map_err(db)?;
            let row = tx
                .query_opt(
                    "SELECT body FROM chokepoint_approvals WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await
                .map_err(db)?
                .ok_or_else(|| StoreError::Unknown(id.to_owned()))?;
            let mut request = row_body(&row)?;
            change(&mut request).map_err(StoreError::Refused)?;
            let body =
                serde_json::to_string(&request).map_err(|e| StoreError::Io(e.to_string()))?;
            tx.execute(
                "UPDATE chokepoint_approvals SET state = $2, body = $3 WHERE id = $1",
                &[&id, &request.state.to_string(), &body],
            )
            .await
            .map_err(db)?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &id])
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(request)
        })
        .await
    }

    async fn grants(&self, target: &str) -> Result<Vec<Request>, StoreError> {
        let now = std::time::SystemTime::now();
        self.with_client(async |c: &mut Client| {
            let rows = c
                .query(
                    "SELECT body FROM chokepoint_approvals WHERE state = $1 AND target = $2 AND body LIKE '%\"grant_until\"%'",
                    &[&State::Approved.to_string(), &target],
                )
                .await
                .map_err(db)?;
            let mut out = Vec::new();
            for row in &rows {
                let r = row_body(row)?;
                if r.target == target && r.grant_is_live(now) {
                    out.push(r);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn prune(&self, before: std::time::SystemTime) -> Result<usize, StoreError> {
        self.with_client(async |c: &mut Client| {
            let rows = c
                .query(
                    "SELECT body FROM chokepoint_approvals WHERE state <> 'pending'",
                    &[],
                )
                .await
                .map_err(db)?;
            let mut settled = Vec::new();
            for row in &rows {
                // A row another version wrote and this one cannot read is
                // left for whoever can.
                if let Ok(r) = row_body(row)
                    && r.settled_at().is_some_and(|at| at < before)
                {
                    settled.push(r.id);
                }
            }
            // `state <> 'pending'` again: never a request that was just
            // reopened (there is no such change today, but a row lock is
            // not held between the two statements).
            let removed = c
                .execute(
                    "DELETE FROM chokepoint_approvals WHERE id = ANY($1) AND state <> 'pending'",
                    &[&settled],
                )
                .await
                .map_err(db)?;
            Ok(removed as usize)
        })
        .await
    }

    fn changes(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.changes.lock().ok()?.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_or_malformed_body_is_an_error_not_a_panic() {
        let e = decode_nullable(None).unwrap_err();
        assert!(e.to_string().contains("its body is NULL"), "{e}");
        let e = decode_nullable(Some("{")).unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
    }
}
