//! supervisord through its XML-RPC interface: the [`SupervisorBackend`] of a running manager.
//!
//! One HTTP/1.0 request per call (hyper; the XML by `dxr`), over the unix socket
//! (`unix:///run/supervisor.sock`) or `inet_http_server` (`http://127.0.0.1:9001`), with basic
//! auth when configured. A connection costs tens of microseconds on a socket; supervisord's
//! medusa server closes HTTP/1.0 connections after the answer, so nothing is kept between
//! calls. The connection is driven in the calling task: a task of its own cost ~0.4 ms a call
//! (measured with the supervisor bench).

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;

use super::SupervisorBackend;
use super::xmlrpc::{self, RpcError, Value};
use crate::bindings::supervisor::{ConfigChanges, Process, ProcessResult, ProcessState};
use crate::bindings::types::Error;

/// The largest answer read from supervisord.
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer may take at most, whoever calls (a waiting start lasts `startsecs`).
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// The HTTP/1 client: the request written in one piece (supervisord's server reads it at
/// once rather than waiting for the body in a second segment).
fn http1() -> hyper::client::conn::http1::Builder {
    let mut b = hyper::client::conn::http1::Builder::new();
    b.writev(false);
    b
}

/// A connection to supervisord.
enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// The hyper connection task of a [`Stream`].
enum Driver {
    Unix(
        hyper::client::conn::http1::Connection<
            hyper_util::rt::TokioIo<tokio::net::UnixStream>,
            http_body_util::Full<bytes::Bytes>,
        >,
    ),
    Tcp(
        hyper::client::conn::http1::Connection<
            hyper_util::rt::TokioIo<tokio::net::TcpStream>,
            http_body_util::Full<bytes::Bytes>,
        >,
    ),
}

/// supervisord's fault codes (`supervisor.xmlrpc.Faults`).
pub mod faults {
    /// No such process or group.
    pub const BAD_NAME: i64 = 10;
    /// The command does not exist.
    pub const NO_FILE: i64 = 20;
    /// The command is not executable.
    pub const NOT_EXECUTABLE: i64 = 21;
    /// A group call failed for a process.
    pub const FAILED: i64 = 30;
    /// The process exited before `startsecs`.
    pub const ABNORMAL_TERMINATION: i64 = 40;
    /// The process could not be spawned.
    pub const SPAWN_ERROR: i64 = 50;
    /// Already running.
    pub const ALREADY_STARTED: i64 = 60;
    /// Not running.
    pub const NOT_RUNNING: i64 = 70;
    /// A group call's per-process success.
    pub const SUCCESS: i64 = 80;
    /// The group is already active.
    pub const ALREADY_ADDED: i64 = 90;
    /// The group still has running processes.
    pub const STILL_RUNNING: i64 = 91;
    /// The configuration could not be read.
    pub const CANT_REREAD: i64 = 92;
}

/// Where supervisord listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Unix(String),
    Tcp { host_port: String },
}

/// supervisord at a URL.
pub struct Supervisord {
    url: String,
    endpoint: Endpoint,
    auth: Option<String>,
}

