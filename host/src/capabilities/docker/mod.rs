//! `docker`: compose containers, checked against `[plugins.<name>.grants.docker]`.
//!
//! Calls that name a container by id first inspect it, so the grant is checked against the
//! compose project and service the container really belongs to, not what the plugin claims.
//! Containers the plugin got from `list-containers` in the same request are known already.

pub mod context;
pub mod engine;

pub use engine::label;
#[cfg(test)]
pub(crate) mod fake;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;

use crate::bindings::docker::{
    BuildOptions, BuildOutput, Container, ExecOptions, ExecOutput, Host,
};
use crate::bindings::types::Error;

use super::Capabilities;

/// Where docker calls go once allowed.
#[async_trait]
pub trait DockerBackend: Send + Sync {
    /// Containers of a project (or one service), stopped ones included.
    async fn list_containers(
        &self,
        project: &str,
        service: Option<&str>,
    ) -> Result<Vec<Container>, Error>;
    /// Containers carrying label `key` (with `value` when given), in any project.
    async fn labelled(&self, key: &str, value: Option<&str>) -> Result<Vec<Container>, Error>;
    /// One container.
    async fn inspect(&self, id: &str) -> Result<Container, Error>;
    /// Starts a container.
    async fn start(&self, id: &str) -> Result<(), Error>;
    /// Stops a container.
    async fn stop(&self, id: &str, timeout_secs: Option<u32>) -> Result<(), Error>;
    /// Restarts a container.
    async fn restart(&self, id: &str, timeout_secs: Option<u32>) -> Result<(), Error>;
    /// Builds an image; `options.context` is absolute and normalised, inside `root`, the
    /// granted directory it is read through.
    async fn build(&self, root: PathBuf, options: BuildOptions) -> Result<BuildOutput, Error>;
    /// Runs a command in a container.
    async fn exec(&self, id: &str, options: ExecOptions) -> Result<ExecOutput, Error>;
}

/// A batch call: one per container id, made at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// `docker.start`.
    Start,
    /// `docker.stop`.
    Stop,
    /// `docker.restart`.
    Restart,
}

impl Batch {
    /// As WIT names it: `docker.start`.
    pub fn call(self) -> &'static str {
        match self {
            Self::Start => "docker.start",
            Self::Stop => "docker.stop",
            Self::Restart => "docker.restart",
        }
    }

    /// In an error: `docker start`.
    fn what(self) -> &'static str {
        match self {
            Self::Start => "docker start",
            Self::Stop => "docker stop",
            Self::Restart => "docker restart",
        }
    }

    /// The verb of a planned call.
    fn verb(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
        }
    }
}

/// Docker calls answered as the plugin made them (one batch call with its list of ids, the
/// options it gave, no inspect of the host's own), after the grant checks: what `plugin
/// test`'s plugin-level scripts list. The host's checks of an id the plugin did not list
/// still ask the backend's `inspect`.
#[async_trait]
pub trait PluginLevelDocker: Send + Sync {
    /// `inspect`, as the plugin called it.
    async fn inspect(&self, id: &str) -> Result<Container, Error>;
    /// `start`, `stop` or `restart` of the granted `ids`: one result per id, in order.
    async fn batch(
        &self,
        call: Batch,
        ids: &[String],
        timeout_secs: Option<u32>,
    ) -> Vec<Result<(), Error>>;
    /// `build`, with the options the plugin gave.
    async fn build(&self, options: &BuildOptions) -> Result<BuildOutput, Error>;
    /// `exec` in container `id`, with the options the plugin gave.
    async fn exec(&self, id: &str, options: &ExecOptions) -> Result<ExecOutput, Error>;
}

/// The backend of a manager with no Docker engine configured: every call is `unavailable`.
#[derive(Debug, Default)]
pub struct Unconfigured;

fn unconfigured<T>() -> Result<T, Error> {
    Err(Error::Unavailable(
        "no docker engine is configured for this manager".into(),
    ))
}

#[async_trait]
impl DockerBackend for Unconfigured {
    async fn list_containers(&self, _: &str, _: Option<&str>) -> Result<Vec<Container>, Error> {
        unconfigured()
    }
    async fn labelled(&self, _: &str, _: Option<&str>) -> Result<Vec<Container>, Error> {
        unconfigured()
    }
    async fn inspect(&self, _: &str) -> Result<Container, Error> {
        unconfigured()
    }
    async fn start(&self, _: &str) -> Result<(), Error> {
        unconfigured()
    }
    async fn stop(&self, _: &str, _: Option<u32>) -> Result<(), Error> {
        unconfigured()
    }
    async fn restart(&self, _: &str, _: Option<u32>) -> Result<(), Error> {
        unconfigured()
    }
    async fn build(&self, _: PathBuf, _: BuildOptions) -> Result<BuildOutput, Error> {
        unconfigured()
    }
    async fn exec(&self, _: &str, _: ExecOptions) -> Result<ExecOutput, Error> {
        unconfigured()
    }
}

