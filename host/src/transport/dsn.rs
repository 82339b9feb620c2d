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

    /// How long ago `YYYY-MM-DD HH:MM:SS` (a time written in this zone) was; `None` when the
    /// text is not such a time.
    pub fn age_secs(&self, text: &str) -> Option<f64> {
        let naive =
            chrono::NaiveDateTime::parse_from_str(text.get(..19)?, "%Y-%m-%d %H:%M:%S").ok()?;
        let at = match self {
            Self::Utc => naive.and_utc(),
            Self::Named(tz) => tz
                .from_local_datetime(&naive)
                .earliest()?
                .with_timezone(&chrono::Utc),
        };
        let age = chrono::Utc::now().signed_duration_since(at);
        Some((age.num_milliseconds() as f64 / 1000.0).max(0.0))
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
    /// `composite_index`: setup also creates the index Symfony 7.4 creates,
    /// `(queue_name, available_at, delivered_at, id)`, so a fetch walks only its own queue's
    /// rows (default false: Doctrine of Symfony 5.4–7.3 would list it as one to drop).
    pub composite_index: bool,
    /// `timezone`: UTC (default) or PHP's `date.timezone` for Symfony < 6.3.
    pub timezone: Zone,
    /// `serializer`: `php` or `json` forces the response format; default: the request's.
    pub serializer: Option<Format>,
    /// This manager's name among those sharing the queue (`[manager] id`, default the host
    /// name): a restarted manager takes back the rows it held at once.
    pub manager_id: String,
    /// How long a manager may stop heart-beating before the rows it held are taken back
    /// (`[manager] takeover_secs`, default 15); also how long a manager may be silent
    /// before it counts as dead for the entities it serves.
    pub takeover_secs: u64,
    /// When several managers share the queue: how long a request whose entity no live
    /// manager serves waits (from its creation) before it is answered with an error
    /// (`[manager] unserved_grace_secs`, default 15), so a manager restarting causes none.
    pub unserved_grace_secs: u64,
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
            composite_index: false,
            timezone: Zone::Utc,
            serializer: None,
            manager_id: "marvin-manager".into(),
            takeover_secs: 15,
            unserved_grace_secs: 15,
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
    "composite_index",
    "timezone",
    "serializer",
    "manager_id",
    "takeover_timeout",
];

/// Symfony's and Doctrine's options that mean nothing here, accepted and dropped so a Core DSN
/// can be pasted as is.
const IGNORED: &[&str] = &[
    "check_delayed_interval",
    "get_notify_timeout",
    "serverVersion",
    "server_version",
    "charset",
];

/// The connection options passed on to the PostgreSQL driver (libpq's names).
const POSTGRES: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The connection options passed on to SQLite.
const SQLITE: &[&str] = &["mode", "cache", "immutable", "vfs"];

fn truthy(k: &str, v: &str) -> Result<bool, Error> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(Error::Settings(format!("{k}={v} is not a boolean"))),
    }
}

impl Dsn {
    /// Parses a DSN. An option nobody knows is an error naming the known ones (a typo must
    /// not silently serve another queue); a `doctrine://` DSN gets a hint.
    pub fn parse(dsn: &str) -> Result<Self, Error> {
        let (scheme, rest) = dsn.split_once("://").ok_or_else(|| {
            Error::Settings(format!(
                "'{}' is not a DSN (postgres://… or sqlite://…)",
                crate::secrets::url(dsn)
            ))
        })?;
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let kind = match scheme {
            "postgres" | "postgresql" | "pgsql" => Kind::Postgres,
            "sqlite" => Kind::Sqlite,
            "doctrine" => return Err(Error::Settings(doctrine_hint(base, query))),
            other => {
                return Err(Error::Settings(format!(
                    "unsupported DSN scheme '{other}' (postgres://… or sqlite://…)"
                )));
            }
        };
        let driver = match kind {
            Kind::Postgres => POSTGRES,
            Kind::Sqlite => SQLITE,
        };
        let mut ours = BTreeMap::new();
        let mut theirs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let raw_key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let Some((k, v)) = form_urlencoded::parse(pair.as_bytes()).next() else {
                continue;
            };
            if OURS.contains(&&*k) {
                ours.insert(k.into_owned(), v.into_owned());
            } else if driver.contains(&&*k) || k.starts_with("options[") && kind == Kind::Postgres {
                theirs.push(pair);
            } else if !IGNORED.contains(&&*k) {
                return Err(Error::Settings(unknown_option(raw_key, driver)));
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
                "composite_index" => o.composite_index = truthy(k, v)?,
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

/// What to say about an option nobody knows: the nearest known one, and all of them.
fn unknown_option(key: &str, driver: &[&str]) -> String {
    let known: Vec<&str> = OURS.iter().chain(driver).copied().collect();
    let nearest = crate::config::did_you_mean(key, &known, 3);
    format!(
        "unknown DSN option '{key}'{nearest}; known options: {}",
        known.join(", ")
    )
}

/// Core's `messenger.yaml` names a Doctrine connection (`doctrine://default?…`); the manager
/// needs that connection's URL (Core's `DATABASE_URL`) with the same options.
fn doctrine_hint(connection: &str, query: &str) -> String {
    let options = if query.is_empty() {
        String::new()
    } else {
        format!(
            "?{}",
            crate::secrets::url(&format!("x://h?{query}"))["x://h?".len()..].to_owned()
        )
    };
    format!(
        "doctrine://{connection} names a Doctrine connection of Core's configuration, which the \
         manager cannot read: use that connection's URL (Core's DATABASE_URL) with the same \
         options, e.g. postgres://user:password@host:5432/marvin{options}"
    )
}

/// A DSN with its password hidden, for messages.
pub fn redact(dsn: &str) -> String {
    crate::secrets::url(dsn)
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
    fn unknown_options_and_doctrine_dsns_say_what_to_do() {
        let e = Dsn::parse("postgres://h/db?queue_nmae=x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'queue_nmae'"), "{e}");
        assert!(e.contains("did you mean queue_name?"), "{e}");
        assert!(e.contains("sslmode"), "{e}");
        let e = Dsn::parse("sqlite://m.db?sslmode=x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'sslmode'") && !e.contains("sslrootcert"), "{e}");
        let e = Dsn::parse("doctrine://default?queue_name=manager_requests&password=hush")
            .unwrap_err()
            .to_string();
        assert!(e.contains("DATABASE_URL"), "{e}");
        assert!(
            e.contains("?queue_name=manager_requests&password=***"),
            "{e}"
        );
        assert!(!e.contains("hush"), "{e}");
        // Doctrine's own options are dropped, libpq's passed on, `+` is a space as in PHP.
        let d = Dsn::parse(
            "postgresql://u@h/db?serverVersion=16&charset=utf8&sslmode=disable&queue_name=a+b",
        )
        .unwrap();
        assert_eq!(d.url, "postgres://u@h/db?sslmode=disable");
        assert_eq!(d.options.queue_name, "a b");
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
