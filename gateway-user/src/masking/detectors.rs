//! Content detectors: find emails, card numbers, US SSNs, JWTs and API tokens inside text values.
//!
//! Each `find_*` function appends the byte ranges it finds, in increasing and
//! non-overlapping order, to `out`. They work on bytes, not `str`: every
//! pattern is ASCII, so no UTF-8 validation is paid for, and a range never
//! starts or ends inside a multi-byte character.
//!
//! They run on every value of every scanned column, so each one starts with a
//! cheap pre-filter that rejects ordinary text without parsing it:
//!
//! | detector | pre-filter |
//! |---|---|
//! | email | `memchr` for `@` |
//! | card number | at least 13 ASCII digits in the value |
//! | US SSN | `memchr` for `-`, then a fixed-offset shape check |
//! | JWT | `memmem` for `eyJ` (base64url of `{"`) |
//! | API token | `memchr3` for `_`, `-`, `A`, then fixed prefixes |
use std::{fmt, ops::Range, sync::LazyLock};

use memchr::{memchr, memchr_iter, memchr3_iter, memmem};
use smallvec::SmallVec;

use super::error::MaskingError;

/// A built-in content detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    /// `local@domain.tld`: ASCII local part, at least two domain labels, an
    /// alphabetic TLD of two or more letters (`user@localhost` is not one).
    Email,
    /// 13–19 digits, either unbroken or printed in groups (a first group of 4,
    /// every group 3–6 digits) joined by single spaces or dashes; passing the
    /// Luhn check, not starting with 0, and not glued to letters, other digits
    /// or a decimal point.
    CardNumber,
    /// `ddd-dd-dddd` with a valid area (not 000, 666, 9xx), group (not 00)
    /// and serial (not 0000).
    UsSsn,
    /// Compact JWS (three base64url segments, the signature may be empty) or
    /// JWE (five) whose first segment decodes to a JSON object with `"alg"`.
    Jwt,
    /// Well-known credentials: AWS access key ids (`AKIA`/`ASIA` + 16
    /// `[A-Z0-9]`), GitHub tokens (`ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` + at
    /// least 36 alphanumerics, `github_pat_…`), Slack `xox[baprs]-…`, Stripe
    /// `sk_live_`/`rk_live_…`, Google API keys (`AIza` + 35), and PEM private
    /// keys (`-----BEGIN … PRIVATE KEY-----` through the END line).
    ApiToken,
}

impl Detector {
    /// Every detector, in configuration order.
    pub const ALL: [Detector; 5] = [
        Detector::Email,
        Detector::CardNumber,
        Detector::UsSsn,
        Detector::Jwt,
        Detector::ApiToken,
    ];

    /// The detector called `name` in configuration.
    pub fn from_config(name: &str) -> Result<Detector, MaskingError> {
        Detector::ALL
            .into_iter()
            .find(|d| d.config_name() == name)
            .ok_or_else(|| MaskingError::UnknownDetector(name.to_owned()))
    }

    /// The detector's configuration name.
    pub fn config_name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::CardNumber => "card_number",
            Detector::UsSsn => "us_ssn",
            Detector::Jwt => "jwt",
            Detector::ApiToken => "api_token",
        }
    }

    /// Appends the byte ranges of `text` this detector matches to `out`.
    pub fn find(self, text: &[u8], out: &mut Vec<Range<usize>>) {
        match self {
            Detector::Email => find_emails(text, out),
            Detector::CardNumber => find_card_numbers(text, out),
            Detector::UsSsn => find_us_ssns(text, out),
            Detector::Jwt => find_jwts(text, out),
            Detector::ApiToken => find_api_tokens(text, out),
        }
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_name())
    }
}

/// Finds email addresses.
pub fn find_emails(text: &[u8], out: &mut Vec<Range<usize>>) {
    fn local(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
    }
    fn domain(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
    }
    // Matches never overlap: a local part cannot reach back into the previous one.
    let mut floor = 0;
    for at in memchr_iter(b'@', text) {
        if at < floor {
            continue;
        }
        let mut start = at;
        while start > floor && local(text[start - 1]) {
            start -= 1;
        }
        while start < at && text[start] == b'.' {
            start += 1;
        }
        if start == at {
            continue;
        }
        let mut end = run(text, at + 1, domain);
        // A sentence may end right after the address: "write to a@b.com."
        while end > at + 1 && matches!(text[end - 1], b'.' | b'-') {
            end -= 1;
        }
        if valid_domain(&text[at + 1..end]) {
            out.push(start..end);
            floor = end;
        }
    }
}