/// The containers a request has seen, by id: their project, service (labels never change) and
/// name.
#[derive(Debug, Default)]
pub struct Seen(Mutex<HashMap<String, (String, String, String)>>);

impl Seen {
    fn get(&self, id: &str) -> Option<(String, String)> {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(id).map(|(p, s, _)| (p.clone(), s.clone())))
    }
    /// The container's name, as the engine reported it; its id when not seen.
    fn name(&self, id: &str) -> String {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(id).map(|(_, _, n)| n.clone()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id.get(..12).unwrap_or(id).to_owned())
    }
    fn add(&self, c: &Container) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(
                c.id.clone(),
                (c.project.clone(), c.service.clone(), c.name.clone()),
            );
        }
    }
}

/// What an exec keeps of the request's time, at least, to kill a command that runs out of it
/// (through the engine: two more API calls) and report the timeout before the request ends.
const EXEC_MARGIN: Duration = Duration::from_millis(100);
/// ... and at most (half the time left, between the two).
const EXEC_MARGIN_MAX: Duration = Duration::from_secs(1);

const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "ksh"];

impl Capabilities {
    /// Container `id` as the engine sees it now, once its real project and service are
    /// known to be granted.
    async fn inspect_granted(&self, id: &str) -> Result<Container, Error> {
        self.policy.docker_any().map_err(|d| self.denied(d))?;
        let docker = self.backends.docker.clone();
        let c = self.bounded("docker inspect", docker.inspect(id)).await?;
        self.granted(c)
    }

    /// `c`, once its project and service are known to be granted.
    fn granted(&self, c: Container) -> Result<Container, Error> {
        self.seen.add(&c);
        self.policy
            .docker_project(&c.project, Some(&c.service))
            .map_err(|d| self.denied(d))?;
        Ok(c)
    }

    /// The full id of container `id` once its project and service are known to be granted;
    /// a container seen in this request is not inspected again.
    async fn granted_id(&self, id: &str) -> Result<String, Error> {
        let Some((project, service)) = self.seen.get(id) else {
            return Ok(self.inspect_granted(id).await?.id);
        };
        self.policy.docker_any().map_err(|d| self.denied(d))?;
        self.policy
            .docker_project(&project, Some(&service))
            .map_err(|d| self.denied(d))?;
        Ok(id.to_owned())
    }

    /// Runs `call` on each granted container at once; one result per id, in order. At the
    /// plugin level the granted ids go as one call; the others are answered by their denial.
    async fn each(
        &self,
        call: Batch,
        ids: Vec<String>,
        timeout_secs: Option<u32>,
    ) -> Vec<Result<(), Error>> {
        let what = call.what();
        if self.effects.is_planning() {
            // A dry run: each granted container is planned, answered as a call that worked.
            return join_all(ids.into_iter().map(|id| async move {
                let full = self.granted_id(&id).await?;
                self.effects
                    .did(|| format!("{} {}", call.verb(), self.seen.name(&full)));
                Ok(())
            }))
            .await;
        }
        let Some(level) = self.backends.plugin_level.clone() else {
            return join_all(ids.into_iter().map(|id| async move {
                let full = self.granted_id(&id).await?;
                let d = self.backends.docker.clone();
                let r = match call {
                    Batch::Start => self.bounded(what, d.start(&full)).await,
                    Batch::Stop => self.bounded(what, d.stop(&full, timeout_secs)).await,
                    Batch::Restart => self.bounded(what, d.restart(&full, timeout_secs)).await,
                };
                self.effects.note(&r);
                r
            }))
            .await;
        };
        let checked = join_all(ids.iter().map(|id| self.granted_id(id))).await;
        let granted: Vec<String> = checked.iter().flatten().cloned().collect();
        let answers = if granted.is_empty() {
            Vec::new()
        } else {
            let n = granted.len();
            let batch = async { Ok(level.batch(call, &granted, timeout_secs).await) };
            match self.bounded(what, batch).await {
                Ok(a) if a.len() == n => a,
                Ok(a) => vec![
                    Err(Error::Failed(format!(
                        "{what} answered {} results for {n} containers",
                        a.len()
                    )));
                    n
                ],
                Err(e) => vec![Err(e); n],
            }
        };
        let mut answers = answers.into_iter();
        let results: Vec<Result<(), Error>> = checked
            .into_iter()
            .map(|c| c.and_then(|_| answers.next().unwrap_or(Ok(()))))
            .collect();
        results.iter().for_each(|r| self.effects.note(r));
        results
    }
}

