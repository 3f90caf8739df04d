//! The retry memory: the retry keys of messages committed recently, so that a message sent
//! again is answered AA without being stored twice. Bounded; the oldest key is forgotten
//! first (a retry that comes after that is stored again, which is harmless: a second copy of
//! a point overwrites the first in InfluxDB).

use std::collections::{HashSet, VecDeque};

/// Messages remembered (their retry keys) to recognise resends, oldest forgotten first.
const DEDUPE_CAPACITY: usize = 10_000;

/// Retry keys of messages committed recently.
#[derive(Default)]
pub(crate) struct Seen {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl Seen {
    pub fn contains(&self, k: &[u8; 32]) -> bool {
        self.set.contains(k)
    }

    pub fn insert(&mut self, k: [u8; 32]) {
        if self.set.insert(k) {
            self.order.push_back(k);
            if self.order.len() > DEDUPE_CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}
