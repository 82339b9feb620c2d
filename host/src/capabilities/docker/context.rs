//! A build context as the tar archive the engine wants, read through cap-std from inside the
//! granted build directory: a path or symlink that leads out of it is refused by the
//! filesystem layer, not by string checks.

use std::io::Read;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, PermissionsExt};

use crate::bindings::types::Error;
use crate::capabilities::policy::glob;

/// The largest context sent to the engine.
pub const MAX_CONTEXT_BYTES: u64 = 1 << 30;

/// `.dockerignore`: the last matching pattern decides; `!` re-includes.
struct Ignore(Vec<(bool, String)>);

impl Ignore {
    fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| {
                    let (keep, p) = match l.strip_prefix('!') {
                        Some(p) => (true, p.trim()),
                        None => (false, l),
                    };
                    let p = p.trim_start_matches("./").trim_matches('/').to_owned();
                    (keep, p)
                })
                .collect(),
        )
    }

    /// Whether `path` (relative, `/`-separated) is left out. A pattern matching a folder
    /// matches everything in it.
    fn ignored(&self, path: &str) -> bool {
        let mut ignored = false;
        for (keep, pattern) in &self.0 {
            let hit = glob(pattern, path)
                || path
                    .match_indices('/')
                    .any(|(i, _)| glob(pattern, &path[..i]));
            if hit {
                ignored = !keep;
            }
        }
        ignored
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
        Ok(text) => Ignore::parse(&text),
        Err(_) => Ignore(Vec::new()),
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
        if ignore.ignored(&name) && !always.contains(&name.as_str()) {
            continue;
        }
        let meta = dir
            .symlink_metadata(entry.file_name())
            .map_err(|e| failed(&path, e))?;
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
