//! Databases for transport tests: a fresh schema on the real PostgreSQL server that
//! `scripts/test` starts (`MARVIN_TEST_PG`), or a fresh SQLite file.
#![allow(dead_code)]

use marvin_manager::codec::{self, Format};
use marvin_manager::message::ManagerRequest;
use marvin_manager::transport::postgres::PgTransport;
use marvin_manager::transport::sqlite::SqliteTransport;
use marvin_manager::transport::{Dsn, Queue, Records};
use sqlx::Row;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Pg,
    Sqlite,
}

/// One isolated queue: a PostgreSQL schema or an SQLite file.
pub struct TestDb {
    pub db: Db,
    base: String,
    table: String,
    _tmp: Option<tempfile::TempDir>,
}

pub fn pg_base() -> String {
    std::env::var("MARVIN_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "MARVIN_TEST_PG is not set: these tests need a real PostgreSQL server. \
             Run them with `bash scripts/test`, or `. scripts/services` first."
        )
    })
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

impl TestDb {
    /// A fresh schema on the PostgreSQL server at `base`.
    pub async fn pg_on(base: &str) -> Self {
        let schema = unique();
        let pool = sqlx::PgPool::connect(base).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        Self {
            db: Db::Pg,
            base: base.to_owned(),
            table: format!("{schema}.messenger_messages"),
            _tmp: None,
        }
    }

    pub async fn new(db: Db) -> Self {
        match db {
            Db::Pg => Self::pg_on(&pg_base()).await,
            Db::Sqlite => {
                let tmp = tempfile::tempdir().unwrap();
                let base = format!("sqlite://{}", tmp.path().join("queue.db").display());
                Self {
                    db,
                    base,
                    table: "messenger_messages".into(),
                    _tmp: Some(tmp),
                }
            }
        }
    }

    /// The database URL without options.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The DSN with this queue's table and `extra` options.
    pub fn dsn(&self, extra: &str) -> String {
        let mut q = format!(
            "table_name={}&queue_name=requests&response_queue_name=responses",
            self.table
        );
        if !extra.is_empty() {
            q.push('&');
            q.push_str(extra);
        }
        format!("{}?{q}", self.base)
    }

    pub async fn pg(&self, extra: &str) -> PgTransport {
        let d = Dsn::parse(&self.dsn(extra)).unwrap();
        PgTransport::connect(&d.url, d.options, 8).await.unwrap()
    }

    pub async fn sqlite(&self, extra: &str) -> SqliteTransport {
        let d = Dsn::parse(&self.dsn(extra)).unwrap();
        SqliteTransport::connect(&d.url, d.options).await.unwrap()
    }

    /// The responses committed on queue `responses`, oldest first, decoded as Core would.
    pub async fn responses(&self) -> Vec<marvin_manager::message::ManagerResponse> {
        self.query("SELECT body, headers FROM {t} WHERE queue_name = 'responses' ORDER BY id")
            .await
            .into_iter()
            .map(|r| {
                codec::decode_response(
                    r[0].as_deref().unwrap().as_bytes(),
                    r[1].as_deref().unwrap(),
                )
                .unwrap()
            })
            .collect()
    }

    /// Runs SQL (bind-free) and returns the rows as strings (NULL as None).
    pub async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let sql = sql.replace("{t}", &self.table);
        match self.db {
            Db::Pg => {
                let pool = sqlx::PgPool::connect(&self.base).await.unwrap();
                let out = texts(&sqlx::query(&sql).fetch_all(&pool).await.unwrap());
                pool.close().await;
                out
            }
            Db::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.base).await.unwrap();
                let out = texts(&sqlx::query(&sql).fetch_all(&pool).await.unwrap());
                pool.close().await;
                out
            }
        }
    }

    /// `delivered_at`-style timestamp text: PostgreSQL needs a cast to read it as text.
    pub fn ts(&self, column: &str) -> String {
        match self.db {
            Db::Pg => format!("to_char({column}, 'YYYY-MM-DD HH24:MI:SS')"),
            Db::Sqlite => column.to_owned(),
        }
    }

    /// `now + secs` as a SQL expression in the table's timestamp type (UTC).
    pub fn at(&self, secs: i64) -> String {
        let t = chrono::Utc::now() + chrono::Duration::seconds(secs);
        format!("'{}'", t.format("%Y-%m-%d %H:%M:%S"))
    }

    pub async fn exec(&self, sql: &str) {
        let _ = self.query(sql).await;
    }
}

/// Every column of every row as text (NULL as None).
fn texts<R>(rows: &[R]) -> Vec<Vec<Option<String>>>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
                .collect()
        })
        .collect()
}

pub fn request(correlation_id: &str, entity: &str, action: &str) -> ManagerRequest {
    ManagerRequest::new(correlation_id, entity, action)
}

pub async fn send<T: Queue + Records>(t: &T, req: &ManagerRequest, format: Format) -> i64 {
    let queue = t.options().queue_name.clone();
    t.send(
        &queue,
        codec::encode_request(req, format, Some("messenger.bus.default")),
    )
    .await
    .unwrap()
}

/// Runs each `$case(db, make_transport)` against a real PostgreSQL and against SQLite.
#[macro_export]
macro_rules! on_both_databases {
    ($($case:ident),* $(,)?) => {
        mod pg {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::TestDb::new(super::Db::Pg).await;
                    super::$case(&db, async |extra: &str| db.pg(extra).await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::TestDb::new(super::Db::Sqlite).await;
                    super::$case(&db, async |extra: &str| db.sqlite(extra).await).await;
                }
            )*
        }
    };
}

/// A PostgreSQL server of a test's own (`initdb` in a temp dir, a free port), for tests that
/// stop and start it; stopped when dropped.
pub struct TempPg {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl TempPg {
    pub fn new() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .map(|e| e.unwrap().path().join("bin"))
            .filter(|p| p.join("pg_ctl").exists())
            .max()
            .expect("PostgreSQL's binaries under /usr/lib/postgresql");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { dir, bin, port };
        if rustix::process::geteuid().is_root() {
            let out = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(pg.dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        pg.run("initdb", &["-A", "trust", "-U", "postgres", "-D"], true);
        pg.start();
        pg
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// A PostgreSQL program, run as the `postgres` user when root (the server refuses root).
    fn command(&self, program: &str) -> std::process::Command {
        let exe = self.bin.join(program);
        if rustix::process::geteuid().is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        }
    }

    fn run(&self, program: &str, args: &[&str], with_data: bool) {
        let mut cmd = self.command(program);
        cmd.args(args);
        if with_data {
            cmd.arg(self.data());
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{program}: {out:?}");
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let data = self.data();
        let log = data.join("log");
        let opts = format!("-p {} -k /tmp -c listen_addresses=127.0.0.1", self.port);
        self.run(
            "pg_ctl",
            &[
                "-w",
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "start",
                "-D",
            ],
            true,
        );
    }

    /// Stops the server (fast shutdown: sessions are closed).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-w", "-m", "fast", "stop", "-D"], true);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for TempPg {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "stop", "-D"])
            .arg(self.data())
            .output();
    }
}
