//! cp-pgclient: a tokio-postgres client the tests run inside a guarded cgroup; runs a JSON script of steps on one session and prints one JSON result line per step.
//!
//! Usage: `cp-pgclient <connection string> <script | @file>`, where the
//! script is a JSON array of steps:
//!
//! | step | what it does |
//! |---|---|
//! | `{"simple": "SQL"}` | `simple_query` (simple protocol, text results) |
//! | `{"query": {"sql": "SQL", "params": [1, "x"]}}` | `query` (extended protocol, binary results) |
//! | `{"prepare": "SQL"}` | `prepare` only (Parse + Describe + Sync); the statement is kept for `execute` |
//! | `{"execute": {"statement": N, "params": [7]}}` | Bind and Execute of the N-th statement `prepare` steps made (from 0), with no new Parse |
//! | `{"typed": "SQL"}` | `query_typed`: unnamed statement and portal, one round trip |
//! | `{"pipeline": ["SQL", …]}` | every `query` at once on the one connection |
//! | `{"typed_pipeline": ["SQL", …]}` | every `query_typed` at once |
//! | `{"copy_out": "COPY … TO STDOUT"}` | `copy_out` (extended protocol); `"data"` is the copied text |
//! | `{"copy_in": {"sql": "COPY … FROM STDIN", "data": "text"}}` | `copy_in` (extended protocol: Bind, Execute and Sync, then the data, CopyDone and Sync); `"rows"` is the count |
//! | `{"cancel": "SQL"}` | runs SQL and sends a CancelRequest every 500 ms until it ends |
//! | `{"raw": "hex"}` | a new raw connection: startup as the same user, then these bytes; `"messages"` lists each response's tag (and an error's fields, a DataRow's values) until EOF |
//! | `{"raw_until_ready": {"hex": "…", "ready": N}}` | the same, reading until the N-th ReadyForQuery |
//! | `{"raw_until_ready": {"first": "hex", "until": "E", "hex": "…", "ready": N}}` | sends `first` and waits for a message tagged `until` (`"until_count": K`: the K-th of them) before sending `hex` |
//! | `{"raw_until_ready": {…, "touch": "path", "wait_file": "path"}}` | also, once `until` came, creates `touch` and waits (up to a minute) for `wait_file` before sending `hex`: the test changes something in between (a policy reload) |
//! | `{"login": [["name", "value"], …]}` | a new raw connection whose startup message also carries these parameters; `"ok"` says whether it reached ReadyForQuery, `"login"` lists what came back |
//!
//! A result line is `{"step": i, "ok": true, "rows": [[…]]}` or
//! `{"step": i, "ok": false, "error": {"code": "42501", "message": …}}`
//! (pipeline: `"results": [one per query]`). Rows hold every value as a
//! string (NULL as null). Exit status 1 means the first connection failed
//! (the line then has `"connect": false` and the error); 2 means bad
//! arguments. A failing step never stops the script.
use std::{error::Error, process::ExitCode, sync::Arc, time::Duration};

use bytes::BytesMut;
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_postgres::{
    Client, Config, NoTls, Row, SimpleQueryMessage,
    config::Host,
    types::{FromSql, IsNull, ToSql, Type, to_sql_checked},
};

/// Hang guards only.
const RAW_READ_TIMEOUT: Duration = Duration::from_secs(30);
const CANCEL_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Step {
    Simple(String),
    Query {
        sql: String,
        #[serde(default)]
        params: Vec<Value>,
    },
    Prepare(String),
    Execute {
        statement: usize,
        #[serde(default)]
        params: Vec<Value>,
    },
    Typed(String),
    Pipeline(Vec<String>),
    TypedPipeline(Vec<String>),
    CopyOut(String),
    CopyIn {
        sql: String,
        data: String,
    },
    Cancel(String),
    Raw(String),
    RawUntilReady {
        hex: String,
        ready: usize,
        #[serde(default)]
        first: Option<String>,
        #[serde(default)]
        until: Option<String>,
        #[serde(default)]
        until_count: Option<usize>,
        #[serde(default)]
        touch: Option<String>,
        #[serde(default)]
        wait_file: Option<String>,
    },
    Login(Vec<(String, String)>),
    /// Creates this file: tells the test the steps before it are done.
    Touch(String),
    /// Waits (up to a minute) for this file, keeping the session open:
    /// the test changes something meanwhile (a policy reload).
    WaitFile(String),
}

