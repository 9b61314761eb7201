//! Adj-RIB-Out: what one peer has been sent, and what it still has to be sent.
//!
//! The RIB writes the route it wants the peer to have for a prefix ([`AdjRibOut::set`]); the
//! session's writer drains the differences in packed UPDATEs ([`AdjRibOut::take_batch`]) as
//! fast as the peer reads them. A prefix that changes again before it was sent is sent once,
//! with its latest route: a slow peer costs memory proportional to the table, never a queue of
//! stale messages, and never stalls the RIB.

use std::sync::Arc;

use hashbrown::HashMap;
use ipnet::IpNet;

use crate::wire::{Afi, Codec, Message, Update, pack_announcements, pack_withdrawals};

use super::{Attributes, family};

/// What one peer was sent and still has to be sent.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    epoch: u64,
    active: bool,
    families: Vec<Afi>,
    sent: HashMap<IpNet, Arc<Attributes>>,
    pending: HashMap<IpNet, Option<Arc<Attributes>>>,
    end_of_rib: Vec<Afi>,
}

impl AdjRibOut {
    /// The session generation this Adj-RIB-Out is filled for; a writer of another session
    /// must not drain it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the session is up and the RIB fills this Adj-RIB-Out.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Number of prefixes the peer currently has from us.
    pub fn sent_count(&self) -> usize {
        self.sent.len()
    }

    /// Number of prefixes with a change not yet sent.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The route the peer has from us for a prefix.
    pub fn sent(&self, prefix: &IpNet) -> Option<&Arc<Attributes>> {
        self.sent.get(prefix)
    }

    /// Shrinks the maps that hold less than a quarter of what they have room for.
    pub(crate) fn shrink_if_sparse(&mut self) {
        if super::is_sparse(self.sent.len(), self.sent.capacity()) {
            self.sent.shrink_to_fit();
        }
        if super::is_sparse(self.pending.len(), self.pending.capacity()) {
            self.pending.shrink_to_fit();
        }
    }

    /// Whether [`AdjRibOut::take_batch`] has something to return.
    pub fn has_work(&self) -> bool {
        self.active && (!self.pending.is_empty() || !self.end_of_rib.is_empty())
    }

    /// Starts a session: nothing sent yet.
    pub(crate) fn activate(&mut self, epoch: u64, families: Vec<Afi>) {
        self.epoch = epoch;
        self.active = true;
        self.families = families;
        self.sent.clear();
        self.pending.clear();
        self.end_of_rib.clear();
    }

    /// Ends a session.
    pub(crate) fn deactivate(&mut self) {
        self.active = false;
        self.sent = HashMap::new();
        self.pending = HashMap::new();
        self.end_of_rib.clear();
    }

    /// Queues End-of-RIB markers, sent once everything queued before them is out.
    pub(crate) fn queue_end_of_rib(&mut self) {
        self.end_of_rib = self.families.clone();
    }

    /// Records the route the peer should have for a prefix (`None`: none).
    pub(crate) fn set(&mut self, prefix: IpNet, attrs: Option<Arc<Attributes>>) {
        if !self.active || (attrs.is_none() && self.sent.is_empty() && self.pending.is_empty()) {
            // Nothing to withdraw: the common case of a peer's own routes while it sends us
            // its table.
            return;
        }
        let unchanged = match (self.sent.get(&prefix), &attrs) {
            (Some(sent), Some(new)) => Arc::ptr_eq(sent, new),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            self.pending.remove(&prefix);
        } else {
            self.pending.insert(prefix, attrs);
        }
    }

    /// Queues every route of a family again, for a ROUTE-REFRESH (RFC 2918).
    pub(crate) fn refresh(&mut self, afi: Afi) {
        for (prefix, attrs) in &self.sent {
            if family(prefix) == afi {
                self.pending
                    .entry(*prefix)
                    .or_insert_with(|| Some(attrs.clone()));
            }
        }
        self.end_of_rib = vec![afi];
    }

    /// Takes up to `max_prefixes` queued changes and records them as sent. Prefixes that
    /// share attributes come out together, so they can be packed into few UPDATEs.
    /// End-of-RIB markers follow once nothing else is queued.
    pub fn take_batch(&mut self, max_prefixes: usize) -> OutBatch {
        let mut batch = OutBatch::default();
        if !self.active {
            return batch;
        }
        let prefixes: Vec<IpNet> = self.pending.keys().take(max_prefixes).copied().collect();
        let mut groups: HashMap<(Afi, *const Attributes), usize> = HashMap::new();
        for prefix in prefixes {
            let Some(change) = self.pending.remove(&prefix) else {
                continue;
            };
            match change {
                None => {
                    self.sent.remove(&prefix);
                    batch.withdrawn.push(prefix);
                }
                Some(attrs) => {
                    self.sent.insert(prefix, attrs.clone());
                    let key = (family(&prefix), Arc::as_ptr(&attrs));
                    let index = *groups.entry(key).or_insert_with(|| {
                        batch.announced.push((attrs, Vec::new()));
                        batch.announced.len() - 1
                    });
                    batch.announced[index].1.push(prefix);
                }
            }
        }
        if self.pending.is_empty() {
            batch.end_of_rib = std::mem::take(&mut self.end_of_rib);
        }
        // A withdrawn table leaves both maps mostly empty as it drains.
        self.shrink_if_sparse();
        batch
    }
}

/// Changes taken from an Adj-RIB-Out, ready to be encoded.
#[derive(Debug, Default)]
pub struct OutBatch {
    /// Prefixes to withdraw.
    pub withdrawn: Vec<IpNet>,
    /// Prefixes to announce, grouped by their attributes (each group of one family).
    pub announced: Vec<(Arc<Attributes>, Vec<IpNet>)>,
    /// Families whose End-of-RIB marker follows.
    pub end_of_rib: Vec<Afi>,
}

impl OutBatch {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.withdrawn.is_empty() && self.announced.is_empty() && self.end_of_rib.is_empty()
    }

    /// Number of prefixes in the batch.
    pub fn prefixes(&self) -> usize {
        self.withdrawn.len() + self.announced.iter().map(|(_, p)| p.len()).sum::<usize>()
    }

    /// The UPDATE messages, encoded for a session: withdrawals first, then announcements
    /// packed as many to a message as fit, then End-of-RIB markers. A group whose
    /// attributes cannot be encoded is left out (and logged) rather than ending the session.
    pub fn encode(&self, codec: &Codec) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        match pack_withdrawals(&self.withdrawn) {
            Ok(messages) => out.extend(messages),
            Err(error) => tracing::warn!(%error, "cannot encode withdrawals"),
        }
        for (attrs, prefixes) in &self.announced {
            // Attributes in the RIB's normal form are the packer's template as they are.
            match pack_announcements(attrs, prefixes, codec) {
                Ok(messages) => out.extend(messages),
                Err(error) => {
                    tracing::warn!(%error, prefixes = prefixes.len(), "cannot encode routes")
                }
            }
        }
        for afi in &self.end_of_rib {
            let marker = Message::Update(Update::end_of_rib_marker(*afi));
            match marker.encode(codec) {
                Ok(message) => out.push(message),
                Err(error) => tracing::warn!(%error, "cannot encode End-of-RIB"),
            }
        }
        out
    }
}
