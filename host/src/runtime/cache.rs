//! Compiled plugins cached on disk, keyed by wasmtime's compatibility hash and the wasm's
//! content hash. A cache entry that does not load is compiled again and overwritten.

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Lowercase hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds `Hash` output into SHA-256, so the key does not depend on std's hasher.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The cache folder of this engine's configuration.
pub(crate) fn engine_dir(engine: &Engine, cache_dir: &Path) -> PathBuf {
    let mut h = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    let digest = h.0.finalize();
    cache_dir.join(hex(&digest[..12]))
}

/// Compiles `wasm`, through the cache when there is one. Returns the component and whether
/// it came from the cache.
pub(crate) fn compile(
    engine: &Engine,
    dir: Option<&Path>,
    wasm: &[u8],
    wasm_hash: &str,
) -> wasmtime::Result<(Component, bool)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, wasm)?, false));
    };
    let entry = dir.join(format!("{wasm_hash}.cwasm"));
    // Read into memory rather than `deserialize_file`'s mmap: a cache file truncated or
    // rewritten in place by someone else would otherwise crash the host with SIGBUS.
    if let Ok(bytes) = std::fs::read(&entry) {
        // SAFETY: the cache folder belongs to the manager (not to plugins), entries are written
        // only by `Component::serialize` below through an atomic rename, and wasmtime checks
        // the header and the engine configuration recorded in the bytes before using them.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, &bytes) };
        match loaded {
            Ok(c) => return Ok((c, true)),
            Err(e) => {
                tracing::warn!(path = %entry.display(), cause = ?e, "cached plugin did not load, compiling again")
            }
        }
    }
    let component = Component::new(engine, wasm)?;
    if let Err(e) = store(&entry, &component) {
        tracing::warn!(path = %entry.display(), cause = %e, "cannot write the compiled plugin cache");
    }
    Ok((component, false))
}

fn store(entry: &Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("serialize: {e:?}"))?;
    if let Some(parent) = entry.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, entry)?;
    Ok(())
}
