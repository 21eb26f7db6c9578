//! The gateway's own connection to the real server: it logs in with the
//! credentials the policy names, so the job never holds them.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::either::Either;

use super::{
    codec::{
        Authentication, BackendKeyData, DataRow, ErrorResponse, Frame, FrameDecoder,
        ParameterStatus, ReadyForQuery, read_frame,
    },
    search_path::{self, SearchPath},
    tls::{self, UpstreamStream, UpstreamTlsError},
};
use crate::protocols::tcp::connect_upstream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the upstream has to finish a login once connected: a server
/// that stalls (an overloaded authentication hook, a proxy that never
/// answers) must not hold the job's session, and its place under the job's
/// connection limit, for ever.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on the ParameterStatus messages kept during login (they are
/// replayed to the client). A server sends a dozen or two, well under a
/// KiB; one that keeps sending them must not grow the gateway's memory.
const MAX_PARAMETER_BYTES: usize = 64 * 1024;

/// A logged-in upstream session, ready for queries.
pub struct Upstream {
    pub stream: UpstreamStream,
    pub addr: SocketAddr,
    /// ParameterStatus messages to replay to the client, raw.
    pub parameters: Vec<bytes::Bytes>,
    pub backend_pid: i32,
    pub backend_secret: i32,
    /// Transaction status byte of the last ReadyForQuery.
    pub status: u8,
    /// Bytes read past the login (normally none).
    pub leftover: BytesMut,
    /// The session's search path as the server holds it after the login,
    /// or why it could not be read.
    pub search_path: Result<SearchPath, String>,
}

/// Why the login failed, phrased for the job's error message.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach {addr}: {source}")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} rejected the login as role {role:?}: {message}")]
    Rejected {
        addr: SocketAddr,
        role: String,
        message: String,
    },
    #[error(
        "{addr} asks for authentication method {method}, which chokepoint does not speak (use scram-sha-256, md5 or password)"
    )]
    Unsupported { addr: SocketAddr, method: String },
    #[error("{addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: UpstreamTlsError,
    },
    #[error("{addr} sent an invalid message during login: {what}")]
    Protocol { addr: SocketAddr, what: String },
    #[error("{addr} did not finish the login within {after:?}")]
    LoginTimeout { addr: SocketAddr, after: Duration },
    #[error(
        "{addr} sets {name} = {value:?} for this login (ALTER ROLE or ALTER DATABASE … SET?): {why}, so chokepoint refuses the session"
    )]
    UnsafeSetting {
        addr: SocketAddr,
        name: String,
        value: String,
        why: &'static str,
    },
}

/// How to reach the upstream: address, exemption mark and TLS.
pub struct Route {
    pub addr: SocketAddr,
    pub mark: u32,
    /// `None`: plaintext (`tls = "disable"`).
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl Route {
    /// A connected stream: TCP with the exemption mark, then TLS if asked.
    pub async fn connect(&self) -> Result<UpstreamStream, UpstreamError> {
        let addr = self.addr;
        let unreachable = |source| UpstreamError::Unreachable { addr, source };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect_upstream(addr, self.mark))
            .await
            .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
            .map_err(unreachable)?;
        let Some((config, name)) = &self.tls else {
            return Ok(Either::Left(stream));
        };
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tls::negotiate_upstream(stream, config.clone(), name.clone()),
        )
        .await
        .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(|source| UpstreamError::Tls { addr, source })?;
        Ok(Either::Right(tls))
    }
}

