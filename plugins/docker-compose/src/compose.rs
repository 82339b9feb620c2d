//! What `build` needs from compose files: where they are, and a service's build section.

use std::path::{Component, Path, PathBuf};

use marvin_plugin_sdk::docker::Container;
use std::collections::BTreeMap;

use yaml_serde::Value;

/// Labels compose puts on containers.
const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
const VERSION: &str = "com.docker.compose.version";

/// A service's image build, as compose would run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    /// Absolute and normalised.
    pub context: PathBuf,
    pub dockerfile: String,
    pub args: Vec<(String, String)>,
    pub target: Option<String>,
    /// The service's `image:`, the tag compose gives the build.
    pub image: Option<String>,
    pub labels: Vec<(String, String)>,
    /// `host:address`.
    pub extra_hosts: Vec<String>,
    pub network: Option<String>,
    /// Bytes.
    pub shm_size: Option<u64>,
    pub cache_from: Vec<String>,
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The compose files of a project: `asked` (args.compose_file) first, else the container's
/// labels (compose v1 writes them relative to the working dir, v2 absolute, comma-separated).
pub fn files(
    labels: Option<&[(String, String)]>,
    asked: Option<&str>,
) -> Result<Vec<PathBuf>, String> {
    if let Some(f) = asked {
        let p = PathBuf::from(f);
        if !p.is_absolute() {
            return Err(format!(
                "args.compose_file must be an absolute path, not '{f}'"
            ));
        }
        return Ok(vec![p]);
    }
    let Some(labels) = labels else {
        return Err(
            "cannot find the compose file: the service has no container to read it from; \
             send args.compose_file"
                .into(),
        );
    };
    let Some(list) = label(labels, CONFIG_FILES) else {
        return Err(format!(
            "cannot find the compose file: the container has no {CONFIG_FILES} label; send args.compose_file"
        ));
    };
    let dir = label(labels, WORKING_DIR).map(PathBuf::from);
    list.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            let p = PathBuf::from(f);
            if p.is_absolute() {
                Ok(p)
            } else {
                match &dir {
                    Some(d) => Ok(d.join(p)),
                    None => Err(format!(
                        "compose file '{f}' is relative and the container has no {WORKING_DIR} label"
                    )),
                }
            }
        })
        .collect()
}

/// `.` and `..` removed lexically.
pub fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A `list_or_dict` of compose (`args`, `labels`): a mapping, or a list of `KEY=value`
/// (`KEY` alone has no value). Values are text; a null is "no value".
fn list_or_dict(v: &Value, what: &str) -> Result<BTreeMap<String, Option<String>>, String> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let k = text(k).ok_or_else(|| format!("`{what}` has a key that is not text"))?;
                match v {
                    Value::Null => Ok((k, None)),
                    v => match text(v) {
                        Some(t) => Ok((k, Some(t))),
                        None => Err(format!("`{what}.{k}` must be text or a number")),
                    },
                }
            })
            .collect(),
        Value::Sequence(s) => s
            .iter()
            .map(|e| {
                let e = text(e).ok_or_else(|| format!("`{what}` entries must be text"))?;
                Ok(match e.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (e, None),
                })
            })
            .collect(),
        _ => Err(format!("`{what}` must be a mapping or a list")),
    }
}

/// `extra_hosts`: a list of `host:ip` (or `host=ip`), or a mapping; by host.
fn extra_hosts(v: &Value) -> Result<BTreeMap<String, String>, String> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| match (text(k), text(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err("`extra_hosts` must map host names to addresses".to_owned()),
            })
            .collect(),
        Value::Sequence(s) => s
            .iter()
            .map(|e| {
                let e = text(e).ok_or("`extra_hosts` entries must be text")?;
                let split = e.split_once('=').or_else(|| e.split_once(':'));
                match split {
                    Some((h, ip)) => Ok((h.trim().to_owned(), ip.trim().to_owned())),
                    None => Err(format!("extra host '{e}' is not host:address")),
                }
            })
            .collect(),
        _ => Err("`extra_hosts` must be a list or a mapping".into()),
    }
}

