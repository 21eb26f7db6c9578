//! `[[masking]]`: result-masking rules checked at load and assembled into one `MaskingPolicy` per postgres target.
use std::{collections::HashMap, fmt, sync::Arc};

use toml::Spanned;

use super::{
    compile::{Target, TargetRef, check_name},
    load::{At, Entry, Located, Report, Source, describe},
    model::{Int, MaskingEntry},
};
use crate::masking::{
    ColumnRule, DEFAULT_KEEP_LAST, Detector, DetectorRule, MIN_HASH_KEY_LEN, MaskingPolicy,
    NameRule, Strategy,
};

/// More visible characters than this is hardly masking.
const MAX_KEEP: i64 = 64;

/// A hash key shorter than this lets hashed values be reversed by guessing
/// the key; the masking engine refuses it too.
pub(super) const MIN_KEY_BYTES: usize = MIN_HASH_KEY_LEN;

/// The `[daemon] masking_key_file`, as far as loading got with it.
pub(super) enum MaskingKey {
    Absent,
    /// Given but unusable; already reported at the key.
    Broken,
    Valid(Arc<[u8]>),
}

impl fmt::Debug for MaskingKey {
    /// Never the key itself: a `Policy` is debug-printed in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskingKey::Absent => f.write_str("Absent"),
            MaskingKey::Broken => f.write_str("Broken"),
            MaskingKey::Valid(key) => write!(f, "Valid(<{} bytes>)", key.len()),
        }
    }
}

/// Every target's masking policy, built once at load.
pub(super) struct MaskingRules {
    by_target: HashMap<Arc<str>, Arc<MaskingPolicy>>,
    empty: Arc<MaskingPolicy>,
    /// Names of the valid `[[masking]]` entries, in load order.
    names: Vec<Arc<str>>,
}

impl fmt::Debug for MaskingRules {
    /// The masking engine's types need not be `Debug`, and the key must
    /// not be printed: names and counts say enough.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut targets: Vec<String> = self
            .by_target
            .iter()
            .map(|(name, p)| {
                format!(
                    "{name}: {} column, {} name, {} detector rules",
                    p.columns.len(),
                    p.names.len(),
                    p.detectors.len()
                )
            })
            .collect();
        targets.sort();
        f.debug_struct("MaskingRules")
            .field("entries", &self.names)
            .field("targets", &targets)
            .finish()
    }
}

impl MaskingRules {
    /// `target`'s policy; an empty one for a target without masking.
    pub fn for_target(&self, target: &str) -> Arc<MaskingPolicy> {
        self.by_target.get(target).unwrap_or(&self.empty).clone()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// The rules of one entry, built once; each target's policy gets copies.
#[derive(Debug)]
enum Matcher {
    Columns(Vec<ColumnRule>),
    Names(Vec<NameRule>),
    Detectors(Vec<DetectorRule>),
}

#[derive(Debug)]
struct Valid {
    name: Arc<str>,
    targets: Vec<TargetRef>,
    matcher: Matcher,
}

/// What `[[masking]]` entries are checked against.
pub(super) struct Context<'a> {
    pub sources: &'a [Source],
    pub targets: &'a [Target],
    /// Every declared target name → its index when it compiled.
    pub by_name: &'a HashMap<String, (At, Option<usize>)>,
    pub key: &'a MaskingKey,
}

pub(super) fn compile(
    entries: Vec<Located<Entry<MaskingEntry>>>,
    context: &Context<'_>,
    report: &mut Report,
) -> MaskingRules {
    let mut valid = Vec::new();
    let mut seen: HashMap<String, At> = HashMap::new();
    for Located { at, value } in entries {
        let (name, entry) = match value {
            Entry::Valid(entry) => (entry.name.clone(), Some(entry)),
            Entry::Broken { name } => (name, None),
        };
        let name_ok = match &name {
            None => {
                report.error(at, "this [[masking]] has no name: add name = \"...\"");
                false
            }
            Some(name) => {
                let name_at = At::of(at.file, name);
                let text = name.get_ref();
                if !check_name("masking", text, name_at, report) {
                    false
                } else if let Some(first) = seen.get(text) {
                    report.error(
                        name_at,
                        format!(
                            "masking {text:?} is already defined at {}: masking names must be unique",
                            describe(context.sources, *first)
                        ),
                    );
                    false
                } else {
                    seen.insert(text.clone(), name_at);
                    true
                }
            }
        };
        let Some(entry) = entry else { continue };
        if let Some(entry) = masking(at, entry, context, report).filter(|_| name_ok) {
            valid.push(entry);
        }
    }
    let hash_key: Arc<[u8]> = match context.key {
        MaskingKey::Valid(key) => key.clone(),
        MaskingKey::Absent | MaskingKey::Broken => Arc::from([]),
    };
    let mut by_target = HashMap::new();
    for (index, target) in context.targets.iter().enumerate() {
        if target.postgres.is_none() {
            continue;
        }
        let applies = |entry: &&Valid| {
            entry
                .targets
                .iter()
                .any(|t| matches!(*t, TargetRef::Any) || *t == TargetRef::Named(index))
        };
        let policy = policy(valid.iter().filter(applies), hash_key.clone());
        by_target.insert(target.name.clone(), Arc::new(policy));
    }
    MaskingRules {
        by_target,
        empty: Arc::new(policy([].iter(), hash_key)),
        names: valid.into_iter().map(|v| v.name).collect(),
    }
}

/// One target's policy from the entries that apply to it, in load order.
fn policy<'v>(entries: impl Iterator<Item = &'v Valid>, hash_key: Arc<[u8]>) -> MaskingPolicy {
    let mut policy = MaskingPolicy {
        hash_key,
        ..MaskingPolicy::default()
    };
    for entry in entries {
        match &entry.matcher {
            Matcher::Columns(rules) => policy.columns.extend(rules.iter().cloned()),
            Matcher::Names(rules) => policy.names.extend(rules.iter().cloned()),
            Matcher::Detectors(rules) => policy.detectors.extend(rules.iter().cloned()),
        }
    }
    policy
}

