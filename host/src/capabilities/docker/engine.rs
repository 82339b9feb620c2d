//! The Docker engine through bollard: the [`DockerBackend`] of a running manager.
//!
//! The connection is made on first use and again after a failure, so a manager started
//! before `dockerd` (or across a daemon restart) starts working once the daemon answers. The
//! API version is negotiated with the daemon at that point: Docker 20.10 speaks 1.41, Docker
//! 29 refuses anything below 1.44.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerInspectResponse, ContainerSummary};
use bollard::query_parameters::{
    BuildImageOptions, ListContainersOptions, RestartContainerOptions, StopContainerOptions,
    TagImageOptions,
};
use futures_util::StreamExt;

use super::DockerBackend;
use super::context;
use crate::bindings::docker::{
    BuildOptions, BuildOutput, Container, ContainerState, ExecOptions, ExecOutput,
};
use crate::bindings::types::Error;

/// Compose's labels.
pub mod label {
    /// The compose project.
    pub const PROJECT: &str = "com.docker.compose.project";
    /// The compose service.
    pub const SERVICE: &str = "com.docker.compose.service";
    /// `True` for `docker compose run` containers.
    pub const ONEOFF: &str = "com.docker.compose.oneoff";
    /// The replica number.
    pub const NUMBER: &str = "com.docker.compose.container-number";
    /// The entity id Core uses for a container (discovery).
    pub const ENTITY_ID: &str = "marvin.entity-id";
}

/// How much of each exec stream and of a build log is kept (the tail).
pub const OUTPUT_BOUND: usize = 64 << 10;

/// The Docker engine at an endpoint (`unix:///var/run/docker.sock`, `tcp://host:2375`).
pub struct Engine {
    endpoint: String,
    client: Mutex<Option<Docker>>,
}