/// A size as compose reads one (`shm_size: 2gb`, `64M`, `1048576`): bytes.
pub fn parse_bytes(v: &Value) -> Result<u64, String> {
    let s = text(v).ok_or("`shm_size` must be a number or a size")?;
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|x| x.ends_with(char::is_alphabetic))
        .unwrap_or(&t);
    let (digits, unit) = match t.char_indices().find(|(_, c)| c.is_alphabetic()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let factor: u64 = match unit {
        "" | "b" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("`shm_size` '{s}': the unit must be b, k, m or g")),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("`shm_size` '{s}' is not a size"))
}

/// One file's `build:` of a service, as written there (before merging files).
#[derive(Debug, Default, Clone)]
struct Build {
    context: Option<String>,
    dockerfile: Option<String>,
    target: Option<String>,
    network: Option<String>,
    shm_size: Option<u64>,
    args: BTreeMap<String, Option<String>>,
    labels: BTreeMap<String, Option<String>>,
    extra_hosts: BTreeMap<String, String>,
    cache_from: Vec<String>,
}

impl Build {
    fn read(v: &Value, service: &str) -> Result<Self, String> {
        let in_service = |e: String| format!("service '{service}': build: {e}");
        let map = match v {
            Value::String(ctx) => {
                return Ok(Self {
                    context: Some(ctx.clone()),
                    ..Self::default()
                });
            }
            Value::Mapping(m) => m,
            _ => return Err(in_service("must be a path or a mapping".into())),
        };
        let mut b = Self::default();
        for (k, v) in map {
            let Some(key) = k.as_str() else {
                return Err(in_service("a key is not text".into()));
            };
            let scalar =
                |v: &Value| text(v).ok_or_else(|| in_service(format!("`{key}` must be text")));
            match key {
                "context" => b.context = Some(scalar(v)?),
                "dockerfile" => b.dockerfile = Some(scalar(v)?),
                "target" => b.target = Some(scalar(v)?),
                "network" => b.network = Some(scalar(v)?),
                "shm_size" => b.shm_size = Some(parse_bytes(v).map_err(in_service)?),
                "args" => b.args = list_or_dict(v, "args").map_err(in_service)?,
                "labels" => b.labels = list_or_dict(v, "labels").map_err(in_service)?,
                "extra_hosts" => b.extra_hosts = extra_hosts(v).map_err(in_service)?,
                "cache_from" => {
                    let Value::Sequence(s) = v else {
                        return Err(in_service("`cache_from` must be a list".into()));
                    };
                    b.cache_from = s.iter().map(scalar).collect::<Result<_, _>>()?;
                }
                // Accepted and without effect on the image's content or name (as for an
                // engine without them).
                "isolation" | "cache_to" | "pull" | "no_cache" | "platforms" | "tags" => {}
                k if k.starts_with("x-") => {}
                other => {
                    return Err(in_service(format!(
                        "`{other}` is not supported (context, dockerfile, args, target, labels, \
                         extra_hosts, network, shm_size, cache_from are)"
                    )));
                }
            }
        }
        Ok(b)
    }

    /// A later file's build over this one, as compose merges them: scalars replaced,
    /// `args`, `labels` and `extra_hosts` merged key by key, `cache_from` appended.
    fn merge(mut self, later: Self) -> Self {
        macro_rules! scalar {
            ($($f:ident),*) => { $( if later.$f.is_some() { self.$f = later.$f; } )* };
        }
        scalar!(context, dockerfile, target, network, shm_size);
        self.args.extend(later.args);
        self.labels.extend(later.labels);
        self.extra_hosts.extend(later.extra_hosts);
        for c in later.cache_from {
            if !self.cache_from.contains(&c) {
                self.cache_from.push(c);
            }
        }
        self
    }
}

pub use crate::interpolate::Env;

/// The sections whose values compose substitutes variables in.
const INTERPOLATED: [&str; 5] = ["services", "volumes", "networks", "secrets", "configs"];

