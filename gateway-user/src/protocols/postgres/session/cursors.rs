//! SQL cursors share the portal namespace: `DECLARE c CURSOR FOR …`
//! makes a portal an extended-protocol Execute can run, and `CLOSE`
//! removes one, whoever made it. The session's portals follow both once
//! they completed, so an Execute is recorded under the statement that
//! really made its portal (found in review: after `CLOSE c` and `DECLARE
//! c`, an Execute of `c` was recorded with the text of an earlier Bind of
//! that name).
use pg_query::NodeEnum;

use super::{client::MAX_PORTALS, *};
use crate::protocols::postgres::tracker::CursorChange;

/// Statement text longer than this is not repeated in a cursor's
/// Execute's record, which points at it instead: one copy per cursor of a
/// long text of many DECLAREs would cost memory quadratic in its length,
/// and the text alone would read as if all of it ran again (found in
/// review).
const NAMED_TEXT: usize = 1024;

/// The `DECLARE` and `CLOSE` statements of `sql`, in order (others are
/// left out). Empty when it does not parse, which a text that ran does.
pub(super) fn cursor_changes(sql: &str) -> Vec<CursorChange> {
    parsed(sql, |i, node| match node {
        NodeEnum::DeclareCursorStmt(d) => Some(CursorChange::Declare(i, d.portalname.clone())),
        NodeEnum::ClosePortalStmt(c) => Some(CursorChange::Close(
            i,
            (!c.portalname.is_empty()).then(|| c.portalname.clone()),
        )),
        _ => None,
    })
}

/// Every portal name `sql`'s cursor statements use (DECLARE, FETCH, MOVE,
/// CLOSE), as the server reads them (quoted, `U&"…"` escapes and all).
pub(super) fn cursor_names(sql: &str) -> Vec<String> {
    parsed(sql, |_, node| match node {
        NodeEnum::DeclareCursorStmt(d) => Some(d.portalname.clone()),
        NodeEnum::ClosePortalStmt(c) => Some(c.portalname.clone()),
        NodeEnum::FetchStmt(f) => Some(f.portalname.clone()),
        _ => None,
    })
}

/// What `pick` makes of each top-level statement of `sql` (with its index).
fn parsed<T>(sql: &str, pick: impl Fn(usize, &NodeEnum) -> Option<T>) -> Vec<T> {
    let parse = || Ok(pg_query::parse(sql).ok());
    let Ok(Some(parsed)) = crate::protocols::postgres::classify::guarded(sql, parse) else {
        return Vec::new();
    };
    parsed
        .protobuf
        .stmts
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| pick(i, raw.stmt.as_ref()?.node.as_ref()?))
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
        let changes = match &running.cursor_changes {
            Some(changes) => Arc::clone(changes),
            None => {
                let changes: Arc<[CursorChange]> = cursor_changes(&running.sql).into();
                running.cursor_changes = Some(Arc::clone(&changes));
                changes
            }
        };
        let Some(change) = changes.get(index) else {
            return;
        };
        match change {
            CursorChange::Declare(statement, name) => {
                let full = self.portals.len() >= MAX_PORTALS && !self.portals.contains_key(name);
                let Some(running) = self.front_running().filter(|_| !full) else {
                    // Past the bound its Execute is recorded with the
                    // placeholder (and masked as reading every table).
                    return;
                };
                // What its rows are: the DECLARE's query, decided when it
                // ran; an Execute of it only fetches them.
                let declared = running
                    .classification
                    .as_deref()
                    .and_then(|c| c.statements.get(*statement))
                    .filter(|s| s.command == "DECLARE CURSOR")
                    .cloned()
                    .map(|s| {
                        Arc::new(Classification {
                            statements: vec![s],
                        })
                    })
                    .unwrap_or_default();
                let text = if running.shown.text.len() <= NAMED_TEXT {
                    Arc::from(format!(
                        "-- Execute of SQL cursor {name:?}, declared by: {}",
                        running.shown.text
                    ))
                } else {
                    Arc::from(format!(
                        "-- Execute of SQL cursor {name:?}, declared by a statement of {} bytes recorded before it",
                        running.shown.text.len()
                    ))
                };
                let shown = Shown {
                    text,
                    class: running.shown.class.clone(),
                };
                let bound = (
                    Arc::clone(&running.sql),
                    declared,
                    shown,
                    running.approved.clone(),
                );
                self.portals.insert(
                    name.clone(),
                    Portal {
                        bound,
                        ran: Arc::new(std::sync::atomic::AtomicBool::new(true)),
                    },
                );
            }
            CursorChange::Close(_, Some(name)) => {
                self.portals.remove(name);
            }
            CursorChange::Close(_, None) => self.portals.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CursorChange, cursor_changes, cursor_names};

    #[test]
    fn declares_and_closes_are_found_in_order() {
        assert_eq!(
            cursor_changes(
                "SELECT 1; DECLARE \"Cur\" CURSOR WITH HOLD FOR SELECT 2; CLOSE \"Cur\"; \
                 close all; declare c2 scroll cursor for values (1)"
            ),
            [
                CursorChange::Declare(1, "Cur".into()),
                CursorChange::Close(2, Some("Cur".into())),
                CursorChange::Close(3, None),
                CursorChange::Declare(4, "c2".into()),
            ]
        );
        assert!(cursor_changes("SELECT 1").is_empty());
        assert!(cursor_changes("DECLARE (").is_empty());
    }

    #[test]
    fn cursor_names_are_read_as_the_server_reads_them() {
        assert_eq!(
            cursor_names(
                "DECLARE U&\"\\0063hokepoint_x\" CURSOR FOR SELECT 1; FETCH 2 FROM \"A\"; \
                 MOVE NEXT IN b; CLOSE ALL"
            ),
            ["chokepoint_x", "A", "b", ""]
        );
    }
}