impl Supervisord {
    /// `unix:///path/to.sock` or `http://host:port` (the `/RPC2` path is added), with
    /// optional basic-auth credentials: `username` / `password`, or in the URL
    /// (`http://user:pass@host:9001`, percent-encoded as URLs are; the arguments win). The URL
    /// is shown in messages without its credentials.
    pub fn new(url: &str, username: Option<&str>, password: Option<&str>) -> Result<Self, String> {
        let shown = crate::secrets::url(url);
        let mut from_url: Option<(String, String)> = None;
        let endpoint = if let Some(path) = url.strip_prefix("unix://") {
            Endpoint::Unix(path.to_owned())
        } else if let Some(rest) = url.strip_prefix("http://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            // The user information ends at the last `@` of the part before the path.
            let authority_end = rest.find(['?', '#']).unwrap_or(rest.len());
            let (creds, host_port) = match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let host = rest[at + 1..]
                        .split(['/', '?', '#'])
                        .next()
                        .unwrap_or_default();
                    (Some(&rest[..at]), host)
                }
                None => (None, authority),
            };
            if let Some(creds) = creds {
                let (user, pass) = creds.split_once(':').unwrap_or((creds, ""));
                let decode = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8_lossy()
                        .into_owned()
                };
                from_url = Some((decode(user), decode(pass)));
            }
            if host_port.is_empty() {
                return Err(format!("supervisord url '{shown}' names no host"));
            }
            let host_port = if host_port.contains(':') {
                host_port.to_owned()
            } else {
                format!("{host_port}:80")
            };
            Endpoint::Tcp { host_port }
        } else {
            return Err(format!(
                "supervisord url '{shown}' must start with unix:// or http://"
            ));
        };
        let credentials = match (username, from_url) {
            (Some(u), _) => Some((u.to_owned(), password.unwrap_or_default().to_owned())),
            (None, Some((u, p))) => Some((u, password.map_or(p, str::to_owned))),
            (None, None) => None,
        };
        let auth = credentials
            .map(|(u, p)| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
        // Without the credentials: this is what messages name.
        let url = match &endpoint {
            Endpoint::Unix(_) => url.to_owned(),
            Endpoint::Tcp { host_port } => format!("http://{host_port}"),
        };
        Ok(Self {
            url,
            endpoint,
            auth,
        })
    }

    /// Debian's default: `/var/run/supervisor.sock`.
    pub const DEFAULT_URL: &'static str = "unix:///var/run/supervisor.sock";

    fn unreachable(&self, e: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!("cannot reach supervisord at {}: {e}", self.url))
    }

    /// POSTs `body` to `/RPC2` over a new connection (HTTP/1.0 through hyper, as before:
    /// supervisord's server closes the connection after the answer): the status and the body. Connecting
    /// is bounded by [`CONNECT_TIMEOUT`], the answer by [`READ_TIMEOUT`] (the capability
    /// bounds the whole call by the request's deadline before that).
    async fn post(&self, body: String) -> Result<(u16, bytes::Bytes), Error> {
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost",
            Endpoint::Tcp { host_port } => host_port.as_str(),
        };
        let mut request = hyper::Request::post("/RPC2")
            .version(hyper::Version::HTTP_10)
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "marvin-manager")
            .header(hyper::header::CONTENT_TYPE, "text/xml");
        if let Some(auth) = &self.auth {
            request = request.header(hyper::header::AUTHORIZATION, format!("Basic {auth}"));
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| Error::Failed(format!("cannot build the request to supervisord: {e}")))?;
        let connecting = async {
            match &self.endpoint {
                Endpoint::Unix(path) => tokio::net::UnixStream::connect(path)
                    .await
                    .map(Stream::Unix),
                Endpoint::Tcp { host_port } => {
                    let s = tokio::net::TcpStream::connect(host_port.as_str()).await?;
                    s.set_nodelay(true)?;
                    Ok(Stream::Tcp(s))
                }
            }
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| self.unreachable("connecting timed out"))?
            .map_err(|e| self.unreachable(e))?;
        let exchange = async {
            let (mut sender, connection) = match stream {
                Stream::Unix(s) => http1()
                    .handshake(hyper_util::rt::TokioIo::new(s))
                    .await
                    .map(|(tx, c)| (tx, Driver::Unix(c))),
                Stream::Tcp(s) => http1()
                    .handshake(hyper_util::rt::TokioIo::new(s))
                    .await
                    .map(|(tx, c)| (tx, Driver::Tcp(c))),
            }
            .map_err(|e| self.unreachable(e))?;
            // The connection is driven here, beside the request, not by another task: the
            // answer is read without a hop between threads.
            let driver = async move {
                let _ = match connection {
                    Driver::Unix(c) => c.await,
                    Driver::Tcp(c) => c.await,
                };
                std::future::pending::<()>().await;
            };
            let answer = async {
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                let status = response.status().as_u16();
                let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(
                    response.into_body(),
                    MAX_RESPONSE_BYTES,
                ))
                .await
                .map_err(|e| {
                    Error::Failed(format!(
                        "supervisord's answer could not be read (larger than {} MiB?): {e}",
                        MAX_RESPONSE_BYTES >> 20
                    ))
                })?
                .to_bytes();
                Ok((status, body))
            };
            tokio::select! {
                biased;
                answer = answer => answer,
                () = driver => Err(self.unreachable("the connection ended before an answer")),
            }
        };
        tokio::time::timeout(READ_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                self.unreachable(format!("no answer within {} s", READ_TIMEOUT.as_secs()))
            })?
    }

    /// Calls `method`; a fault comes back as the typed error of its code.
    pub async fn call(&self, method: &str, params: &[Value]) -> Result<Value, Error> {
        let body = xmlrpc::call(method, params).map_err(|e| match e {
            RpcError::Malformed(m) | RpcError::Fault { text: m, .. } => Error::Failed(m),
        })?;
        let started = std::time::Instant::now();
        let answer = self.post(body).await;
        tracing::debug!(
            method,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "supervisord call"
        );
        let (status, answer) = answer?;
        let body = String::from_utf8_lossy(&answer);
        match status {
            200 => {}
            401 => {
                return Err(Error::Unavailable(format!(
                    "supervisord at {} refused the credentials (set [supervisor] username and password)",
                    self.url
                )));
            }
            other => {
                return Err(Error::Failed(format!(
                    "supervisord answered {method} with HTTP {other}"
                )));
            }
        }
        xmlrpc::response(&body).map_err(|e| match e {
            RpcError::Fault { code, text } => fault(code, text),
            RpcError::Malformed(m) => Error::Failed(format!(
                "supervisord's answer to {method} is not XML-RPC: {m}"
            )),
        })
    }
}

