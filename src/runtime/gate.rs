//! The input gate of a task with several input channels ("slots": one per upstream instance
//! per input edge): merges their watermarks (min over non-idle slots, never backwards),
//! aligns barriers (a slot that delivered barrier `n` is held back, its messages buffered,
//! until every live slot delivered `n`), and turns `End` on every slot into the end of input.

use std::collections::VecDeque;

use crate::dataflow::Message;
use crate::time::watermark::END_OF_TIME;
use crate::time::{InputWatermarks, Watermark};
use crate::types::{Batch, Epoch, EventTime};

/// What the gate lets through, in order.
#[derive(Debug, PartialEq)]
pub enum GateEvent {
    /// A batch from input edge `input`.
    Data { input: usize, batch: Batch },
    /// The watermark of input edge `input` alone (the minimum over its slots, none idle)
    /// rose to this time; only for a task with several input edges, and before the merged
    /// watermark it may move.
    InputWatermark { input: usize, watermark: EventTime },
    /// The merged watermark changed.
    Watermark(Watermark),
    /// Every live slot has delivered this barrier; everything before it has been let through.
    Barrier(Epoch),
    /// Every slot has ended.
    End,
}

pub struct InputGate {
    /// Input edge of each slot.
    slot_input: Vec<usize>,
    watermarks: InputWatermarks,
    blocked: Vec<bool>,
    ended: Vec<bool>,
    aligning: Option<Epoch>,
    /// When the barrier being aligned first arrived, and how long the last alignment took.
    aligning_since_ms: i64,
    last_alignment_ms: i64,
    buffered: VecDeque<(usize, Message)>,
    finished: bool,
    /// Per input edge, the watermark last reported as `InputWatermark` (empty with one edge).
    input_watermarks: Vec<Option<EventTime>>,
}

impl InputGate {
    pub fn new(slot_input: Vec<usize>, now_ms: i64) -> InputGate {
        let n = slot_input.len();
        let edges = slot_input.iter().max().map_or(0, |m| m + 1);
        let several = slot_input.iter().any(|&i| i != slot_input[0]);
        InputGate {
            input_watermarks: if several {
                vec![None; edges]
            } else {
                Vec::new()
            },
            slot_input,
            watermarks: InputWatermarks::new(n, now_ms),
            blocked: vec![false; n],
            ended: vec![false; n],
            aligning: None,
            aligning_since_ms: now_ms,
            last_alignment_ms: 0,
            buffered: VecDeque::new(),
            finished: n == 0,
        }
    }

