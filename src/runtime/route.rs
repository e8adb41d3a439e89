//! Routing of a task's output ports to the input channels of downstream instances: forward,
//! a single consumer, round-robin, or a keyed hash shuffle (rows with equal key columns
//! always reach the same instance). Watermarks, barriers and `End` go to every consumer.

use std::hash::{BuildHasher, Hash, Hasher};

use crossbeam_channel::Sender;

use crate::dataflow::Message;
use crate::error::RunError;
use crate::status::InstanceStatus;
use crate::types::{Batch, Value};

/// How rows of one edge are spread over the consumer's instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partitioning {
    /// Upstream instance `i` sends to downstream instance `i` (equal parallelism).
    Forward,
    /// Every row goes to the one consumer instance.
    Single,
    /// Whole batches in turn to each instance.
    RoundRobin,
    /// By hash of these columns.
    Hash(Vec<usize>),
    /// Every row to every instance.
    Broadcast,
}

pub type Envelope = (u32, Message);

/// One downstream edge of one output port, seen from one upstream instance.
pub struct EdgeOut {
    pub partitioning: Partitioning,
    /// The slot this upstream instance occupies in each consumer's gate.
    pub slot: u32,
    pub senders: Vec<Sender<Envelope>>,
    /// This instance's index (for `Forward`).
    pub instance: usize,
    next: usize,
}

impl EdgeOut {
    pub fn new(
        partitioning: Partitioning,
        slot: u32,
        senders: Vec<Sender<Envelope>>,
        instance: usize,
    ) -> EdgeOut {
        EdgeOut {
            partitioning,
            slot,
            senders,
            instance,
            next: 0,
        }
    }
}

/// The hasher for keyed shuffles: fixed seeds, so a key maps to the same instance in every
/// run and every process.
pub fn shuffle_hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(
        0x5157_4152_4544_5348,
        0x6b65_7965_645f_7368,
        0x7566_666c_655f_7631,
        0x7761_7465_7273_6864,
    )
}

/// The instance (of `n`) that owns the row's key.
#[inline]
pub fn owner_of(hasher: &ahash::RandomState, row: &[Value], cols: &[usize], n: usize) -> usize {
    let mut state = hasher.build_hasher();
    for &c in cols {
        row[c].hash(&mut state);
    }
    ((state.finish() as u128 * n as u128) >> 64) as usize
}

/// All output edges of one task instance, by port.
pub struct Router {
    ports: Vec<Vec<EdgeOut>>,
    hasher: ahash::RandomState,
    /// Per port: the counters its records move.
    counters: Vec<Vec<metrics::Counter>>,
    status: std::sync::Arc<InstanceStatus>,
}

impl Router {
    pub fn new(
        ports: Vec<Vec<EdgeOut>>,
        counters: Vec<Vec<metrics::Counter>>,
        status: std::sync::Arc<InstanceStatus>,
    ) -> Router {
        Router {
            ports,
            hasher: shuffle_hasher(),
            counters,
            status,
        }
    }

    fn closed(node: &InstanceStatus) -> RunError {
        RunError::Stopped {
            task: node.label(),
            why: "a downstream task stopped",
        }
    }

    /// Sends a batch emitted on `port` to its consumers.
    pub fn send(&mut self, port: usize, batch: Batch) -> Result<(), RunError> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        for c in &self.counters[port] {
            c.increment(n);
        }
        self.status.add_records_out(port, n);
        let edges = self.ports[port].len();
        let mut batch = Some(batch);
        for e in 0..edges {
            let b = if e + 1 == edges {
                batch.take().expect("batch")
            } else {
                batch.as_ref().expect("batch").clone()
            };
            self.send_edge(port, e, b)?;
        }
        Ok(())
    }

    fn send_edge(&mut self, port: usize, e: usize, batch: Batch) -> Result<(), RunError> {
        let edge = &mut self.ports[port][e];
        let target = match &edge.partitioning {
            Partitioning::Single => 0,
            Partitioning::Forward => edge.instance,
            Partitioning::RoundRobin => {
                edge.next = (edge.next + 1) % edge.senders.len();
                edge.next
            }
            Partitioning::Broadcast => {
                let last = edge.senders.len() - 1;
                for s in &edge.senders[..last] {
                    s.send((edge.slot, Message::Data(batch.clone())))
                        .map_err(|_| Self::closed(&self.status))?;
                }
                last
            }
            Partitioning::Hash(cols) => {
                let n = edge.senders.len();
                if n == 1 {
                    0
                } else {
                    let hasher = &self.hasher;
                    let parts = batch.split_by(n, |row| owner_of(hasher, row, cols, n));
                    for (i, part) in parts.into_iter().enumerate() {
                        if !part.is_empty() {
                            edge.senders[i]
                                .send((edge.slot, Message::Data(part)))
                                .map_err(|_| Self::closed(&self.status))?;
                        }
                    }
                    return Ok(());
                }
            }
        };
        edge.senders[target]
            .send((edge.slot, Message::Data(batch)))
            .map_err(|_| Self::closed(&self.status))
    }

    /// Sends a control message (watermark, barrier, end) to every consumer of every port.
    pub fn broadcast(&mut self, msg: &Message) -> Result<(), RunError> {
        for edges in &self.ports {
            for edge in edges {
                for s in &edge.senders {
                    s.send((edge.slot, msg.clone()))
                        .map_err(|_| Self::closed(&self.status))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn equal_keys_go_to_the_same_instance() {
        let h = shuffle_hasher();
        let a = [Value::from("10.0.0.1"), Value::Int(443)];
        let b = [Value::from("10.0.0.1"), Value::Int(443)];
        for n in 1..8 {
            assert_eq!(owner_of(&h, &a, &[0, 1], n), owner_of(&h, &b, &[0, 1], n));
            assert!(owner_of(&h, &a, &[0, 1], n) < n);
        }
    }

    #[test]
    fn keys_spread_over_instances() {
        let h = shuffle_hasher();
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            let row = [Value::Str(compact_str::format_compact!("host-{i}"))];
            counts[owner_of(&h, &row, &[0], 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
