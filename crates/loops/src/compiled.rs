//! The one "compile once per description" map behind every kernel cache of the crate.

use crate::error::Result;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Kernels keyed by the full description they were compiled from (op, shapes, dtypes,
/// schedule, ISA), each compiled once and shared by `Arc`.
pub(crate) struct CompiledByDesc<D, K> {
    map: Mutex<HashMap<D, Arc<K>>>,
}

impl<D, K> Default for CompiledByDesc<D, K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<D: Eq + Hash + Clone, K> CompiledByDesc<D, K> {
    /// A panic elsewhere cannot leave the map half-written (inserts are single calls), so a
    /// poisoned lock is still a valid map.
    fn lock(&self) -> MutexGuard<'_, HashMap<D, Arc<K>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kernel for `desc`, compiled by `compile` on first use. Compilation runs outside
    /// the lock; if two threads race, the first kernel stored wins.
    pub(crate) fn get_or_compile(
        &self,
        desc: &D,
        compile: impl FnOnce(&D) -> Result<K>,
    ) -> Result<Arc<K>> {
        if let Some(k) = self.lock().get(desc) {
            return Ok(k.clone());
        }
        let k = Arc::new(compile(desc)?);
        Ok(self.lock().entry(desc.clone()).or_insert(k).clone())
    }

    /// Number of kernels held.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
