//! Bounds that more than one component checks: the manifest reader refuses what the
//! coordinator would refuse, with the same numbers.

/// Most attempts a batch may allow each job.
pub const MAX_ATTEMPTS: u32 = 100;
/// Most jobs one batch may hold (the coordinator's default cap, and a manifest's limit).
pub const MAX_JOBS_PER_BATCH: u32 = 100_000;

/// Most jobs one job may wait on (`after`).
pub const MAX_AFTER: usize = 1000;

/// Largest input image, in bytes: what `submit` uploads and what a worker downloads.
pub const MAX_INPUT_BYTES: u64 = 256 << 20;
/// Largest result image a client downloads (a 16-bit 8192 px PNG is about 400 MB).
pub const MAX_RESULT_BYTES: u64 = 1 << 30;
/// Largest sidecar (JSON with the loss history) a client downloads.
pub const MAX_SIDECAR_BYTES: u64 = 64 << 20;

/// Places counted per key (an identity, an address), at most `max` held at once for
/// each; a place is given back when its [`Place`] is dropped.
#[derive(Debug)]
pub struct PerKey<K> {
    counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<K, usize>>>,
    max: usize,
}

/// One held place of a [`PerKey`].
#[derive(Debug)]
pub struct Place<K: std::hash::Hash + Eq> {
    counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<K, usize>>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> PerKey<K> {
    /// At most `max` places per key.
    pub fn new(max: usize) -> Self {
        Self {
            counts: std::sync::Arc::default(),
            max,
        }
    }

    /// The most places one key may hold.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for `key`, or `None` when it holds `max` already.
    pub fn take(&self, key: &K) -> Option<Place<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Place {
            counts: std::sync::Arc::clone(&self.counts),
            key: key.clone(),
        })
    }
}

impl<K: std::hash::Hash + Eq> Drop for Place<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PerKey;

    #[test]
    fn a_key_holds_at_most_max_places_and_a_dropped_one_is_given_back() {
        let places = PerKey::new(2);
        let a1 = places.take(&"a").expect("first");
        let _a2 = places.take(&"a").expect("second");
        assert!(places.take(&"a").is_none(), "a third place for a");
        let _b = places.take(&"b").expect("b is counted apart");
        drop(a1);
        assert!(
            places.take(&"a").is_some(),
            "a's dropped place is given back"
        );
    }
}