impl Host for Capabilities {
    async fn list_containers(
        &mut self,
        project: String,
        service: Option<String>,
    ) -> wasmtime::Result<Result<Vec<Container>, Error>> {
        if let Err(d) = self.policy.docker_project(&project, service.as_deref()) {
            return Ok(Err(self.denied(d)));
        }
        let docker = self.backends.docker.clone();
        let listed = self
            .bounded(
                "docker list",
                docker.list_containers(&project, service.as_deref()),
            )
            .await;
        if let Ok(list) = &listed {
            list.iter().for_each(|c| self.seen.add(c));
        }
        Ok(listed)
    }

    async fn inspect(&mut self, id: String) -> wasmtime::Result<Result<Container, Error>> {
        let Some(level) = self.backends.plugin_level.clone() else {
            return Ok(self.inspect_granted(&id).await);
        };
        let r = async {
            self.policy.docker_any().map_err(|d| self.denied(d))?;
            let c = self.bounded("docker inspect", level.inspect(&id)).await?;
            self.granted(c)
        };
        Ok(r.await)
    }

    async fn start(&mut self, ids: Vec<String>) -> wasmtime::Result<Vec<Result<(), Error>>> {
        Ok(self.each(Batch::Start, ids, None).await)
    }

    async fn stop(
        &mut self,
        ids: Vec<String>,
        timeout_secs: Option<u32>,
    ) -> wasmtime::Result<Vec<Result<(), Error>>> {
        Ok(self.each(Batch::Stop, ids, timeout_secs).await)
    }

    async fn restart(
        &mut self,
        ids: Vec<String>,
        timeout_secs: Option<u32>,
    ) -> wasmtime::Result<Vec<Result<(), Error>>> {
        Ok(self.each(Batch::Restart, ids, timeout_secs).await)
    }

    async fn build(
        &mut self,
        mut options: BuildOptions,
    ) -> wasmtime::Result<Result<BuildOutput, Error>> {
        let check = self
            .policy
            .docker_project(&options.project, Some(&options.service))
            .and_then(|()| self.policy.docker_build_network(options.network.as_deref()))
            .and_then(|()| {
                self.policy
                    .docker_build(std::path::Path::new(&options.context))
            });
        let (root, context) = match check {
            Ok(found) => found,
            Err(d) => return Ok(Err(self.denied(d))),
        };
        if self.effects.is_planning() {
            self.effects.did(|| {
                let tags = if options.tags.is_empty() {
                    String::new()
                } else {
                    format!(" as {}", options.tags.join(", "))
                };
                format!(
                    "build the image of service {} of project {}{tags}",
                    options.service, options.project
                )
            });
            return Ok(Ok(BuildOutput {
                image_id: String::new(),
                log: "dry run: nothing was built".into(),
            }));
        }
        let r = if let Some(level) = self.backends.plugin_level.clone() {
            self.bounded("docker build", level.build(&options)).await
        } else {
            options.context = context.display().to_string();
            let docker = self.backends.docker.clone();
            self.bounded("docker build", docker.build(root, options))
                .await
        };
        self.effects.note(&r);
        Ok(r)
    }

