//! Reading policy files and their includes into positioned sections, and collecting problems.
//!
//! Each `[daemon]`, `[guard]`, `[recording]`, `[[target]]`, `[[rule]]` and `[[masking]]` entry is
//! deserialized on its own, so one bad entry does not hide the others: only a
//! TOML syntax error stops a file.
use std::{
    collections::HashSet,
    fs,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::{Deserialize, de::DeserializeOwned};
use toml::{
    Spanned,
    de::{DeTable, DeValue, ValueDeserializer},
};
use tracing::debug;

use super::{
    error::{Diagnostic, PolicyErrors},
    model::{
        ApprovalsSection, DaemonSection, DnsSection, GuardSection, IdentitySection, MaskingEntry,
        RecordingSection, RuleEntry, TargetEntry,
    },
};

/// One file that was read (or tried), with its text kept to turn byte
/// offsets into line:col.
#[derive(Debug)]
pub(super) struct Source {
    pub path: PathBuf,
    pub text: String,
    /// Byte offset of each line's start: every rule records where it is,
    /// and rescanning the text for each would make loading quadratic.
    line_starts: Vec<usize>,
}

impl Source {
    pub(super) fn new(path: PathBuf, text: String) -> Source {
        let line_starts = std::iter::once(0)
            .chain(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1))
            .collect();
        Source {
            path,
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset, as
    /// [`line_col`] computes them.
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // The last line start at or before the offset.
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }
}

/// A position: a byte offset into one of the sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct At {
    pub file: usize,
    pub offset: usize,
}

impl At {
    pub fn new(file: usize, span: Range<usize>) -> At {
        At {
            file,
            offset: span.start,
        }
    }

    pub fn of<T>(file: usize, value: &Spanned<T>) -> At {
        At::new(file, value.span())
    }
}

/// A section or entry and where it starts (its `[header]`).
#[derive(Debug)]
pub(super) struct Located<T> {
    pub at: At,
    pub value: T,
}

/// A `[[target]]` or `[[rule]]` entry.
#[derive(Debug)]
pub(super) enum Entry<T> {
    Valid(T),
    /// Its problem is reported; its name, if readable, is kept so that
    /// references to it are not reported as unknown too.
    Broken {
        name: Option<Spanned<String>>,
    },
}

/// Everything the files declared, in load order, not yet validated.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub daemon: Option<Located<DaemonSection>>,
    pub guard: Option<Located<GuardSection>>,
    pub recording: Option<Located<RecordingSection>>,
    pub approvals: Option<Located<ApprovalsSection>>,
    pub identity: Option<Located<IdentitySection>>,
    pub dns: Option<Located<DnsSection>>,
    /// Where the first `[daemon]`, `[guard]`, `[recording]` and `[approvals]` are, even if invalid.
    pub daemon_at: Option<At>,
    pub guard_at: Option<At>,
    pub recording_at: Option<At>,
    pub approvals_at: Option<At>,
    pub identity_at: Option<At>,
    pub dns_at: Option<At>,
    pub targets: Vec<Located<Entry<TargetEntry>>>,
    pub rules: Vec<Located<Entry<RuleEntry>>>,
    pub masking: Vec<Located<Entry<MaskingEntry>>>,
    /// The folder each `include` glob looks in (its part before the first
    /// wildcard), whether or not it matched a file: the daemon watches
    /// them, so the first file dropped into an empty `policy.d` reloads.
    pub include_dirs: Vec<PathBuf>,
}

/// Problems found so far; turned into [`PolicyErrors`] once every file has
/// been read, because positions need the files' text.
#[derive(Debug, Default)]
pub(super) struct Report {
    problems: Vec<Problem>,
}

#[derive(Debug)]
struct Problem {
    file: Option<usize>,
    offset: Option<usize>,
    message: String,
}

impl Report {
    pub fn error(&mut self, at: At, message: impl Into<String>) {
        self.problems.push(Problem {
            file: Some(at.file),
            offset: Some(at.offset),
            message: message.into(),
        });
    }