type BoxError = Box<dyn Error + Sync + Send>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [conn, script] = args.as_slice() else {
        eprintln!("usage: cp-pgclient <connection string> <JSON array of steps>");
        return ExitCode::from(2);
    };
    // `@FILE`: a script too long for the command line.
    let script = match script.strip_prefix('@') {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("cp-pgclient: cannot read the script {path}: {e}");
                return ExitCode::from(2);
            }
        },
        None => script.clone(),
    };
    let steps: Vec<Step> = match serde_json::from_str(&script) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cp-pgclient: bad script: {e}");
            return ExitCode::from(2);
        }
    };
    let config: Config = match conn.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cp-pgclient: bad connection string: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(config, steps))
}

async fn run(config: Config, steps: Vec<Step>) -> ExitCode {
    let (client, connection) = match config.connect(NoTls).await {
        Ok(c) => c,
        Err(e) => {
            println!("{}", json!({"connect": false, "error": error_json(&e)}));
            return ExitCode::from(1);
        }
    };
    let conn_task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("cp-pgclient: connection ended: {e}");
        }
    });
    let client = Arc::new(client);
    let mut prepared = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        let mut out = match step {
            Step::Simple(sql) => simple(&client, &sql).await,
            Step::Query { sql, params } => query(&client, &sql, &params).await,
            Step::Prepare(sql) => match client.prepare(&sql).await {
                Ok(statement) => {
                    let out = json!({"ok": true, "columns": statement.columns().len()});
                    prepared.push(statement);
                    out
                }
                Err(e) => failed(&e),
            },
            Step::Execute { statement, params } => match prepared.get(statement) {
                Some(s) => query(&client, s, &params).await,
                None => {
                    json!({"ok": false, "error": {"code": null, "message": format!("no statement {statement} was prepared")}})
                }
            },
            Step::Typed(sql) => typed(&client, &sql).await,
            Step::Pipeline(sqls) => {
                let results = join_all(sqls.iter().map(|sql| query(&client, sql, &[]))).await;
                json!({"ok": results.iter().all(|r| r["ok"] == true), "results": results})
            }
            Step::TypedPipeline(sqls) => {
                let results = join_all(sqls.iter().map(|sql| typed(&client, sql))).await;
                json!({"ok": results.iter().all(|r| r["ok"] == true), "results": results})
            }
            Step::CopyOut(sql) => copy_out(&client, &sql).await,
            Step::CopyIn { sql, data } => copy_in(&client, &sql, data).await,
            Step::Cancel(sql) => cancel(&client, &sql).await,
            Step::Raw(hex) => raw(&config, None, &hex, None, &[]).await,
            Step::RawUntilReady {
                hex,
                ready,
                first,
                until,
                until_count,
                touch,
                wait_file,
            } => {
                let first = first.map(|bytes| First {
                    bytes,
                    until: until.unwrap_or_else(|| "Z".to_owned()),
                    until_count: until_count.unwrap_or(1),
                    touch,
                    wait_file,
                });
                raw(&config, first, &hex, Some(ready), &[]).await
            }
            Step::Login(params) => raw(&config, None, "", Some(0), &params).await,
            Step::Touch(path) => match std::fs::write(&path, b"") {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": {"code": null, "message": e.to_string()}}),
            },
            Step::WaitFile(path) => json!({"ok": wait_file(&path).await}),
        };
        out["step"] = json!(i);
        println!("{out}");
    }
    drop(client);
    let _ = conn_task.await;
    ExitCode::SUCCESS
}

async fn simple(client: &Client, sql: &str) -> Value {
    match client.simple_query(sql).await {
        Ok(messages) => {
            let mut rows = Vec::new();
            let mut counts = Vec::new();
            for m in messages {
                match m {
                    SimpleQueryMessage::Row(row) => rows.push(
                        (0..row.len())
                            .map(|i| row.get(i).map_or(Value::Null, |v| json!(v)))
                            .collect::<Vec<_>>(),
                    ),
                    SimpleQueryMessage::CommandComplete(n) => counts.push(n),
                    _ => {}
                }
            }
            json!({"ok": true, "rows": rows, "counts": counts})
        }
        Err(e) => failed(&e),
    }
}

