//! Holds: money moved from a wallet's available to its frozen balance, waiting to be captured,
//! released, or to expire.
//!
//! Open holds live in a hash map by id, and those with an expiry also in an ordered set by
//! (expiry, id), so expiry walks holds in one deterministic order. A closed hold is removed;
//! since ids are sequential per shard, "closed" and "never existed" stay distinguishable.

use std::collections::BTreeSet;

use hashbrown::HashMap;

use crate::hashing::FixedState;
use crate::ids::{HoldId, WalletId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub id: HoldId,
    pub wallet: WalletId,
    pub amount: u128,
    pub expires_at_ns: Option<u64>,
    /// A withdrawal hold: captured to settlement only.
    pub withdrawal: bool,
    pub created_at_ns: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Holds {
    open: HashMap<u64, Hold, FixedState>,
    expiry: BTreeSet<(u64, u64)>,
    /// Number the next hold gets; every number below it was used.
    pub(crate) next_number: u64,
}

impl Holds {
    pub(crate) fn new(seed: u64) -> Self {
        Holds {
            open: HashMap::with_hasher(FixedState(seed)),
            expiry: BTreeSet::new(),
            next_number: 1,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    pub(crate) fn get(&self, id: HoldId) -> Option<&Hold> {
        self.open.get(&id.0)
    }

    pub(crate) fn insert(&mut self, hold: Hold) {
        if let Some(at) = hold.expires_at_ns {
            self.expiry.insert((at, hold.id.0));
        }
        let previous = self.open.insert(hold.id.0, hold);
        assert!(previous.is_none(), "hold id reused");
    }

    pub(crate) fn remove(&mut self, id: HoldId) -> Hold {
        let hold = self.open.remove(&id.0);
        let Some(hold) = hold else {
            unreachable!("removing a hold that is not open")
        };
        if let Some(at) = hold.expires_at_ns {
            assert!(self.expiry.remove(&(at, id.0)), "expiry index lost a hold");
        }
        hold
    }

    /// The open hold that expires first, if it is due at `now_ns`.
    pub(crate) fn first_due(&self, now_ns: u64) -> Option<HoldId> {
        let &(at, id) = self.expiry.first()?;
        (at <= now_ns).then_some(HoldId(id))
    }

    /// Open holds in id order.
    pub(crate) fn sorted(&self) -> Vec<Hold> {
        let mut holds: Vec<Hold> = self.open.values().copied().collect();
        holds.sort_unstable_by_key(|h| h.id);
        holds
    }
}
