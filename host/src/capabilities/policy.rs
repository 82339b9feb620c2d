//! Grant checks: what a plugin may reach, decided before any call reaches Docker, supervisord
//! or the file system.
//!
//! The threat: a plugin is third-party code dropped into a directory. It may be buggy or
//! hostile, and it runs with the manager's Docker socket and supervisord within reach. So a
//! plugin gets the intersection of what it asked for in `describe()` and what the operator
//! wrote in `[plugins.<name>.grants]`, nothing by default, and every denial says which grant
//! is missing so the operator can decide knowingly.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::config::Grants;

/// A capability, as a plugin asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// Compose containers of granted projects.
    Docker,
    /// Commands inside containers.
    DockerExec,
    /// Image builds from granted directories.
    DockerBuild,
    /// Granted supervisor programs.
    Supervisor,
    /// supervisord's configuration (reread, update).
    SupervisorConfig,
    /// Read-only directories.
    Files,
}

impl Capability {
    /// The name used in `describe()`, listings and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::DockerExec => "docker-exec",
            Self::DockerBuild => "docker-build",
            Self::Supervisor => "supervisor",
            Self::SupervisorConfig => "supervisor-config",
            Self::Files => "files",
        }
    }

    /// The key in `[plugins.<name>.grants]` that grants it.
    pub fn grant_key(self) -> &'static str {
        match self {
            Self::Docker => "docker.projects",
            Self::DockerExec => "docker.exec",
            Self::DockerBuild => "docker.build_dirs",
            Self::Supervisor => "supervisor.programs",
            Self::SupervisorConfig => "supervisor.config",
            Self::Files => "files",
        }
    }
}

/// The effective grants of one plugin.
#[derive(Debug, Clone)]
pub struct Policy {
    plugin: String,
    requested: BTreeSet<Capability>,
    grants: Grants,
    /// The environment the plugin sees, resolved once: the manager's own does not change.
    environment: Vec<(String, String)>,
}

/// A refused call; the text names the grant to add.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission denied: {0}")]
pub struct Denied(pub String);

