//! The per-store resource limiter: a memory cap that remembers it was hit, so a memory bomb
//! is reported as such rather than as the `unreachable` trap Rust's allocator ends with.

use wasmtime::ResourceLimiter;

/// Table elements one instance may have.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Caps one store's memories and tables.
#[derive(Debug)]
pub(crate) struct Limiter {
    max_memory_bytes: usize,
    /// The size a memory wanted to grow to when the cap refused it.
    pub(crate) refused_growth: Option<usize>,
}

impl Limiter {
    pub(crate) fn new(max_memory_bytes: u64) -> Self {
        Self {
            max_memory_bytes: usize::try_from(max_memory_bytes).unwrap_or(usize::MAX),
            refused_growth: None,
        }
    }
}

impl Limiter {
    pub(crate) fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            self.refused_growth = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
