//! An engine in memory for unit tests (the docker capability's and discovery's): a list of
//! containers, or an engine that is down; every call counted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::bindings::docker::{
    BuildOptions, BuildOutput, Container, ContainerState, ExecOptions, ExecOutput,
};
use crate::bindings::types::Error;

use super::DockerBackend;

#[derive(Default)]
pub(crate) struct FakeEngine {
    containers: Vec<Container>,
    down: bool,
    start_delay: Duration,
    calls: AtomicU32,
}

/// A running replica 1 of `project`/`service`, without labels.
pub(crate) fn container(id: &str, project: &str, service: &str) -> Container {
    Container {
        id: id.into(),
        name: format!("{project}-{service}-1"),
        image: "busybox".into(),
        project: project.into(),
        service: service.into(),
        number: 1,
        oneoff: false,
        state: ContainerState {
            status: "running".into(),
            running: true,
            exit_code: 0,
            health: None,
            started_at: String::new(),
            finished_at: String::new(),
        },
        labels: vec![],
    }
}

impl FakeEngine {
    pub(crate) fn new(containers: Vec<Container>) -> Self {
        Self {
            containers,
            ..Self::default()
        }
    }

    /// Every call answers `unavailable`.
    pub(crate) fn down() -> Self {
        Self {
            down: true,
            ..Self::default()
        }
    }

    /// `start` takes `delay` (an engine that hangs).
    pub(crate) fn with_start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }

    /// The calls received so far.
    pub(crate) fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn call(&self) -> Result<(), Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down {
            return Err(Error::Unavailable("engine down".into()));
        }
        Ok(())
    }

    fn find(&self, id: &str) -> Result<Container, Error> {
        self.call()?;
        self.containers
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no such container: {id}")))
    }
}

#[async_trait]
impl DockerBackend for FakeEngine {
    async fn list_containers(
        &self,
        project: &str,
        service: Option<&str>,
    ) -> Result<Vec<Container>, Error> {
        self.call()?;
        Ok(self
            .containers
            .iter()
            .filter(|c| c.project == project && service.is_none_or(|s| s == c.service))
            .cloned()
            .collect())
    }
    async fn labelled(&self, key: &str, value: Option<&str>) -> Result<Vec<Container>, Error> {
        self.call()?;
        Ok(self
            .containers
            .iter()
            .filter(|c| {
                c.labels
                    .iter()
                    .any(|(k, v)| k == key && value.is_none_or(|x| x == v))
            })
            .cloned()
            .collect())
    }
    async fn inspect(&self, id: &str) -> Result<Container, Error> {
        self.find(id)
    }
    async fn start(&self, id: &str) -> Result<(), Error> {
        self.find(id)?;
        tokio::time::sleep(self.start_delay).await;
        Ok(())
    }
    async fn stop(&self, id: &str, _: Option<u32>) -> Result<(), Error> {
        self.find(id).map(drop)
    }
    async fn restart(&self, id: &str, _: Option<u32>) -> Result<(), Error> {
        self.find(id).map(drop)
    }
    async fn build(&self, _: PathBuf, _: BuildOptions) -> Result<BuildOutput, Error> {
        self.call()?;
        Err(Error::Failed("the fake engine builds nothing".into()))
    }
    async fn exec(&self, id: &str, _: ExecOptions) -> Result<ExecOutput, Error> {
        self.find(id)?;
        Err(Error::Failed("the fake engine runs nothing".into()))
    }
}
