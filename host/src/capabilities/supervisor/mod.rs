//! `supervisor`: supervisord's processes, checked against `[plugins.<name>.grants.supervisor]`.

pub mod rpc;
pub mod xmlrpc;

use async_trait::async_trait;

use crate::bindings::supervisor::{ConfigChanges, Host, Process, ProcessResult, ProcessState};
use crate::bindings::types::Error;

use super::Capabilities;

/// Where supervisor calls go once allowed.
#[async_trait]
pub trait SupervisorBackend: Send + Sync {
    /// `getProcess`.
    async fn process_info(&self, name: &str) -> Result<Process, Error>;
    /// `getAllProcess`.
    async fn all_process_info(&self) -> Result<Vec<Process>, Error>;
    /// `startProcess`, then `getProcessInfo`.
    async fn start_process(&self, name: &str, wait: bool) -> Result<Process, Error>;
    /// `stopProcess`.
    async fn stop_process(&self, name: &str, wait: bool) -> Result<(), Error>;
    /// `startProcessGroup`.
    async fn start_group(&self, group: &str, wait: bool) -> Result<Vec<ProcessResult>, Error>;
    /// `stopProcessGroup`.
    async fn stop_group(&self, group: &str, wait: bool) -> Result<Vec<ProcessResult>, Error>;
    /// `reloadConfig`.
    async fn reload_config(&self) -> Result<ConfigChanges, Error>;
    /// `addProcessGroup`.
    async fn add_group(&self, group: &str) -> Result<(), Error>;
    /// `removeProcessGroup`.
    async fn remove_group(&self, group: &str) -> Result<(), Error>;
    /// `tailProcessStdoutLog`.
    async fn tail_log(&self, name: &str, bytes: u32) -> Result<String, Error>;
}

/// The backend of a manager with no supervisord configured: every call is `unavailable`.
#[derive(Debug, Default)]
pub struct Unconfigured;

fn unconfigured<T>() -> Result<T, Error> {
    Err(Error::Unavailable(
        "no supervisord is configured for this manager".into(),
    ))
}

#[async_trait]
impl SupervisorBackend for Unconfigured {
    async fn process_info(&self, _: &str) -> Result<Process, Error> {
        unconfigured()
    }
    async fn all_process_info(&self) -> Result<Vec<Process>, Error> {
        unconfigured()
    }
    async fn start_process(&self, _: &str, _: bool) -> Result<Process, Error> {
        unconfigured()
    }
    async fn stop_process(&self, _: &str, _: bool) -> Result<(), Error> {
        unconfigured()
    }
    async fn start_group(&self, _: &str, _: bool) -> Result<Vec<ProcessResult>, Error> {
        unconfigured()
    }
    async fn stop_group(&self, _: &str, _: bool) -> Result<Vec<ProcessResult>, Error> {
        unconfigured()
    }
    async fn reload_config(&self) -> Result<ConfigChanges, Error> {
        unconfigured()
    }
    async fn add_group(&self, _: &str) -> Result<(), Error> {
        unconfigured()
    }
    async fn remove_group(&self, _: &str) -> Result<(), Error> {
        unconfigured()
    }
    async fn tail_log(&self, _: &str, _: u32) -> Result<String, Error> {
        unconfigured()
    }
}

/// `p` as a start that worked leaves it.
fn running(mut p: Process) -> Process {
    p.state = ProcessState::Running;
    p.state_name = "RUNNING".into();
    p
}

/// supervisord's fault code for a call that worked.
const SUCCESS: i32 = 80;

impl Capabilities {
    /// A dry run of a group call: the group's processes, each answered as the call would
    /// answer when it works.
    async fn plan_group(&self, group: &str, verb: &str) -> Result<Vec<ProcessResult>, Error> {
        self.program(group)?;
        let b = self.backends.supervisor.clone();
        let all = self
            .bounded("supervisor process info", b.all_process_info())
            .await?;
        let members: Vec<ProcessResult> = all
            .into_iter()
            .filter(|p| p.group == group)
            .map(|p| ProcessResult {
                name: p.name,
                group: p.group,
                status: SUCCESS,
                description: "OK".into(),
            })
            .collect();
        if members.is_empty() {
            return Err(Error::NotFound(format!("no process group '{group}'")));
        }
        self.effects.did(|| format!("{verb} {group}"));
        Ok(members)
    }

    /// A dry run of a call on one process: planned once the process is known to exist (and
    /// granted), answered with it as it is now.
    async fn plan_process(&self, name: &str, verb: &str) -> Result<Process, Error> {
        let p = self
            .on_program(name, "supervisor process info", move |b| async move {
                b.process_info(name).await
            })
            .await?;
        self.effects.did(|| format!("{verb} {name}"));
        Ok(p)
    }

    /// A group call changed something when one of its processes' calls worked.
    fn note_group(&self, r: &Result<Vec<ProcessResult>, Error>) {
        self.effects.changed_if(
            r.as_ref()
                .is_ok_and(|results| results.iter().any(|p| p.status == SUCCESS)),
        );
    }

    fn program(&self, name: &str) -> Result<(), Error> {
        self.policy
            .supervisor_program(name)
            .map_err(|d| self.denied(d))
    }

    fn config(&self) -> Result<(), Error> {
        self.policy.supervisor_config().map_err(|d| self.denied(d))
    }

