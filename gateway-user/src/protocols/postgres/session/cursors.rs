//! SQL cursors share the portal namespace: `DECLARE c CURSOR FOR …`
//! makes a portal an extended-protocol Execute can run, and `CLOSE`
//! removes one, whoever made it. The session's portals follow both once
//! they completed, so an Execute is recorded under the statement that
//! really made its portal (found in review: after `CLOSE c` and `DECLARE
//! c`, an Execute of `c` was recorded with the text of an earlier Bind of
//! that name).
use pg_query::NodeEnum;

use super::*;

/// What a cursor statement does to the portal names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CursorChange {
    Declare(String),
    /// `CLOSE name`, or `CLOSE ALL` (`None`).
    Close(Option<String>),
}

/// The `DECLARE` and `CLOSE` statements of `sql`, in order (others are
/// left out). Empty when it does not parse, which a text that ran does.
pub(super) fn cursor_changes(sql: &str) -> Vec<CursorChange> {
    let parse = || Ok(pg_query::parse(sql).ok());
    let Ok(Some(parsed)) = crate::protocols::postgres::classify::guarded(sql, parse) else {
        return Vec::new();
    };
    parsed
        .protobuf
        .stmts
        .iter()
        .filter_map(|raw| match raw.stmt.as_ref()?.node.as_ref()? {
            NodeEnum::DeclareCursorStmt(d) => Some(CursorChange::Declare(d.portalname.clone())),
            NodeEnum::ClosePortalStmt(c) => Some(CursorChange::Close(
                (!c.portalname.is_empty()).then(|| c.portalname.clone()),
            )),
            _ => None,
        })
        .collect()
}

impl Session<'_> {
    /// A CommandComplete: a `DECLARE` made a portal, a `CLOSE` took one
    /// (or all) away.
    pub(super) fn cursor_completed(&mut self, body: &[u8]) {
        let tag = body.strip_suffix(&[0]).unwrap_or(body);
        if !matches!(
            tag,
            b"DECLARE CURSOR" | b"CLOSE CURSOR" | b"CLOSE CURSOR ALL"
        ) {
            return;
        }
        let Some(running) = self.front_running() else {
            return;
        };
        // Statements complete in order: this answers the first cursor
        // statement not answered yet.
        let index = running.cursors_done;
        running.cursors_done += 1;
        let (sql, shown, approved) = (
            Arc::clone(&running.sql),
            running.shown.clone(),
            running.approved.clone(),
        );
        let classification = running.classification.clone();
        let Some(change) = cursor_changes(&sql).into_iter().nth(index) else {
            return;
        };
        match change {
            CursorChange::Declare(name) => {
                // What its rows are: the DECLARE's query, decided when it
                // ran; an Execute of it only fetches them.
                let declared = classification
                    .as_deref()
                    .and_then(|c| {
                        c.statements
                            .iter()
                            .filter(|s| matches!(s.command, "DECLARE CURSOR" | "CLOSE"))
                            .nth(index)
                    })
                    .filter(|s| s.command == "DECLARE CURSOR")
                    .cloned()
                    .map(|s| {
                        Arc::new(Classification {
                            statements: vec![s],
                        })
                    })
                    .unwrap_or_default();
                let text: Arc<str> = Arc::from(format!(
                    "-- Execute of SQL cursor {name:?}, declared by: {}",
                    shown.text
                ));
                let shown = Shown {
                    text,
                    class: shown.class,
                };
                self.portals.insert(
                    name,
                    Portal {
                        bound: (sql, declared, shown, approved),
                        ran: Arc::new(std::sync::atomic::AtomicBool::new(true)),
                    },
                );
            }
            CursorChange::Close(Some(name)) => {
                self.portals.remove(&name);
            }
            CursorChange::Close(None) => self.portals.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CursorChange, cursor_changes};

    #[test]
    fn declares_and_closes_are_found_in_order() {
        assert_eq!(
            cursor_changes(
                "SELECT 1; DECLARE \"Cur\" CURSOR WITH HOLD FOR SELECT 2; CLOSE \"Cur\"; \
                 close all; declare c2 scroll cursor for values (1)"
            ),
            [
                CursorChange::Declare("Cur".into()),
                CursorChange::Close(Some("Cur".into())),
                CursorChange::Close(None),
                CursorChange::Declare("c2".into()),
            ]
        );
        assert!(cursor_changes("SELECT 1").is_empty());
        assert!(cursor_changes("DECLARE (").is_empty());
    }
}