    pub fn watermarks(&self) -> &InputWatermarks {
        &self.watermarks
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Processing time from the first to the last slot's delivery of the last barrier.
    pub fn last_alignment_ms(&self) -> i64 {
        self.last_alignment_ms
    }

    /// Messages held back by an alignment in progress.
    pub fn buffered_len(&self) -> usize {
        self.buffered.len()
    }

    /// Takes one message from `slot`; emits what it lets through.
    pub fn accept(
        &mut self,
        slot: usize,
        msg: Message,
        now_ms: i64,
        emit: &mut impl FnMut(GateEvent),
    ) {
        self.handle(slot, msg, now_ms, emit);
    }

    fn handle(&mut self, slot: usize, msg: Message, now_ms: i64, emit: &mut impl FnMut(GateEvent)) {
        if self.blocked[slot] {
            self.buffered.push_back((slot, msg));
            return;
        }
        match msg {
            Message::Data(batch) => emit(GateEvent::Data {
                input: self.slot_input[slot],
                batch,
            }),
            Message::Watermark(wm) => self.watermark(slot, wm, now_ms, emit),
            Message::Barrier(epoch) => {
                match self.aligning {
                    Some(e) if e != epoch => {
                        // Barriers are injected in order and channels are FIFO, so a slot can
                        // only be ahead by being blocked, which buffers it: this is a bug.
                        debug_assert!(false, "barrier {epoch} while aligning {e}");
                    }
                    _ => {}
                }
                if self.aligning.is_none() {
                    self.aligning_since_ms = now_ms;
                }
                self.aligning = Some(epoch);
                self.blocked[slot] = true;
                self.try_complete_alignment(now_ms, emit);
            }
            Message::End => {
                self.ended[slot] = true;
                self.watermark(slot, Watermark::EventTime(END_OF_TIME), now_ms, emit);
                if self.aligning.is_some() {
                    self.try_complete_alignment(now_ms, emit);
                }
                if self.ended.iter().all(|e| *e) && !self.finished {
                    self.finished = true;
                    emit(GateEvent::End);
                }
            }
        }
    }

    fn watermark(
        &mut self,
        slot: usize,
        wm: Watermark,
        now_ms: i64,
        emit: &mut impl FnMut(GateEvent),
    ) {
        let merged = self.watermarks.update(slot, wm, now_ms);
        if !self.input_watermarks.is_empty() {
            self.input_watermark(self.slot_input[slot], emit);
        }
        if let Some(w) = merged {
            emit(GateEvent::Watermark(w));
        }
    }

    /// Reports input edge `input`'s own watermark if it rose: the minimum over its slots,
    /// nothing while one of them is idle or has not reported (it promises nothing).
    fn input_watermark(&mut self, input: usize, emit: &mut impl FnMut(GateEvent)) {
        let mut min: Option<EventTime> = None;
        for (slot, &i) in self.slot_input.iter().enumerate() {
            if i != input {
                continue;
            }
            match self.watermarks.input_watermark(slot) {
                Some(w) if !self.watermarks.input_is_idle(slot) => {
                    min = Some(min.map_or(w, |m| m.min(w)));
                }
                _ => return,
            }
        }
        let Some(w) = min else { return };
        if self.input_watermarks[input].is_none_or(|last| w > last) {
            self.input_watermarks[input] = Some(w);
            emit(GateEvent::InputWatermark {
                input,
                watermark: w,
            });
        }
    }

    fn try_complete_alignment(&mut self, now_ms: i64, emit: &mut impl FnMut(GateEvent)) {
        let Some(epoch) = self.aligning else { return };
        let aligned = self.blocked.iter().zip(&self.ended).all(|(b, e)| *b || *e);
        if !aligned {
            return;
        }
        self.aligning = None;
        self.last_alignment_ms = (now_ms - self.aligning_since_ms).max(0);
        self.blocked.iter_mut().for_each(|b| *b = false);
        emit(GateEvent::Barrier(epoch));
        let replay = std::mem::take(&mut self.buffered);
        for (slot, msg) in replay {
            self.handle(slot, msg, now_ms, emit);
        }
    }

    /// The merged watermark, if known.
    pub fn current_watermark(&self) -> Option<EventTime> {
        self.watermarks.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DataType, Field, Schema, Value};
    use std::sync::Arc;

    fn batch(v: i64) -> Batch {
        let mut b = Batch::new(Arc::new(Schema::new(vec![Field::new("v", DataType::Int)])));
        b.push_row([Value::Int(v)], v);
        b
    }

    fn run(gate: &mut InputGate, slot: usize, msg: Message) -> Vec<GateEvent> {
        let mut out = Vec::new();
        gate.accept(slot, msg, 0, &mut |e| out.push(e));
        out
    }

    #[test]
    fn barrier_alignment_holds_back_the_early_slot() {
        let mut g = InputGate::new(vec![0, 1], 0);
        assert!(run(&mut g, 0, Message::Barrier(1)).is_empty());
        // Slot 0 is blocked: its data waits until slot 1's barrier arrives.
        assert!(run(&mut g, 0, Message::Data(batch(5))).is_empty());
        assert_eq!(
            run(&mut g, 1, Message::Data(batch(6))),
            vec![GateEvent::Data {
                input: 1,
                batch: batch(6)
            }]
        );
        assert_eq!(
            run(&mut g, 1, Message::Barrier(1)),
            vec![
                GateEvent::Barrier(1),
                GateEvent::Data {
                    input: 0,
                    batch: batch(5)
                }
            ]
        );
    }

    /// With several input edges, each edge's own watermark (the minimum over its slots) is
    /// reported as it rises, before the merged watermark; not while a slot of the edge is
    /// idle or has not reported, and never backwards.
    #[test]
    fn each_input_edge_reports_its_own_watermark() {
        // Slots 0 and 1 feed edge 0, slot 2 feeds edge 1.
        let mut g = InputGate::new(vec![0, 0, 1], 0);
        let wm = |t| Message::Watermark(Watermark::EventTime(t));
        let edge = |input, watermark| GateEvent::InputWatermark { input, watermark };
        assert_eq!(run(&mut g, 2, wm(50)), vec![edge(1, 50)]);
        assert!(run(&mut g, 0, wm(10)).is_empty(), "slot 1 has not reported");
        assert_eq!(
            run(&mut g, 1, wm(20)),
            vec![edge(0, 10), GateEvent::Watermark(Watermark::EventTime(10))]
        );
        assert_eq!(run(&mut g, 2, Message::Watermark(Watermark::Idle)), vec![]);
        assert!(run(&mut g, 2, wm(40)).is_empty(), "not backwards");
        assert_eq!(run(&mut g, 2, Message::End), vec![edge(1, END_OF_TIME)]);
        // The merged watermark is emitted after the edge's.
        assert_eq!(
            run(&mut g, 0, wm(30)),
            vec![edge(0, 20), GateEvent::Watermark(Watermark::EventTime(20))]
        );
    }

    #[test]
    fn ended_slot_counts_as_aligned_and_releases_watermark() {
        let mut g = InputGate::new(vec![0, 0], 0);
        run(&mut g, 0, Message::Watermark(Watermark::EventTime(10)));
        assert_eq!(
            run(&mut g, 1, Message::End),
            vec![GateEvent::Watermark(Watermark::EventTime(10))]
        );
        assert_eq!(
            run(&mut g, 0, Message::Barrier(3)),
            vec![GateEvent::Barrier(3)]
        );
        assert_eq!(
            run(&mut g, 0, Message::End),
            vec![
                GateEvent::Watermark(Watermark::EventTime(END_OF_TIME)),
                GateEvent::End
            ]
        );
    }

    #[test]
    fn consecutive_barriers_replay_in_order() {
        let mut g = InputGate::new(vec![0, 1], 0);
        run(&mut g, 0, Message::Barrier(1));
        run(&mut g, 0, Message::Data(batch(1)));
        run(&mut g, 0, Message::Barrier(2));
        run(&mut g, 0, Message::Data(batch(2)));
        let out = run(&mut g, 1, Message::Barrier(1));
        assert_eq!(
            out,
            vec![
                GateEvent::Barrier(1),
                GateEvent::Data {
                    input: 0,
                    batch: batch(1)
                }
            ]
        );
        assert_eq!(g.buffered_len(), 1, "data after barrier 2 still held");
        let out = run(&mut g, 1, Message::Barrier(2));
        assert_eq!(
            out,
            vec![
                GateEvent::Barrier(2),
                GateEvent::Data {
                    input: 0,
                    batch: batch(2)
                }
            ]
        );
    }
}