impl Supervisord {
    /// `method(name, wait)` then `getProcessInfo(name)` in one `system.multicall` (supervisord
    /// runs them in order, the second once the first is done, waiting included). Its wait is
    /// polled like a waiting `startProcess`'s (every 50 ms).
    async fn act_and_inspect(
        &self,
        method: &str,
        name: &str,
        wait: bool,
    ) -> Result<Process, Error> {
        let call = |m: &str, params: Vec<Value>| {
            Value::Struct(vec![
                ("methodName".into(), Value::Str(m.into())),
                ("params".into(), Value::Array(params)),
            ])
        };
        let calls = Value::Array(vec![
            call(method, vec![Value::Str(name.into()), Value::Bool(wait)]),
            call("supervisor.getProcessInfo", vec![Value::Str(name.into())]),
        ]);
        let v = self.call("system.multicall", &[calls]).await?;
        let Value::Array(results) = v else {
            return Err(Error::Failed(
                "system.multicall did not answer a list".into(),
            ));
        };
        let mut results = results.into_iter().map(multicall_result);
        match (results.next(), results.next()) {
            (Some(first), Some(info)) => {
                first?;
                Ok(process(&info?))
            }
            _ => Err(Error::Failed(
                "system.multicall answered fewer results than calls".into(),
            )),
        }
    }
}

/// One result of a multicall: a fault struct, a value wrapped in a one-item list (the
/// multicall convention), or the bare value (supervisord's own).
fn multicall_result(v: Value) -> Result<Value, Error> {
    if let Some(code) = v.get("faultCode").and_then(Value::int) {
        return Err(fault(code, v.text_of("faultString")));
    }
    match v {
        Value::Array(mut items) if items.len() == 1 => Ok(items.remove(0)),
        other => Ok(other),
    }
}

/// A fault as the typed error of its code.
pub fn fault(code: i64, text: String) -> Error {
    use faults::*;
    match code {
        BAD_NAME => Error::NotFound(text),
        ALREADY_STARTED => Error::AlreadyStarted(text),
        NOT_RUNNING => Error::NotRunning(text),
        SPAWN_ERROR | ABNORMAL_TERMINATION | NO_FILE | NOT_EXECUTABLE => Error::SpawnError(text),
        _ => Error::Failed(text),
    }
}

fn state(code: i64) -> ProcessState {
    match code {
        0 => ProcessState::Stopped,
        10 => ProcessState::Starting,
        20 => ProcessState::Running,
        30 => ProcessState::Backoff,
        40 => ProcessState::Stopping,
        100 => ProcessState::Exited,
        200 => ProcessState::Fatal,
        _ => ProcessState::Unknown,
    }
}

fn process(v: &Value) -> Process {
    Process {
        name: v.text_of("name"),
        group: v.text_of("group"),
        state: state(v.int_of("state")),
        state_name: v.text_of("statename"),
        pid: v.int_of("pid"),
        exit_status: v.int_of("exitstatus"),
        description: v.text_of("description"),
        start: v.int_of("start"),
        stop: v.int_of("stop"),
        spawn_error: v.text_of("spawnerr"),
    }
}