async fn query<T>(client: &Client, sql: &T, params: &[Value]) -> Value
where
    T: ?Sized + tokio_postgres::ToStatement,
{
    let params: Vec<Param> = params.iter().cloned().map(Param).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    match client.query(sql, &refs).await {
        Ok(rows) => rows_json(&rows),
        Err(e) => failed(&e),
    }
}

fn rows_json(rows: &[Row]) -> Value {
    match rows.iter().map(row_json).collect::<Result<Vec<_>, _>>() {
        Ok(rows) => json!({"ok": true, "rows": rows}),
        Err(e) => {
            json!({"ok": false, "error": {"code": null, "message": format!("decoding a row: {e}")}})
        }
    }
}

/// Every CopyData of a `COPY … TO STDOUT`, concatenated as text.
async fn copy_out(client: &Client, sql: &str) -> Value {
    use futures_util::TryStreamExt;
    let stream = match client.copy_out(sql).await {
        Ok(s) => s,
        Err(e) => return failed(&e),
    };
    let chunks: Result<Vec<bytes::Bytes>, _> = stream.try_collect().await;
    match chunks.map(|c| c.concat()) {
        Ok(data) => json!({"ok": true, "data": String::from_utf8_lossy(&data)}),
        Err(e) => failed(&e),
    }
}

async fn copy_in(client: &Client, sql: &str, data: String) -> Value {
    use futures_util::SinkExt;
    let sink = match client.copy_in::<_, bytes::Bytes>(sql).await {
        Ok(s) => s,
        Err(e) => return failed(&e),
    };
    let mut sink = std::pin::pin!(sink);
    if let Err(e) = sink.send(bytes::Bytes::from(data)).await {
        return failed(&e);
    }
    match sink.finish().await {
        Ok(rows) => json!({"ok": true, "rows": rows}),
        Err(e) => failed(&e),
    }
}

/// `query_typed`: the unnamed statement and portal in one round trip
/// (Parse, Bind, Describe statement, Execute, Sync), binary results.
async fn typed(client: &Client, sql: &str) -> Value {
    match client.query_typed(sql, &[]).await {
        Ok(rows) => rows_json(&rows),
        Err(e) => failed(&e),
    }
}

/// Runs `sql` and cancels it through a separate cancel connection, again
/// every [`CANCEL_EVERY`] (a cancel that lands before the query starts
/// executing is ignored by the server) until the query returns.
async fn cancel(client: &Client, sql: &str) -> Value {
    let token = client.cancel_token();
    let running = client.simple_query(sql);
    tokio::pin!(running);
    let mut tick = tokio::time::interval(CANCEL_EVERY);
    tick.tick().await;
    let mut cancels = 0u32;
    let mut cancel_errors = Vec::new();
    let result = loop {
        tokio::select! {
            r = &mut running => break r,
            _ = tick.tick() => {
                cancels += 1;
                if let Err(e) = token.cancel_query(NoTls).await {
                    cancel_errors.push(e.to_string());
                }
            }
        }
    };
    let mut out = match result {
        Ok(_) => json!({"ok": true}),
        Err(e) => failed(&e),
    };
    out["cancels"] = json!(cancels);
    out["cancel_errors"] = json!(cancel_errors);
    out
}

/// Waits up to a minute for `path` to exist; whether it does.
async fn wait_file(path: &str) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::path::Path::new(path).exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    std::path::Path::new(path).exists()
}

/// What a raw session sends before its main bytes, and what it waits for.
struct First {
    bytes: String,
    /// The tag of the message to wait for, and how many of them.
    until: String,
    until_count: usize,
    /// Created once it came; then `wait_file` is waited for.
    touch: Option<String>,
    wait_file: Option<String>,
}

/// A fresh TCP connection to the same host and port: a protocol 3.0
/// startup as the same user and database (no password: the gateway
/// trusts the job), then `hex` decoded and sent as is. Reports every
/// message received after it and whether the server closed the connection.
async fn raw(
    config: &Config,
    first: Option<First>,
    hex: &str,
    ready: Option<usize>,
    params: &[(String, String)],
) -> Value {
    match raw_inner(config, first, hex, ready, params).await {
        Ok(v) => v,
        Err(e) => json!({"ok": false, "error": {"code": null, "message": e.to_string()}}),
    }
}