    /// Checks that `name` is granted, then runs `call` on supervisord within the deadline.
    async fn on_program<T, Fut>(
        &self,
        name: &str,
        what: &str,
        call: impl FnOnce(std::sync::Arc<dyn SupervisorBackend>) -> Fut,
    ) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        self.program(name)?;
        self.bounded(what, call(self.backends.supervisor.clone()))
            .await
    }
}

impl Host for Capabilities {
    async fn process_info(&mut self, name: String) -> wasmtime::Result<Result<Process, Error>> {
        let n = &name;
        Ok(self
            .on_program(n, "supervisor process info", move |b| async move {
                b.process_info(n).await
            })
            .await)
    }

    async fn all_process_info(&mut self) -> wasmtime::Result<Result<Vec<Process>, Error>> {
        let r = async {
            self.policy.supervisor_any().map_err(|d| self.denied(d))?;
            let b = self.backends.supervisor.clone();
            let all = self
                .bounded("supervisor process info", b.all_process_info())
                .await?;
            // Only what the plugin may see: ungranted programs are left out, not denied.
            Ok(all
                .into_iter()
                .filter(|p| {
                    let full = format!("{}:{}", p.group, p.name);
                    self.policy.supervisor_program(&full).is_ok()
                        || self.policy.supervisor_program(&p.name).is_ok()
                })
                .collect())
        };
        Ok(r.await)
    }

    async fn start_process(
        &mut self,
        name: String,
        wait: bool,
    ) -> wasmtime::Result<Result<Process, Error>> {
        let n = &name;
        if self.effects.is_planning() {
            // Answered as a start that worked: the process as it is, running.
            return Ok(self.plan_process(n, "start").await.map(running));
        }
        let r = self
            .on_program(n, "supervisor start", move |b| async move {
                b.start_process(n, wait).await
            })
            .await;
        self.effects.note(&r);
        Ok(r)
    }

    async fn stop_process(
        &mut self,
        name: String,
        wait: bool,
    ) -> wasmtime::Result<Result<(), Error>> {
        let n = &name;
        if self.effects.is_planning() {
            return Ok(self.plan_process(n, "stop").await.map(|_| ()));
        }
        let r = self
            .on_program(n, "supervisor stop", move |b| async move {
                b.stop_process(n, wait).await
            })
            .await;
        self.effects.note(&r);
        Ok(r)
    }

    async fn start_group(
        &mut self,
        group: String,
        wait: bool,
    ) -> wasmtime::Result<Result<Vec<ProcessResult>, Error>> {
        let n = &group;
        if self.effects.is_planning() {
            return Ok(self.plan_group(n, "start group").await);
        }
        let r = self
            .on_program(n, "supervisor start group", move |b| async move {
                b.start_group(n, wait).await
            })
            .await;
        self.note_group(&r);
        Ok(r)
    }

    async fn stop_group(
        &mut self,
        group: String,
        wait: bool,
    ) -> wasmtime::Result<Result<Vec<ProcessResult>, Error>> {
        let n = &group;
        if self.effects.is_planning() {
            return Ok(self.plan_group(n, "stop group").await);
        }
        let r = self
            .on_program(n, "supervisor stop group", move |b| async move {
                b.stop_group(n, wait).await
            })
            .await;
        self.note_group(&r);
        Ok(r)
    }

    async fn reload_config(&mut self) -> wasmtime::Result<Result<ConfigChanges, Error>> {
        let r = async {
            self.config()?;
            let b = self.backends.supervisor.clone();
            let changes = self
                .bounded("supervisor reload config", b.reload_config())
                .await?;
            // Only the groups the plugin may see.
            let keep = |names: Vec<String>| -> Vec<String> {
                names
                    .into_iter()
                    .filter(|g| self.policy.supervisor_program(g).is_ok())
                    .collect()
            };
            Ok(ConfigChanges {
                added: keep(changes.added),
                changed: keep(changes.changed),
                removed: keep(changes.removed),
            })
        };
        Ok(r.await)
    }

    async fn add_group(&mut self, group: String) -> wasmtime::Result<Result<(), Error>> {
        let n = &group;
        let r = async {
            self.config()?;
            if self.effects.is_planning() {
                self.program(n)?;
                self.effects.did(|| format!("add group {n}"));
                return Ok(());
            }
            self.on_program(n, "supervisor add group", move |b| async move {
                b.add_group(n).await
            })
            .await
        };
        let r = r.await;
        self.effects.note(&r);
        Ok(r)
    }

    async fn remove_group(&mut self, group: String) -> wasmtime::Result<Result<(), Error>> {
        let n = &group;
        let r = async {
            self.config()?;
            if self.effects.is_planning() {
                self.program(n)?;
                self.effects.did(|| format!("remove group {n}"));
                return Ok(());
            }
            self.on_program(n, "supervisor remove group", move |b| async move {
                b.remove_group(n).await
            })
            .await
        };
        let r = r.await;
        self.effects.note(&r);
        Ok(r)
    }

    async fn tail_log(
        &mut self,
        name: String,
        bytes: u32,
    ) -> wasmtime::Result<Result<String, Error>> {
        let n = &name;
        Ok(self
            .on_program(n, "supervisor tail log", move |b| async move {
                b.tail_log(n, bytes.min(1 << 20)).await
            })
            .await)
    }
}