    async fn exec(
        &mut self,
        id: String,
        mut options: ExecOptions,
    ) -> wasmtime::Result<Result<ExecOutput, Error>> {
        let r = async {
            let Some(program) = options.argv.first() else {
                return Err(Error::Failed("exec needs a command".into()));
            };
            let base = program.rsplit('/').next().unwrap_or(program);
            let shell = SHELLS.contains(&base);
            self.policy
                .docker_exec(&options.argv.join(" "), shell)
                .map_err(|d| self.denied(d))?;
            let full = self.granted_id(&id).await?;
            if self.effects.is_planning() {
                self.effects.did(|| {
                    format!(
                        "exec `{}` in {}",
                        options.argv.join(" "),
                        self.seen.name(&full)
                    )
                });
                return Ok(ExecOutput {
                    exit_code: 0,
                    stdout: String::new(),
                    stderr: String::new(),
                    truncated: false,
                });
            }
            if let Some(level) = self.backends.plugin_level.clone() {
                return self
                    .bounded("docker exec", level.exec(&full, &options))
                    .await;
            }
            // The command is killed by the engine backend before the request's deadline, so
            // the plugin learns that it timed out and the process does not outlive it.
            let left = self.deadline.saturating_duration_since(Instant::now());
            let left = left.saturating_sub((left / 2).clamp(EXEC_MARGIN, EXEC_MARGIN_MAX));
            let left = u32::try_from(left.as_millis()).unwrap_or(u32::MAX);
            options.timeout_ms = Some(options.timeout_ms.map_or(left, |t| t.min(left)));
            let docker = self.backends.docker.clone();
            self.bounded("docker exec", docker.exec(&full, options))
                .await
        };
        let r = r.await;
        self.effects.note(&r);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::fake::{FakeEngine, container};
    use super::*;
    use crate::capabilities::policy::{Capability, Policy};
    use crate::capabilities::{Backends, supervisor};
    use crate::config::{DockerGrant, Grants};

    /// Containers c1 and c2 of project `marvin`, service `web`.
    fn fake() -> Arc<FakeEngine> {
        Arc::new(FakeEngine::new(vec![
            container("c1", "marvin", "web"),
            container("c2", "marvin", "web"),
        ]))
    }

    fn caps(projects: &[&str], fake: Arc<FakeEngine>, deadline: Duration) -> Capabilities {
        let grants = Grants {
            docker: Some(DockerGrant {
                projects: projects.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Capabilities::new(
            Arc::new(Policy::new("p", [Capability::Docker], grants, &[])),
            "corr-1".into(),
            Backends {
                docker: fake,
                supervisor: Arc::new(supervisor::Unconfigured),
                plugin_level: None,
            },
            Instant::now() + deadline,
        )
    }

    #[tokio::test]
    async fn denied_calls_never_reach_the_backend() {
        let fake = fake();
        let mut c = caps(&[], fake.clone(), Duration::from_secs(5));
        let e = c
            .list_containers("marvin".into(), None)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&e, Error::PermissionDenied(m) if m.contains("docker.projects")),
            "{e}"
        );
        let r = c.stop(vec!["c1".into()], None).await.unwrap();
        assert!(matches!(&r[..], [Err(Error::PermissionDenied(_))]), "{r:?}");
        assert_eq!(fake.calls(), 0);
        let e = c
            .exec(
                "c1".into(),
                ExecOptions {
                    argv: vec!["ls".into()],
                    env: vec![],
                    working_dir: None,
                    user: None,
                    timeout_ms: None,
                },
            )
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            crate::bindings::error_text(&e).contains("docker-exec"),
            "{e}"
        );
        assert_eq!(fake.calls(), 0);
    }

    #[tokio::test]
    async fn id_calls_check_the_real_project() {
        let fake = fake();
        // The grant covers another project: inspect happens, the stop does not.
        let mut c = caps(&["other"], fake.clone(), Duration::from_secs(5));
        let r = c.stop(vec!["c1".into(), "c2".into()], None).await.unwrap();
        assert_eq!(r.len(), 2);
        let e = r[0].clone().unwrap_err();
        assert!(
            crate::bindings::error_text(&e).contains("docker project 'marvin' service 'web'"),
            "{e}"
        );
        assert_eq!(fake.calls(), 2);
        let mut c = caps(&["marvin"], fake.clone(), Duration::from_secs(5));
        let r = c.stop(vec!["c1".into()], None).await.unwrap();
        assert!(matches!(&r[..], [Ok(())]));
        assert_eq!(fake.calls(), 4);
        // A container listed in this request is known: no second inspect.
        c.list_containers("marvin".into(), None)
            .await
            .unwrap()
            .unwrap();
        let r = c.stop(vec!["c1".into()], None).await.unwrap();
        assert!(matches!(&r[..], [Ok(())]));
        assert_eq!(fake.calls(), 6);
    }

    #[tokio::test]
    async fn host_calls_end_at_the_deadline() {
        let fake = Arc::new(
            FakeEngine::new(vec![container("c1", "marvin", "web")])
                .with_start_delay(Duration::from_secs(60)),
        );
        let mut c = caps(&["marvin"], fake, Duration::from_millis(200));
        let t = Instant::now();
        let r = c.start(vec!["c1".into()]).await.unwrap();
        assert!(matches!(&r[..], [Err(Error::TimedOut(_))]), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
