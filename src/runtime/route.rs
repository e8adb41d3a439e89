//! Routing of a task's output ports to the input channels of downstream instances: forward,
//! a single consumer, round-robin, or a keyed hash shuffle (rows with equal key columns
//! always reach the same instance, the owner of their key group: `dataflow::key_group`).
//! Watermarks, barriers and `End` go to every consumer.

use crossbeam_channel::Sender;

use crate::dataflow::Message;
use crate::dataflow::key_group::{key_hasher, owner_of_row};
use crate::error::RunError;
use crate::status::InstanceStatus;
use crate::types::Batch;

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
            hasher: key_hasher(),
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
                    let parts = batch.split_by(n, |row| owner_of_row(hasher, row, cols, n));
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
    use crate::types::Value;

    #[test]
    fn equal_keys_go_to_the_same_instance() {
        let h = key_hasher();
        let a = [Value::from("10.0.0.1"), Value::Int(443)];
        let b = [Value::from("10.0.0.1"), Value::Int(443)];
        for n in 1..8 {
            assert_eq!(
                owner_of_row(&h, &a, &[0, 1], n),
                owner_of_row(&h, &b, &[0, 1], n)
            );
            assert!(owner_of_row(&h, &a, &[0, 1], n) < n);
        }
    }
}