fn results(v: &Value) -> Vec<ProcessResult> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|r| ProcessResult {
                name: r.text_of("name"),
                group: r.text_of("group"),
                status: i32::try_from(r.int_of("status")).unwrap_or(0),
                description: r.text_of("description"),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn names(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

#[async_trait]
impl SupervisorBackend for Supervisord {
    async fn process_info(&self, name: &str) -> Result<Process, Error> {
        let v = self
            .call("supervisor.getProcessInfo", &[Value::Str(name.into())])
            .await?;
        Ok(process(&v))
    }

    async fn all_process_info(&self) -> Result<Vec<Process>, Error> {
        match self.call("supervisor.getAllProcessInfo", &[]).await? {
            Value::Array(items) => Ok(items.iter().map(process).collect()),
            _ => Err(Error::Failed(
                "getAllProcessInfo did not answer a list".into(),
            )),
        }
    }

    async fn start_process(&self, name: &str, wait: bool) -> Result<Process, Error> {
        self.act_and_inspect("supervisor.startProcess", name, wait)
            .await
    }

    async fn stop_process(&self, name: &str, wait: bool) -> Result<(), Error> {
        // Not in a multicall: supervisord polls a waiting stopProcess continuously, but a
        // multicall only every 50 ms while its loop is awake, else once a second.
        self.call(
            "supervisor.stopProcess",
            &[Value::Str(name.into()), Value::Bool(wait)],
        )
        .await
        .map(drop)
    }

    async fn start_group(&self, group: &str, wait: bool) -> Result<Vec<ProcessResult>, Error> {
        let v = self
            .call(
                "supervisor.startProcessGroup",
                &[Value::Str(group.into()), Value::Bool(wait)],
            )
            .await?;
        Ok(results(&v))
    }

    async fn stop_group(&self, group: &str, wait: bool) -> Result<Vec<ProcessResult>, Error> {
        let v = self
            .call(
                "supervisor.stopProcessGroup",
                &[Value::Str(group.into()), Value::Bool(wait)],
            )
            .await?;
        Ok(results(&v))
    }

    async fn reload_config(&self) -> Result<ConfigChanges, Error> {
        // [[added, changed, removed]]
        let v = self.call("supervisor.reloadConfig", &[]).await?;
        let inner = match &v {
            Value::Array(outer) => outer.first(),
            _ => None,
        };
        let Some(Value::Array(lists)) = inner else {
            return Err(Error::Failed(
                "reloadConfig did not answer [[added, changed, removed]]".into(),
            ));
        };
        Ok(ConfigChanges {
            added: names(lists.first()),
            changed: names(lists.get(1)),
            removed: names(lists.get(2)),
        })
    }

    async fn add_group(&self, group: &str) -> Result<(), Error> {
        self.call("supervisor.addProcessGroup", &[Value::Str(group.into())])
            .await
            .map(drop)
    }

    async fn remove_group(&self, group: &str) -> Result<(), Error> {
        self.call("supervisor.removeProcessGroup", &[Value::Str(group.into())])
            .await
            .map(drop)
    }

    async fn tail_log(&self, name: &str, bytes: u32) -> Result<String, Error> {
        let v = self
            .call(
                "supervisor.tailProcessStdoutLog",
                &[
                    Value::Str(name.into()),
                    Value::Int(0),
                    Value::Int(i64::from(bytes)),
                ],
            )
            .await?;
        match v {
            Value::Array(items) => Ok(items
                .first()
                .and_then(Value::str)
                .unwrap_or_default()
                .to_owned()),
            _ => Err(Error::Failed(
                "tailProcessStdoutLog did not answer a list".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_faults() {
        assert!(Supervisord::new("unix:///tmp/s.sock", None, None).is_ok());
        let s = Supervisord::new("http://127.0.0.1:9001/RPC2", Some("u"), Some("p")).unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Tcp {
                host_port: "127.0.0.1:9001".into()
            }
        );
        assert_eq!(s.auth.as_deref(), Some("dTpw"));
        assert!(Supervisord::new("ftp://x", None, None).is_err());
        assert!(matches!(
            fault(10, "BAD_NAME: x".into()),
            Error::NotFound(_)
        ));
        assert!(matches!(fault(60, String::new()), Error::AlreadyStarted(_)));
        assert!(matches!(fault(70, String::new()), Error::NotRunning(_)));
        assert!(matches!(fault(50, String::new()), Error::SpawnError(_)));
        assert!(matches!(fault(92, String::new()), Error::Failed(_)));
    }

    #[test]
    fn multicall_results_unwrap_and_faults_are_typed() {
        let wrapped = Value::Array(vec![Value::Bool(true)]);
        assert_eq!(multicall_result(wrapped).unwrap(), Value::Bool(true));
        let bare = Value::Struct(vec![("name".into(), Value::Str("web".into()))]);
        assert_eq!(multicall_result(bare.clone()).unwrap(), bare);
        let f = Value::Struct(vec![
            ("faultCode".into(), Value::Int(60)),
            (
                "faultString".into(),
                Value::Str("ALREADY_STARTED: web".into()),
            ),
        ]);
        assert!(matches!(multicall_result(f), Err(Error::AlreadyStarted(m)) if m.contains("web")));
    }

    #[tokio::test]
    async fn a_missing_socket_is_unavailable() {
        let s = Supervisord::new("unix:///nonexistent/supervisor.sock", None, None).unwrap();
        let e = s.all_process_info().await.unwrap_err();
        assert!(
            matches!(&e, Error::Unavailable(m) if m.contains("cannot reach supervisord at unix:///nonexistent")),
            "{e:?}"
        );
    }
}