impl Engine {
    /// An engine at `endpoint`; nothing is contacted until the first call.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            client: Mutex::new(None),
        }
    }

    /// The local engine's socket, when neither `[docker] endpoint` nor `DOCKER_HOST` names one.
    pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

    /// The endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A connected client with a negotiated API version.
    async fn client(&self) -> Result<Docker, Error> {
        if let Ok(guard) = self.client.lock()
            && let Some(c) = guard.as_ref()
        {
            return Ok(c.clone());
        }
        let docker = Docker::connect_with_host(&self.endpoint)
            .map_err(|e| self.unreachable(&e))?
            // Requests are bounded by each request's deadline, builds can take long.
            .with_timeout(Duration::from_secs(3600));
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if let Ok(mut guard) = self.client.lock() {
            *guard = Some(docker.clone());
        }
        Ok(docker)
    }

    fn unreachable(&self, e: &bollard::errors::Error) -> Error {
        Error::Unavailable(format!(
            "cannot reach the Docker engine at {}: {e}",
            self.endpoint
        ))
    }

    /// Maps a bollard error; a broken connection is forgotten so the next call reconnects.
    fn error(&self, what: &str, e: bollard::errors::Error) -> Error {
        use bollard::errors::Error as B;
        match e {
            B::DockerResponseServerError {
                status_code: 404,
                message,
            } => Error::NotFound(format!("{what}: {message}")),
            B::DockerResponseServerError {
                status_code,
                message,
            } => Error::Failed(format!("{what}: {message} (HTTP {status_code})")),
            B::RequestTimeoutError => {
                Error::TimedOut(format!("{what}: the Docker engine did not answer in time"))
            }
            B::DockerStreamError { error } => Error::Failed(format!("{what}: {error}")),
            other => {
                if let Ok(mut guard) = self.client.lock() {
                    *guard = None;
                }
                self.unreachable(&other)
            }
        }
    }

    async fn list(&self, filters: HashMap<String, Vec<String>>) -> Result<Vec<Container>, Error> {
        let docker = self.client().await?;
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error("docker list", e))?;
        let mut out: Vec<Container> = list.into_iter().map(from_summary).collect();
        out.sort_by(|a, b| (&a.service, a.number, &a.name).cmp(&(&b.service, b.number, &b.name)));
        Ok(out)
    }

    /// Kills a timed-out exec's command and what it started: through the engine (works for
    /// a remote engine too), else with a signal when the engine runs on this host. Says how,
    /// or `None` when neither could.
    async fn kill_exec(
        docker: &Docker,
        exec_id: &str,
        container: &str,
        marker: &str,
        user: Option<&str>,
    ) -> Option<&'static str> {
        if Self::kill_through_engine(docker, exec_id, container, marker, user).await {
            return Some("killed through the engine");
        }
        if Self::kill_on_this_host(docker, exec_id, container).await {
            return Some("killed on this host");
        }
        None
    }

    /// Whether the exec still runs, per the engine (`None`: cannot tell).
    async fn exec_running(docker: &Docker, exec_id: &str) -> Option<bool> {
        docker.inspect_exec(exec_id).await.ok()?.running
    }

    /// The engine has no call to kill an exec: a second exec in the same container (as the
    /// same user) kills every process whose environment carries the first one's marker (the
    /// command and its children, which inherit it). Needs `sh`, `grep` and `kill` in the
    /// image.
    async fn kill_through_engine(
        docker: &Docker,
        exec_id: &str,
        container: &str,
        marker: &str,
        user: Option<&str>,
    ) -> bool {
        const SCRIPT: &str = "for p in /proc/[0-9]*; do \
            grep -q \"$0\" \"$p/environ\" 2>/dev/null && kill -9 \"${p#/proc/}\" 2>/dev/null; \
            done; :";
        let create = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(vec![
                "sh".to_owned(),
                "-c".to_owned(),
                SCRIPT.to_owned(),
                format!("{EXEC_MARKER}={marker}"),
            ]),
            user: user.map(str::to_owned),
            ..Default::default()
        };
        let run = async {
            let killer = docker.create_exec(container, create).await.ok()?;
            if let StartExecResults::Attached { mut output, .. } =
                docker.start_exec(&killer.id, None).await.ok()?
            {
                while output.next().await.is_some() {}
            }
            let info = docker.inspect_exec(&killer.id).await.ok()?;
            (info.exit_code == Some(0)).then_some(())
        };
        if tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            return false;
        }
        for _ in 0..40 {
            if Self::exec_running(docker, exec_id).await == Some(false) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Kills a timed-out exec's process when it runs on this host inside `container`.
    async fn kill_on_this_host(docker: &Docker, exec_id: &str, container: &str) -> bool {
        let Ok(info) = docker.inspect_exec(exec_id).await else {
            return false;
        };
        if info.running != Some(true) {
            return true;
        }
        let Some(pid) = info.pid.and_then(|p| i32::try_from(p).ok()) else {
            return false;
        };
        // The pid is the engine's; it is ours only when this process shares its pid
        // namespace, which the process's cgroup naming the container proves.
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !cgroup.contains(container) {
            return false;
        }
        let Some(pid) = rustix::process::Pid::from_raw(pid) else {
            return false;
        };
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok()
    }
}

/// The variable marking an exec's processes, so that a deadline can find and kill them.
const EXEC_MARKER: &str = "MARVIN_EXEC";

/// Keeps the last `bound` bytes of a stream.
#[derive(Debug)]
pub(crate) struct Tail {
    buf: Vec<u8>,
    bound: usize,
    dropped: bool,
}

