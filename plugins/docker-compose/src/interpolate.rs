//! compose's variable substitution, applied to the string values of a parsed compose file
//! (never to its raw text: a comment or a key is not a template, and a substituted value is
//! never read as YAML).
//!
//! The rules of the compose specification (compose v2; compose v1 knows all but `:+`, `+`
//! and nesting):
//! - `$$` is a literal `$`;
//! - `$VAR` and `${VAR}` are the value, empty when unset (compose warns);
//! - `${VAR:-default}` when unset or empty, `${VAR-default}` when unset;
//! - `${VAR:?message}` / `${VAR?message}`: an error when unset or empty / unset;
//! - `${VAR:+replacement}` when set and not empty, `${VAR+replacement}` when set;
//! - defaults, replacements and messages are templates themselves (`${A:-${B:-x}}`);
//! - any other `$` (`$5`, a lone `$`, `${VAR/x}`) is an error: write `$$`.

use std::collections::HashMap;

/// Variables by name.
pub type Env = HashMap<String, String>;

/// Why a template could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `${VAR:?message}` with VAR unset (or empty).
    Required { name: String, message: String },
    /// Not a template compose accepts.
    Invalid(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Required { name, message } if message.is_empty() => {
                write!(f, "required variable {name} is missing a value")
            }
            Self::Required { name, message } => {
                write!(f, "required variable {name} is missing a value: {message}")
            }
            Self::Invalid(text) => write!(
                f,
                "invalid interpolation format in {text:?}: you may need to escape any $ with another $"
            ),
        }
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The length of the variable name at the start of `s`, 0 when there is none.
fn name_len(s: &str) -> usize {
    if !s.starts_with(is_name_start) {
        return 0;
    }
    s.find(|c: char| !is_name(c)).unwrap_or(s.len())
}

/// Where the `}` closing a `${` is, in `body` (the text after `${`), nested `${…}` skipped.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// `text` with its variables substituted from `env`; `unset` hears each variable read
/// without a value and without a default (compose warns about those).
pub fn interpolate(text: &str, env: &Env, unset: &mut dyn FnMut(&str)) -> Result<String, Error> {
    let invalid = || Error::Invalid(text.to_owned());
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(invalid)?;
            out.push_str(&braced(&body[..end], env, unset).map_err(|e| match e {
                Error::Invalid(_) => invalid(),
                other => other,
            })?);
            rest = &body[end + 1..];
        } else {
            let n = name_len(after);
            if n == 0 {
                return Err(invalid());
            }
            let name = &after[..n];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => unset(name),
            }
            rest = &after[n..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of the inside of `${…}`.
fn braced(expr: &str, env: &Env, unset: &mut dyn FnMut(&str)) -> Result<String, Error> {
    let n = name_len(expr);
    if n == 0 {
        return Err(Error::Invalid(expr.to_owned()));
    }
    let (name, op) = expr.split_at(n);
    let value = env.get(name).map(String::as_str);
    let set_and_not_empty = value.is_some_and(|v| !v.is_empty());
    let (colon, op) = match op.strip_prefix(':') {
        Some(rest) => (true, rest),
        None => (false, op),
    };
    // With a colon, an empty value counts as unset.
    let present = if colon {
        set_and_not_empty
    } else {
        value.is_some()
    };
    let mut sub = |t: &str| interpolate(t, env, unset);
    match op.chars().next() {
        None if !colon => Ok(match value {
            Some(v) => v.to_owned(),
            None => {
                unset(name);
                String::new()
            }
        }),
        Some('-') => match value {
            Some(v) if present => Ok(v.to_owned()),
            _ => sub(&op[1..]),
        },
        Some('?') => match value {
            Some(v) if present => Ok(v.to_owned()),
            _ => Err(Error::Required {
                name: name.to_owned(),
                message: sub(&op[1..])?,
            }),
        },
        Some('+') => {
            if present {
                sub(&op[1..])
            } else {
                Ok(String::new())
            }
        }
        _ => Err(Error::Invalid(expr.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        [
            ("TAG", "1.2"),
            ("EMPTY", ""),
            ("B", "bee"),
            ("COLON", "a: b # not a comment"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn i(t: &str) -> Result<String, Error> {
        interpolate(t, &env(), &mut |_| {})
    }

    #[test]
    fn the_rules_of_the_compose_specification() {
        assert_eq!(i("app:${TAG}").unwrap(), "app:1.2");
        assert_eq!(i("app:$TAG-x").unwrap(), "app:1.2-x");
        assert_eq!(
            i("${NOPE:-dev} ${EMPTY:-x} ${EMPTY-y} ${NOPE-z}").unwrap(),
            "dev x  z"
        );
        assert_eq!(
            i("${TAG:+r} ${EMPTY:+r} ${EMPTY+r} ${NOPE+r}").unwrap(),
            "r  r "
        );
        assert_eq!(i("cost $$5, $${TAG}").unwrap(), "cost $5, ${TAG}");
        assert_eq!(i("${NOPE}$NOPE").unwrap(), "");
        assert_eq!(i("${COLON}").unwrap(), "a: b # not a comment");
        assert_eq!(i("${EMPTY?set}").unwrap(), "");
        // Nested defaults, replacements and messages.
        assert_eq!(i("${NOPE:-${B}}").unwrap(), "bee");
        assert_eq!(i("${NOPE:-${ALSO:-${TAG}-x}}/y").unwrap(), "1.2-x/y");
        assert_eq!(i("${TAG:+v${TAG}}").unwrap(), "v1.2");
        // A brace without `$` is text; the first `}` closes.
        assert_eq!(i("${NOPE:-{literal}}").unwrap(), "{literal}");
        assert_eq!(
            i("${NOPE:?set NOPE, e.g. ${B}}").unwrap_err().to_string(),
            "required variable NOPE is missing a value: set NOPE, e.g. bee"
        );
        assert_eq!(
            i("${EMPTY:?}").unwrap_err().to_string(),
            "required variable EMPTY is missing a value"
        );
        for bad in [
            "$5", "a $", "${TAG", "${TAG/x}", "${}", "${1A}", "${TAG:}", "${TAG:x}",
        ] {
            assert!(matches!(i(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn unset_variables_are_reported() {
        let mut seen = Vec::new();
        interpolate("$A ${B} ${C:-d} ${TAG}", &env(), &mut |n| {
            seen.push(n.to_owned())
        })
        .unwrap();
        assert_eq!(seen, ["A"]);
    }
}
