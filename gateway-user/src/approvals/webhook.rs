//! Notifying approvers: each request is POSTed as JSON to the rule's webhooks.
use std::time::Duration;

use crate::policy::Webhook;

use super::Request;

/// A webhook that does not answer within this long counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A client for webhook POSTs: rustls, no redirects (a redirect could send
/// the bearer secret elsewhere), a bounded wait.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .user_agent(concat!("chokepoint/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// POSTs `request`; `Err` says why the webhook did not take it.
pub async fn notify(
    client: &reqwest::Client,
    hook: &Webhook,
    request: &Request,
) -> Result<(), String> {
    let mut post = client.post(&hook.url).json(request);
    if let Some(file) = &hook.bearer_file {
        let secret = crate::regular_file::read_secret(file)
            .map_err(|e| format!("bearer_file {}: {e}", file.display()))?;
        post = post.bearer_auth(secret);
    }
    let response = post.send().await.map_err(|e| {
        // reqwest's Display hides the cause ("error sending request").
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        message
    })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", response.status()))
    }
}