/// Connects (with the exemption mark, over TLS if the target asks), logs
/// in as `role` to `database` and reads the session's search path.
/// `params` are the client's other startup parameters (application_name,
/// client_encoding, DateStyle…), passed on unchanged.
pub async fn login(
    route: &Route,
    role: &str,
    database: &str,
    password: &str,
    params: &[(String, String)],
    max_message: usize,
) -> Result<Upstream, UpstreamError> {
    let mut stream = route.connect().await?;
    let (login, search_path) = within(LOGIN_TIMEOUT, route.addr, async {
        let mut login = log_in(
            &mut stream,
            route.addr,
            role,
            database,
            password,
            params,
            max_message,
        )
        .await?;
        let search_path =
            read_search_path(&mut stream, route.addr, role, &mut login, max_message).await?;
        Ok((login, search_path))
    })
    .await?;
    let LoggedIn {
        parameters,
        backend_pid,
        backend_secret,
        status,
        leftover,
        ..
    } = login;
    Ok(Upstream {
        stream,
        addr: route.addr,
        parameters,
        backend_pid,
        backend_secret,
        status,
        leftover,
        search_path,
    })
}

/// `login` unless it takes longer than `after`.
async fn within<T>(
    after: Duration,
    addr: SocketAddr,
    login: impl Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    tokio::time::timeout(after, login)
        .await
        .unwrap_or(Err(UpstreamError::LoginTimeout { addr, after }))
}

/// What [`login`] learns on the connection, before it is put in [`Upstream`].
struct LoggedIn {
    parameters: Vec<bytes::Bytes>,
    /// Bytes of `parameters`, for [`MAX_PARAMETER_BYTES`].
    parameter_bytes: usize,
    backend_pid: i32,
    backend_secret: i32,
    status: u8,
    leftover: BytesMut,
}

