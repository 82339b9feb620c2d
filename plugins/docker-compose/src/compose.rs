//! What `build` needs from compose files: where they are, and a service's build section.

use std::path::{Component, Path, PathBuf};

use marvin_plugin_sdk::docker::Container;
use serde_yaml::Value;

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

/// The build args of a `build:` mapping: a map, or a list of `KEY=value`. A key without a
/// value takes it from compose's environment `env`, and is left out when that has none.
fn build_args(v: Option<&Value>, env: &Env) -> Vec<(String, String)> {
    let from_env = |k: String| env.get(&k).map(|v| (k, v.clone()));
    match v {
        Some(Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| match (text(k)?, v) {
                (k, Value::Null) => from_env(k),
                (k, v) => Some((k, text(v)?)),
            })
            .collect(),
        Some(Value::Sequence(s)) => s
            .iter()
            .filter_map(|e| {
                let e = text(e)?;
                match e.split_once('=') {
                    Some((k, v)) => Some((k.to_owned(), v.to_owned())),
                    None => from_env(e),
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Variables by name.
pub type Env = std::collections::HashMap<String, String>;

/// The build of `service` from `files` (later files override earlier ones, as compose
/// merges them); `None` when the service only uses an image. `shell` is the environment
/// compose would run in (the plugin's: what the operator granted); it wins over the
/// project's `.env`, as with compose.
pub fn build_plan(
    files: &[PathBuf],
    service: &str,
    shell: &Env,
) -> Result<Option<BuildPlan>, String> {
    let base = files
        .first()
        .and_then(|f| f.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut found = false;
    let mut image = None;
    let mut build: Option<Value> = None;
    let mut env = dot_env(&base);
    env.extend(shell.iter().map(|(k, v)| (k.clone(), v.clone())));
    for file in files {
        let body = std::fs::read_to_string(file).map_err(|e| {
            format!(
                "cannot read compose file {}: {e} (grant its directory to this plugin in `files`)",
                file.display()
            )
        })?;
        let body = interpolate(&body, &env)
            .map_err(|e| format!("compose file {}: {e}", file.display()))?;
        let doc: Value = serde_yaml::from_str(&body)
            .map_err(|e| format!("compose file {} is not valid YAML: {e}", file.display()))?;
        let Some(svc) = doc.get("services").and_then(|s| s.get(service)) else {
            continue;
        };
        found = true;
        if let Some(i) = svc.get("image").and_then(text) {
            image = Some(i);
        }
        if let Some(b) = svc.get("build") {
            build = Some(merge(build.take(), b.clone()));
        }
    }
    if !found {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(format!("no service '{service}' in {}", names.join(", ")));
    }
    let Some(build) = build else {
        return Ok(None);
    };
    let (context, dockerfile, args, target) = match &build {
        Value::String(ctx) => (ctx.clone(), None, Vec::new(), None),
        Value::Mapping(_) => (
            build
                .get("context")
                .and_then(text)
                .unwrap_or_else(|| ".".into()),
            build.get("dockerfile").and_then(text),
            build_args(build.get("args"), &env),
            build.get("target").and_then(text),
        ),
        _ => {
            return Err(format!(
                "service '{service}': `build` must be a path or a mapping"
            ));
        }
    };
    if context.contains("://") || context.starts_with("git@") {
        return Err(format!(
            "service '{service}': remote build contexts ({context}) are not supported"
        ));
    }
    let context = normalise(&base.join(&context));
    Ok(Some(BuildPlan {
        context,
        dockerfile: dockerfile.unwrap_or_else(|| "Dockerfile".into()),
        args,
        target,
        image,
    }))
}

/// The variables of `<dir>/.env`, as compose reads them (`KEY=value`, `#` comments, quotes
/// removed); none when there is no such file.
pub fn dot_env(dir: &Path) -> Env {
    let Ok(text) = std::fs::read_to_string(dir.join(".env")) else {
        return Default::default();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

/// compose's variable substitution: `$$` is `$`; `${VAR}` and `$VAR` are the value (empty when
/// unset, as compose does after a warning); `${VAR:-default}` / `${VAR-default}` fall back
/// when unset or empty / unset; `${VAR:?message}` / `${VAR?message}` are errors then.
pub fn interpolate(text: &str, env: &Env) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {:?}", &rest[..rest.len().min(40)]))?;
            let expr = &body[..end];
            let name_len = expr
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_len);
            let value = env.get(name).map(String::as_str);
            let resolved = match op {
                "" => value.unwrap_or_default().to_owned(),
                _ if op.starts_with(":-") => match value {
                    Some(v) if !v.is_empty() => v.to_owned(),
                    _ => op[2..].to_owned(),
                },
                _ if op.starts_with('-') => value.map_or_else(|| op[1..].to_owned(), str::to_owned),
                _ if op.starts_with(":?") || op.starts_with('?') => match value {
                    Some(v) if !v.is_empty() || op.starts_with('?') => v.to_owned(),
                    _ => {
                        let message = op.trim_start_matches(':').trim_start_matches('?');
                        return Err(format!(
                            "required variable {name} is missing a value: {message}"
                        ));
                    }
                },
                _ => return Err(format!("invalid interpolation format for ${{{expr}}}")),
            };
            out.push_str(&resolved);
            rest = &body[end + 1..];
        } else {
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..name_len];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                // Not a variable (`$5`, a lone `$`): kept as written.
                out.push('$');
                rest = after;
            } else {
                out.push_str(env.get(name).map(String::as_str).unwrap_or_default());
                rest = &after[name_len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// An override file's `build:` over the earlier one's (mappings merge key by key).
fn merge(earlier: Option<Value>, later: Value) -> Value {
    match (earlier, later) {
        (Some(Value::Mapping(mut a)), Value::Mapping(b)) => {
            for (k, v) in b {
                a.insert(k, v);
            }
            Value::Mapping(a)
        }
        (Some(Value::Mapping(mut a)), Value::String(ctx)) => {
            a.insert(Value::String("context".into()), Value::String(ctx));
            Value::Mapping(a)
        }
        (_, later) => later,
    }
}

/// The tag compose gives the build: the service's `image:`, else the image name the
/// existing containers run, else compose's default (`project_service` for compose v1,
/// `project-service` for v2).
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
    let v1 = existing
        .first()
        .and_then(|c| label(&c.labels, VERSION))
        .is_some_and(|v| v.starts_with("1."));
    if v1 {
        format!("{project}_{service}")
    } else {
        format!("{project}-{service}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_substituted_as_compose_does() {
        let env: Env = [
            ("TAG".to_string(), "1.2".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]
        .into();
        let i = |t: &str| interpolate(t, &env);
        assert_eq!(i("image: app:${TAG}").unwrap(), "image: app:1.2");
        assert_eq!(i("image: app:$TAG").unwrap(), "image: app:1.2");
        assert_eq!(
            i("${NOPE:-dev} ${EMPTY:-x} ${EMPTY-y} ${NOPE-z}").unwrap(),
            "dev x  z"
        );
        assert_eq!(i("cost $$5 and $5").unwrap(), "cost $5 and $5");
        assert_eq!(i("${NOPE}").unwrap(), "");
        assert!(
            i("${NOPE:?set it}")
                .unwrap_err()
                .contains("NOPE is missing a value: set it")
        );
        assert!(i("${TAG").unwrap_err().contains("unclosed"));
        assert!(i("${TAG/x}").unwrap_err().contains("invalid interpolation"));
    }

    #[test]
    fn build_plans_follow_compose_rules() {
        let dir = std::env::temp_dir().join(format!("compose-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let main = dir.join("docker-compose.yml");
        let over = dir.join("override.yml");
        std::fs::write(
            &main,
            "services:\n  web:\n    build:\n      context: ./app\n      args:\n        A: 1\n  db:\n    image: postgres\n  short:\n    build: ../short\n",
        )
        .unwrap();
        std::fs::write(&over, "services:\n  web:\n    build:\n      dockerfile: Dockerfile.prod\n      args: [\"B=2\", \"C\"]\n").unwrap();
        let none = Env::new();
        let plan = build_plan(&[main.clone(), over.clone()], "web", &none)
            .unwrap()
            .unwrap();
        assert_eq!(plan.context, dir.join("app"));
        assert_eq!(plan.dockerfile, "Dockerfile.prod");
        assert_eq!(plan.args, [("B".to_string(), "2".to_string())]);
        // A bare `C` takes its value from the environment.
        let shell: Env = [("C".to_string(), "3".to_string())].into();
        let plan = build_plan(&[main.clone(), over], "web", &shell)
            .unwrap()
            .unwrap();
        assert_eq!(
            plan.args,
            [
                ("B".to_string(), "2".to_string()),
                ("C".to_string(), "3".to_string())
            ]
        );
        assert_eq!(
            build_plan(std::slice::from_ref(&main), "db", &none).unwrap(),
            None
        );
        let short = build_plan(std::slice::from_ref(&main), "short", &none)
            .unwrap()
            .unwrap();
        assert_eq!(short.context, dir.parent().unwrap().join("short"));
        let e = build_plan(std::slice::from_ref(&main), "nope", &none).unwrap_err();
        assert!(e.contains("no service 'nope'"), "{e}");
        assert_eq!(
            image_tag(&plan, "p", "web", &[]),
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

    #[test]
    fn the_environment_wins_over_dot_env() {
        let dir = std::env::temp_dir().join(format!("compose-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let main = dir.join("docker-compose.yml");
        std::fs::write(dir.join(".env"), "TAG=from-dot-env\nARG1=dot\n").unwrap();
        std::fs::write(
            &main,
            "services:\n  web:\n    image: app:${TAG}\n    build:\n      context: .\n      args:\n        ARG1:\n        ARG2:\n",
        )
        .unwrap();
        let plan = |shell: &[(&str, &str)]| {
            let shell: Env = shell
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            build_plan(std::slice::from_ref(&main), "web", &shell)
                .unwrap()
                .unwrap()
        };
        let p = plan(&[]);
        assert_eq!(p.image.as_deref(), Some("app:from-dot-env"));
        assert_eq!(p.args, [("ARG1".to_string(), "dot".to_string())]);
        let p = plan(&[("TAG", "v2"), ("ARG2", "shell")]);
        assert_eq!(p.image.as_deref(), Some("app:v2"));
        let mut args = p.args.clone();
        args.sort();
        assert_eq!(
            args,
            [
                ("ARG1".to_string(), "dot".to_string()),
                ("ARG2".to_string(), "shell".to_string())
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