impl Tail {
    pub(crate) fn new(bound: usize) -> Self {
        Self {
            buf: Vec::new(),
            bound,
            dropped: false,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * self.bound {
            let cut = self.buf.len() - self.bound;
            self.buf.drain(..cut);
            self.dropped = true;
        }
    }

    /// The kept text (lossy UTF-8, starting at a character boundary) and whether any was dropped.
    pub(crate) fn finish(mut self) -> (String, bool) {
        if self.buf.len() > self.bound {
            let cut = self.buf.len() - self.bound;
            self.buf.drain(..cut);
            self.dropped = true;
        }
        let mut start = 0;
        if self.dropped {
            // Skip UTF-8 continuation bytes cut in half.
            while start < self.buf.len().min(3) && (self.buf[start] & 0xC0) == 0x80 {
                start += 1;
            }
        }
        (
            String::from_utf8_lossy(&self.buf[start..]).into_owned(),
            self.dropped,
        )
    }
}

fn labels_of(labels: Option<HashMap<String, String>>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = labels.unwrap_or_default().into_iter().collect();
    v.sort();
    v
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn container(
    id: String,
    name: String,
    image: String,
    state: ContainerState,
    labels: Vec<(String, String)>,
) -> Container {
    Container {
        project: label(&labels, label::PROJECT).into(),
        service: label(&labels, label::SERVICE).into(),
        number: label(&labels, label::NUMBER).parse().unwrap_or(0),
        oneoff: label(&labels, label::ONEOFF).eq_ignore_ascii_case("true"),
        id,
        name: name.trim_start_matches('/').into(),
        image,
        state,
        labels,
    }
}

/// A listed container. The list reports the status and, in its text, the exit code and
/// health; start and finish times come only with `inspect`.
fn from_summary(s: ContainerSummary) -> Container {
    let status = s.state.map(|st| st.to_string()).unwrap_or_default();
    let text = s.status.unwrap_or_default();
    // "Exited (137) 5 seconds ago", "Up 3 minutes (healthy)".
    let exit_code = text
        .strip_prefix("Exited (")
        .and_then(|r| r.split_once(')'))
        .and_then(|(code, _)| code.parse().ok())
        .unwrap_or(0);
    let health = ["healthy", "unhealthy", "health: starting"]
        .iter()
        .find(|h| text.contains(&format!("({h})")))
        .map(|h| h.trim_start_matches("health: ").to_owned());
    let state = ContainerState {
        running: status == "running",
        status,
        exit_code,
        health,
        started_at: String::new(),
        finished_at: String::new(),
    };
    let name = s
        .names
        .and_then(|n| n.into_iter().next())
        .unwrap_or_default();
    container(
        s.id.unwrap_or_default(),
        name,
        s.image.unwrap_or_default(),
        state,
        labels_of(s.labels),
    )
}

fn from_inspect(c: ContainerInspectResponse) -> Container {
    let st = c.state.unwrap_or_default();
    let state = ContainerState {
        status: st.status.map(|s| s.to_string()).unwrap_or_default(),
        running: st.running.unwrap_or(false),
        exit_code: st.exit_code.unwrap_or(0),
        health: st
            .health
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "none"),
        started_at: st.started_at.unwrap_or_default(),
        finished_at: st.finished_at.unwrap_or_default(),
    };
    let config = c.config.unwrap_or_default();
    container(
        c.id.unwrap_or_default(),
        c.name.unwrap_or_default(),
        config.image.unwrap_or_default(),
        state,
        labels_of(config.labels),
    )
}

#[async_trait]
impl DockerBackend for Engine {
    async fn list_containers(
        &self,
        project: &str,
        service: Option<&str>,
    ) -> Result<Vec<Container>, Error> {
        let mut labels = vec![format!("{}={project}", label::PROJECT)];
        if let Some(s) = service {
            labels.push(format!("{}={s}", label::SERVICE));
        }
        self.list(HashMap::from([("label".to_owned(), labels)]))
            .await
    }

    async fn labelled(&self, key: &str, value: Option<&str>) -> Result<Vec<Container>, Error> {
        let filter = match value {
            Some(v) => format!("{key}={v}"),
            None => key.to_owned(),
        };
        self.list(HashMap::from([("label".to_owned(), vec![filter])]))
            .await
    }

    async fn inspect(&self, id: &str) -> Result<Container, Error> {
        let docker = self.client().await?;
        docker
            .inspect_container(id, None)
            .await
            .map(from_inspect)
            .map_err(|e| self.error(&format!("container '{id}'"), e))
    }

    async fn start(&self, id: &str) -> Result<(), Error> {
        let docker = self.client().await?;
        docker
            .start_container(id, None)
            .await
            .map_err(|e| self.error(&format!("start container '{id}'"), e))
    }

    async fn stop(&self, id: &str, timeout_secs: Option<u32>) -> Result<(), Error> {
        let docker = self.client().await?;
        let options = StopContainerOptions {
            t: timeout_secs.and_then(|t| i32::try_from(t).ok()),
            signal: None,
        };
        docker
            .stop_container(id, Some(options))
            .await
            .map_err(|e| self.error(&format!("stop container '{id}'"), e))
    }

    async fn restart(&self, id: &str, timeout_secs: Option<u32>) -> Result<(), Error> {
        let docker = self.client().await?;
        let options = RestartContainerOptions {
            t: timeout_secs.and_then(|t| i32::try_from(t).ok()),
            signal: None,
        };
        docker
            .restart_container(id, Some(options))
            .await
            .map_err(|e| self.error(&format!("restart container '{id}'"), e))
    }