/// The startup message and authentication exchange on a connected stream.
async fn log_in<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    addr: SocketAddr,
    role: &str,
    database: &str,
    password: &str,
    params: &[(String, String)],
    max_message: usize,
) -> Result<LoggedIn, UpstreamError> {
    let unreachable = |source| UpstreamError::Unreachable { addr, source };
    let protocol = |what: String| UpstreamError::Protocol { addr, what };

    let mut out = BytesMut::new();
    let mut startup: Vec<(&str, &str)> = vec![("user", role), ("database", database)];
    startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    postgres_protocol::message::frontend::startup_message(startup, &mut out)
        .map_err(|e| protocol(e.to_string()))?;
    stream.write_all(&out).await.map_err(unreachable)?;

    let mut decoder = FrameDecoder::new(max_message);
    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    let mut parameters = Vec::new();
    let mut parameter_bytes = 0;
    let mut key = (0, 0);
    loop {
        let frame = read_frame(stream, &mut buf, &mut decoder)
            .await
            .map_err(|e| protocol(e.to_string()))?
            .ok_or_else(|| protocol("connection closed during login".into()))?;
        out.clear();
        match frame.tag() {
            b'R' => {
                let auth =
                    Authentication::parse(frame.body()).map_err(|e| protocol(e.to_string()))?;
                match auth {
                    Authentication::Ok => continue,
                    Authentication::CleartextPassword => {
                        postgres_protocol::message::frontend::password_message(
                            password.as_bytes(),
                            &mut out,
                        )
                        .map_err(|e| protocol(e.to_string()))?;
                    }
                    Authentication::Md5Password { salt } => {
                        let hash = postgres_protocol::authentication::md5_hash(
                            role.as_bytes(),
                            password.as_bytes(),
                            salt,
                        );
                        postgres_protocol::message::frontend::password_message(
                            hash.as_bytes(),
                            &mut out,
                        )
                        .map_err(|e| protocol(e.to_string()))?;
                    }
                    Authentication::Sasl { mechanisms } => {
                        if !mechanisms.contains(&SCRAM_SHA_256) {
                            return Err(UpstreamError::Unsupported {
                                addr,
                                method: format!("SASL {mechanisms:?}"),
                            });
                        }
                        let s =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        postgres_protocol::message::frontend::sasl_initial_response(
                            SCRAM_SHA_256,
                            s.message(),
                            &mut out,
                        )
                        .map_err(|e| protocol(e.to_string()))?;
                        scram = Some(s);
                    }
                    Authentication::SaslContinue { data } => {
                        let mut s = scram
                            .take()
                            .ok_or_else(|| protocol("SASLContinue before SASL".into()))?;
                        let data = data.to_vec();
                        // PBKDF2 with thousands of rounds: keep it off the reactor.
                        let s = tokio::task::spawn_blocking(move || s.update(&data).map(|()| s))
                            .await
                            .map_err(|e| protocol(e.to_string()))?
                            .map_err(|e| protocol(format!("SCRAM: {e}")))?;
                        postgres_protocol::message::frontend::sasl_response(s.message(), &mut out)
                            .map_err(|e| protocol(e.to_string()))?;
                        scram = Some(s);
                    }
                    Authentication::SaslFinal { data } => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| protocol("SASLFinal before SASL".into()))?;
                        // Verifies the server's signature: a fake upstream that
                        // does not know the password is caught here.
                        s.finish(&data)
                            .map_err(|e| protocol(format!("SCRAM server signature: {e}")))?;
                        continue;
                    }
                    other => {
                        return Err(UpstreamError::Unsupported {
                            addr,
                            method: format!("{other:?}"),
                        });
                    }
                }
                stream.write_all(&out).await.map_err(unreachable)?;
            }
            b'E' => {
                let error =
                    ErrorResponse::parse(frame.body()).map_err(|e| protocol(e.to_string()))?;
                return Err(UpstreamError::Rejected {
                    addr,
                    role: role.to_owned(),
                    message: error.message().unwrap_or("login failed").to_owned(),
                });
            }
            b'S' => keep_parameter(addr, frame, &mut parameters, &mut parameter_bytes)?,
            b'K' => {
                let k = BackendKeyData::parse(frame.body()).map_err(|e| protocol(e.to_string()))?;
                // Protocol 3.0 keys are 4 bytes; longer 3.2 keys cannot be
                // cancelled through a 3.0 CancelRequest anyway.
                let secret = k
                    .secret_key
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .unwrap_or_default();
                key = (k.pid, i32::from_be_bytes(secret));
            }
            b'Z' => {
                let status =
                    ReadyForQuery::parse(frame.body()).map_err(|e| protocol(e.to_string()))?;
                return Ok(LoggedIn {
                    parameters,
                    parameter_bytes,
                    backend_pid: key.0,
                    backend_secret: key.1,
                    status: status.status.as_byte(),
                    leftover: buf,
                });
            }
            // NoticeResponse and NegotiateProtocolVersion need no answer.
            _ => {}
        }
    }
}

/// A ParameterStatus, checked and kept to be replayed to the client.
fn keep_parameter(
    addr: SocketAddr,
    frame: Frame,
    parameters: &mut Vec<bytes::Bytes>,
    parameter_bytes: &mut usize,
) -> Result<(), UpstreamError> {
    let protocol = |what: String| UpstreamError::Protocol { addr, what };
    let p = ParameterStatus::parse(frame.body()).map_err(|e| protocol(e.to_string()))?;
    // A role's or database's own setting applies at login, past every
    // check of the client's startup message.
    if let Some(why) =
        super::classify::lexer_setting_refusal(&p.name.to_ascii_lowercase(), Some(Some(p.value)))
    {
        return Err(UpstreamError::UnsafeSetting {
            addr,
            name: p.name.to_owned(),
            value: p.value.to_owned(),
            why,
        });
    }
    *parameter_bytes += frame.raw().len();
    if *parameter_bytes > MAX_PARAMETER_BYTES {
        return Err(protocol(format!(
            "more than {MAX_PARAMETER_BYTES} bytes of ParameterStatus messages"
        )));
    }
    parameters.push(frame.into_raw());
    Ok(())
}

