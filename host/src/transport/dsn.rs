//! Where the queue is: `postgres://…` or `sqlite://…`, with Symfony's option names where
//! Symfony has one (`table_name`, `queue_name`, `redeliver_timeout`, `use_notify`).

use std::collections::BTreeMap;

use chrono::{Offset, TimeZone};

use crate::codec::Format;

use super::Error;

/// The time zone timestamps are written and compared in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    /// Symfony ≥ 6.3.
    Utc,
    /// Symfony before 6.3 writes PHP's `date.timezone`.
    Named(chrono_tz::Tz),
}

impl Zone {
    /// Parses `UTC` or an IANA name.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.eq_ignore_ascii_case("utc") {
            return Ok(Self::Utc);
        }
        s.parse::<chrono_tz::Tz>().map(Self::Named).map_err(|_| {
            Error::Settings(format!(
                "unknown time zone '{s}' (use UTC or an IANA name such as Europe/Paris)"
            ))
        })
    }

    /// `YYYY-MM-DD HH:MM:SS` for now + `offset_secs`, truncated to the second.
    pub fn format_now(&self, offset_secs: i64) -> String {
        let t = chrono::Utc::now() + chrono::Duration::seconds(offset_secs);
        const F: &str = "%Y-%m-%d %H:%M:%S";
        match self {
            Self::Utc => t.format(F).to_string(),
            Self::Named(tz) => {
                let off = tz.offset_from_utc_datetime(&t.naive_utc()).fix();
                t.with_timezone(&off).format(F).to_string()
            }
        }
    }
}

/// What the transport needs besides the connection.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportOptions {
    /// `table_name` (default `messenger_messages`).
    pub table_name: String,
    /// `queue_name`: where requests come from (default `default`, as Symfony).
    pub queue_name: String,
    /// `response_queue_name`: where responses go (default: the request queue).
    pub response_queue_name: String,
    /// `failure_queue_name`: where undecodable rows are parked (default `failed`).
    pub failure_queue_name: String,
    /// `redeliver_timeout` in seconds (default 3600).
    pub redeliver_timeout_secs: u64,
    /// `use_notify` (PostgreSQL; default true).
    pub use_notify: bool,
    /// `auto_setup`: create missing tables on start (default true).
    pub auto_setup: bool,
    /// `timezone`: UTC (default) or PHP's `date.timezone` for Symfony < 6.3.
    pub timezone: Zone,
    /// `serializer`: `php` or `json` forces the response format; default: the request's.
    pub serializer: Option<Format>,
    /// This manager's name among those sharing the queue (`[manager] id`, default the host
    /// name): a restarted manager takes back the rows it held at once.
    pub manager_id: String,
    /// How long a manager may stop heart-beating before the rows it held are taken back
    /// (`[manager] takeover_secs`, default 15).
    pub takeover_secs: u64,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            table_name: "messenger_messages".into(),
            queue_name: "default".into(),
            response_queue_name: "default".into(),
            failure_queue_name: "failed".into(),
            redeliver_timeout_secs: 3600,
            use_notify: true,
            auto_setup: true,
            timezone: Zone::Utc,
            serializer: None,
            manager_id: "marvin-manager".into(),
            takeover_secs: 15,
        }
    }
}

/// A parsed DSN.
#[derive(Debug, Clone, PartialEq)]
pub struct Dsn {
    /// `postgres` or `sqlite`.
    pub kind: Kind,
    /// The connection URL without our options.
    pub url: String,
    /// The transport options.
    pub options: TransportOptions,
}

/// The database kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

const OURS: &[&str] = &[
    "table_name",
    "queue_name",
    "response_queue_name",
    "failure_queue_name",
    "redeliver_timeout",
    "use_notify",
    "auto_setup",
    "timezone",
    "serializer",
    "manager_id",
    "takeover_timeout",
    // Symfony's, accepted and ignored so a Core DSN can be pasted as is.
    "check_delayed_interval",
    "get_notify_timeout",
];

fn truthy(k: &str, v: &str) -> Result<bool, Error> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(Error::Settings(format!("{k}={v} is not a boolean"))),
    }
}

