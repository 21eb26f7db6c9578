//! `chokepoint approvals`: list, show, approve and deny held statements.
use std::{io::Write, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::Subcommand;

use super::{Failure, escaped::Escaped, fail};
use crate::{
    admin::{AdminRequest, AdminResponse, call},
    approvals::{Approvals, Caller, Request, State, Verdict},
    policy::{DEFAULT_ADMIN_SOCKET, Policy},
    recording::sink::SinkSettings,
    store::{ApprovalStore, PostgresStore},
};

/// Which gateway (or fleet store) to ask.
#[derive(Debug, clap::Args)]
pub struct ApprovalsArgs {
    /// The gateway's admin socket.
    #[arg(long, global = true, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Take the admin socket from this daemon configuration.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Decide directly in a PostgreSQL fleet store (a connection string,
    /// e.g. "postgres://approver@db/chokepoint"), as the user running this.
    #[arg(long, global = true, conflicts_with_all = ["socket", "config"])]
    store: Option<String>,
    /// Print requests as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Pending requests, oldest first.
    List {
        /// Decided, expired and cancelled requests too.
        #[arg(long)]
        all: bool,
    },
    /// One request, whole.
    Show { id: String },
    /// Approve a request: the held statement runs.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        /// Also let the same identity run statements of the same class on
        /// the same target for this long (e.g. 30m), up to the rule's max_grant.
        #[arg(long = "for", value_parser = parse_grant)]
        grant: Option<Duration>,
        /// Accept that a grant for an unidentified process (no job bound
        /// to its cgroup) covers every process in that cgroup, the next
        /// job there included. Refused without it.
        #[arg(long, requires = "grant")]
        cgroup_wide: bool,
        /// Only if the statement's digest starts with this (from `show`).
        #[arg(long)]
        digest: Option<String>,
    },
    /// Deny a request: the job gets an error naming the reason.
    Deny {
        id: String,
        #[arg(long, required = true)]
        reason: String,
    },
}

fn parse_grant(text: &str) -> Result<Duration, String> {
    crate::policy::parse_duration(text)
}

pub fn approvals(args: &ApprovalsArgs, command: &ApprovalsCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(args, command)) {
        Ok(out) => {
            // Statements, process names and identities are the job's text.
            let mut stdout = Escaped(std::io::stdout().lock());
            match stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("cannot write to standard output: {e}")),
            }
        }
        Err(e) => e.exit(),
    }
}

async fn run(args: &ApprovalsArgs, command: &ApprovalsCommand) -> Result<String, Failure> {
    if let ApprovalsCommand::Show { id }
    | ApprovalsCommand::Approve { id, .. }
    | ApprovalsCommand::Deny { id, .. } = command
        && !crate::approvals::is_id(id)
    {
        return Err(Failure::Usage(format!(
            "{id:?} is not a request id: ids look like apr-7f3k2m (see `chokepoint approvals list`)"
        )));
    }
    if let ApprovalsCommand::Deny { reason, .. } = command
        && reason.trim().is_empty()
    {
        return Err(Failure::Usage(
            "--reason is empty: say why, the job's log shows it".to_owned(),
        ));
    }
    if let ApprovalsCommand::Approve {
        digest: Some(digest),
        ..
    } = command
        && digest.trim().is_empty()
    {
        // An empty prefix is a prefix of every digest: it would bind the
        // decision to nothing. Found in review.
        return Err(Failure::Usage(
            "--digest is empty: give the digest `chokepoint approvals show` printed (or its first characters), or leave --digest out".to_owned(),
        ));
    }
    let requests = match &args.store {
        Some(conninfo) => {
            // Syntax first: a malformed argument is a usage error (2), not
            // a store that did not answer (1). Found in review. The text is
            // not echoed: it may hold a password.
            if let Err(e) = <tokio_postgres::Config as std::str::FromStr>::from_str(conninfo) {
                return Err(Failure::Usage(format!(
                    "--store is not a PostgreSQL connection string ({e}): write e.g. \"host=db.internal user=approver dbname=chokepoint\" or \"postgres://approver@db.internal/chokepoint\""
                )));
            }
            direct(conninfo, command).await?
        }
        None => {
            let socket = socket(args).map_err(Failure::Usage)?;
            let answer: AdminResponse = call(&socket, &request(command)).await?;
            if let Some(e) = answer.error {
                return Err(e.into());
            }
            answer.requests
        }
    };
    if args.json {
        return serde_json::to_string_pretty(&requests)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string().into());
    }
    Ok(match command {
        ApprovalsCommand::List { .. } => table(&requests),
        ApprovalsCommand::Show { .. } => requests.iter().map(details).collect(),
        ApprovalsCommand::Approve { .. } | ApprovalsCommand::Deny { .. } => {
            requests.iter().map(outcome).collect()
        }
    })
}

