//! The startup phase: TLS if the client asks, the startup message (the
//! job is trusted from the kernel's record, never asked for a password),
//! settings refused because they would make the server read SQL
//! differently, then the upstream login with the policy's credentials.
use super::*;

/// The startup phase, upgrading the client to TLS when it asks and the
/// target allows it. Returns the stream to go on with (`None` if the TLS
/// handshake failed, leaving nothing to answer on).
pub(super) async fn startup_with_tls(
    ctx: &PostgresContext,
    mut tcp: TcpStream,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
) -> (Option<ClientStream>, Result<Option<StartupMessage>, String>) {
    let acceptor = if ctx.target.client_tls {
        match ctx.shared.client_acceptor() {
            Ok(a) => Some(a),
            Err(e) => return (Some(Either::Left(tcp)), Err(e)),
        }
    } else {
        None
    };
    let step = client_startup(ctx, &mut tcp, buf, decoder, acceptor.is_some()).await;
    let Some(acceptor) = acceptor.filter(|_| matches!(step, Ok(StartupStep::UpgradeTls))) else {
        return (Some(Either::Left(tcp)), step.map(StartupStep::into_message));
    };
    if let Err(e) = tcp.write_all(b"S").await {
        return (None, Err(e.to_string()));
    }
    // Bytes sent after the SSLRequest but before the handshake were never
    // encrypted; taking them as part of the session would let someone on
    // the path inject them (CVE-2021-23214).
    if !buf.is_empty() {
        return (
            Some(Either::Left(tcp)),
            Err("unencrypted data after the TLS request".into()),
        );
    }
    let mut client = match acceptor.accept(tcp).await {
        Ok(tls) => Either::Right(tls),
        Err(e) => return (None, Err(format!("client TLS handshake failed: {e}"))),
    };
    let step = client_startup(ctx, &mut client, buf, decoder, false).await;
    (Some(client), step.map(StartupStep::into_message))
}

/// Where the startup phase ended.
pub(super) enum StartupStep {
    Startup(StartupMessage),
    /// Closed, or a cancel request (which is forwarded, then closed).
    Closed,
    /// The client asked for TLS and may have it.
    UpgradeTls,
}

impl StartupStep {
    /// The startup message; a TLS upgrade is only returned where it was
    /// offered, so elsewhere it reads as a closed connection.
    pub(super) fn into_message(self) -> Option<StartupMessage> {
        match self {
            Self::Startup(m) => Some(m),
            Self::Closed | Self::UpgradeTls => None,
        }
    }
}

/// Startup phase: GSS encryption is declined, SSL is declined unless
/// `offer_tls` (the job talks to the gateway over loopback), cancel
/// requests are forwarded, and the startup message is checked for
/// parameters that would get around policy.
pub(super) async fn client_startup<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &PostgresContext,
    client: &mut S,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
    offer_tls: bool,
) -> Result<StartupStep, String> {
    loop {
        let Some(frame) = read_startup_frame(client, buf, decoder)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(StartupStep::Closed);
        };
        match StartupPacket::parse(&frame).map_err(|e| e.to_string())? {
            StartupPacket::SslRequest if offer_tls => return Ok(StartupStep::UpgradeTls),
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                client.write_all(b"N").await.map_err(|e| e.to_string())?;
            }
            StartupPacket::CancelRequest(cancel) => {
                if let Ok(secret) = <[u8; 4]>::try_from(cancel.secret_key.as_ref()) {
                    ctx.shared
                        .cancel
                        .forward(cancel.pid, i32::from_be_bytes(secret), ctx.mark)
                        .await;
                }
                return Ok(StartupStep::Closed);
            }
            StartupPacket::Startup(startup) => {
                if startup.major != 3 {
                    return Err(format!(
                        "unsupported frontend protocol {}.{}: chokepoint speaks 3.0",
                        startup.major, startup.minor
                    ));
                }
                // Newer minor versions and _pq_ extensions: tell the client
                // what we speak, as the server would.
                let unknown: Vec<&str> = startup
                    .params
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .filter(|k| k.starts_with("_pq_."))
                    .collect();
                if startup.minor > 0 || !unknown.is_empty() {
                    let mut body = 0i32.to_be_bytes().to_vec();
                    body.extend_from_slice(&(unknown.len() as i32).to_be_bytes());
                    for name in &unknown {
                        body.extend_from_slice(name.as_bytes());
                        body.push(0);
                    }
                    let mut out = BytesMut::new();
                    put_message(&mut out, b'v', &body);
                    client.write_all(&out).await.map_err(|e| e.to_string())?;
                }
                if startup.user().is_none_or(str::is_empty) {
                    return Err(
                        "no user in the startup message: name the database role to use".into(),
                    );
                }
                if startup
                    .param("replication")
                    .is_some_and(|v| !v.eq_ignore_ascii_case("false") && v != "0")
                {
                    return Err("replication connections are not allowed through chokepoint".into());
                }
                if let Some(reason) = unsafe_startup_setting(&startup) {
                    return Err(reason);
                }
                if startup
                    .param("options")
                    .is_some_and(|v| !v.trim().is_empty())
                {
                    return Err("the startup parameter \"options\" is not allowed through chokepoint: it can change the role and settings before policy sees a statement".into());
                }
                return Ok(StartupStep::Startup(startup));
            }
        }
    }
}