    async fn build(&self, root: PathBuf, options: BuildOptions) -> Result<BuildOutput, Error> {
        let docker = self.client().await?;
        let dockerfile = options
            .dockerfile
            .clone()
            .unwrap_or_else(|| "Dockerfile".into());
        let context = PathBuf::from(&options.context);
        let tar = {
            let dockerfile = dockerfile.clone();
            tokio::task::spawn_blocking(move || context::tar(&root, &context, &dockerfile))
                .await
                .map_err(|e| Error::Failed(format!("build context: {e}")))??
        };
        let build = BuildImageOptions {
            dockerfile,
            t: options.tags.first().cloned(),
            buildargs: Some(options.args.iter().cloned().collect()),
            target: options.target.clone().unwrap_or_default(),
            labels: (!options.labels.is_empty()).then(|| options.labels.iter().cloned().collect()),
            extrahosts: (!options.extra_hosts.is_empty()).then(|| options.extra_hosts.join(",")),
            networkmode: options.network.clone(),
            shmsize: options
                .shm_size
                .map(|n| {
                    i32::try_from(n).map_err(|_| {
                        Error::Failed(format!("shm_size {n} is larger than the engine takes"))
                    })
                })
                .transpose()?,
            cachefrom: (!options.cache_from.is_empty()).then(|| options.cache_from.clone()),
            nocache: options.no_cache,
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        let mut log = Tail::new(OUTPUT_BOUND);
        let mut image_id = None;
        let mut stream = docker.build_image(build, None, Some(bollard::body_full(tar.into())));
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(e) => {
                    let e = self.error("docker build", e);
                    let (log, _) = log.finish();
                    return Err(with_log(e, &log));
                }
            };
            if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                log.push(text.as_bytes());
            }
            if let Some(detail) = info.error_detail {
                let (log, _) = log.finish();
                let message = detail.message.unwrap_or_default();
                return Err(Error::Failed(format!(
                    "docker build: {}\n{}",
                    message.trim_end(),
                    tail_lines(&log, 20)
                )));
            }
            if let Some(id) = info.aux.and_then(|a| a.id) {
                image_id = Some(id);
            }
        }
        let (log, _) = log.finish();
        let image_id = match image_id {
            Some(id) => id,
            None => match options.tags.first() {
                Some(tag) => docker
                    .inspect_image(tag)
                    .await
                    .map_err(|e| self.error("docker build", e))?
                    .id
                    .unwrap_or_default(),
                None => String::new(),
            },
        };
        for tag in options.tags.iter().skip(1) {
            let (repo, tag) = split_tag(tag);
            docker
                .tag_image(
                    &image_id,
                    Some(TagImageOptions {
                        repo: Some(repo.into()),
                        tag: Some(tag.into()),
                    }),
                )
                .await
                .map_err(|e| self.error("docker tag", e))?;
        }
        Ok(BuildOutput { image_id, log })
    }

    async fn exec(&self, id: &str, options: ExecOptions) -> Result<ExecOutput, Error> {
        let docker = self.client().await?;
        let marker = uuid::Uuid::new_v4().simple().to_string();
        let env: Vec<String> = options
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain([format!("{EXEC_MARKER}={marker}")])
            .collect();
        let create = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(options.argv.clone()),
            env: Some(env),
            working_dir: options.working_dir.clone(),
            user: options.user.clone(),
            ..Default::default()
        };
        let what = format!("exec in container '{id}'");
        let exec = docker
            .create_exec(id, create)
            .await
            .map_err(|e| self.error(&what, e))?;
        let started = docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| self.error(&what, e))?;
        let StartExecResults::Attached { mut output, .. } = started else {
            return Err(Error::Failed(format!("{what}: the engine detached it")));
        };
        let (mut stdout, mut stderr) = (Tail::new(OUTPUT_BOUND), Tail::new(OUTPUT_BOUND));
        let limit = options
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(Duration::MAX);
        let read = async {
            while let Some(item) = output.next().await {
                match item.map_err(|e| self.error(&what, e))? {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        stdout.push(&message)
                    }
                    LogOutput::StdErr { message } => stderr.push(&message),
                    LogOutput::StdIn { .. } => {}
                }
            }
            Ok::<(), Error>(())
        };
        match tokio::time::timeout(limit, read).await {
            Ok(r) => r?,
            Err(_) => {
                // Detached: the kill goes on even when the request's deadline drops this call.
                let kill = {
                    let (docker, exec_id, container) =
                        (docker.clone(), exec.id.clone(), id.to_owned());
                    let user = options.user.clone();
                    tokio::spawn(async move {
                        Self::kill_exec(&docker, &exec_id, &container, &marker, user.as_deref())
                            .await
                    })
                };
                let killed = kill.await.ok().flatten();
                let (tail, _) = stderr.finish();
                let fate = killed.map_or(
                    "it could not be killed (the image has no sh, grep and kill, and the \
                     engine is not on this host) and may still be running",
                    |how| how,
                );
                return Err(Error::TimedOut(format!(
                    "'{}' ran longer than {} ms; {fate}{}",
                    options.argv.join(" "),
                    limit.as_millis(),
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("\n{}", tail_lines(&tail, 10))
                    }
                )));
            }
        }
        let info = docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| self.error(&what, e))?;
        let (stdout, t1) = stdout.finish();
        let (stderr, t2) = stderr.finish();
        Ok(ExecOutput {
            exit_code: info.exit_code.unwrap_or(-1),
            stdout,
            stderr,
            truncated: t1 || t2,
        })
    }
}

