//! Consumer-group offsets that ride in the output transaction: the link between a pipeline's
//! Kafka sources that read in a consumer group and its exactly-once Kafka sink, so that the
//! offsets of what an epoch read commit in the same transaction as what it wrote (Kafka's
//! `send_offsets_to_transaction`, fenced by the group member's generation). An instance
//! killed between the two can then never leave output without its offsets (the next owner
//! would write it again) or offsets without their output (it would be lost).
//!
//! At compile time a group source registers its group (`Links::register_group`) and the
//! first exactly-once Kafka sink on the same brokers claims the groups there
//! (`Links::claim`): its instance 0 carries their offsets. At run time each source instance
//! opens a `GroupLink`, keeps its member's group metadata current (after every rebalance)
//! and records its offsets at every barrier; the carrying sink adds the offsets of the
//! epoch it commits, and marks the epoch committed, which is what a carried source waits for
//! before it releases a partition to the group or closes. A carried source never commits
//! offsets itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::ConsumerGroupMetadata;

use crate::types::Epoch;

/// A pipeline's group sources and which sink carries their offsets.
#[derive(Default)]
pub struct Links {
    groups: Mutex<Vec<Group>>,
}

struct Group {
    /// The consumer group's name.
    group: String,
    brokers: String,
    node: String,
    /// Claimed by an exactly-once sink (its name).
    carrier: Option<String>,
    /// The source's instances, as they open.
    instances: Vec<Arc<GroupLink>>,
}

/// Names only: the links hold client handles.
impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let names: Vec<(&str, Option<&str>)> = groups
            .iter()
            .map(|g| (g.node.as_str(), g.carrier.as_deref()))
            .collect();
        write!(f, "Links {names:?}")
    }
}

/// What one source instance shares with the carrying sink.
pub struct GroupLink {
    pub node: String,
    /// Whether a sink carries these offsets (the source commits none itself).
    pub carried: bool,
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    /// The member's group metadata (its generation), as of the last rebalance.
    metadata: Option<Arc<ConsumerGroupMetadata>>,
    /// Offsets recorded at each barrier not committed yet: `(topic, partition, next offset)`.
    at_barrier: BTreeMap<Epoch, Vec<(String, i32, i64)>>,
    /// The highest epoch whose offsets a transaction committed.
    committed: Option<Epoch>,
}

/// The offsets one transaction commits for one member.
pub struct Carried {
    pub link: Arc<GroupLink>,
    pub epoch: Epoch,
    pub metadata: Arc<ConsumerGroupMetadata>,
    pub offsets: Vec<(String, i32, i64)>,
}

impl Links {
    /// A group source named `node` reads through `brokers`.
    pub fn register_group(&self, node: &str, group: &str, brokers: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.push(Group {
            group: group.to_string(),
            brokers: brokers.to_string(),
            node: node.to_string(),
            carrier: None,
            instances: Vec::new(),
        });
    }

