//! A build context as the tar archive the engine wants, read through cap-std from inside the
//! granted build directory: a path or symlink that leads out of it is refused by the
//! filesystem layer, not by string checks.

use std::io::Read;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, PermissionsExt};

use crate::bindings::types::Error;
use globset::{GlobBuilder, GlobMatcher};

/// The largest context sent to the engine.
pub const MAX_CONTEXT_BYTES: u64 = 1 << 30;

/// `.dockerignore` read as the Docker CLI reads it (moby's `patternmatcher`): patterns are
/// cleaned paths relative to the context (a leading `/` dropped), `*` and `?` stay inside one
/// path segment, `**` crosses any number, `[…]` classes and `\` escapes as in Go; a pattern
/// that matches a folder matches everything in it; the last matching pattern decides and `!`
/// re-includes.
struct Ignore {
    /// (is an exception, the cleaned pattern, its matcher).
    patterns: Vec<(bool, String, GlobMatcher)>,
}

/// Go's `filepath.Clean` on a `/`-separated pattern: `.` and empty segments dropped, `..`
/// resolved lexically, no trailing `/`.
fn clean(pattern: &str) -> String {
    let rooted = pattern.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in pattern.split('/') {
        match seg {
            "" | "." => {}
            ".." if out.last().is_some_and(|l| *l != "..") => {
                out.pop();
            }
            ".." if rooted => {}
            s => out.push(s),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

impl Ignore {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for line in text.lines() {
            // As Docker: a comment is a line starting with `#`, before any trimming.
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (exception, p) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            if p.is_empty() {
                continue;
            }
            let mut p = clean(p);
            if p.len() > 1 && p.starts_with('/') {
                p.remove(0);
            }
            let matcher = GlobBuilder::new(&p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("bad pattern '{p}': {e}"))?
                .compile_matcher();
            patterns.push((exception, p, matcher));
        }
        Ok(Self { patterns })
    }

    /// Whether `path` (relative, `/`-separated) is left out.
    fn ignored(&self, path: &str) -> bool {
        let mut ignored = false;
        for (exception, _, m) in &self.patterns {
            let hit =
                m.is_match(path) || path.match_indices('/').any(|(i, _)| m.is_match(&path[..i]));
            if hit {
                ignored = !exception;
            }
        }
        ignored
    }

    /// Whether an ignored folder must still be walked: an exception names a path under it.
    fn may_keep_inside(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.patterns
            .iter()
            .any(|(exception, p, _)| *exception && format!("{p}/").starts_with(&prefix))
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("{what} {}: {e}", path.display())),
        _ => Error::Failed(format!("{what} {}: {e}", path.display())),
    }
}

/// The tar of `context` (absolute, inside `root`), checking that `dockerfile` is in it.
pub fn tar(root: &Path, context: &Path, dockerfile: &str) -> Result<Vec<u8>, Error> {
    let rel = context.strip_prefix(root).map_err(|_| {
        Error::PermissionDenied(format!(
            "build context {} is outside {}",
            context.display(),
            root.display()
        ))
    })?;
    let root_dir = Dir::open_ambient_dir(root, ambient_authority())
        .map_err(|e| io_error("build directory", root, e))?;
    let dir = if rel.as_os_str().is_empty() {
        root_dir
    } else {
        root_dir
            .open_dir(rel)
            .map_err(|e| io_error("build context", context, e))?
    };
    let dockerfile_path = Path::new(dockerfile);
    if dockerfile_path.is_absolute()
        || dockerfile_path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::Failed(format!(
            "dockerfile '{dockerfile}' must be a path inside the build context"
        )));
    }
    match dir.metadata(dockerfile) {
        Ok(m) if m.is_file() => {}
        _ => {
            return Err(Error::NotFound(format!(
                "no {dockerfile} in build context {}",
                context.display()
            )));
        }
    }
    let ignore = match dir.read_to_string(".dockerignore") {
        Ok(text) => Ignore::parse(&text).map_err(|e| {
            Error::Failed(format!("{}: {e}", context.join(".dockerignore").display()))
        })?,
        Err(_) => Ignore {
            patterns: Vec::new(),
        },
    };
    let mut builder = tar::Builder::new(Vec::new());
    let mut total = 0u64;
    let always = [dockerfile.trim_start_matches("./"), ".dockerignore"];
    add_dir(
        &mut builder,
        &dir,
        PathBuf::new(),
        &ignore,
        &always,
        &mut total,
        context,
    )?;
    builder
        .into_inner()
        .map_err(|e| Error::Failed(format!("build context: {e}")))
}