/// `ready`: stop reading after that many ReadyForQuery messages instead of
/// at EOF, for scripts that leave the session open (0 with no bytes: stop
/// after the login). `params` go into the startup message after `user`
/// and `database`. `first`: bytes sent before `hex`, and the tag of the
/// message to wait for before sending `hex`.
async fn raw_inner(
    config: &Config,
    first: Option<First>,
    hex: &str,
    ready: Option<usize>,
    params: &[(String, String)],
) -> Result<Value, BoxError> {
    let bytes = decode_hex(hex)?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => return Err("raw needs a TCP host in the connection string".into()),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config
        .get_user()
        .ok_or("raw needs user= in the connection string")?;
    let database = config.get_dbname().unwrap_or(user);
    let mut stream = TcpStream::connect((host.as_str(), port)).await?;

    let mut body = 196_608i32.to_be_bytes().to_vec();
    let fixed = [("user", user), ("database", database)];
    let extra = params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    for (k, v) in fixed.into_iter().chain(extra) {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    stream.write_all(&startup).await?;

    // Until ReadyForQuery: the login must have worked for the test to mean
    // anything.
    let mut buf = Vec::new();
    let mut login = Vec::new();
    'login: loop {
        let n = tokio::time::timeout(RAW_READ_TIMEOUT, read_more(&mut stream, &mut buf)).await??;
        if n == 0 {
            return Err(format!("closed during login after {login:?}").into());
        }
        while let Some(message) = take_message(&mut buf) {
            let tag = message["tag"].as_str().unwrap_or_default().to_owned();
            login.push(message);
            match tag.as_str() {
                "Z" => break 'login,
                "E" => return Ok(json!({"ok": false, "login": login})),
                _ => {}
            }
        }
    }

    if bytes.is_empty() && ready == Some(0) {
        return Ok(json!({"ok": true, "login": login}));
    }
    let mut messages = Vec::new();
    if let Some(First {
        bytes: first,
        until,
        until_count,
        touch,
        wait_file: wait,
    }) = first
    {
        stream.write_all(&decode_hex(&first)?).await?;
        while messages
            .iter()
            .filter(|m: &&Value| m["tag"] == until.as_str())
            .count()
            < until_count
        {
            let n =
                tokio::time::timeout(RAW_READ_TIMEOUT, read_more(&mut stream, &mut buf)).await??;
            if n == 0 {
                return Err(format!("closed before {until:?}: {messages:?}").into());
            }
            while let Some(message) = take_message(&mut buf) {
                messages.push(message);
            }
        }
        if let Some(touch) = touch {
            std::fs::write(&touch, b"")?;
        }
        if let Some(wait) = wait
            && !wait_file(&wait).await
        {
            return Err(format!("{wait} did not appear within a minute").into());
        }
    }
    let write_error = stream.write_all(&bytes).await.err().map(|e| e.to_string());
    let (closed, read_error) = loop {
        match tokio::time::timeout(RAW_READ_TIMEOUT, read_more(&mut stream, &mut buf)).await {
            Err(_) => break (false, Some("no EOF within the timeout".to_owned())),
            Ok(Err(e)) => break (true, Some(e.to_string())),
            Ok(Ok(0)) => break (true, None),
            Ok(Ok(_)) => {
                while let Some(message) = take_message(&mut buf) {
                    messages.push(message);
                }
                let seen = messages.iter().filter(|m| m["tag"] == "Z").count();
                if ready.is_some_and(|n| seen >= n) {
                    break (false, None);
                }
            }
        }
    };
    Ok(json!({
        "ok": true,
        "messages": messages,
        "closed": closed,
        "trailing_bytes": buf.len(),
        "write_error": write_error,
        "read_error": read_error,
    }))
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// One complete backend message off the front of `buf`, as JSON: its tag,
/// and for ErrorResponse/NoticeResponse the severity, code and message.
fn take_message(buf: &mut Vec<u8>) -> Option<Value> {
    if buf.len() < 5 {
        return None;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let total = usize::try_from(len).ok()?.checked_add(1)?;
    if len < 4 || buf.len() < total {
        return None;
    }
    let message: Vec<u8> = buf.drain(..total).collect();
    let tag = message[0] as char;
    let mut out = json!({"tag": tag.to_string()});
    match tag {
        'D' => out["values"] = json!(data_row_values(&message[5..])),
        // ParameterStatus and NotificationResponse: their strings, NULs as spaces.
        'S' | 'A' => out["text"] = json!(String::from_utf8_lossy(&message[5..]).replace('\0', " ")),
        // CopyData: the row as copied.
        'd' => out["text"] = json!(String::from_utf8_lossy(&message[5..])),
        _ => {}
    }
    if matches!(tag, 'E' | 'N') {
        for field in message[5..].split(|b| *b == 0) {
            let Some((&kind, value)) = field.split_first() else {
                continue;
            };
            let value = String::from_utf8_lossy(value);
            match kind {
                b'S' => out["severity"] = json!(value),
                b'C' => out["code"] = json!(value),
                b'M' => out["message"] = json!(value),
                _ => {}
            }
        }
    }
    Some(out)
}

/// A DataRow body's values as text (NULL as `None`); whatever of it can be read.
fn data_row_values(body: &[u8]) -> Vec<Option<String>> {
    let mut values = Vec::new();
    let mut rest = body.get(2..).unwrap_or_default();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = i32::from_be_bytes(*len);
        let Ok(n) = usize::try_from(len) else {
            values.push(None);
            rest = tail;
            continue;
        };
        let Some(value) = tail.get(..n) else { break };
        values.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = &tail[n..];
    }
    values
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, BoxError> {
    let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
    if !hex.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(Into::into))
        .collect()
}

fn row_json(row: &Row) -> Result<Vec<Value>, tokio_postgres::Error> {
    (0..row.len())
        .map(|i| {
            row.try_get::<_, Option<Text>>(i)
                .map(|v| v.map_or(Value::Null, |Text(s)| json!(s)))
        })
        .collect()
}

fn failed(e: &tokio_postgres::Error) -> Value {
    json!({"ok": false, "error": error_json(e)})
}

fn error_json(e: &tokio_postgres::Error) -> Value {
    match e.as_db_error() {
        Some(db) => json!({
            "code": db.code().code(),
            "message": db.message(),
            "severity": db.severity(),
            "detail": db.detail(),
            "hint": db.hint(),
        }),
        None => json!({"code": null, "message": e.to_string()}),
    }
}

/// Any result value as a string: the usual binary forms decoded, the rest
/// (text, varchar, name, whatever else) as lossy UTF-8 of its bytes.
struct Text(String);

impl<'a> FromSql<'a> for Text {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let s = match *ty {
            Type::BOOL => bool::from_sql(ty, raw)?.to_string(),
            Type::INT2 => i16::from_sql(ty, raw)?.to_string(),
            Type::INT4 => i32::from_sql(ty, raw)?.to_string(),
            Type::INT8 => i64::from_sql(ty, raw)?.to_string(),
            Type::OID => u32::from_sql(ty, raw)?.to_string(),
            Type::FLOAT4 => f32::from_sql(ty, raw)?.to_string(),
            Type::FLOAT8 => f64::from_sql(ty, raw)?.to_string(),
            _ => String::from_utf8_lossy(raw).into_owned(),
        };
        Ok(Text(s))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A JSON script value as a parameter of whatever type the server
/// inferred: numbers for integer and float types, everything else as text.
#[derive(Debug)]
struct Param(Value);

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let number = || {
            self.0
                .as_f64()
                .ok_or_else(|| -> BoxError { format!("{} is not a number", self.0).into() })
        };
        match *ty {
            _ if self.0.is_null() => Ok(IsNull::Yes),
            Type::INT2 => (number()? as i16).to_sql(ty, out),
            Type::INT4 => (number()? as i32).to_sql(ty, out),
            Type::INT8 => (number()? as i64).to_sql(ty, out),
            Type::FLOAT8 => number()?.to_sql(ty, out),
            Type::BOOL => self
                .0
                .as_bool()
                .ok_or_else(|| -> BoxError { format!("{} is not a bool", self.0).into() })?
                .to_sql(ty, out),
            _ => {
                let text = match &self.0 {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                text.as_str().to_sql(&Type::TEXT, out)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