fn masking(
    at: At,
    entry: MaskingEntry,
    context: &Context<'_>,
    report: &mut Report,
) -> Option<Valid> {
    let file = at.file;
    let label = match &entry.name {
        Some(name) => format!("masking {:?}", name.get_ref()),
        None => "this [[masking]]".to_owned(),
    };
    let targets = targets(at, &entry, &label, context, report);
    let strategy = strategy(&entry, context.key, file, report);
    let name: Arc<str> = Arc::from(entry.name.as_ref()?.get_ref().as_str());
    // Without a valid strategy the rules are still checked, with a
    // stand-in, so that every problem of the entry is reported at once.
    let matcher = matcher(
        at,
        &entry,
        &label,
        &name,
        strategy.unwrap_or(Strategy::Redact),
        report,
    );
    Some(Valid {
        name,
        targets: targets?,
        matcher: matcher.filter(|_| strategy.is_some())?,
    })
}

fn targets(
    at: At,
    entry: &MaskingEntry,
    label: &str,
    context: &Context<'_>,
    report: &mut Report,
) -> Option<Vec<TargetRef>> {
    let file = at.file;
    // Found in review: with its only postgres target invalid, a file was
    // told "no postgres targets are defined" next to that target's error.
    let postgres_names = || {
        let names: Vec<&str> = context
            .targets
            .iter()
            .filter(|t| t.postgres.is_some())
            .map(|t| &*t.name)
            .collect();
        let mut invalid: Vec<&str> = context
            .by_name
            .iter()
            .filter(|(_, (_, index))| index.is_none())
            .map(|(name, _)| name.as_str())
            .collect();
        invalid.sort_unstable();
        let mut text = if names.is_empty() {
            "no valid postgres target is defined".to_owned()
        } else {
            format!("postgres targets: {}", some_of(&names))
        };
        if !invalid.is_empty() {
            text.push_str(&format!(
                " (targets with errors reported above are not counted: {})",
                some_of(&invalid)
            ));
        }
        text
    };
    let list = match &entry.targets {
        None => {
            report.error(
                at,
                format!("{label} has no targets: add targets = [\"name\"] (postgres targets), or [\"*\"] for every postgres target"),
            );
            return None;
        }
        Some(list) if list.get_ref().is_empty() => {
            report.error(
                At::of(file, list),
                "targets is empty: list postgres target names, or \"*\" for all of them",
            );
            return None;
        }
        Some(list) => list.get_ref(),
    };
    let mut ok = true;
    let mut refs = Vec::new();
    for name in list {
        let text = name.get_ref();
        if text == "*" {
            refs.push(TargetRef::Any);
            continue;
        }
        match context.by_name.get(text) {
            Some((_, Some(index))) if context.targets[*index].postgres.is_some() => {
                refs.push(TargetRef::Named(*index));
            }
            Some((_, Some(_))) => {
                report.error(
                    At::of(file, name),
                    format!("target {text:?} is not a postgres target, and masking applies to postgres results only; {}", postgres_names()),
                );
                ok = false;
            }
            // Declared but invalid: reported where it is declared.
            Some((_, None)) => ok = false,
            None => {
                report.error(
                    At::of(file, name),
                    format!("unknown target {text:?}; {}", postgres_names()),
                );
                ok = false;
            }
        }
    }
    ok.then_some(refs)
}

