//! The compose corpus (`tests/corpus/*/`): for every case, the build settings this plugin
//! computes equal what the real `docker-compose config` prints for the same files and
//! environment (or both fail, on the same variable). A case's `case.toml` names the service,
//! the files (`docker-compose.yml` by default), the environment, an `error` both must give,
//! and `compose = "v2"` with an `[expect]` table for the rules docker-compose 1.x lacks.
//! The build cases (`build = true`) are built by both tools in host/tests/compose_corpus.rs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{Value as Json, json};
use yaml_serde::Value;

use crate::compose::{self, BuildPlan, Env, Flavor};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    service: String,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    build: bool,
    #[serde(default)]
    docker_build: Option<String>,
    #[serde(default)]
    compose: Option<String>,
    #[serde(default)]
    expect: Option<toml::Value>,
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn cases() -> Vec<(PathBuf, Case)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.toml").exists())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| {
            let text = std::fs::read_to_string(d.join("case.toml")).unwrap();
            let mut case: Case =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
            if case.files.is_empty() {
                case.files = vec!["docker-compose.yml".into()];
            }
            (d, case)
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A `host:ip` / `host=ip` line, or a mapping entry, as `host:ip`.
fn host_line(h: &str) -> String {
    match h.split_once('=') {
        Some((h, ip)) => format!("{h}:{ip}"),
        None => h.to_owned(),
    }
}

/// The settings of a build, in one comparable shape.
fn shape(plan: BuildPlan) -> Json {
    let mut hosts = plan.extra_hosts;
    hosts.sort();
    let map = |p: Vec<(String, String)>| p.into_iter().collect::<BTreeMap<_, _>>();
    json!({
        "context": compose::normalise(&plan.context).display().to_string(),
        "dockerfile": plan.dockerfile,
        "args": map(plan.args),
        "labels": map(plan.labels),
        "extra_hosts": hosts,
        "target": plan.target,
        "network": plan.network,
        "shm_size": plan.shm_size,
        "cache_from": plan.cache_from,
        "image": plan.image,
    })
}

fn ours(dir: &Path, case: &Case, flavor: Flavor) -> Result<Json, String> {
    let files: Vec<PathBuf> = case.files.iter().map(|f| dir.join(f)).collect();
    let shell: Env = case.env.clone().into_iter().collect();
    let plan = compose::build_plan(&files, &case.service, &shell, flavor, &mut |_| {})?
        .ok_or("no build")?;
    Ok(shape(plan))
}

/// `docker-compose config` prints a `$` of a value as `$$` (so that its output reads back).
fn unescape(v: &mut Value) {
    match v {
        Value::String(s) => *s = s.replace("$$", "$"),
        Value::Sequence(items) => items.iter_mut().for_each(unescape),
        Value::Mapping(m) => m.iter_mut().for_each(|(_, v)| unescape(v)),
        _ => {}
    }
}

/// A `build:` mapping as `docker-compose config` prints it (or as a case's `[expect]` has it).
fn theirs_shape(dir: &Path, build: &Value, image: Option<String>) -> Json {
    let get = |k: &str| build.get(k).filter(|v| !v.is_null()).map(text);
    let map = |k: &str| -> BTreeMap<String, String> {
        match build.get(k) {
            Some(Value::Mapping(m)) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
            Some(Value::Sequence(s)) => s
                .iter()
                .map(|e| {
                    let e = text(e);
                    match e.split_once('=') {
                        Some((k, v)) => (k.to_owned(), v.to_owned()),
                        None => (e, String::new()),
                    }
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    };
    let hosts = match build.get("extra_hosts") {
        Some(Value::Sequence(s)) => s.iter().map(|e| host_line(&text(e))).collect(),
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| format!("{}:{}", text(k), text(v)))
            .collect(),
        _ => Vec::new(),
    };
    let list = |k: &str| -> Vec<String> {
        match build.get(k) {
            Some(Value::Sequence(s)) => s.iter().map(text).collect(),
            _ => Vec::new(),
        }
    };
    shape(BuildPlan {
        context: dir.join(get("context").unwrap_or_else(|| ".".into())),
        dockerfile: get("dockerfile").unwrap_or_else(|| "Dockerfile".into()),
        args: map("args").into_iter().collect(),
        labels: map("labels").into_iter().collect(),
        extra_hosts: hosts,
        target: get("target"),
        network: get("network"),
        shm_size: build
            .get("shm_size")
            .map(|v| compose::parse_bytes(v).unwrap()),
        cache_from: list("cache_from"),
        image,
    })
}

/// What the real docker-compose makes of the case: its `config`, or its error.
fn theirs(dir: &Path, case: &Case) -> Result<Json, String> {
    let mut cmd = Command::new("docker-compose");
    for f in &case.files {
        cmd.args(["-f", f]);
    }
    let out = cmd
        .arg("config")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&case.env)
        .output()
        .unwrap_or_else(|e| {
            panic!("docker-compose (1.x) must be installed for the corpus test: {e}")
        });
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut doc: Value = yaml_serde::from_slice(&out.stdout).unwrap();
    unescape(&mut doc);
    let svc = &doc["services"][case.service.as_str()];
    let image = svc.get("image").map(text);
    Ok(theirs_shape(dir, &svc["build"], image))
}

#[test]
fn the_corpus_reads_as_docker_compose_reads_it() {
    let all = cases();
    assert!(all.len() >= 20, "the corpus has {} cases", all.len());
    let mut failures = Vec::new();
    let mut compared = 0;
    for (dir, case) in &all {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if case.compose.as_deref() == Some("v2") {
            // docker-compose 1.x rejects these templates: the case spells out compose v2's
            // reading.
            let expect = serde_json::to_value(case.expect.as_ref().unwrap()).unwrap();
            let expect: Value = serde_json::from_value(expect).unwrap();
            let want = theirs_shape(dir, &expect, None);
            let got = ours(dir, case, Flavor::V2);
            if got.as_ref() != Ok(&want) {
                failures.push(format!("{name}: ours {got:?}\n  compose v2 {want}"));
            }
            assert!(
                theirs(dir, case).is_err(),
                "{name}: docker-compose 1.x now reads it: compare with it"
            );
            continue;
        }
        let (got, want) = (ours(dir, case, Flavor::V1), theirs(dir, case));
        compared += 1;
        match (&case.error, got, want) {
            (Some(needle), Err(ours), Err(theirs)) => {
                let has = |t: &str| t.to_lowercase().contains(&needle.to_lowercase());
                if !has(&ours) || !has(&theirs) {
                    failures.push(format!(
                        "{name}: both fail, not both on '{needle}':\n  ours: {ours}\n  docker-compose: {theirs}"
                    ));
                }
            }
            (None, Ok(got), Ok(want)) if got == want => {}
            (_, got, want) => failures.push(format!(
                "{name}:\n  ours:           {got:?}\n  docker-compose: {want:?}"
            )),
        }
        // Built by both tools in host/tests/compose_corpus.rs.
        let _ = (case.build, &case.docker_build);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        compared >= 20,
        "only {compared} cases compared with docker-compose"
    );
}
