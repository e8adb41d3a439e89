//! What a member sees of its consumer group, for `/status` and the `partition_unowned`
//! alert: its own member id and generation (from librdkafka), the group's members and the
//! partitions each one owns (the group coordinator's `DescribeGroups`, whose assignments are
//! decoded here from the consumer protocol's bytes), and the partitions of the subscribed
//! topics that no member owns.
//!
//! The assignment bytes come from the broker: they are decoded with every length checked,
//! and a malformed one is an error for that member, never a panic.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use crate::kafka::{Client, LogContext};

/// How often the watcher describes the group.
const DESCRIBE_EVERY: Duration = Duration::from_secs(10);

/// Describes a group every `DESCRIBE_EVERY` on a thread of its own (with a client of its own
/// that joins nothing), so that the broker calls never hold up reading; the source takes the
/// latest description when it publishes its status. Stops when dropped.
pub struct Watcher {
    latest: Arc<Mutex<Option<Result<GroupView, String>>>>,
    /// Descriptions made so far: the reader takes one only when it is newer.
    made: Arc<AtomicU64>,
    /// The topics whose partitions should have owners (a pattern's: those seen so far).
    topics: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    /// Set to describe again at once (a rebalance happened).
    again: Arc<AtomicBool>,
}

impl Watcher {
    pub fn start(node: &str, client: &Client, group: &str, topics: Vec<String>) -> Watcher {
        let w = Watcher {
            latest: Arc::default(),
            made: Arc::default(),
            topics: Arc::new(Mutex::new(topics)),
            stop: Arc::default(),
            again: Arc::default(),
        };
        let unjoined = format!("watershed.{node}.describe");
        let consumer: Result<BaseConsumer<LogContext>, _> = client
            .config(&[("group.id", unjoined.as_str())])
            .create_with_context(LogContext::new(node));
        let consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                *w.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(format!(
                    "creating the client that describes the group: {e}"
                )));
                w.made.store(1, Ordering::Release);
                return w;
            }
        };
        let (latest, made, topics, stop, again) = (
            w.latest.clone(),
            w.made.clone(),
            w.topics.clone(),
            w.stop.clone(),
            w.again.clone(),
        );
        let group = group.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("{node}-group"))
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    again.store(false, Ordering::Relaxed);
                    let names = topics.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let view = describe(&consumer, &group, &names, Duration::from_secs(5));
                    *latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(view);
                    made.fetch_add(1, Ordering::Release);
                    let mut slept = Duration::ZERO;
                    while slept < DESCRIBE_EVERY
                        && !stop.load(Ordering::Relaxed)
                        && !again.load(Ordering::Relaxed)
                    {
                        std::thread::sleep(Duration::from_millis(100));
                        slept += Duration::from_millis(100);
                    }
                }
            });
        if let Err(e) = spawned {
            *w.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(format!(
                "starting the thread that describes the group: {e}"
            )));
            w.made.fetch_add(1, Ordering::Release);
        }
        w
    }

    /// The latest description (or why it failed) if it is newer than the one numbered
    /// `seen`, which becomes its number; `None` when there is nothing new (a cheap check,
    /// made at every read).
    pub fn newer_than(&self, seen: &mut u64) -> Option<Result<GroupView, String>> {
        let made = self.made.load(Ordering::Acquire);
        if made == *seen {
            return None;
        }
        *seen = made;
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The topics to look for unowned partitions in changed (a pattern matched more).
    pub fn set_topics(&self, topics: Vec<String>) {
        *self.topics.lock().unwrap_or_else(|p| p.into_inner()) = topics;
    }

    /// Describe again soon (a rebalance changed the group).
    pub fn refresh(&self) {
        self.again.store(true, Ordering::Relaxed);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// This member's identity in the group's current generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub member_id: String,
    pub generation: i32,
}

/// This consumer's member id and generation; `None` before it has joined.
pub fn membership<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<Membership> {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live handle `consumer` owns; librdkafka returns a copy of the
    // group metadata that is ours to read and destroy, and the member id's string lives as
    // long as that copy (it is copied out before the destroy).
    unsafe {
        let cgmd = rd::rd_kafka_consumer_group_metadata(rk);
        if cgmd.is_null() {
            return None;
        }
        let generation = rd::rd_kafka_consumer_group_metadata_generation_id(cgmd);
        let id = rd::rd_kafka_consumer_group_metadata_member_id(cgmd);
        let member_id = if id.is_null() {
            String::new()
        } else {
            CStr::from_ptr(id).to_string_lossy().into_owned()
        };
        rd::rd_kafka_consumer_group_metadata_destroy(cgmd);
        (generation >= 0 && !member_id.is_empty()).then_some(Membership {
            member_id,
            generation,
        })
    }
}

/// One member as the group coordinator describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub client_id: String,
    pub host: String,
    /// `topic/partition` names, sorted; empty when its assignment did not decode.
    pub partitions: Vec<String>,
}