fn socket(args: &ApprovalsArgs) -> Result<PathBuf, String> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    match &args.config {
        Some(config) => Policy::load(config)
            .map(|p| p.daemon().admin_socket.clone())
            .map_err(|e| format!("invalid configuration:\n{e}")),
        None => Ok(PathBuf::from(DEFAULT_ADMIN_SOCKET)),
    }
}

fn request(command: &ApprovalsCommand) -> AdminRequest {
    match command {
        ApprovalsCommand::List { all } => AdminRequest::ApprovalsList { all: *all },
        ApprovalsCommand::Show { id } => AdminRequest::ApprovalsShow { id: id.clone() },
        ApprovalsCommand::Approve {
            id,
            comment,
            grant,
            cgroup_wide,
            digest,
        } => AdminRequest::ApprovalsDecide {
            id: id.clone(),
            approve: true,
            text: comment.clone(),
            grant_secs: grant.map(|g| g.as_secs().max(1)),
            cgroup_wide: *cgroup_wide,
            digest: digest.clone(),
        },
        ApprovalsCommand::Deny { id, reason } => AdminRequest::ApprovalsDecide {
            id: id.clone(),
            approve: false,
            text: Some(reason.clone()),
            grant_secs: None,
            cgroup_wide: false,
            digest: None,
        },
    }
}

/// `--store`: the fleet store itself, the caller being this process.
async fn direct(conninfo: &str, command: &ApprovalsCommand) -> Result<Vec<Request>, String> {
    let settings = SinkSettings {
        conninfo: conninfo.to_owned(),
        password_file: None,
    };
    let store: Arc<dyn ApprovalStore> = Arc::new(
        PostgresStore::connect(&settings)
            .await
            .map_err(|e| e.to_string())?,
    );
    let approvals = Approvals::with_store(store, "cli".to_owned());
    let caller = Caller::from_peer(
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
        Some(std::process::id()),
    );
    match command {
        ApprovalsCommand::List { all } => approvals.list(&caller, *all).await,
        ApprovalsCommand::Show { id } => approvals.show(&caller, id).await.map(|r| vec![r]),
        ApprovalsCommand::Approve {
            id,
            comment,
            grant,
            cgroup_wide,
            digest,
        } => {
            let verdict = Verdict::Approve {
                comment: comment.clone(),
                grant: *grant,
                cgroup_wide: *cgroup_wide,
            };
            approvals
                .decide(&caller, id, &verdict, digest.as_deref())
                .await
                .map(|r| vec![r])
        }
        ApprovalsCommand::Deny { id, reason } => {
            let verdict = Verdict::Deny {
                reason: reason.clone(),
            };
            approvals
                .decide(&caller, id, &verdict, None)
                .await
                .map(|r| vec![r])
        }
    }
}

fn shorten(text: &str, max: usize) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

fn table(requests: &[Request]) -> String {
    if requests.is_empty() {
        return "no requests\n".to_owned();
    }
    let mut out = format!(
        "{:<11} {:<9} {:<24} {:<22} {:<14} {:<14} {}\n",
        "ID", "STATE", "EXPIRES", "WHO", "TARGET", "RULE", "STATEMENT"
    );
    for r in requests {
        out.push_str(&format!(
            "{:<11} {:<9} {:<24} {:<22} {:<14} {:<14} {}\n",
            r.id,
            r.state.to_string(),
            r.expires,
            shorten(&r.who.identity, 22),
            shorten(&r.target, 14),
            shorten(&r.rule, 14),
            shorten(&r.statement, 60)
        ));
    }
    out
}

fn details(r: &Request) -> String {
    let mut out = format!(
        "id:        {}\nstate:     {}\nwho:       {} (pid {}, {}, cgroup {})\nwhere:     target {} as role {} on database {}\nwhat:      {}\ndigest:    {}\nclass:     {}\nwhy:       rule {}: {}\napprovers: {} ({} needed)\ncreated:   {}\nexpires:   {}\ngateway:   {}\nsession:   {}\n",
        r.id,
        r.state,
        r.who.identity,
        r.who.pid,
        r.who.comm,
        r.who.cgroup_id,
        r.target,
        r.role,
        r.database,
        r.statement,
        r.digest,
        r.class,
        r.rule,
        r.reason,
        r.approvers.join(", "),
        r.min_approvals,
        r.created,
        r.expires,
        r.gateway,
        r.who.session,
    );
    for v in &r.votes {
        out.push_str(&format!(
            "decision:  {} by {} at {}{}\n",
            if v.approve { "approve" } else { "deny" },
            v.by,
            v.at,
            v.text
                .as_deref()
                .map(|t| format!(": {t}"))
                .unwrap_or_default()
        ));
    }
    if let Some(until) = &r.grant_until {
        out.push_str(&format!("grant:     {} until {until}\n", grant_cover(r)));
    }
    if let Some(note) = &r.note {
        out.push_str(&format!("note:      {note}\n"));
    }
    out
}

