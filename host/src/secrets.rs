//! Secrets never leave: URLs shown with their password hidden, and a [`Redactor`] that takes
//! every configured secret (the DSN's password, supervisord's, granted environment values of
//! secret-looking names) out of a text before it goes to Core, the ledger, a log or a
//! message. A data type like `config`: it imports no stage, and every stage may use it.

use std::borrow::Cow;

/// What a hidden secret is shown as.
pub const MASK: &str = "***";

/// Query options whose value is a secret (libpq's and the usual spellings).
const SECRET_OPTIONS: &[&str] = &["password", "pass", "pwd", "sslpassword", "secret", "token"];

/// A URL or DSN with its password hidden: `scheme://user:***@host/…?password=***`. Anything
/// that is not a URL is returned as is. By hand rather than through `url::Url`, which would
/// normalise and re-encode the rest of what the operator wrote (and reads `sqlite://x.db`'s
/// path as a host).
pub fn url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_owned();
    };
    let start = scheme_end + 3;
    // The authority ends at the query or the fragment (a password holding `/` or `@` unescaped
    // is still hidden: the last `@` before the query ends the user information).
    let end = s[start..].find(['?', '#']).map_or(s.len(), |i| start + i);
    let mut out = String::with_capacity(s.len());
    out.push_str(&s[..start]);
    match s[start..end].rfind('@') {
        Some(at) => {
            let creds = &s[start..start + at];
            match creds.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(creds),
            }
            out.push_str(&s[start + at..end]);
        }
        None => out.push_str(&s[start..end]),
    }
    let rest = &s[end..];
    let Some(query) = rest.strip_prefix('?') else {
        out.push_str(rest);
        return out;
    };
    let (query, fragment) = query
        .split_once('#')
        .map_or((query, None), |(q, f)| (q, Some(f)));
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if is_secret_option(k) => {
                out.push_str(k);
                out.push('=');
                out.push_str(MASK);
            }
            _ => out.push_str(pair),
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn is_secret_option(key: &str) -> bool {
    SECRET_OPTIONS.iter().any(|o| key.eq_ignore_ascii_case(o))
}

/// The secrets of a URL: its password and the values of its secret options, as written and
/// percent-decoded.
pub fn of_url(s: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Some(scheme_end) = s.find("://") else {
        return found;
    };
    let start = scheme_end + 3;
    let end = s[start..].find(['?', '#']).map_or(s.len(), |i| start + i);
    if let Some(at) = s[start..end].rfind('@')
        && let Some((_, password)) = s[start..start + at].split_once(':')
    {
        found.push(password.to_owned());
    }
    if let Some(query) = s[end..].strip_prefix('?') {
        let query = query.split('#').next().unwrap_or_default();
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && is_secret_option(k)
            {
                found.push(v.to_owned());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|v| percent_decode(v)).collect();
    found.extend(decoded);
    found
}

/// Whether an environment variable's name says its value is a secret: it holds PASSWORD,
/// PASSWD, SECRET, TOKEN, KEY or CREDENTIAL (any case), or its value is a URL with a password.
pub fn secret_env(name: &str, value: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL"]
        .iter()
        .any(|w| upper.contains(w))
        || !of_url(value).is_empty()
}

/// Takes known secrets out of texts. Empty (the default) leaves every text as is.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret holding another is hidden whole.
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

/// Secrets shorter than this are not searched for: hiding every `a` or `12` of every text
/// would garble answers and hide nothing (such a secret is not one).
pub const MIN_SECRET_LEN: usize = 4;

impl Redactor {
    /// A redactor of these secrets (and their percent-encoded forms); those shorter than
    /// [`MIN_SECRET_LEN`] are left out.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut all: Vec<String> = Vec::new();
        for s in secrets {
            if s.chars().count() < MIN_SECRET_LEN {
                continue;
            }
            let encoded = percent_encode(&s);
            for form in [s, encoded] {
                if !all.contains(&form) {
                    all.push(form);
                }
            }
        }
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets: all }
    }

    /// Whether there is nothing to hide.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every secret replaced by [`MASK`].
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), MASK));
            }
        }
        out
    }

    /// Scrubs a string in place.
    pub fn scrub_string(&self, text: &mut String) {
        if let Cow::Owned(clean) = self.scrub(text) {
            *text = clean;
        }
    }

    /// Scrubs every string of a JSON value (keys included) in place.
    pub fn scrub_json(&self, value: &mut serde_json::Value) {
        if self.is_empty() {
            return;
        }
        match value {
            serde_json::Value::String(s) => self.scrub_string(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.scrub_json(v)),
            serde_json::Value::Object(map) => self.scrub_map(map),
            _ => {}
        }
    }

    /// Scrubs every string of a JSON object (keys included) in place.
    pub fn scrub_map(&self, map: &mut serde_json::Map<String, serde_json::Value>) {
        if self.is_empty() {
            return;
        }
        let dirty_key = map.keys().any(|k| matches!(self.scrub(k), Cow::Owned(_)));
        if dirty_key {
            let old = std::mem::take(map);
            for (k, v) in old {
                map.insert(self.scrub(&k).into_owned(), v);
            }
        }
        map.values_mut().for_each(|v| self.scrub_json(v));
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Everything but RFC 3986's unreserved characters, as a URL's user information holds it.
const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, USERINFO).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_secrets() {
        assert_eq!(url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            url("postgres://u@h/db?sslmode=disable&password=secret&queue_name=q"),
            "postgres://u@h/db?sslmode=disable&password=***&queue_name=q"
        );
        assert_eq!(
            url("http://a:p@ss/w@host:9001/RPC2"),
            "http://a:***@host:9001/RPC2"
        );
        assert_eq!(
            url("sqlite://marvin.db?queue_name=q"),
            "sqlite://marvin.db?queue_name=q"
        );
        assert_eq!(url("unix:///run/s.sock"), "unix:///run/s.sock");
        assert_eq!(url("not a url"), "not a url");
        assert_eq!(url("http://h/?x=a@b"), "http://h/?x=a@b");
    }

    #[test]
    fn the_secrets_of_a_url() {
        let s = of_url("postgres://u:p%40ss@h/db?PASSWORD=two&x=y");
        assert!(s.contains(&"p%40ss".to_owned()));
        assert!(s.contains(&"p@ss".to_owned()));
        assert!(s.contains(&"two".to_owned()));
        assert!(!s.contains(&"y".to_owned()));
        assert!(of_url("postgres://u@h/db").is_empty());
    }

    #[test]
    fn scrubs_every_form() {
        let r = Redactor::new(["p@ss word".to_owned(), "ab".to_owned()]);
        assert_eq!(r.scrub("x p@ss word y"), "x *** y");
        assert_eq!(r.scrub("url p%40ss%20word"), "url ***");
        // Too short to be searched for.
        assert_eq!(r.scrub("ab"), "ab");
        let mut v = serde_json::json!({"k p@ss word": ["p@ss word", 1, {"x": "p@ss word!"}]});
        r.scrub_json(&mut v);
        assert_eq!(v, serde_json::json!({"k ***": ["***", 1, {"x": "***!"}]}));
        assert!(matches!(
            Redactor::default().scrub("p@ss word"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn secret_looking_environment() {
        assert!(secret_env("DB_PASSWORD", "x"));
        assert!(secret_env("api_token", "x"));
        assert!(secret_env("DATABASE_URL", "postgres://u:pw@h/db"));
        assert!(!secret_env("TAG", "v1"));
    }
}