/// The group as seen now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupView {
    /// The coordinator's state of the group (`Stable`, `PreparingRebalance`, …).
    pub state: String,
    pub members: Vec<Member>,
    /// Partitions of the subscribed topics that no member owns, `topic/partition`, sorted;
    /// `None` when no member's assignment was reported (some brokers leave them out of
    /// `DescribeGroups`), so nothing is known of who owns what.
    pub unowned: Option<Vec<String>>,
    /// Members whose assignment bytes did not decode.
    pub undecodable: usize,
}

/// Describes `group` and finds which partitions of `topics` no member owns (a topic that
/// does not exist has none).
pub fn describe<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<GroupView, String> {
    let list = consumer
        .fetch_group_list(Some(group), timeout)
        .map_err(|e| format!("describing the group: {e}"))?;
    let Some(g) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(GroupView::default());
    };
    let mut owned: BTreeSet<String> = BTreeSet::new();
    let mut members = Vec::new();
    let (mut reported, mut undecodable) = (0, 0);
    for m in g.members() {
        let partitions = match m
            .assignment()
            .filter(|b| !b.is_empty())
            .map(decode_assignment)
        {
            Some(Ok(list)) => {
                reported += 1;
                list.into_iter()
                    .map(|(t, p)| format!("{t}/{p}"))
                    .collect::<BTreeSet<_>>()
            }
            Some(Err(why)) => {
                tracing::debug!(
                    group,
                    member = m.id(),
                    why,
                    "kafka: a member's assignment does not decode"
                );
                undecodable += 1;
                BTreeSet::new()
            }
            None => BTreeSet::new(),
        };
        owned.extend(partitions.iter().cloned());
        members.push(Member {
            id: m.id().to_string(),
            client_id: m.client_id().to_string(),
            host: m.client_host().to_string(),
            partitions: partitions.into_iter().collect(),
        });
    }
    members.sort_by(|a, b| a.id.cmp(&b.id));
    if reported == 0 {
        return Ok(GroupView {
            state: g.state().to_string(),
            members,
            unowned: None,
            undecodable,
        });
    }
    let mut unowned = Vec::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("reading the metadata of {topic}: {e}"))?;
        for t in md.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                let name = format!("{}/{}", t.name(), p.id());
                if !owned.contains(&name) {
                    unowned.push(name);
                }
            }
        }
    }
    unowned.sort();
    Ok(GroupView {
        state: g.state().to_string(),
        members,
        unowned: Some(unowned),
        undecodable,
    })
}

/// The partitions of a consumer-protocol assignment:
/// `version: i16, [topic: string, [partition: i32]], user_data: bytes` (every version).
pub fn decode_assignment(bytes: &[u8]) -> Result<Vec<(String, i32)>, String> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.i16()?;
    if version < 0 {
        return Err(format!("version {version}"));
    }
    let topics = r.count()?;
    let mut out = Vec::new();
    for _ in 0..topics {
        let topic = r.string()?;
        let partitions = r.count()?;
        for _ in 0..partitions {
            out.push((topic.clone(), r.i32()?));
        }
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("ends at byte {} where {n} more were expected", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An array's length: never more elements than bytes left (each takes at least one).
    fn count(&mut self) -> Result<usize, String> {
        let n = self.i32()?;
        let left = self.bytes.len() - self.at;
        match usize::try_from(n) {
            Ok(n) if n <= left => Ok(n),
            _ if n == -1 => Ok(0),
            _ => Err(format!(
                "an array claims {n} elements with {left} bytes left"
            )),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.i16()?;
        let n = usize::try_from(n).map_err(|_| format!("a string of length {n}"))?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "a topic name is not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend_from_slice(&(t.len() as i16).to_be_bytes());
            b.extend_from_slice(t.as_bytes());
            b.extend_from_slice(&(ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b
    }

    #[test]
    fn an_assignment_decodes_to_its_partitions() {
        let b = assignment(&[("obs", &[0, 2]), ("other", &[5])]);
        assert_eq!(
            decode_assignment(&b).unwrap(),
            vec![("obs".into(), 0), ("obs".into(), 2), ("other".into(), 5)]
        );
        assert_eq!(decode_assignment(&assignment(&[])).unwrap(), vec![]);
    }

    #[test]
    fn every_truncation_and_a_huge_count_are_errors_not_panics() {
        let b = assignment(&[("obs", &[0, 2])]);
        for n in 0..b.len() - 4 {
            assert!(decode_assignment(&b[..n]).is_err(), "cut at {n}");
        }
        let mut huge = b.clone();
        huge[2..6].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_assignment(&huge).is_err());
        let mut negative = b;
        negative[6..8].copy_from_slice(&(-5i16).to_be_bytes());
        assert!(decode_assignment(&negative).is_err());
    }
}