/// What a grant from `r` lets run unasked, in words: the approver of an
/// unidentified process should know it covers whatever runs in that
/// cgroup next.
fn grant_cover(r: &Request) -> String {
    let who = match r.who.scope.strip_prefix("job ") {
        Some(_) => "this job".to_owned(),
        None if r.who.scope.starts_with("cgroup ") => format!(
            "any process in {} (unidentified: whichever job runs there next too)",
            r.who.scope
        ),
        None => "nothing (a request from an older version)".to_owned(),
    };
    format!(
        "{} statements held by rule {} for the same reason, on {}, for {who}",
        r.class, r.rule, r.target
    )
}

fn outcome(r: &Request) -> String {
    match r.state {
        State::Approved => format!(
            "{}: approved; the held statement runs{}\n",
            r.id,
            r.grant_until
                .as_deref()
                .map(|u| format!("; until {u} it also lets run {}", grant_cover(r)))
                .unwrap_or_default()
        ),
        State::Pending => format!(
            "{}: {} of {} approvals; waiting for more\n",
            r.id,
            r.approvals(),
            r.min_approvals
        ),
        _ => format!("{}: {} ({})\n", r.id, r.state, r.outcome()),
    }
}

#[cfg(test)]
mod tests {
    use std::process::ExitCode;

    use super::{super::Failure, ApprovalsArgs, ApprovalsCommand, approvals, run};

    #[test]
    fn a_malformed_request_or_a_bad_config_is_a_usage_error() {
        // None of these reaches a gateway: 1 stays "refused or unreachable".
        let default = ApprovalsArgs {
            socket: None,
            config: None,
            store: None,
            json: false,
        };
        let not_an_id = ApprovalsCommand::Show {
            id: "../etc".into(),
        };
        assert_eq!(approvals(&default, &not_an_id), ExitCode::from(2));
        let no_reason = ApprovalsCommand::Deny {
            id: "apr-7f3k2m".into(),
            reason: " ".into(),
        };
        assert_eq!(approvals(&default, &no_reason), ExitCode::from(2));
        let bad_config = ApprovalsArgs {
            config: Some("/nonexistent/chokepoint.toml".into()),
            ..default
        };
        let list = ApprovalsCommand::List { all: false };
        assert_eq!(approvals(&bad_config, &list), ExitCode::from(2));
    }

    #[test]
    fn a_malformed_store_is_a_usage_error_naming_store() {
        let args = ApprovalsArgs {
            socket: None,
            config: None,
            store: Some("host=db port=notaport".into()),
            json: false,
        };
        let list = ApprovalsCommand::List { all: false };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        match runtime.block_on(run(&args, &list)) {
            Err(Failure::Usage(message)) => {
                assert!(message.starts_with("--store "), "{message}");
                assert!(!message.contains("[recording]"), "{message}");
            }
            Err(Failure::Failed(message)) => panic!("exit 1, not 2: {message}"),
            Ok(out) => panic!("a malformed --store was used: {out}"),
        }
        assert_eq!(approvals(&args, &list), ExitCode::from(2));
    }

    #[test]
    fn an_empty_digest_is_a_usage_error() {
        let args = ApprovalsArgs {
            socket: Some("/nonexistent/admin.sock".into()),
            config: None,
            store: None,
            json: false,
        };
        let approve = |digest: &str| ApprovalsCommand::Approve {
            id: "apr-7f3k2m".into(),
            comment: None,
            grant: None,
            cgroup_wide: false,
            digest: Some(digest.into()),
        };
        // Not a usage error: it gets as far as the (absent) gateway.
        assert_eq!(approvals(&args, &approve("3fa9c2")), ExitCode::FAILURE);
        assert_eq!(approvals(&args, &approve("")), ExitCode::from(2));
        assert_eq!(approvals(&args, &approve(" ")), ExitCode::from(2));
    }
}