impl Dsn {
    /// Parses a DSN.
    pub fn parse(dsn: &str) -> Result<Self, Error> {
        let (scheme, rest) = dsn.split_once("://").ok_or_else(|| {
            Error::Settings(format!(
                "'{}' is not a DSN (postgres://… or sqlite://…)",
                redact(dsn)
            ))
        })?;
        let kind = match scheme {
            "postgres" | "postgresql" | "pgsql" => Kind::Postgres,
            "sqlite" => Kind::Sqlite,
            other => {
                return Err(Error::Settings(format!(
                    "unsupported DSN scheme '{other}' (postgres or sqlite)"
                )));
            }
        };
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut ours = BTreeMap::new();
        let mut theirs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if OURS.contains(&k) {
                ours.insert(k.to_owned(), percent_decode(v));
            } else {
                theirs.push(pair);
            }
        }
        let mut o = TransportOptions::default();
        for (k, v) in &ours {
            match k.as_str() {
                "table_name" => o.table_name = v.clone(),
                "queue_name" => o.queue_name = v.clone(),
                "response_queue_name" => o.response_queue_name = v.clone(),
                "failure_queue_name" => o.failure_queue_name = v.clone(),
                "redeliver_timeout" => {
                    o.redeliver_timeout_secs = v.parse().map_err(|_| {
                        Error::Settings(format!("redeliver_timeout={v} is not a number of seconds"))
                    })?;
                }
                "use_notify" => o.use_notify = truthy(k, v)?,
                "auto_setup" => o.auto_setup = truthy(k, v)?,
                "timezone" => o.timezone = Zone::parse(v)?,
                "manager_id" => o.manager_id.clone_from(v),
                "takeover_timeout" => {
                    o.takeover_secs = v.parse().map_err(|_| {
                        Error::Settings(format!("takeover_timeout={v} is not a number of seconds"))
                    })?;
                }
                "serializer" => {
                    o.serializer = match v.as_str() {
                        "php" => Some(Format::Php),
                        "json" => Some(Format::Json),
                        "" | "auto" => None,
                        _ => {
                            return Err(Error::Settings(format!(
                                "serializer={v}: use php or json"
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
        if !ours.contains_key("response_queue_name") {
            o.response_queue_name = o.queue_name.clone();
        }
        for (name, value) in [
            ("table_name", &o.table_name),
            ("queue_name", &o.queue_name),
            ("response_queue_name", &o.response_queue_name),
            ("failure_queue_name", &o.failure_queue_name),
        ] {
            if value.is_empty() || value.len() > 190 {
                return Err(Error::Settings(format!(
                    "{name} must be 1 to 190 characters"
                )));
            }
        }
        valid_table_name(&o.table_name)?;
        let scheme = match kind {
            Kind::Postgres => "postgres",
            Kind::Sqlite => "sqlite",
        };
        let url = if theirs.is_empty() {
            format!("{scheme}://{base}")
        } else {
            format!("{scheme}://{base}?{}", theirs.join("&"))
        };
        Ok(Self {
            kind,
            url,
            options: o,
        })
    }
}

/// `table` or `schema.table`, identifiers only: it is spliced into SQL.
fn valid_table_name(t: &str) -> Result<(), Error> {
    let ok = t.split('.').count() <= 2
        && t.split('.').all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !p.starts_with(|c: char| c.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Settings(format!(
            "table_name '{t}' must be an identifier (letters, digits, _), optionally schema.table"
        )))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A DSN with its password hidden, for messages.
pub fn redact(dsn: &str) -> String {
    match (dsn.find("://"), dsn.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &dsn[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &dsn[..s + 3], &dsn[at..]),
                None => dsn.to_owned(),
            }
        }
        _ => dsn.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_symfony_options_and_keeps_the_rest() {
        let d = Dsn::parse("postgres://u:p@h:5433/db?queue_name=manager_requests&response_queue_name=manager_responses&redeliver_timeout=60&use_notify=false&sslmode=disable&timezone=Europe/Paris&serializer=json").unwrap();
        assert_eq!(d.kind, Kind::Postgres);
        assert_eq!(d.url, "postgres://u:p@h:5433/db?sslmode=disable");
        assert_eq!(d.options.queue_name, "manager_requests");
        assert_eq!(d.options.response_queue_name, "manager_responses");
        assert_eq!(d.options.redeliver_timeout_secs, 60);
        assert!(!d.options.use_notify);
        assert_eq!(d.options.serializer, Some(Format::Json));
        assert!(matches!(d.options.timezone, Zone::Named(_)));
        let d = Dsn::parse("sqlite://marvin.db?queue_name=manager_messages").unwrap();
        assert_eq!(d.url, "sqlite://marvin.db");
        assert_eq!(d.options.response_queue_name, "manager_messages");
    }

    #[test]
    fn rejects_what_would_break() {
        assert!(Dsn::parse("mysql://x").is_err());
        assert!(Dsn::parse("postgres://h/db?table_name=x;drop").is_err());
        assert!(Dsn::parse("postgres://h/db?redeliver_timeout=soon").is_err());
        assert!(Dsn::parse("postgres://h/db?timezone=Mars/Olympus").is_err());
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn timestamps_are_whole_seconds_in_the_zone() {
        let utc = Zone::Utc.format_now(0);
        assert_eq!(utc.len(), 19);
        assert_eq!(&utc[10..11], " ");
        let paris = Zone::parse("Europe/Paris").unwrap().format_now(0);
        assert_ne!(utc, paris);
    }
}
