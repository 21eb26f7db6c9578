//! `chokepoint policy check|explain`.
use super::output::{say, say_raw, tell};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::policy::{COMM_MAX, FlowFacts, Mode, NameDecision, Policy, as_kernel_keeps};

pub(super) fn check(files: &[PathBuf]) -> ExitCode {
    match Policy::load_files(files) {
        Ok(policy) => {
            say!("ok: {}", policy.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            tell!("{errors}");
            ExitCode::from(2)
        }
    }
}

/// The flow `policy explain` is asked about, as given on the command line.
pub(super) struct Asked<'a> {
    pub dest: SocketAddr,
    pub udp: bool,
    pub uid: Option<u32>,
    pub user: Option<&'a str>,
    pub comm: &'a str,
    pub claims: Option<&'a str>,
    pub names: &'a [String],
}

pub(super) fn explain(config: &Path, asked: &Asked<'_>) -> ExitCode {
    let &Asked {
        dest,
        udp,
        uid,
        user,
        comm,
        claims,
        names,
    } = asked;
    let policy = match Policy::load(config) {
        Ok(p) => p,
        Err(errors) => {
            tell!("{errors}");
            return ExitCode::from(2);
        }
    };
    let (uid, gid) = match (uid, user) {
        (Some(uid), _) => (uid, 0),
        (None, Some(name)) => match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => (u.uid.as_raw(), u.gid.as_raw()),
            _ => return super::usage(format_args!("unknown user {name:?}")),
        },
        // A job is named by its claims; no uid rule should match it by accident.
        (None, None) if claims.is_some() => (u32::MAX, u32::MAX),
        (None, None) => {
            return super::usage("say who connects: --uid N, --user NAME or --claims k=v,…");
        }
    };
    let claims = match claims.map(parse_claims).transpose() {
        Ok(c) => c,
        Err(e) => return super::usage(e),
    };
    let kept = as_kernel_keeps(comm);
    if let Some(kept) = &kept {
        tell!(
            "note: --comm {comm:?} is {} bytes; the kernel keeps the first {COMM_MAX} bytes of a process name, so the gateway sees {kept:?}",
            comm.len()
        );
    }
    let facts = FlowFacts {
        dst: dest,
        pid: 0,
        uid,
        gid,
        comm: kept.as_deref().unwrap_or(comm),
        claims: claims.as_ref(),
        names: &[],
        udp,
    };
    let names: Vec<std::sync::Arc<str>> = names
        .iter()
        .map(|n| std::sync::Arc::from(n.trim_end_matches('.').to_ascii_lowercase()))
        .collect();
    for name in &names {
        let d = policy.resolve(&facts, name);
        say!("{}", name_line(name, &d, policy.daemon().mode));
    }
    let facts = FlowFacts {
        names: &names,
        ..facts
    };
    say_raw!("{}", policy.explain(&facts));
    ExitCode::SUCCESS
}

/// What the forwarder does with a question for `name`, as explain says it.
fn name_line(name: &str, d: &NameDecision, mode: Mode) -> String {
    format!(
        "dns {name}: {} by rule {}{}{}",
        if d.allowed { "answered" } else { "denied" },
        d.rule,
        d.target
            .as_ref()
            .map(|t| format!(" (target {t})"))
            .unwrap_or_default(),
        if !d.allowed && mode == Mode::Audit {
            "; mode audit: logged, then answered"
        } else {
            ""
        }
    )
}

/// `repository=acme/app,ref=refs/heads/main` → claims.
fn parse_claims(text: &str) -> Result<crate::policy::Claims, String> {
    let mut claims = crate::policy::Claims::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            format!("--claims: {pair:?} is not claim=value (write e.g. repository=acme/app,ref=refs/heads/main)")
        })?;
        if k.trim().is_empty() {
            return Err(format!("--claims: {pair:?} names no claim"));
        }
        claims.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    if claims.is_empty() {
        return Err(
            "--claims is empty: write e.g. repository=acme/app,ref=refs/heads/main".to_owned(),
        );
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use std::process::ExitCode;

    use std::sync::Arc;

    use super::{Asked, Mode, NameDecision, as_kernel_keeps, explain, name_line};

    #[test]
    fn a_denied_name_says_audit_mode_answers_it() {
        let denied = NameDecision {
            allowed: false,
            rule: Arc::from("no-web"),
            target: Some(Arc::from("web")),
        };
        assert_eq!(
            name_line("web.corp", &denied, Mode::Enforce),
            "dns web.corp: denied by rule no-web (target web)"
        );
        assert_eq!(
            name_line("web.corp", &denied, Mode::Audit),
            "dns web.corp: denied by rule no-web (target web); mode audit: logged, then answered"
        );
        let allowed = NameDecision {
            allowed: true,
            ..denied
        };
        assert_eq!(
            name_line("web.corp", &allowed, Mode::Audit),
            "dns web.corp: answered by rule no-web (target web)"
        );
    }

    #[test]
    fn who_connects_must_be_said_and_exist() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("policy.toml");
        std::fs::write(
            &config,
            "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"*\"]\n",
        )
        .unwrap();
        let asked = |user, claims| Asked {
            dest: "127.0.0.9:5432".parse().unwrap(),
            udp: false,
            uid: None,
            user,
            comm: "psql",
            claims,
            names: &[],
        };
        // The file itself is fine: asked properly, explain answers.
        let by_uid = Asked {
            uid: Some(1000),
            ..asked(None, None)
        };
        assert_ne!(explain(&config, &by_uid), ExitCode::from(2));
        assert_eq!(explain(&config, &asked(None, None)), ExitCode::from(2));
        assert_eq!(
            explain(&config, &asked(Some("no-such-user-chokepoint"), None)),
            ExitCode::from(2)
        );
        assert_eq!(
            explain(&config, &asked(None, Some("no equals sign"))),
            ExitCode::from(2)
        );
    }

    #[test]
    fn a_long_comm_is_cut_as_the_kernel_cuts_it() {
        assert_eq!(as_kernel_keeps("psql"), None);
        assert_eq!(as_kernel_keeps("gitlab-runner-h"), None);
        assert_eq!(
            as_kernel_keeps("gitlab-runner-helper").as_deref(),
            Some("gitlab-runner-h")
        );
        // "é" is two bytes: the 15th byte is the first half of one.
        assert_eq!(
            as_kernel_keeps("abcdefghijklmné").as_deref(),
            Some("abcdefghijklmn\u{FFFD}")
        );
        assert_eq!(
            as_kernel_keeps("ééééééééé").as_deref(),
            Some("ééééééé\u{FFFD}")
        );
    }
}
