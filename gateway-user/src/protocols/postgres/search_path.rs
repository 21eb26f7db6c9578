//! The schemas an unqualified table name may resolve to in one session,
//! from the `search_path` the server holds once the gateway has logged in
//! (a role's or database's default applies there, unseen by the job's
//! statements).
use std::fmt;

/// Where an unqualified table name may be found, for table rules.
///
/// ```
/// use chokepoint::protocols::postgres::search_path::SearchPath;
///
/// let path = SearchPath::parse(r#""$user", public"#, "app_rw").unwrap();
/// assert_eq!(path.schemas(), Some(&["pg_temp", "app_rw", "public"].map(String::from)[..]));
/// assert_eq!(SearchPath::unknown().schemas(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath {
    /// `None`: not known, so any schema.
    schemas: Option<Vec<String>>,
    /// The path names `"$user"`, which follows the current role: a role
    /// change makes the path unknown.
    follows_role: bool,
}

/// The query that reads the path; qualified, so that a schema the path
/// puts before `pg_catalog` cannot answer in its place.
pub const QUERY: &str = "SELECT pg_catalog.current_setting('search_path')";

/// `NAMEDATALEN - 1`: the server keeps this many bytes of a name.
const MAX_NAME: usize = 63;

impl SearchPath {
    /// The path as `current_setting('search_path')` gives it, for a
    /// session logged in as `role`. `"$user"` is `role`'s schema whether
    /// it exists or not (the job may create it), and `pg_temp`, which the
    /// server searches first unless the path places it, is added in front.
    /// Text the server would not accept as a list of names is an error.
    pub fn parse(setting: &str, role: &str) -> Result<SearchPath, String> {
        let names = split_identifiers(setting)
            .ok_or_else(|| format!("search_path {setting:?} is not a list of names"))?;
        let mut schemas = Vec::with_capacity(names.len() + 1);
        if !names.iter().any(|n| n == "pg_temp") {
            schemas.push("pg_temp".to_owned());
        }
        let mut follows_role = false;
        for name in names {
            if name == "$user" {
                follows_role = true;
                schemas.push(role.to_owned());
            } else {
                schemas.push(name);
            }
        }
        Ok(SearchPath {
            schemas: Some(schemas),
            follows_role,
        })
    }

    /// A path that could not be learned: an unqualified name may be in any
    /// schema, so every table rule's schema matches it.
    pub fn unknown() -> SearchPath {
        SearchPath {
            schemas: None,
            follows_role: false,
        }
    }

    /// The schemas searched for an unqualified name, `None` for any. The
    /// implicit `pg_catalog` is not among them unless the path names it:
    /// only `pg_*` names can be found there.
    pub fn schemas(&self) -> Option<&[String]> {
        self.schemas.as_deref()
    }

    /// The session's role may have changed (SET ROLE, SET SESSION
    /// AUTHORIZATION): a `"$user"` entry may now name any schema.
    pub fn role_changed(&mut self) {
        if self.follows_role {
            self.schemas = None;
        }
    }
}

impl fmt::Display for SearchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schemas {
            Some(schemas) => f.write_str(&schemas.join(", ")),
            None => f.write_str("unknown (any schema)"),
        }
    }
}

/// A comma-separated list of names as the server splits it
/// (`SplitIdentifierString`): double quotes keep case, commas and spaces,
/// `""` is a quote; other names are folded to lower case; each is cut to
/// [`MAX_NAME`] bytes. `None` where the server would refuse the text.
fn split_identifiers(text: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = text.trim_start();
    if rest.is_empty() {
        return Some(names);
    }
    loop {
        let mut name = String::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            loop {
                let (i, c) = chars.next()?;
                if c != '"' {
                    name.push(c);
                } else if quoted[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    rest = &quoted[i + 1..];
                    break;
                }
            }
        } else {
            let end = rest
                .find(|c: char| c == ',' || c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            name = rest[..end].to_ascii_lowercase();
            rest = &rest[end..];
        }
        names.push(truncate(name));
        rest = rest.trim_start();
        match rest.strip_prefix(',') {
            Some(after) => rest = after.trim_start(),
            None if rest.is_empty() => return Some(names),
            None => return None,
        }
    }
}

fn truncate(mut name: String) -> String {
    if name.len() > MAX_NAME {
        let mut end = MAX_NAME;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas(setting: &str) -> Vec<String> {
        SearchPath::parse(setting, "App_RW")
            .unwrap()
            .schemas()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn the_default_path_is_the_roles_schema_then_public() {
        assert_eq!(
            schemas(r#""$user", public"#),
            ["pg_temp", "App_RW", "public"]
        );
        // The server reads an unquoted $user the same way.
        assert_eq!(schemas("$user,public"), ["pg_temp", "App_RW", "public"]);
    }

    #[test]
    fn names_are_read_as_the_server_reads_them() {
        assert_eq!(
            schemas("Billing ,  PUBLIC"),
            ["pg_temp", "billing", "public"]
        );
        assert_eq!(
            schemas(r#""Billing", "a ""b"", c", x"#),
            ["pg_temp", "Billing", r#"a "b", c"#, "x"]
        );
        assert_eq!(schemas(""), ["pg_temp"]);
        assert_eq!(schemas("  "), ["pg_temp"]);
        let long = "s".repeat(70);
        assert_eq!(schemas(&long), ["pg_temp".to_owned(), "s".repeat(63)]);
    }

    #[test]
    fn a_placed_pg_temp_is_not_added_again() {
        assert_eq!(schemas("public, pg_temp"), ["public", "pg_temp"]);
        assert_eq!(
            schemas("pg_catalog, billing"),
            ["pg_temp", "pg_catalog", "billing"]
        );
    }

    #[test]
    fn text_the_server_would_refuse_is_an_error() {
        for bad in [
            r#""billing"#,
            "billing,",
            ",billing",
            "a b",
            r#""a"b"#,
            "a,,b",
        ] {
            assert!(SearchPath::parse(bad, "ci").is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_role_change_unsettles_only_a_path_that_follows_the_role() {
        let mut follows = SearchPath::parse(r#""$user", public"#, "ci").unwrap();
        follows.role_changed();
        assert_eq!(follows.schemas(), None);
        let mut fixed = SearchPath::parse("billing, public", "ci").unwrap();
        fixed.role_changed();
        assert_eq!(
            fixed.schemas(),
            Some(&["pg_temp", "billing", "public"].map(String::from)[..])
        );
    }
}