/// Substitutes variables in every string value of `v` (keys are left as written).
fn interpolate_values(
    v: &mut Value,
    env: &Env,
    path: &str,
    unset: &mut dyn FnMut(&str),
) -> Result<(), String> {
    match v {
        Value::String(s) => {
            *s = crate::interpolate::interpolate(s, env, unset)
                .map_err(|e| format!("{path}: {e}"))?;
        }
        Value::Sequence(items) => {
            for item in items {
                interpolate_values(item, env, path, unset)?;
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = k
                    .as_str()
                    .map_or_else(|| path.to_owned(), |k| format!("{path}.{k}"));
                interpolate_values(item, env, &key, unset)?;
            }
        }
        Value::Tagged(t) => interpolate_values(&mut t.value, env, path, unset)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// A compose file read as compose reads it: YAML parsed, merge keys (`<<: *anchor`) applied,
/// then variables substituted in the values of its sections.
pub fn load(body: &str, env: &Env, unset: &mut dyn FnMut(&str)) -> Result<Value, String> {
    let mut doc: Value =
        yaml_serde::from_str(body).map_err(|e| format!("is not valid YAML: {e}"))?;
    doc.apply_merge()
        .map_err(|e| format!("has a bad merge key: {e}"))?;
    if let Value::Mapping(m) = &mut doc {
        for section in INTERPOLATED {
            if let Some(v) = m.get_mut(section) {
                interpolate_values(v, env, section, unset)?;
            }
        }
    }
    Ok(doc)
}

/// The environment compose runs with: the project's `.env` (in `dir`), then `shell` over it.
pub fn environment(dir: &Path, shell: &Env) -> Result<Env, String> {
    let mut env = dot_env(dir)?;
    env.extend(shell.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(env)
}

/// Which compose the project is run with: they differ in small ways a build shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// docker-compose 1.x (Python): an argument without a value anywhere is sent empty;
    /// images are named `project_service`.
    V1,
    /// docker compose 2.x (the compose specification): such an argument is left out (the
    /// Dockerfile's default applies); images are named `project-service`.
    V2,
}

impl Flavor {
    /// The flavor that created `existing` (compose's version label), else V2.
    pub fn of(existing: &[Container]) -> Self {
        let v1 = existing
            .first()
            .and_then(|c| label(&c.labels, VERSION))
            .is_some_and(|v| v.starts_with("1."));
        if v1 { Self::V1 } else { Self::V2 }
    }
}

/// The build of `service` from `files` (later files override earlier ones, as compose
/// merges them); `None` when the service only uses an image. `shell` is the environment
/// compose would run in (the plugin's: what the operator granted); it wins over the
/// project's `.env`, as with compose. `unset` hears the variables used without a value.
pub fn build_plan(
    files: &[PathBuf],
    service: &str,
    shell: &Env,
    flavor: Flavor,
    unset: &mut dyn FnMut(&str),
) -> Result<Option<BuildPlan>, String> {
    let base = files
        .first()
        .and_then(|f| f.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let env = environment(&base, shell)?;
    let mut found = false;
    let mut image = None;
    let mut build: Option<Build> = None;
    for file in files {
        let body = std::fs::read_to_string(file).map_err(|e| {
            format!(
                "cannot read compose file {}: {e} (grant its directory to this plugin in `files`)",
                file.display()
            )
        })?;
        let doc =
            load(&body, &env, unset).map_err(|e| format!("compose file {} {e}", file.display()))?;
        let Some(svc) = doc.get("services").and_then(|s| s.get(service)) else {
            continue;
        };
        found = true;
        if svc.get("extends").is_some() {
            return Err(format!(
                "service '{service}' uses `extends`, which this plugin does not follow: \
                 write the build section in the service"
            ));
        }
        if let Some(i) = svc.get("image").and_then(text) {
            image = Some(i);
        }
        if let Some(b) = svc.get("build") {
            let b = Build::read(b, service)?;
            build = Some(match build.take() {
                Some(earlier) => earlier.merge(b),
                None => b,
            });
        }
    }
    if !found {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(format!("no service '{service}' in {}", names.join(", ")));
    }
    let Some(build) = build else {
        return Ok(None);
    };
    let context = build.context.unwrap_or_else(|| ".".into());
    if context.contains("://") || context.starts_with("git@") {
        return Err(format!(
            "service '{service}': remote build contexts ({context}) are not supported"
        ));
    }
    // An argument without a value takes compose's environment's; without one there, v1
    // sends it empty and v2 leaves it out.
    let args = build
        .args
        .into_iter()
        .filter_map(|(k, v)| match v.or_else(|| env.get(&k).cloned()) {
            Some(v) => Some((k, v)),
            None if flavor == Flavor::V1 => Some((k, String::new())),
            None => None,
        })
        .collect();
    Ok(Some(BuildPlan {
        context: normalise(&base.join(&context)),
        dockerfile: build.dockerfile.unwrap_or_else(|| "Dockerfile".into()),
        args,
        target: build.target,
        image,
        labels: build
            .labels
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
        extra_hosts: build
            .extra_hosts
            .into_iter()
            .map(|(h, ip)| format!("{h}:{ip}"))
            .collect(),
        network: build.network,
        shm_size: build.shm_size,
        cache_from: build.cache_from,
    }))
}

/// The variables of `<dir>/.env`, with dotenv's rules (`export`, quotes, escapes in double
/// quotes, trailing comments, `${VAR}` from earlier lines); none when there is no such file.
pub fn dot_env(dir: &Path) -> Result<Env, String> {
    let path = dir.join(".env");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Env::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    dotenvy::from_read_iter(file)
        .map(|item| item.map_err(|e| format!("{}: {e}", path.display())))
        .collect()
}

/// The tag compose gives the build: the service's `image:`, else the image name the
/// existing containers run, else compose's default for the flavor.
pub fn image_tag(plan: &BuildPlan, project: &str, service: &str, existing: &[Container]) -> String {
    if let Some(i) = &plan.image {
        return i.clone();
    }
    if let Some(c) = existing
        .iter()
        .find(|c| !c.image.is_empty() && !c.image.starts_with("sha256:"))
    {
        return c.image.clone();
    }
    match Flavor::of(existing) {
        Flavor::V1 => format!("{project}_{service}"),
        Flavor::V2 => format!("{project}-{service}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(
        files: &[PathBuf],
        service: &str,
        shell: &[(&str, &str)],
    ) -> Result<Option<BuildPlan>, String> {
        let shell: Env = shell
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        build_plan(files, service, &shell, Flavor::V2, &mut |_| {})
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn build_plans_follow_compose_rules() {
        let dir = tempdir("plan");
        let main = dir.join("docker-compose.yml");
        let over = dir.join("override.yml");
        std::fs::write(
            &main,
            "services:\n  web:\n    build:\n      context: ./app\n      args:\n        A: 1\n      labels: [\"x=1\"]\n  db:\n    image: postgres\n  short:\n    build: ../short\n",
        )
        .unwrap();
        std::fs::write(&over, "services:\n  web:\n    build:\n      dockerfile: Dockerfile.prod\n      args: [\"B=2\", \"C\"]\n      labels: {y: \"2\"}\n      shm_size: 64m\n      extra_hosts: [\"db:10.0.0.2\"]\n").unwrap();
        let both = [main.clone(), over.clone()];
        let p = plan(&both, "web", &[]).unwrap().unwrap();
        assert_eq!(p.context, dir.join("app"));
        assert_eq!(p.dockerfile, "Dockerfile.prod");
        // Arguments and labels merge key by key; a bare `C` takes the environment's value
        // and is left out without one.
        assert_eq!(p.args, pairs(&[("A", "1"), ("B", "2")]));
        assert_eq!(p.labels, pairs(&[("x", "1"), ("y", "2")]));
        assert_eq!(p.shm_size, Some(64 << 20));
        assert_eq!(p.extra_hosts, ["db:10.0.0.2"]);
        let p = plan(&both, "web", &[("C", "3")]).unwrap().unwrap();
        assert_eq!(p.args, pairs(&[("A", "1"), ("B", "2"), ("C", "3")]));
        assert_eq!(plan(std::slice::from_ref(&main), "db", &[]).unwrap(), None);
        let short = plan(std::slice::from_ref(&main), "short", &[])
            .unwrap()
            .unwrap();
        assert_eq!(short.context, dir.parent().unwrap().join("short"));
        let e = plan(std::slice::from_ref(&main), "nope", &[]).unwrap_err();
        assert!(e.contains("no service 'nope'"), "{e}");
        assert_eq!(
            image_tag(&p, "p", "web", &[]),
            "p-web",
            "compose v2's default tag"
        );
        let labels = vec![
            (
                CONFIG_FILES.to_string(),
                "docker-compose.yml,other.yml".to_string(),
            ),
            (WORKING_DIR.to_string(), "/srv/p".to_string()),
        ];
        assert_eq!(
            files(Some(&labels), None).unwrap(),
            [
                PathBuf::from("/srv/p/docker-compose.yml"),
                PathBuf::from("/srv/p/other.yml")
            ]
        );
        assert!(files(None, None).unwrap_err().contains("args.compose_file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("compose-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn values_are_substituted_after_parsing() {
        let dir = tempdir("parse");
        let main = dir.join("docker-compose.yml");
        std::fs::write(
            &main,
            "# ${REGISTRY:?set REGISTRY} in a comment is no template\nservices:\n  web:\n    image: ${IMAGE}\n    build:\n      context: .\n      args:\n        V: ${VALUE}\n        \"$$KEY\": x\n",
        )
        .unwrap();
        let p = plan(
            std::slice::from_ref(&main),
            "web",
            &[("VALUE", "a: b # c"), ("IMAGE", "app:1")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.image.as_deref(), Some("app:1"));
        assert_eq!(
            p.args,
            pairs(&[("$$KEY", "x"), ("V", "a: b # c")]),
            "keys are not templates"
        );
        // A required variable anywhere in the services fails the file, as with compose.
        std::fs::write(
            &main,
            "services:\n  web:\n    build: .\n  other:\n    image: ${REGISTRY:?set REGISTRY}/x\n",
        )
        .unwrap();
        let e = plan(std::slice::from_ref(&main), "web", &[]).unwrap_err();
        assert!(
            e.contains(
                "services.other.image: required variable REGISTRY is missing a value: set REGISTRY"
            ),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_environment_wins_over_dot_env() {
        let dir = tempdir("env");
        let main = dir.join("docker-compose.yml");
        std::fs::write(
            dir.join(".env"),
            "# comment\nexport TAG=from-dot-env # trailing\nARG1='dot'\nQUOTED=\"a b\"\n",
        )
        .unwrap();
        std::fs::write(
            &main,
            "services:\n  web:\n    image: app:${TAG}\n    build:\n      context: .\n      args:\n        ARG1:\n        ARG2:\n        Q: ${QUOTED}\n",
        )
        .unwrap();
        let p = plan(std::slice::from_ref(&main), "web", &[])
            .unwrap()
            .unwrap();
        assert_eq!(p.image.as_deref(), Some("app:from-dot-env"));
        assert_eq!(p.args, pairs(&[("ARG1", "dot"), ("Q", "a b")]));
        let p = plan(
            std::slice::from_ref(&main),
            "web",
            &[("TAG", "v2"), ("ARG2", "shell")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.image.as_deref(), Some("app:v2"));
        assert_eq!(
            p.args,
            pairs(&[("ARG1", "dot"), ("ARG2", "shell"), ("Q", "a b")])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sizes_read_as_compose_reads_them() {
        let b = |s: &str| parse_bytes(&Value::String(s.into()));
        assert_eq!(b("1024"), Ok(1024));
        assert_eq!(b("64M"), Ok(64 << 20));
        assert_eq!(b("2gb"), Ok(2 << 30));
        assert_eq!(b("10k"), Ok(10 << 10));
        assert!(b("10x").is_err());
        assert!(b("lots").is_err());
    }
}