    pub fn file_error(&mut self, file: usize, message: impl Into<String>) {
        self.problems.push(Problem {
            file: Some(file),
            offset: None,
            message: message.into(),
        });
    }

    pub fn general(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            file: None,
            offset: None,
            message: message.into(),
        });
    }

    /// `Err` with every problem, sorted by file load order then position,
    /// when there is at least one.
    pub fn finish(mut self, sources: &[Source]) -> Result<(), PolicyErrors> {
        if self.problems.is_empty() {
            return Ok(());
        }
        self.problems.sort_by_key(|p| (p.file, p.offset));
        let diagnostics = self
            .problems
            .into_iter()
            .map(|p| {
                let source = p.file.map(|f| &sources[f]);
                let (line, col) = match (source, p.offset) {
                    (Some(s), Some(offset)) => s.line_col(offset),
                    _ => (0, 0),
                };
                Diagnostic {
                    file: source.map(|s| s.path.clone()).unwrap_or_default(),
                    line,
                    col,
                    message: p.message,
                }
            })
            .collect();
        Err(PolicyErrors(diagnostics))
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// `file:line:col` of a position, for messages that point at a second place.
pub(super) fn describe(sources: &[Source], at: At) -> String {
    let source = &sources[at.file];
    let (line, col) = source.line_col(at.offset);
    format!("{}:{line}:{col}", source.path.display())
}

/// Reads `paths` in order, each followed by what its `[daemon] include`
/// pulls in. A file reached twice (named twice, or also included) is read
/// once.
pub(super) fn load(paths: &[PathBuf]) -> (Vec<Source>, Loaded, Report) {
    let mut loader = Loader::default();
    if paths.is_empty() {
        loader
            .report
            .general("no policy files given: name at least one file");
    }
    for path in paths {
        loader.file(path.clone());
    }
    (loader.sources, loader.loaded, loader.report)
}

#[derive(Default)]
struct Loader {
    sources: Vec<Source>,
    seen: HashSet<PathBuf>,
    loaded: Loaded,
    report: Report,
}

impl Loader {
    fn file(&mut self, path: PathBuf) {
        let identity = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if !self.seen.insert(identity) {
            debug!(path = %path.display(), "policy file already loaded; skipping the repeat");
            return;
        }
        let index = self.sources.len();
        match read_policy(&path) {
            Ok(text) => self.sources.push(Source::new(path, text)),
            Err(message) => {
                self.sources.push(Source::new(path, String::new()));
                self.report.file_error(index, message);
                return;
            }
        }
        let includes = parse(&self.sources, index, &mut self.loaded, &mut self.report);
        for include in includes {
            self.include(index, include);
        }
    }

    /// Loads what one `include` entry names, relative to the including
    /// file's directory.
    fn include(&mut self, from: usize, entry: Spanned<String>) {
        let at = At::of(from, &entry);
        let raw = entry.into_inner();
        let dir = self.sources[from]
            .path
            .parent()
            .unwrap_or(Path::new(""))
            .to_path_buf();
        if raw.is_empty() {
            self.report.error(
                at,
                "include entry is empty: write a path or glob such as \"policy.d/*.toml\"",
            );
            return;
        }
        if glob::Pattern::escape(&raw) == raw {
            let path = dir.join(&raw);
            // Other errors (permissions) are reported when the file is read.
            if fs::metadata(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
                self.report.error(
                    at,
                    format!(
                        "include {raw:?}: {} does not exist; fix the path, or use a glob (e.g. \"policy.d/*.toml\") if it may match nothing",
                        path.display()
                    ),
                );
                return;
            }
            self.file(path);
            return;
        }
        if let Err(e) = glob::Pattern::new(&raw) {
            self.report.error(
                at,
                format!(
                    "include {raw:?} is not a valid glob: {} (at character {})",
                    e.msg,
                    e.pos + 1
                ),
            );
            return;
        }
        let watched = dir.join(literal_prefix(&raw));
        if !self.loaded.include_dirs.contains(&watched) {
            self.loaded.include_dirs.push(watched);
        }
        let full = if Path::new(&raw).is_absolute() || dir.as_os_str().is_empty() {
            raw.clone()
        } else {
            format!("{}/{raw}", glob::Pattern::escape(&dir.to_string_lossy()))
        };
        // Hidden files stay out, as in a shell: editors leave `.#x.toml` locks.
        let options = glob::MatchOptions {
            require_literal_leading_dot: true,
            ..Default::default()
        };
        let matches = match glob::glob_with(&full, options) {
            Ok(paths) => paths,
            Err(e) => {
                self.report.error(
                    at,
                    format!("include {raw:?} is not a valid glob: {}", e.msg),
                );
                return;
            }
        };
        let mut found = Vec::new();
        for m in matches {
            match m {
                Ok(path) => found.push(path),
                Err(e) => self.report.error(
                    at,
                    format!(
                        "include {raw:?}: cannot read {}: {}",
                        e.path().display(),
                        e.error()
                    ),
                ),
            }
        }
        if found.is_empty() {
            debug!(pattern = %full, "include glob matched no file");
        }
        found.sort();
        for path in found {
            self.file(path);
        }
    }
}

/// The leading folders of an include glob that hold no wildcard:
/// `policy.d/*.toml` → `policy.d`, `conf/*/x.toml` → `conf`, `*.toml` → ``
/// (the including file's own folder). The last component is a file name
/// pattern, never a folder to watch.
fn literal_prefix(glob: &str) -> PathBuf {
    let path = Path::new(glob);
    let mut prefix = PathBuf::new();
    let mut components = path.components().peekable();
    while let Some(component) = components.next() {
        if components.peek().is_none() {
            break;
        }
        let text = component.as_os_str().to_string_lossy();
        if glob::Pattern::escape(&text) != text {
            break;
        }
        prefix.push(component);
    }
    prefix
}

/// Far more than any policy needs; a bigger file is a mistake (a log, a
/// dump) and reading it whole would hold up every reload.
const POLICY_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// A policy file's text. Only a regular file: a FIFO or device matched by
/// an include glob would block `policy check` and the daemon's reload.
fn read_policy(path: &Path) -> Result<String, String> {
    let bytes =
        crate::regular_file::read_bounded(path, POLICY_MAX_BYTES).map_err(|e| match e.kind() {
            std::io::ErrorKind::FileTooLarge => {
                "cannot read this file: it is larger than 16 MiB, far more than a policy needs"
                    .to_owned()
            }
            _ => format!("cannot read this file: {e}"),
        })?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "cannot read this file: it is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

const SECTIONS: &str = "[daemon], [guard], [recording], [approvals], [identity], [dns], [[target]], [[rule]] and [[masking]]";

/// Splits one file into its sections; returns its `include` entries.
fn parse(
    sources: &[Source],
    file: usize,
    loaded: &mut Loaded,
    report: &mut Report,
) -> Vec<Spanned<String>> {
    let text = &sources[file].text;
    let (document, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // Recovery often reports a second, derived error on the same line;
        // the first one is the one to fix.
        let mut lines = HashSet::new();
        let mut errors: Vec<_> = errors
            .into_iter()
            .map(|e| (e.span().map_or(0, |s| s.start), e))
            .collect();
        errors.sort_by_key(|(offset, _)| *offset);
        for (offset, e) in errors {
            if lines.insert(line_col(text, offset).0) {
                report.error(At { file, offset }, syntax_message(text, &e));
            }
        }
        return Vec::new();
    }
    let mut includes = Vec::new();
    for (key, value) in document.into_inner() {
        let key_at = At::of(file, &key);
        match key.get_ref().as_ref() {
            "daemon" => {
                if !first_of_its_kind(&mut loaded.daemon_at, key_at, "daemon", sources, report) {
                    continue;
                }
                let copy = value.clone();
                if let Some(mut section) = table::<DaemonSection>(file, "daemon", value, report) {
                    includes = section.value.include.take().unwrap_or_default();
                    section.at = key_at;
                    loaded.daemon = Some(section);
                } else {
                    // A typo elsewhere in [daemon] must not hide the
                    // problems of the included files.
                    includes = IncludeOnly::deserialize(ValueDeserializer::from(copy))
                        .ok()
                        .and_then(|i| i.include)
                        .unwrap_or_default();
                }
            }
            "guard" => {
                if !first_of_its_kind(&mut loaded.guard_at, key_at, "guard", sources, report) {
                    continue;
                }
                if let Some(mut section) = table::<GuardSection>(file, "guard", value, report) {
                    section.at = key_at;
                    loaded.guard = Some(section);
                }
            }
            "recording" => {
                if !first_of_its_kind(
                    &mut loaded.recording_at,
                    key_at,
                    "recording",
                    sources,
                    report,
                ) {
                    continue;
                }
                if let Some(mut section) =
                    table::<RecordingSection>(file, "recording", value, report)
                {
                    section.at = key_at;
                    loaded.recording = Some(section);
                }
            }
            "approvals" => {
                if !first_of_its_kind(
                    &mut loaded.approvals_at,
                    key_at,
                    "approvals",
                    sources,
                    report,
                ) {
                    continue;
                }
                if let Some(mut section) =
                    table::<ApprovalsSection>(file, "approvals", value, report)
                {
                    section.at = key_at;
                    loaded.approvals = Some(section);
                }
            }
            "identity" => {
                if !first_of_its_kind(&mut loaded.identity_at, key_at, "identity", sources, report)
                {
                    continue;
                }
                if let Some(mut section) = table::<IdentitySection>(file, "identity", value, report)
                {
                    section.at = key_at;
                    loaded.identity = Some(section);
                }
            }
            "dns" => {
                if !first_of_its_kind(&mut loaded.dns_at, key_at, "dns", sources, report) {
                    continue;
                }
                if let Some(mut section) = table::<DnsSection>(file, "dns", value, report) {
                    section.at = key_at;
                    loaded.dns = Some(section);
                }
            }
            "target" => loaded
                .targets
                .extend(entries(file, "target", value, report)),
            "rule" => loaded.rules.extend(entries(file, "rule", value, report)),
            "masking" => loaded
                .masking
                .extend(entries(file, "masking", value, report)),
            other => report.error(
                key_at,
                format!("unknown section {other:?}: valid sections are {SECTIONS}"),
            ),
        }
    }
    includes
}

/// Only one `[daemon]` and one `[guard]` may exist across all files: false,
/// with the problem reported, for a second one.
fn first_of_its_kind(
    first: &mut Option<At>,
    at: At,
    name: &str,
    sources: &[Source],
    report: &mut Report,
) -> bool {
    if let Some(first) = first {
        report.error(
            at,
            format!(
                "second [{name}] section (the first is at {}): keep a single [{name}] across all files",
                describe(sources, *first)
            ),
        );
        return false;
    }
    *first = Some(at);
    true
}

/// Just the includes of a `[daemon]` that failed to deserialize.
#[derive(Deserialize)]
struct IncludeOnly {
    include: Option<Vec<Spanned<String>>>,
}

/// A `[name]` section.
fn table<T: DeserializeOwned>(
    file: usize,
    name: &str,
    value: Spanned<DeValue<'_>>,
    report: &mut Report,
) -> Option<Located<T>> {
    if !matches!(value.get_ref(), DeValue::Table(_)) {
        report.error(
            At::of(file, &value),
            format!("`{name}` must be a table: write [{name}] and its keys below it"),
        );
        return None;
    }
    // The keys serde accepted are still checked (ports, modes): found in
    // review, one unknown key hid every other problem of the section.
    match attempt(file, value, report) {
        Attempt::Clean(section) => Some(section),
        Attempt::Stripped(rest) => rest,
    }
}

/// The entries of a `[[name]]` array of tables.
fn entries<T: DeserializeOwned>(
    file: usize,
    name: &str,
    value: Spanned<DeValue<'_>>,
    report: &mut Report,
) -> Vec<Located<Entry<T>>> {
    let at = At::of(file, &value);
    let DeValue::Array(items) = value.into_inner() else {
        report.error(at, format!("`{name}` must be an array of tables: write [[{name}]] (double brackets) before each {name}"));
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            if !matches!(item.get_ref(), DeValue::Table(_)) {
                report.error(
                    At::of(file, &item),
                    format!("each {name} must be a table: write [[{name}]] and its keys below it"),
                );
                return None;
            }
            let at = At::of(file, &item);
            let copy = item.clone();
            Some(match deserialize::<T>(file, item, report) {
                Some(entry) => Located {
                    at,
                    value: Entry::Valid(entry.value),
                },
                None => {
                    let name = NameOnly::deserialize(ValueDeserializer::from(copy))
                        .ok()
                        .and_then(|n| n.name);
                    Located {
                        at,
                        value: Entry::Broken { name },
                    }
                }
            })
        })
        .collect()
}

/// Just the name of an entry that failed to deserialize; other keys ignored.
#[derive(Deserialize)]
struct NameOnly {
    name: Option<Spanned<String>>,
}

fn deserialize<T: DeserializeOwned>(
    file: usize,
    value: Spanned<DeValue<'_>>,
    report: &mut Report,
) -> Option<Located<T>> {
    match attempt(file, value, report) {
        Attempt::Clean(value) => Some(value),
        Attempt::Stripped(_) => None,
    }
}

/// How a table deserialized.
enum Attempt<T> {
    Clean(Located<T>),
    /// Some keys were refused (each reported); the table without them,
    /// if that deserializes.
    Stripped(Option<Located<T>>),
}

/// Most refused keys reported per table: each costs another attempt.
const MAX_KEY_ERRORS: usize = 32;

/// Deserializes a table, reporting every key serde refuses rather than
/// only the first: each refused key is taken out and the rest tried again
/// (found in review: an unknown key hid a bad port and a bad mode beside
/// it). A key taken out that then goes missing is not reported again.
fn attempt<T: DeserializeOwned>(
    file: usize,
    mut value: Spanned<DeValue<'_>>,
    report: &mut Report,
) -> Attempt<T> {
    let at = At::of(file, &value);
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..MAX_KEY_ERRORS {
        let e = match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(parsed) => {
                let parsed = Located { at, value: parsed };
                return if removed.is_empty() {
                    Attempt::Clean(parsed)
                } else {
                    Attempt::Stripped(Some(parsed))
                };
            }
            Err(e) => e,
        };
        if removed
            .iter()
            .any(|key| e.message().contains(&format!("missing field `{key}`")))
        {
            return Attempt::Stripped(None);
        }
        report.error(
            e.span().map_or(at, |span| At::new(file, span)),
            toml_words(e.message()),
        );
        let (Some(span), DeValue::Table(table)) = (e.span(), value.get_mut()) else {
            return Attempt::Stripped(None);
        };
        let within =
            |outer: std::ops::Range<usize>| outer.start <= span.start && span.end <= outer.end;
        let Some(key) = table
            .iter()
            .find(|(key, item)| within(key.span()) || within(item.span()))
            .map(|(key, _)| key.clone())
        else {
            return Attempt::Stripped(None);
        };
        removed.push(key.get_ref().to_string());
        table.remove(&key);
    }
    Attempt::Stripped(None)
}

fn syntax_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message();
    match error.span() {
        Some(span) if message == "duplicate key" => format!(
            "duplicate key `{}`: it is already defined earlier in this file; merge the two",
            text.get(span).unwrap_or("?")
        ),
        _ => format!("invalid TOML: {message}"),
    }
}

/// Serde speaks of sequences and maps; the admin wrote arrays and tables.
fn toml_words(message: &str) -> String {
    message
        .replace("expected a sequence", "expected an array")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("invalid type: map", "invalid type: table")
}