/// Asks the logged-in server for its search_path, before the job sends
/// anything: a role's or database's default (`ALTER ROLE … SET
/// search_path`) decides where an unqualified name resolves, and the job's
/// statements never show it. Its answer stays here; only a ParameterStatus
/// is kept for the client, which would otherwise miss it. The inner `Err`
/// is a query the server refused or a value that could not be read; the
/// outer one a connection that cannot go on.
async fn read_search_path<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    addr: SocketAddr,
    role: &str,
    login: &mut LoggedIn,
    max_message: usize,
) -> Result<Result<SearchPath, String>, UpstreamError> {
    let unreachable = |source| UpstreamError::Unreachable { addr, source };
    let protocol = |what: String| UpstreamError::Protocol { addr, what };
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(search_path::QUERY, &mut out)
        .map_err(|e| protocol(e.to_string()))?;
    stream.write_all(&out).await.map_err(unreachable)?;

    let mut decoder = FrameDecoder::new(max_message);
    let mut value: Option<Result<String, String>> = None;
    loop {
        let frame = read_frame(stream, &mut login.leftover, &mut decoder)
            .await
            .map_err(|e| protocol(e.to_string()))?
            .ok_or_else(|| protocol("connection closed while reading search_path".into()))?;
        match frame.tag() {
            b'D' => {
                let row = DataRow::parse(frame.body()).map_err(|e| protocol(e.to_string()))?;
                let text = match row.column(0) {
                    Some(Some(bytes)) => std::str::from_utf8(bytes)
                        .map(str::to_owned)
                        .map_err(|_| "search_path is not UTF-8".to_owned()),
                    _ => Err("search_path came back empty".to_owned()),
                };
                value.get_or_insert(text);
            }
            b'E' => {
                let error =
                    ErrorResponse::parse(frame.body()).map_err(|e| protocol(e.to_string()))?;
                value = Some(Err(format!(
                    "the server refused {:?}: {}",
                    search_path::QUERY,
                    error.message().unwrap_or("no message")
                )));
            }
            b'S' => keep_parameter(
                addr,
                frame,
                &mut login.parameters,
                &mut login.parameter_bytes,
            )?,
            b'Z' => {
                let status =
                    ReadyForQuery::parse(frame.body()).map_err(|e| protocol(e.to_string()))?;
                login.status = status.status.as_byte();
                let setting = value.unwrap_or_else(|| Err("no row came back".to_owned()));
                return Ok(setting.and_then(|s| SearchPath::parse(&s, role)));
            }
            // RowDescription, CommandComplete, notices.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn logged_in() -> LoggedIn {
        LoggedIn {
            parameters: Vec::new(),
            parameter_bytes: 0,
            backend_pid: 1,
            backend_secret: 2,
            status: b'I',
            leftover: BytesMut::new(),
        }
    }

    /// Reads the query the gateway sent, then answers with `answer`.
    async fn answer_query(server: &mut tokio::io::DuplexStream, answer: Vec<u8>) -> String {
        let mut head = [0; 5];
        server.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], b'Q');
        let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
        let mut sql = vec![0; len - 4];
        server.read_exact(&mut sql).await.unwrap();
        server.write_all(&answer).await.unwrap();
        String::from_utf8(sql).unwrap()
    }

    /// The answer is the gateway's: nothing of it is left for the client
    /// but a ParameterStatus, which the client would otherwise never see.
    #[tokio::test]
    async fn the_search_path_is_read_after_the_login() {
        let (mut gateway, mut server) = tokio::io::duplex(64 * 1024);
        let mut answer = message(
            b'T',
            b"\0\x01current_setting\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        );
        let value = b"\"$user\", Billing";
        let mut row = 1i16.to_be_bytes().to_vec();
        row.extend_from_slice(&(value.len() as i32).to_be_bytes());
        row.extend_from_slice(value);
        answer.extend(message(b'D', &row));
        answer.extend(message(b'C', b"SELECT 1\0"));
        answer.extend(message(b'S', b"application_name\0ci\0"));
        answer.extend(message(b'Z', b"I"));
        let server = tokio::spawn(async move { answer_query(&mut server, answer).await });
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let mut login = logged_in();
        let path = read_search_path(&mut gateway, addr, "app_rw", &mut login, 1 << 20)
            .await
            .expect("the connection goes on")
            .expect("the path is read");
        assert_eq!(
            path.schemas(),
            Some(&["pg_temp", "app_rw", "billing"].map(String::from)[..])
        );
        assert_eq!(server.await.unwrap(), format!("{}\0", search_path::QUERY));
        assert!(login.leftover.is_empty());
        assert_eq!(login.parameters.len(), 1);
        assert_eq!(login.status, b'I');
    }

    /// A server that refuses the query leaves the path unknown (the session
    /// then takes unqualified names to be in any schema), not the login.
    #[tokio::test]
    async fn a_refused_search_path_query_leaves_the_path_unknown() {
        let (mut gateway, mut server) = tokio::io::duplex(64 * 1024);
        let mut answer = message(b'E', b"SERROR\0C42883\0Mno such function\0\0");
        answer.extend(message(b'Z', b"I"));
        let server = tokio::spawn(async move { answer_query(&mut server, answer).await });
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let mut login = logged_in();
        let why = read_search_path(&mut gateway, addr, "app_rw", &mut login, 1 << 20)
            .await
            .expect("the connection goes on")
            .expect_err("no path");
        assert!(why.contains("no such function"), "{why}");
        server.await.unwrap();
        assert!(login.leftover.is_empty());
        assert!(login.parameters.is_empty());
    }

    /// A server that takes the startup message and never answers.
    #[tokio::test]
    async fn a_server_that_never_answers_the_login_is_given_up_on() {
        let (mut gateway, mut server) = tokio::io::duplex(64 * 1024);
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let login = log_in(&mut gateway, addr, "app", "shop", "", &[], 1 << 20);
        let soon = Duration::from_millis(50);
        let result = within(soon, addr, login).await;
        assert!(
            matches!(result, Err(UpstreamError::LoginTimeout { after, .. }) if after == soon),
            "{:?}",
            result.map(|l| l.backend_pid)
        );
        let mut startup = [0; 4];
        server.read_exact(&mut startup).await.unwrap();
        assert!(u32::from_be_bytes(startup) > 8, "the startup was sent");
    }

    /// A server that answers the startup with trust, then sends
    /// ParameterStatus messages without end.
    #[tokio::test]
    async fn a_server_sending_parameters_without_end_is_refused() {
        let (mut gateway, mut server) = tokio::io::duplex(64 * 1024);
        let endless = tokio::spawn(async move {
            let mut startup = [0; 4];
            server.read_exact(&mut startup).await.unwrap();
            let len = u32::from_be_bytes(startup) as usize;
            server.read_exact(&mut vec![0; len - 4]).await.unwrap();
            server.write_all(b"R\0\0\0\x08\0\0\0\0").await.unwrap();
            let mut sent = 0usize;
            // Stops when the gateway hangs up, or far past any bound.
            while sent < 64 << 20 {
                let name = format!("custom.setting_{sent}");
                let body = format!("{name}\0on\0");
                let mut m = vec![b'S'];
                m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
                m.extend_from_slice(body.as_bytes());
                if server.write_all(&m).await.is_err() {
                    break;
                }
                sent += m.len();
            }
            sent
        });
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let result = log_in(&mut gateway, addr, "app", "shop", "", &[], 1 << 20).await;
        let what = match result {
            Err(UpstreamError::Protocol { what, .. }) => what,
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(l) => panic!("logged in with {} parameters", l.parameters.len()),
        };
        assert!(what.contains("ParameterStatus"), "{what}");
        drop(gateway);
        let sent = endless.await.unwrap();
        assert!(sent < 2 * MAX_PARAMETER_BYTES, "read {sent} bytes");
    }
}