fn valid_domain(domain: &[u8]) -> bool {
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in domain.split(|&b| b == b'.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-');
        if !ok {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
}

/// Finds payment card numbers (PANs).
pub fn find_card_numbers(text: &[u8], out: &mut Vec<Range<usize>>) {
    const MIN: usize = 13;
    if !has_digits(text, MIN) {
        return;
    }
    let len = text.len();
    // Digit groups of the current chain, e.g. "4111 1111 1111 1111" has four.
    // Printed cards have at most five; this runs for every scanned value, so
    // ordinary chains stay off the heap.
    let mut groups: SmallVec<[Range<usize>; 8]> = SmallVec::new();
    let mut i = 0;
    while i < len {
        if !text[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        groups.clear();
        let mut j = i;
        loop {
            let start = j;
            j = run(text, j, |b| b.is_ascii_digit());
            groups.push(start..j);
            if j + 1 < len && matches!(text[j], b' ' | b'-') && text[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        // A chain glued to a word or forming part of a decimal number is an
        // identifier or a measurement, not a card; its inner groups may still be.
        let open_left = i == 0 || !(glued(text[i - 1]) || decimal_point(text, i - 1, -1));
        let open_right = j == len || !(glued(text[j]) || decimal_point(text, j, 1));
        card_windows(text, &groups, open_left, open_right, out);
        i = j;
    }
}

fn glued(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `text[at]` is a `.` with a digit on its far side (`dir` -1: before, 1: after).
fn decimal_point(text: &[u8], at: usize, dir: isize) -> bool {
    text[at] == b'.'
        && at
            .checked_add_signed(dir)
            .and_then(|far| text.get(far))
            .is_some_and(u8::is_ascii_digit)
}

/// Picks, left to right, the longest run of whole groups holding 13–19 digits
/// that passes Luhn, so "4111 1111 1111 1111 2024" still finds the card.
fn card_windows(
    text: &[u8],
    groups: &[Range<usize>],
    open_left: bool,
    open_right: bool,
    out: &mut Vec<Range<usize>>,
) {
    let first = usize::from(!open_left);
    let limit = groups.len() - usize::from(!open_right);
    let mut a = first;
    while a < limit {
        let mut best = None;
        let mut total = 0;
        for b in a..limit {
            total += groups[b].len();
            if total > 19 {
                break;
            }
            // No issuer uses major industry identifier 0, and zero-padded ids are common.
            if total >= 13
                && text[groups[a].start] != b'0'
                && card_grouping(&groups[a..=b])
                && luhn(text, &groups[a..=b])
            {
                best = Some(b);
            }
        }
        match best {
            Some(b) => {
                out.push(groups[a].start..groups[b].end);
                a = b + 1;
            }
            None => a += 1,
        }
    }
}

/// Whether groups look like a printed card (4-4-4-4, 4-6-5, 4-4-4-4-3…): one
/// group, or a first group of 4 and every group of 3 to 6 digits. Lists of
/// small numbers ("1 2 3 … 14") would otherwise pass Luhn one time in ten.
fn card_grouping(groups: &[Range<usize>]) -> bool {
    groups.len() == 1 || (groups[0].len() == 4 && groups.iter().all(|g| (3..=6).contains(&g.len())))
}

fn luhn(text: &[u8], groups: &[Range<usize>]) -> bool {
    let mut sum = 0;
    let mut double = false;
    for group in groups.iter().rev() {
        for &b in text[group.clone()].iter().rev() {
            let mut d = u32::from(b - b'0');
            if double {
                d *= 2;
                if d > 9 {
                    d -= 9;
                }
            }
            sum += d;
            double = !double;
        }
    }
    sum % 10 == 0
}

fn has_digits(text: &[u8], min: usize) -> bool {
    // Counting a whole chunk branch-free into a u8 (a chunk holds at most 64
    // digits) lets the compiler vectorise it 16 or 32 bytes at a time;
    // checking between chunks still stops early on long values.
    let mut seen = 0;
    for chunk in text.chunks(64) {
        let digits = chunk
            .iter()
            .fold(0u8, |n, &b| n + u8::from(b.wrapping_sub(b'0') < 10));
        seen += usize::from(digits);
        if seen >= min {
            return true;
        }
    }
    false
}

/// Finds US social security numbers written `ddd-dd-dddd`.
pub fn find_us_ssns(text: &[u8], out: &mut Vec<Range<usize>>) {
    let digits = |r: Range<usize>| text[r].iter().all(u8::is_ascii_digit);
    let mut floor = 0;
    for dash in memchr_iter(b'-', text) {
        // `dash` is taken as the first dash of the number.
        let Some(start) = dash.checked_sub(3) else {
            continue;
        };
        let end = start + 11;
        if start < floor || end > text.len() || text[start + 6] != b'-' {
            continue;
        }
        if !(digits(start..start + 3) && digits(start + 4..start + 6) && digits(start + 7..end)) {
            continue;
        }
        // Part of a longer number ("1123-45-6789", "123-45-6789-0") or word: not an SSN.
        let before_ok = start == 0
            || !(glued(text[start - 1])
                || (text[start - 1] == b'-' && start >= 2 && text[start - 2].is_ascii_digit()));
        let after_ok = end == text.len()
            || !(glued(text[end])
                || (text[end] == b'-' && text.get(end + 1).is_some_and(u8::is_ascii_digit)));
        let area = &text[start..start + 3];
        let valid = area != b"000"
            && area != b"666"
            && area[0] != b'9'
            && &text[start + 4..start + 6] != b"00"
            && &text[start + 7..end] != b"0000";
        if before_ok && after_ok && valid {
            out.push(start..end);
            floor = end;
        }
    }
}

fn base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Finds JSON web tokens.
pub fn find_jwts(text: &[u8], out: &mut Vec<Range<usize>>) {
    let mut floor = 0;
    // Every JOSE header starts `{"`, which base64url-encodes to `eyJ`.
    static EYJ: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("eyJ"));
    for start in EYJ.find_iter(text) {
        if start < floor || (start > 0 && (base64url(text[start - 1]) || text[start - 1] == b'.')) {
            continue;
        }
        let Some(end) = jwt_end(text, start) else {
            continue;
        };
        out.push(start..end);
        floor = end;
    }
}

fn jwt_end(text: &[u8], start: usize) -> Option<usize> {
    // `text[from] == '.'`, then a base64url run: returns the run's end.
    let segment = |from: usize, allow_empty: bool| -> Option<usize> {
        if text.get(from) != Some(&b'.') {
            return None;
        }
        let end = run(text, from + 1, base64url);
        (allow_empty || end > from + 1).then_some(end)
    };
    let header_end = run(text, start, base64url);
    let payload_end = segment(header_end, false)?;
    // An unsecured token (`"alg":"none"`) has an empty signature.
    let mut end = segment(payload_end, true)?;
    // JWE compact serialisation: header.key.iv.ciphertext.tag.
    if let Some(tag_end) = segment(end, false).and_then(|e| segment(e, false)) {
        end = tag_end;
    }
    header_has_alg(&text[start..header_end]).then_some(end)
}

/// Whether a base64url segment decodes to something shaped like a JSON
/// object with an `"alg"` member. Not a full JSON parse: the shape and the
/// key are what tell a JOSE header from a random base64 blob.
fn header_has_alg(segment: &[u8]) -> bool {
    let Some(json) = decode_base64url(segment) else {
        return false;
    };
    let json = json.trim_ascii();
    if json.first() != Some(&b'{') || json.last() != Some(&b'}') {
        return false;
    }
    memmem::find_iter(json, b"\"alg\"")
        .any(|at| json[at + 5..].trim_ascii_start().first() == Some(&b':'))
}

/// Decodes unpadded base64url; `None` when the length cannot be base64.
fn decode_base64url(segment: &[u8]) -> Option<Vec<u8>> {
    if segment.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(segment.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in segment {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Finds well-known API tokens and private keys.
pub fn find_api_tokens(text: &[u8], out: &mut Vec<Range<usize>>) {
    let mut floor = 0;
    // Every supported token has a `_` or `-` in its prefix, or starts with `A`.
    for at in memchr3_iter(b'_', b'-', b'A', text) {
        if at < floor {
            continue;
        }
        let found = match text[at] {
            b'A' => aws_key_id(text, at).or_else(|| google_api_key(text, at)),
            b'_' => github_token(text, at).or_else(|| stripe_key(text, at)),
            _ => slack_token(text, at).or_else(|| private_key(text, at)),
        };
        if let Some(range) = found.filter(|r| r.start >= floor) {
            floor = range.end;
            out.push(range);
        }
    }
}

/// Whether the token starting at `start` is not the tail of a longer word.
fn starts_word(text: &[u8], start: usize) -> bool {
    start == 0 || !glued(text[start - 1])
}

/// `AKIA`/`ASIA` + exactly 16 `[A-Z0-9]`, at `at`.
fn aws_key_id(text: &[u8], at: usize) -> Option<Range<usize>> {
    let prefix = text.get(at..at + 4)?;
    if !(prefix == b"AKIA" || prefix == b"ASIA") || !starts_word(text, at) {
        return None;
    }
    let end = run(text, at + 4, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit()
    });
    let clean_end = text.get(end).is_none_or(|&b| !glued(b));
    (end - at == 20 && clean_end).then_some(at..end)
}

/// `AIza` + exactly 35 `[A-Za-z0-9_-]`, at `at`.
fn google_api_key(text: &[u8], at: usize) -> Option<Range<usize>> {
    if text.get(at..at + 4)? != b"AIza" || (at > 0 && base64url(text[at - 1])) {
        return None;
    }
    let end = run(text, at + 4, base64url);
    (end - at == 39).then_some(at..end)
}

/// `gh[pousr]_` + at least 36 alphanumerics, or `github_pat_` + at least 22
/// `[A-Za-z0-9_]`, whose last `_` is at `at`. GitHub may lengthen tokens, so
/// the whole run is taken.
fn github_token(text: &[u8], at: usize) -> Option<Range<usize>> {
    if at >= 3 && &text[at - 3..at - 1] == b"gh" && b"pousr".contains(&text[at - 1]) {
        let start = at - 3;
        let end = run(text, at + 1, |b| b.is_ascii_alphanumeric());
        return (starts_word(text, start) && end - at > 36).then_some(start..end);
    }
    let start = at.checked_sub(10)?;
    if &text[start..=at] != b"github_pat_" || !starts_word(text, start) {
        return None;
    }
    let end = run(text, at + 1, |b| b.is_ascii_alphanumeric() || b == b'_');
    (end - at > 22).then_some(start..end)
}

/// `sk_live_`/`rk_live_` + at least 16 alphanumerics, whose last `_` is at `at`.
fn stripe_key(text: &[u8], at: usize) -> Option<Range<usize>> {
    let start = at.checked_sub(7)?;
    let prefix = &text[start..=at];
    if !(prefix == b"sk_live_" || prefix == b"rk_live_") || !starts_word(text, start) {
        return None;
    }
    let end = run(text, at + 1, |b| b.is_ascii_alphanumeric());
    (end - at > 16).then_some(start..end)
}

/// `xox[baprs]-` + at least 10 `[A-Za-z0-9-]`, whose dash is at `at`.
fn slack_token(text: &[u8], at: usize) -> Option<Range<usize>> {
    let start = at.checked_sub(4)?;
    if &text[start..start + 3] != b"xox"
        || !b"baprs".contains(&text[start + 3])
        || !starts_word(text, start)
    {
        return None;
    }
    // The run may hold more `-` candidates; only a word start gets this
    // far, and a match moves the scan past the run, so each byte is read
    // a bounded number of times (`axoxb-` repeated would be quadratic if
    // the run came before the word check).
    let mut end = run(text, at + 1, |b| b.is_ascii_alphanumeric() || b == b'-');
    while text[end - 1] == b'-' {
        end -= 1;
    }
    (end - at > 10).then_some(start..end)
}

/// A PEM private key from its BEGIN line (starting at `at`) through its END
/// line. Without an END line the rest of the value is taken: the key body is
/// the secret, not its header. A `"` (never in PEM) also ends it, so a key
/// inside a JSON string does not swallow the document's syntax.
fn private_key(text: &[u8], at: usize) -> Option<Range<usize>> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const DASHES: &[u8] = b"-----";
    if !text[at..].starts_with(BEGIN) {
        return None;
    }
    let label_start = at + BEGIN.len();
    let label_end = run(text, label_start, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' '
    });
    let label = &text[label_start..label_end];
    if label.len() > 64
        || !label.ends_with(b"PRIVATE KEY")
        || !text[label_end..].starts_with(DASHES)
    {
        return None;
    }
    let body = label_end + DASHES.len();
    let rest = &text[body..];
    // Every search stops at this key's own END line: searching the rest of
    // the value for a `"` at each BEGIN would make a value of many short
    // keys quadratic. A match always moves the scan past its end.
    let end_line = memmem::find(rest, b"-----END ");
    let quote = memchr(b'"', &rest[..end_line.unwrap_or(rest.len())]);
    let closed = match (end_line, quote) {
        (Some(e), None) => {
            let after = e + b"-----END ".len();
            // The END label is as short as the BEGIN one.
            let window = &rest[after..rest.len().min(after + 64 + DASHES.len())];
            memmem::find(window, DASHES).map(|d| body + after + d + DASHES.len())
        }
        _ => None,
    };
    let end = closed.unwrap_or_else(|| {
        let limit = quote.unwrap_or(rest.len());
        body + rest[..limit].trim_ascii_end().len()
    });
    Some(at..end)
}

/// End of the run of bytes satisfying `pred` that starts at `from`.
fn run(text: &[u8], from: usize, pred: impl Fn(u8) -> bool) -> usize {
    from + text
        .get(from..)
        .map_or(0, |rest| rest.iter().take_while(|&&b| pred(b)).count())
}