/// Up to 20 names, then how many more: a file with thousands of targets
/// must not echo them all in every message.
fn some_of(names: &[&str]) -> String {
    const SHOWN: usize = 20;
    let mut text = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

fn strategy(
    entry: &MaskingEntry,
    key: &MaskingKey,
    file: usize,
    report: &mut Report,
) -> Option<Strategy> {
    let written = entry.strategy.as_ref();
    let kind = written.map_or("redact", |s| s.get_ref().as_str());
    let keep = match &entry.keep {
        None => Some(DEFAULT_KEEP_LAST),
        Some(keep) if kind != "partial" => {
            report.error(
                At::of(file, keep),
                format!("keep is only used with strategy = \"partial\" (strategy is {kind:?}): remove keep, or set strategy = \"partial\""),
            );
            None
        }
        Some(keep) => {
            let Int(n) = *keep.get_ref();
            match usize::try_from(n) {
                Ok(k) if (1..=MAX_KEEP).contains(&n) => Some(k),
                _ => {
                    report.error(
                        At::of(file, keep),
                        format!("keep must be 1 to {MAX_KEEP} (trailing characters left visible), not {n}; use strategy = \"redact\" to show nothing"),
                    );
                    None
                }
            }
        }
    };
    let strategy = match kind {
        "redact" => Strategy::Redact,
        "partial" => Strategy::Partial {
            keep_last: keep.unwrap_or(DEFAULT_KEEP_LAST),
        },
        "hash" => Strategy::Hash,
        other => {
            if let Some(written) = written {
                report.error(
                    At::of(file, written),
                    format!("strategy must be \"redact\", \"partial\" or \"hash\", not {other:?}"),
                );
            }
            return None;
        }
    };
    if strategy == Strategy::Hash
        && matches!(key, MaskingKey::Absent)
        && let Some(written) = written
    {
        report.error(
            At::of(file, written),
            "hash masking needs daemon.masking_key_file: add masking_key_file = \"/var/lib/chokepoint/keys/masking.key\" to [daemon], made with head -c 32 /dev/urandom and chmod 600",
        );
        return None;
    }
    if strategy == Strategy::Hash && matches!(key, MaskingKey::Broken) {
        return None;
    }
    keep.map(|_| strategy)
}

fn matcher(
    at: At,
    entry: &MaskingEntry,
    label: &str,
    name: &Arc<str>,
    strategy: Strategy,
    report: &mut Report,
) -> Option<Matcher> {
    let file = at.file;
    let given: Vec<(&str, &Spanned<Vec<Spanned<String>>>)> = [
        ("columns", entry.columns.as_ref()),
        ("names", entry.names.as_ref()),
        ("detectors", entry.detectors.as_ref()),
    ]
    .into_iter()
    .filter_map(|(key, list)| list.map(|l| (key, l)))
    .collect();
    let (key, list) = match given.as_slice() {
        [] => {
            report.error(
                at,
                format!("{label} masks nothing: add one of columns = [\"schema.table.column\"], names = [\"*ssn*\"] or detectors = [\"email\"]"),
            );
            return None;
        }
        [one] => *one,
        [(first, _), rest @ ..] => {
            for (key, list) in rest {
                report.error(
                    At::of(file, list),
                    format!("{label} has both {first} and {key}: use exactly one of columns, names and detectors per [[masking]]; write a second [[masking]] for {key}"),
                );
            }
            return None;
        }
    };
    if list.get_ref().is_empty() {
        report.error(
            At::of(file, list),
            format!("{key} is empty, so this entry masks nothing: list at least one, or remove the entry"),
        );
        return None;
    }
    let items = list.get_ref();
    // The engine's errors quote the text and say what to write instead.
    let mut ok = true;
    let mut fail = |item: &Spanned<String>, message: String| {
        report.error(At::of(file, item), message);
        ok = false;
    };
    let matcher = match key {
        "columns" => Matcher::Columns(
            items
                .iter()
                .filter_map(|item| {
                    ColumnRule::parse(item.get_ref(), strategy, name.clone())
                        .map_err(|e| fail(item, e.to_string()))
                        .ok()
                })
                .collect(),
        ),
        "names" => Matcher::Names(
            items
                .iter()
                .filter_map(|item| {
                    NameRule::parse(item.get_ref(), strategy, name.clone())
                        .map_err(|e| fail(item, e.to_string()))
                        .ok()
                })
                .collect(),
        ),
        _ => {
            let mut rules: Vec<DetectorRule> = Vec::new();
            for item in items {
                match Detector::from_config(item.get_ref()) {
                    Ok(detector) if rules.iter().any(|r| r.detector == detector) => {}
                    Ok(detector) => rules.push(DetectorRule {
                        detector,
                        strategy,
                        name: name.clone(),
                    }),
                    Err(e) => fail(item, e.to_string()),
                }
            }
            Matcher::Detectors(rules)
        }
    };
    ok.then_some(matcher)
}