fn add_dir(
    builder: &mut tar::Builder<Vec<u8>>,
    dir: &Dir,
    prefix: PathBuf,
    ignore: &Ignore,
    always: &[&str],
    total: &mut u64,
    context: &Path,
) -> Result<(), Error> {
    let failed = |p: &Path, e: std::io::Error| io_error("build context", &context.join(p), e);
    let mut entries: Vec<_> = dir
        .entries()
        .map_err(|e| failed(&prefix, e))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = prefix.join(entry.file_name());
        let Some(name) = path.to_str().map(str::to_owned) else {
            continue;
        };
        let meta = dir
            .symlink_metadata(entry.file_name())
            .map_err(|e| failed(&path, e))?;
        if ignore.ignored(&name) && !always.contains(&name.as_str()) {
            // As Docker: an ignored folder is walked (without its own entry) only when an
            // exception names something inside it.
            if meta.is_dir() && ignore.may_keep_inside(&name) {
                let sub = dir
                    .open_dir(entry.file_name())
                    .map_err(|e| failed(&path, e))?;
                add_dir(builder, &sub, path, ignore, always, total, context)?;
            }
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.permissions().mode());
        header.set_mtime(0);
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, &path, std::io::empty())
                .map_err(|e| failed(&path, e))?;
            let sub = dir
                .open_dir(entry.file_name())
                .map_err(|e| failed(&path, e))?;
            add_dir(builder, &sub, path, ignore, always, total, context)?;
        } else if meta.is_symlink() {
            let target = dir
                .read_link_contents(entry.file_name())
                .map_err(|e| failed(&path, e))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder
                .append_link(&mut header, &path, &target)
                .map_err(|e| failed(&path, e))?;
        } else if meta.is_file() {
            *total += meta.len();
            if *total > MAX_CONTEXT_BYTES {
                return Err(Error::Failed(format!(
                    "build context {} is larger than {} MiB",
                    context.display(),
                    MAX_CONTEXT_BYTES >> 20
                )));
            }
            let file = dir.open(entry.file_name()).map_err(|e| failed(&path, e))?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let reader = file.into_std().take(meta.len());
            builder
                .append_data(&mut header, &path, reader)
                .map_err(|e| failed(&path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    /// What a `.dockerignore` keeps of `files`, as the context's file names.
    fn kept(ignore: &str, files: &[&str]) -> Vec<String> {
        let root = tempfile::tempdir().unwrap();
        for f in files {
            let p = root.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        std::fs::write(root.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(root.path().join(".dockerignore"), ignore).unwrap();
        let t = tar(root.path(), root.path(), "Dockerfile").unwrap();
        let mut a = tar::Archive::new(t.as_slice());
        a.entries()
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.header().entry_type().is_file())
            .map(|e| e.path().unwrap().display().to_string())
            .filter(|n| n != "Dockerfile" && n != ".dockerignore")
            .collect()
    }

    #[test]
    fn dockerignore_has_dockers_semantics() {
        let files = [
            "x.env",
            "sub/x.env",
            "a/b/c.log",
            "c.log",
            "abc",
            "bbc",
            "dir/keep",
            "dir/drop",
            "deep/dir/keep",
        ];
        // `*` stays in one segment: `*.env` is the top folder's only.
        assert_eq!(kept("*.env\n", &["x.env", "sub/x.env"]), ["sub/x.env"]);
        assert_eq!(kept("**/*.env\n", &["x.env", "sub/x.env", "y"]), ["y"]);
        assert_eq!(kept("/a/b\n./c.log\nsub/../abc\n", &files[2..6]), ["bbc"]);
        assert_eq!(kept("[a-b]bc\n", &["abc", "bbc", "cbc"]), ["cbc"]);
        assert_eq!(kept("[^a]bc\n", &["abc", "bbc"]), ["abc"]);
        assert_eq!(kept("?bc\n", &["abc", "a/bc"]), ["a/bc"]);
        // A folder's exception is kept; the last matching line decides.
        assert_eq!(kept("dir\n!dir/keep\n", &files[6..8]), ["dir/keep"]);
        assert_eq!(kept("!dir/keep\ndir\n", &files[6..8]), Vec::<String>::new());
        // An ignored folder is not walked for an exception that does not name a path in it.
        assert_eq!(kept("dir\n!**/keep\n", &files[6..]), ["deep/dir/keep"]);
        // A comment starts the line; `  #x` is a pattern.
        assert_eq!(kept("# abc\n  #x\n", &["abc", "#x"]), ["abc"]);
    }

    #[test]
    fn context_honours_dockerignore_and_stays_inside() {
        let root = tempfile::tempdir().unwrap();
        let ctx = root.path().join("app");
        std::fs::create_dir_all(ctx.join("src")).unwrap();
        std::fs::create_dir_all(ctx.join("node_modules/x")).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(ctx.join("src/main.php"), "<?php\n").unwrap();
        std::fs::write(ctx.join("node_modules/x/a.js"), "1").unwrap();
        std::fs::write(ctx.join("secret.env"), "x").unwrap();
        std::fs::write(ctx.join("keep.env"), "x").unwrap();
        std::fs::write(
            ctx.join(".dockerignore"),
            "node_modules\n*.env\n!keep.env\nDockerfile\n",
        )
        .unwrap();
        std::fs::write(root.path().join("outside"), "no").unwrap();
        std::os::unix::fs::symlink("../outside", ctx.join("link")).unwrap();
        let t = tar(root.path(), &ctx, "Dockerfile").unwrap();
        assert_eq!(
            names(&t),
            [
                ".dockerignore",
                "Dockerfile",
                "keep.env",
                "link",
                "src",
                "src/main.php"
            ]
        );
        // A symlinked context leading out of the grant is refused by cap-std.
        std::os::unix::fs::symlink("/etc", root.path().join("etc")).unwrap();
        let e = tar(root.path(), &root.path().join("etc"), "Dockerfile").unwrap_err();
        assert!(matches!(e, Error::Failed(_) | Error::NotFound(_)), "{e:?}");
        let e = tar(root.path(), &ctx, "../outside").unwrap_err();
        assert!(matches!(e, Error::Failed(m) if m.contains("inside the build context")));
        let e = tar(root.path(), &ctx, "Nope").unwrap_err();
        assert!(matches!(e, Error::NotFound(m) if m.contains("no Nope")));
    }
}