impl Policy {
    /// `requested` ∩ `grants`. `own` is the manager's environment (read by the CLI), from
    /// which `grants.env` picks what the plugin sees.
    pub fn new(
        plugin: &str,
        requested: impl IntoIterator<Item = Capability>,
        grants: Grants,
        own: &[(String, String)],
    ) -> Self {
        let environment = environment(&grants.env, own.iter().cloned());
        Self {
            plugin: plugin.to_owned(),
            requested: requested.into_iter().collect(),
            grants,
            environment,
        }
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// What the plugin asked for.
    pub fn requested(&self) -> &BTreeSet<Capability> {
        &self.requested
    }

    /// What the operator granted (before intersecting with what the plugin asked for).
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// What the operator granted for `cap`, for listings; `None` when nothing.
    pub fn granted(&self, cap: Capability) -> Option<String> {
        let list = |v: &[String]| (!v.is_empty()).then(|| v.join(", "));
        let paths = |v: &[PathBuf]| {
            (!v.is_empty()).then(|| {
                v.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        };
        let docker = self.grants.docker.as_ref();
        let supervisor = self.grants.supervisor.as_ref();
        match cap {
            Capability::Docker => docker.and_then(|d| list(&d.projects)),
            Capability::DockerExec => docker.and_then(|d| {
                list(&d.exec).map(|e| {
                    if d.exec_shell {
                        format!("{e} (shell allowed)")
                    } else {
                        e
                    }
                })
            }),
            Capability::DockerBuild => docker.and_then(|d| paths(&d.build_dirs)),
            Capability::Supervisor => supervisor.and_then(|s| list(&s.programs)),
            Capability::SupervisorConfig => supervisor.filter(|s| s.config).map(|_| "yes".into()),
            Capability::Files => paths(&self.grants.files),
        }
    }

    /// Whether `cap` is both asked for and granted.
    pub fn effective(&self, cap: Capability) -> bool {
        self.requested.contains(&cap) && self.granted(cap).is_some()
    }

    fn requested_or_deny(&self, cap: Capability) -> Result<(), Denied> {
        if self.requested.contains(&cap) {
            Ok(())
        } else {
            Err(Denied(format!(
                "plugin '{}' did not ask for the {} capability in describe()",
                self.plugin,
                cap.name()
            )))
        }
    }

    fn deny(&self, cap: Capability, what: &str) -> Denied {
        Denied(format!(
            "plugin '{}' has no grant for {what}: add it to {}",
            self.plugin,
            grant_place(&self.plugin, cap)
        ))
    }

    /// May the plugin use Docker at all (before a call that names a container id).
    pub fn docker_any(&self) -> Result<(), Denied> {
        self.requested_or_deny(Capability::Docker)?;
        match self.grants.docker.as_ref() {
            Some(d) if !d.projects.is_empty() => Ok(()),
            _ => Err(self.deny(Capability::Docker, "any docker project")),
        }
    }

    /// May the plugin see and act on `project` (or one of its services).
    pub fn docker_project(&self, project: &str, service: Option<&str>) -> Result<(), Denied> {
        self.requested_or_deny(Capability::Docker)?;
        let patterns = self
            .grants
            .docker
            .as_ref()
            .map(|d| d.projects.as_slice())
            .unwrap_or(&[]);
        let allowed = patterns.iter().any(|p| match p.split_once('/') {
            None => glob(p, project),
            Some((pp, ps)) => glob(pp, project) && service.is_some_and(|s| glob(ps, s)),
        });
        if allowed {
            return Ok(());
        }
        let what = match service {
            Some(s) => format!("docker project '{project}' service '{s}'"),
            None => format!("docker project '{project}'"),
        };
        Err(self.deny(Capability::Docker, &what))
    }

    /// May the plugin run `command_line` in a container; `shell`: through `sh -c`.
    pub fn docker_exec(&self, command_line: &str, shell: bool) -> Result<(), Denied> {
        self.requested_or_deny(Capability::DockerExec)?;
        let Some(d) = self.grants.docker.as_ref() else {
            return Err(self.deny(Capability::DockerExec, &format!("command '{command_line}'")));
        };
        if shell && !d.exec_shell {
            return Err(Denied(format!(
                "plugin '{}' may not exec through a shell: set `exec_shell = true` in [plugins.{}.grants.docker]",
                self.plugin, self.plugin
            )));
        }
        if d.exec.iter().any(|p| glob(p, command_line)) {
            Ok(())
        } else {
            Err(self.deny(Capability::DockerExec, &format!("command '{command_line}'")))
        }
    }

    /// May the plugin build from `dir` (absolute): the granted directory holding it and `dir`
    /// itself, both normalised.
    pub fn docker_build(&self, dir: &Path) -> Result<(PathBuf, PathBuf), Denied> {
        self.requested_or_deny(Capability::DockerBuild)?;
        let dirs = self
            .grants
            .docker
            .as_ref()
            .map(|d| d.build_dirs.as_slice())
            .unwrap_or(&[]);
        let found = normalise(dir).and_then(|d| {
            dirs.iter()
                .filter_map(|g| normalise(g))
                .find(|g| d.starts_with(g))
                .map(|g| (g, d))
        });
        if let Some(found) = found {
            Ok(found)
        } else {
            Err(self.deny(
                Capability::DockerBuild,
                &format!("build context {}", dir.display()),
            ))
        }
    }

    /// May a build use `network` (`host` must be granted).
    pub fn docker_build_network(&self, network: Option<&str>) -> Result<(), Denied> {
        let granted = self
            .grants
            .docker
            .as_ref()
            .is_some_and(|d| d.build_host_network);
        if network == Some("host") && !granted {
            return Err(Denied(format!(
                "plugin '{}' has no grant for a build on the host's network: set \
                 `build_host_network = true` in [plugins.{}.grants.docker]",
                self.plugin, self.plugin
            )));
        }
        Ok(())
    }

    /// May the plugin see and act on supervisor program or group `name` (`group:process` too).
    pub fn supervisor_program(&self, name: &str) -> Result<(), Denied> {
        self.requested_or_deny(Capability::Supervisor)?;
        let patterns = self
            .grants
            .supervisor
            .as_ref()
            .map(|s| s.programs.as_slice())
            .unwrap_or(&[]);
        let group = name.split_once(':').map(|(g, _)| g);
        if patterns
            .iter()
            .any(|p| glob(p, name) || group.is_some_and(|g| glob(p, g)))
        {
            Ok(())
        } else {
            Err(self.deny(
                Capability::Supervisor,
                &format!("supervisor program '{name}'"),
            ))
        }
    }

    /// May the plugin see any supervisor program (before listing them all).
    pub fn supervisor_any(&self) -> Result<(), Denied> {
        self.requested_or_deny(Capability::Supervisor)?;
        match self.grants.supervisor.as_ref() {
            Some(s) if !s.programs.is_empty() => Ok(()),
            _ => Err(self.deny(Capability::Supervisor, "any supervisor program")),
        }
    }

    /// May the plugin reload supervisord's config and add / remove groups.
    pub fn supervisor_config(&self) -> Result<(), Denied> {
        self.requested_or_deny(Capability::SupervisorConfig)?;
        if self.grants.supervisor.as_ref().is_some_and(|s| s.config) {
            Ok(())
        } else {
            Err(Denied(format!(
                "plugin '{}' has no grant for supervisord's configuration: set `config = true` in [plugins.{}.grants.supervisor] (supervisor.config)",
                self.plugin, self.plugin
            )))
        }
    }

    /// The environment the plugin sees, sorted by name: the manager's variables whose names a
    /// granted pattern matches, then the granted `NAME=value` pairs over them. Variables whose
    /// name or value is not UTF-8 are left out.
    pub fn environment(&self) -> &[(String, String)] {
        &self.environment
    }

    /// The directories to preopen read-only.
    pub fn preopens(&self) -> &[PathBuf] {
        if self.requested.contains(&Capability::Files) {
            &self.grants.files
        } else {
            &[]
        }
    }
}

/// The variables `grants` (patterns of names, or `NAME=value`) give a plugin, from `own`.
pub fn environment(
    grants: &[String],
    own: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let (fixed, patterns): (Vec<&String>, Vec<&String>) =
        grants.iter().partition(|g| g.contains('='));
    let mut env: std::collections::BTreeMap<String, String> = own
        .filter(|(k, _)| patterns.iter().any(|p| glob(p, k)))
        .collect();
    for pair in fixed {
        if let Some((k, v)) = pair.split_once('=') {
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    env.into_iter().collect()
}

/// Where a capability is granted in manager.toml: "`projects` in
/// [plugins.<name>.grants.docker] (docker.projects)".
pub fn grant_place(plugin: &str, cap: Capability) -> String {
    let (section, key) = cap
        .grant_key()
        .split_once('.')
        .unwrap_or(("", cap.grant_key()));
    let section = if section.is_empty() {
        format!("[plugins.{plugin}.grants]")
    } else {
        format!("[plugins.{plugin}.grants.{section}]")
    };
    format!("`{key}` in {section} ({})", cap.grant_key())
}

/// `*` matches any run of characters, `?` one character; everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// `path` with `.` and `..` removed lexically; `None` for a relative path or one whose `..`
/// would climb above the root.
fn normalise(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DockerGrant, SupervisorGrant};

    fn policy(requested: &[Capability]) -> Policy {
        Policy::new(
            "p",
            requested.iter().copied(),
            Grants {
                docker: Some(DockerGrant {
                    projects: vec!["marvin".into(), "other/web*".into()],
                    exec: vec!["php bin/console *".into()],
                    exec_shell: false,
                    build_dirs: vec!["/srv/marvin".into()],
                    build_host_network: false,
                }),
                supervisor: Some(SupervisorGrant {
                    programs: vec!["marvin-*".into(), "workers".into()],
                    config: false,
                }),
                files: vec!["/srv/marvin".into()],
                env: Vec::new(),
            },
            &[],
        )
    }

    #[test]
    fn environment_is_what_is_granted_and_nothing_else() {
        let own = || {
            [
                ("TAG", "v1"),
                ("COMPOSE_PROFILES", "web"),
                ("COMPOSE_FILE", "a.yml"),
                ("SECRET", "s3cr3t"),
                ("REGISTRY", "from-shell"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        };
        assert!(environment(&[], own()).is_empty());
        let granted =
            ["TAG", "COMPOSE_*", "REGISTRY=local", "EXTRA=a=b", "ABSENT"].map(String::from);
        let env = environment(&granted, own());
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(
            pairs,
            [
                ("COMPOSE_FILE", "a.yml"),
                ("COMPOSE_PROFILES", "web"),
                ("EXTRA", "a=b"),
                ("REGISTRY", "local"),
                ("TAG", "v1"),
            ]
        );
        // Through a policy: the environment it is given, nothing else.
        let grants = Grants {
            env: vec!["TAG".into()],
            ..Default::default()
        };
        let own: Vec<(String, String)> = own().collect();
        let p = Policy::new("p", [], grants, &own);
        assert_eq!(p.environment(), [("TAG".to_owned(), "v1".to_owned())]);
    }

    #[test]
    fn glob_matches() {
        assert!(glob("*", ""));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("php bin/console *", "php bin/console cache:clear"));
        assert!(!glob("php bin/console *", "php -r 'x'"));
        assert!(glob("*a*b", "xaxxab"));
    }

    #[test]
    fn effective_is_requested_and_granted() {
        let all = [
            Capability::Docker,
            Capability::DockerExec,
            Capability::DockerBuild,
            Capability::Supervisor,
            Capability::SupervisorConfig,
            Capability::Files,
        ];
        let p = policy(&all);
        assert!(p.effective(Capability::Docker));
        assert!(!p.effective(Capability::SupervisorConfig));
        let p = policy(&[Capability::Docker]);
        assert!(!p.effective(Capability::Files));
        assert!(p.preopens().is_empty());
        assert_eq!(
            p.docker_exec("php bin/console x", false)
                .unwrap_err()
                .to_string(),
            "permission denied: plugin 'p' did not ask for the docker-exec capability in describe()"
        );
    }

    #[test]
    fn docker_checks_name_the_grant() {
        let p = policy(&[
            Capability::Docker,
            Capability::DockerExec,
            Capability::DockerBuild,
        ]);
        p.docker_project("marvin", None).unwrap();
        p.docker_project("marvin", Some("db")).unwrap();
        p.docker_project("other", Some("web-2")).unwrap();
        assert_eq!(
            p.docker_project("other", Some("db"))
                .unwrap_err()
                .to_string(),
            "permission denied: plugin 'p' has no grant for docker project 'other' service 'db': \
             add it to `projects` in [plugins.p.grants.docker] (docker.projects)"
        );
        assert!(p.docker_project("other", None).is_err());
        p.docker_exec("php bin/console cache:clear", false).unwrap();
        assert!(
            p.docker_exec("php bin/console cache:clear", true)
                .unwrap_err()
                .0
                .contains("exec_shell")
        );
        assert!(
            p.docker_exec("rm -rf /", false)
                .unwrap_err()
                .0
                .contains("docker.exec")
        );
        p.docker_build(Path::new("/srv/marvin/app")).unwrap();
        assert!(p.docker_build(Path::new("/srv/marvin/../etc")).is_err());
        assert!(p.docker_build(Path::new("/srv/marvinx")).is_err());
        assert!(p.docker_build(Path::new("relative")).is_err());
        p.docker_build_network(None).unwrap();
        p.docker_build_network(Some("none")).unwrap();
        let e = p.docker_build_network(Some("host")).unwrap_err();
        assert!(e.0.contains("build_host_network = true"), "{}", e.0);
    }

    #[test]
    fn supervisor_checks() {
        let p = policy(&[Capability::Supervisor, Capability::SupervisorConfig]);
        p.supervisor_program("marvin-consumer").unwrap();
        p.supervisor_program("workers").unwrap();
        p.supervisor_program("workers:workers_00").unwrap();
        assert!(
            p.supervisor_program("nginx")
                .unwrap_err()
                .0
                .contains("supervisor.programs")
        );
        assert!(
            p.supervisor_config()
                .unwrap_err()
                .0
                .contains("config = true")
        );
    }

    #[test]
    fn nothing_is_granted_by_default() {
        let p = Policy::new(
            "p",
            [Capability::Docker, Capability::Files],
            Grants::default(),
            &[],
        );
        assert!(p.docker_any().unwrap_err().0.contains("docker.projects"));
        assert!(p.preopens().is_empty());
        assert_eq!(p.granted(Capability::Docker), None);
    }
}