fn with_log(e: Error, log: &str) -> Error {
    match e {
        Error::Failed(m) if !log.is_empty() => {
            Error::Failed(format!("{m}\n{}", tail_lines(log, 20)))
        }
        other => other,
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail_lines(text: &str, n: usize) -> &str {
    let text = text.trim_end();
    let mut start = text.len();
    for _ in 0..n {
        match text[..start].rfind('\n') {
            Some(i) => start = i,
            None => return text,
        }
    }
    &text[start + 1..]
}

/// `repo:tag` -> (repo, tag); a `:` inside a registry's host:port is not a tag.
fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        let mut t = Tail::new(4);
        t.push("ab".as_bytes());
        t.push("cdé".as_bytes()); // é is two bytes
        assert_eq!(t.finish(), ("cdé".into(), true));
        let mut t = Tail::new(2);
        t.push("xé".as_bytes());
        assert_eq!(t.finish(), ("é".into(), true));
        let mut t = Tail::new(1);
        t.push("é".as_bytes()); // the kept byte is half a character: dropped
        assert_eq!(t.finish(), (String::new(), true));
        let mut t = Tail::new(10);
        t.push(b"hello");
        assert_eq!(t.finish(), ("hello".into(), false));
    }

    #[test]
    fn tail_lines_and_tags() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 2), "a");
        assert_eq!(split_tag("marvin_web"), ("marvin_web", "latest"));
        assert_eq!(split_tag("reg:5000/web:1.2"), ("reg:5000/web", "1.2"));
        assert_eq!(split_tag("reg:5000/web"), ("reg:5000/web", "latest"));
    }

    #[test]
    fn listed_state_comes_from_the_status_text() {
        let c = from_summary(ContainerSummary {
            id: Some("abc".into()),
            names: Some(vec!["/p_web_1".into()]),
            state: Some(bollard::models::ContainerSummaryStateEnum::EXITED),
            status: Some("Exited (137) 5 seconds ago".into()),
            labels: Some(HashMap::from([
                (label::PROJECT.into(), "p".into()),
                (label::SERVICE.into(), "web".into()),
                (label::NUMBER.into(), "2".into()),
                (label::ONEOFF.into(), "False".into()),
            ])),
            ..Default::default()
        });
        assert_eq!(
            (c.name.as_str(), c.project.as_str(), c.service.as_str()),
            ("p_web_1", "p", "web")
        );
        assert_eq!((c.number, c.oneoff), (2, false));
        assert_eq!(
            (c.state.status.as_str(), c.state.exit_code),
            ("exited", 137)
        );
        let c = from_summary(ContainerSummary {
            state: Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            status: Some("Up 3 minutes (healthy)".into()),
            ..Default::default()
        });
        assert!(c.state.running);
        assert_eq!(c.state.health.as_deref(), Some("healthy"));
    }
}