    /// Exactly-once sink `sink` writes through `brokers`: it carries the offsets of the group
    /// sources there no other sink carries yet. Returns the sources it carries.
    pub fn claim(&self, sink: &str, brokers: &str) -> Vec<String> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let mut claimed = Vec::new();
        for g in groups.iter_mut() {
            if g.brokers == brokers && g.carrier.is_none() {
                g.carrier = Some(sink.to_string());
                claimed.push(g.node.clone());
            }
        }
        claimed
    }

    /// Each group source with its group and the sink carrying its offsets, if any.
    pub fn describe(&self) -> Vec<(String, String, Option<String>)> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .iter()
            .map(|g| (g.node.clone(), g.group.clone(), g.carrier.clone()))
            .collect()
    }

    /// The sources that read in a consumer group.
    pub fn group_sources(&self) -> Vec<String> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.iter().map(|g| g.node.clone()).collect()
    }

    /// The sink carrying source `node`'s offsets, if any.
    pub fn carrier_of(&self, node: &str) -> Option<String> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .iter()
            .find(|g| g.node == node)
            .and_then(|g| g.carrier.clone())
    }

    /// An instance of group source `node` opens (at run time).
    pub fn open(&self, node: &str) -> Arc<GroupLink> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let group = groups.iter_mut().find(|g| g.node == node);
        let carried = group.as_ref().is_some_and(|g| g.carrier.is_some());
        let link = Arc::new(GroupLink {
            node: node.to_string(),
            carried,
            state: Mutex::default(),
        });
        if let Some(g) = group {
            g.instances.push(link.clone());
        }
        link
    }

    /// The offsets sink `sink` commits with `epoch`: for every member whose offsets it
    /// carries, those recorded at the latest barrier up to `epoch` (older ones are dropped).
    pub fn carried_by(&self, sink: &str, epoch: Epoch) -> Vec<Carried> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for g in groups.iter().filter(|g| g.carrier.as_deref() == Some(sink)) {
            for link in &g.instances {
                if let Some(c) = link.take_up_to(epoch) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// Sink `sink` committed the transaction of `epoch`: every member it carries has its
    /// offsets up to `epoch` committed (those with none to commit too).
    pub fn mark_committed(&self, sink: &str, epoch: Epoch) {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        for g in groups.iter().filter(|g| g.carrier.as_deref() == Some(sink)) {
            for link in &g.instances {
                link.committed(epoch);
            }
        }
    }
}

impl GroupLink {
    /// The member's group metadata changed (a rebalance).
    pub fn set_metadata(&self, metadata: Option<ConsumerGroupMetadata>) {
        self.lock().metadata = metadata.map(Arc::new);
    }

    /// The member's offsets at the barrier of `epoch`.
    pub fn record(&self, epoch: Epoch, offsets: Vec<(String, i32, i64)>) {
        self.lock().at_barrier.insert(epoch, offsets);
    }

    /// A transaction holding the offsets of `epoch` committed.
    pub fn committed(&self, epoch: Epoch) {
        let mut s = self.lock();
        s.committed = Some(s.committed.map_or(epoch, |c| c.max(epoch)));
    }

    /// Whether the offsets of `epoch` (or a later one) are committed.
    pub fn is_committed(&self, epoch: Epoch) -> bool {
        self.lock().committed.is_some_and(|c| c >= epoch)
    }

    fn take_up_to(self: &Arc<Self>, epoch: Epoch) -> Option<Carried> {
        let mut s = self.lock();
        let metadata = s.metadata.clone()?;
        let (&at, _) = s.at_barrier.range(..=epoch).next_back()?;
        let offsets = s.at_barrier.remove(&at).unwrap_or_default();
        s.at_barrier = s.at_barrier.split_off(&at);
        Some(Carried {
            link: self.clone(),
            epoch: at,
            metadata,
            offsets,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sink_on_the_same_brokers_carries_a_group() {
        let links = Links::default();
        links.register_group("obs", "g", "b:9092");
        links.register_group("other", "g2", "elsewhere:9092");
        assert!(links.claim("out", "x:1").is_empty());
        assert_eq!(links.claim("out", "b:9092"), vec!["obs".to_string()]);
        assert!(links.claim("second", "b:9092").is_empty());
        assert_eq!(links.carrier_of("obs").as_deref(), Some("out"));
        assert_eq!(links.carrier_of("other"), None);
        assert!(links.open("obs").carried);
        assert!(!links.open("other").carried);
    }

    #[test]
    fn a_commit_takes_the_latest_barrier_up_to_its_epoch() {
        let links = Links::default();
        links.register_group("obs", "g", "b");
        links.claim("out", "b");
        let link = links.open("obs");
        link.record(3, vec![("t".into(), 0, 10)]);
        link.record(4, vec![("t".into(), 0, 20)]);
        link.record(6, vec![("t".into(), 0, 30)]);
        // No metadata yet (not a member): nothing to carry.
        assert!(links.carried_by("out", 4).is_empty());
        link.record(4, vec![("t".into(), 0, 20)]);
        // Metadata cannot be built without a consumer here; `is_committed` and the
        // bookkeeping are what is checked.
        link.committed(4);
        assert!(link.is_committed(4) && link.is_committed(3) && !link.is_committed(5));
        assert!(links.carried_by("someone-else", 6).is_empty());
    }
}