/// Settings a client may give in its startup message, lower case
/// (PostgreSQL matches setting names ignoring case). The server applies
/// them before policy sees a statement, so only presentation and timeout
/// settings pass; `role`, `search_path` and the rest are refused, and a
/// job sets them with SET, where policy decides.
const STARTUP_SETTINGS: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "default_transaction_deferrable",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "extra_float_digits",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "intervalstyle",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "lock_timeout",
    "standard_conforming_strings",
    "statement_timeout",
    "timezone",
];

/// Why a startup setting must be refused: one not in [`STARTUP_SETTINGS`],
/// or a value that would make the server read SQL differently from the
/// gateway's parser (the same test as for SET).
pub(super) fn unsafe_startup_setting(startup: &StartupMessage) -> Option<String> {
    for (name, value) in &startup.params {
        if matches!(
            name.as_str(),
            "user" | "database" | "options" | "replication"
        ) || name.starts_with("_pq_.")
        {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if lower == "search_path" {
            return Some("the startup parameter search_path is not allowed through chokepoint: table rules follow the search_path the role and database set, and a job may not change it; qualify table names instead".into());
        }
        if !STARTUP_SETTINGS.contains(&lower.as_str()) {
            return Some(format!(
                "the startup parameter {name:?} is not allowed through chokepoint: the server would apply it before policy sees a statement; SET it after connecting (allowed at startup: {})",
                STARTUP_SETTINGS.join(", ")
            ));
        }
        if let Some(why) = super::super::classify::lexer_setting_refusal(&lower, Some(Some(value)))
        {
            return Some(format!(
                "the startup parameter {name} = {value:?} is not allowed through chokepoint: {why}"
            ));
        }
    }
    None
}

/// Role check, credentials, upstream login. Errors come with the SQLSTATE
/// the client should see and a message naming the target.
pub(super) async fn connect(
    ctx: &PostgresContext,
    flow: &Flow,
    startup: &StartupMessage,
    role: &str,
    database: &str,
) -> Result<(Upstream, SessionRules, Route), (&'static str, String)> {
    let target = &ctx.target.name;
    // Only rules that grant this role may allow its statements.
    let rules = ctx
        .rules
        .for_role(role)
        .map_err(|e| ("28000", format!("chokepoint: {e}")))?;
    let credential = ctx.target.credentials.get(role).ok_or_else(|| {
        (
            "28000",
            format!("chokepoint: target {target} has no credentials for role {role:?}"),
        )
    })?;
    let password = credential.read_password().map_err(|e| {
        (
            "28000",
            format!(
                "chokepoint: cannot read the credentials of role {role:?} for target {target}: {e}"
            ),
        )
    })?;
    let addr = ctx.target.upstream.unwrap_or(flow.dst);
    let tls_setup = |e: String| {
        (
            "08001",
            format!("chokepoint: TLS to target {target} cannot be set up: {e}"),
        )
    };
    let tls = match ctx.shared.upstream_tls(&ctx.target).map_err(tls_setup)? {
        Some(config) => Some((
            config,
            tls::server_name(&ctx.target.tls, addr).map_err(tls_setup)?,
        )),
        None => None,
    };
    let route = Route {
        addr,
        mark: ctx.mark,
        tls,
    };
    let params: Vec<(String, String)> = startup
        .params
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "user" | "database" | "options" | "replication")
                && !k.starts_with("_pq_.")
        })
        .cloned()
        .collect();
    let upstream = upstream::login(
        &route,
        role,
        database,
        &password,
        &params,
        ctx.target.max_message_bytes,
    )
    .await
    .map_err(|e| {
        let code = match e {
            UpstreamError::Unreachable { .. } | UpstreamError::LoginTimeout { .. } => "08006",
            UpstreamError::Rejected { .. } => "28P01",
            UpstreamError::Tls { .. } => "08001",
            _ => "08P01",
        };
        (code, format!("chokepoint: target {target}: {e}"))
    })?;
    Ok((upstream, rules, route))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> StartupMessage {
        let mut all = vec![("user".to_owned(), "ci".to_owned())];
        all.extend(
            params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        StartupMessage::new(all)
    }

    /// PostgreSQL matches setting names ignoring case and encoding names
    /// ignoring everything but letters and digits: every spelling of an
    /// unsafe setting is refused, and only listed settings pass at all.
    #[test]
    fn every_spelling_of_an_unsafe_startup_setting_is_refused() {
        for (name, value) in [
            ("standard_conforming_strings", "off"),
            ("STANDARD_CONFORMING_STRINGS", "off"),
            ("Standard_Conforming_Strings", "0"),
            ("Client_Encoding", "SJIS"),
            ("client_encoding", "SHIFT_JIS_2004"),
            ("client_encoding", "windows932"),
            ("client_encoding", "Windows-936"),
            ("client_encoding", "S.JIS"),
            ("client_encoding", "big 5"),
            ("client_encoding", "GB.K"),
            ("Search_Path", "billing"),
            ("role", "admin"),
            ("session_authorization", "postgres"),
            ("default_table_access_method", "heap"),
        ] {
            let why = unsafe_startup_setting(&startup(&[(name, value)]));
            assert!(why.is_some(), "{name} = {value} passed");
        }
        let role = unsafe_startup_setting(&startup(&[("role", "admin")])).unwrap();
        assert!(
            role.contains("\"role\" is not allowed") && role.contains("SET it after connecting"),
            "{role}"
        );
    }

    #[test]
    fn what_drivers_send_at_startup_passes() {
        let drivers = startup(&[
            ("database", "orders"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
            ("application_name", "psql"),
            ("standard_conforming_strings", "on"),
            ("options", ""),
            ("replication", "false"),
            ("_pq_.anything", "x"),
        ]);
        assert_eq!(unsafe_startup_setting(&drivers), None);
    }
}
