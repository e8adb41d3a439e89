//! `Watermark` and the merge of several inputs' watermarks into one: the minimum over the
//! inputs that are not idle, never going backwards, with diagnostics of which input holds it.

use serde::{Deserialize, Serialize};

use crate::types::EventTime;

/// Event-time progress of one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Watermark {
    /// No event with a time `<= t` is expected any more.
    EventTime(EventTime),
    /// The stream is idle: it makes no promise and must not hold back its consumers.
    Idle,
}

/// The watermark that ends a stream: every window can fire.
pub const END_OF_TIME: EventTime = EventTime::MAX;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct InputState {
    watermark: Option<EventTime>,
    idle: bool,
}

/// Tracks the watermarks of a node's inputs and merges them: the node's watermark is the
/// minimum over its non-idle inputs; it is idle when every input is idle; it never decreases.
/// An input that has not reported yet holds the merge back (nothing is known about it).
#[derive(Clone, Debug)]
pub struct InputWatermarks {
    inputs: Vec<InputState>,
    current: Option<EventTime>,
    idle: bool,
    holder: Option<usize>,
    /// Processing time at which `current` last advanced (or the tracker was created).
    advanced_at_ms: i64,
}

impl InputWatermarks {
    pub fn new(inputs: usize, now_ms: i64) -> InputWatermarks {
        InputWatermarks {
            inputs: vec![InputState::default(); inputs],
            current: None,
            idle: false,
            holder: if inputs > 0 { Some(0) } else { None },
            advanced_at_ms: now_ms,
        }
    }

    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Records input `i`'s new watermark and returns the node's watermark if it changed:
    /// a higher event time, a switch to idle, or (as `EventTime` of the unchanged value) a
    /// switch back from idle to active.
    pub fn update(&mut self, i: usize, wm: Watermark, now_ms: i64) -> Option<Watermark> {
        let input = &mut self.inputs[i];
        match wm {
            Watermark::Idle => input.idle = true,
            Watermark::EventTime(t) => {
                input.idle = false;
                // An input's own watermark never goes backwards either.
                input.watermark = Some(input.watermark.map_or(t, |w| w.max(t)));
            }
        }
        self.recompute(now_ms)
    }

    fn recompute(&mut self, now_ms: i64) -> Option<Watermark> {
        let mut min: Option<(usize, Option<EventTime>)> = None;
        for (i, s) in self.inputs.iter().enumerate() {
            if s.idle {
                continue;
            }
            let better = match (min, s.watermark) {
                (None, _) => true,
                (Some((_, None)), _) => false,
                (Some((_, Some(_))), None) => true,
                (Some((_, Some(m))), Some(w)) => w < m,
            };
            if better {
                min = Some((i, s.watermark));
            }
        }
        // Inputs that ended make no promise for the idle ones: if every input still
        // reporting has ended, an idle input may yet resume, so the node is idle rather than
        // at the end of time (everything the idle input sends later would be late).
        let any_idle = self.inputs.iter().any(|s| s.idle);
        if any_idle && min.is_some_and(|(_, w)| w == Some(END_OF_TIME)) {
            min = None;
        }
        match min {
            None => {
                // Every input is idle (or ended, with some idle).
                self.holder = None;
                if self.idle {
                    None
                } else {
                    self.idle = true;
                    Some(Watermark::Idle)
                }
            }
            Some((holder, candidate)) => {
                self.holder = Some(holder);
                let was_idle = std::mem::replace(&mut self.idle, false);
                match (candidate, self.current) {
                    (Some(c), None) => {
                        self.current = Some(c);
                        self.advanced_at_ms = now_ms;
                        Some(Watermark::EventTime(c))
                    }
                    (Some(c), Some(cur)) if c > cur => {
                        self.current = Some(c);
                        self.advanced_at_ms = now_ms;
                        Some(Watermark::EventTime(c))
                    }
                    (_, Some(cur)) if was_idle => Some(Watermark::EventTime(cur)),
                    _ => None,
                }
            }
        }
    }

    /// Replaces the inputs: new input `i` takes the state of old input `keep[i]`, or starts
    /// unreported (`None`), holding the merge back until it reports or goes idle. Inputs not
    /// kept stop holding it. The merged watermark never goes backwards.
    pub fn remap(&mut self, keep: &[Option<usize>], now_ms: i64) -> Option<Watermark> {
        self.inputs = keep
            .iter()
            .map(|k| {
                k.and_then(|i| self.inputs.get(i).copied())
                    .unwrap_or_default()
            })
            .collect();
        self.recompute(now_ms)
    }

    /// The node's current watermark, `None` before every active input has reported.
    pub fn current(&self) -> Option<EventTime> {
        self.current
    }

    pub fn is_idle(&self) -> bool {
        self.idle
    }

    pub fn input_is_idle(&self, i: usize) -> bool {
        self.inputs[i].idle
    }

    pub fn input_watermark(&self, i: usize) -> Option<EventTime> {
        self.inputs[i].watermark
    }

    /// The input whose watermark is the minimum (the one holding the node back), if any input
    /// is active.
    pub fn holder(&self) -> Option<usize> {
        self.holder
    }

    /// Processing time at which the node's watermark last advanced.
    pub fn advanced_at_ms(&self) -> i64 {
        self.advanced_at_ms
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ended_input_does_not_release_an_idle_one() {
        let mut w = InputWatermarks::new(2, 0);
        w.update(0, Watermark::EventTime(10), 0);
        w.update(1, Watermark::EventTime(5), 0);
        assert_eq!(w.current(), Some(5));
        // Input 0 ends, input 1 goes quiet: nothing promises that 1 will not send time 6.
        w.update(0, Watermark::EventTime(END_OF_TIME), 1);
        assert_eq!(w.update(1, Watermark::Idle, 2), Some(Watermark::Idle));
        assert_eq!(w.current(), Some(5));
        // It resumes: its own watermark counts again, below the ended input's.
        assert_eq!(
            w.update(1, Watermark::EventTime(7), 3),
            Some(Watermark::EventTime(7))
        );
        assert_eq!(
            w.update(1, Watermark::EventTime(END_OF_TIME), 4),
            Some(Watermark::EventTime(END_OF_TIME))
        );
    }

    use super::*;
    use Watermark::*;

    #[test]
    fn min_over_inputs_waits_for_all() {
        let mut m = InputWatermarks::new(2, 0);
        assert_eq!(m.update(0, EventTime(10), 0), None, "input 1 unknown");
        assert_eq!(m.holder(), Some(1));
        assert_eq!(m.update(1, EventTime(5), 0), Some(EventTime(5)));
        assert_eq!(m.update(1, EventTime(20), 1), Some(EventTime(10)));
        assert_eq!(m.holder(), Some(0));
        assert_eq!(m.advanced_at_ms(), 1);
    }

    #[test]
    fn idle_input_does_not_hold_back() {
        let mut m = InputWatermarks::new(2, 0);
        m.update(0, EventTime(10), 0);
        m.update(1, EventTime(5), 0);
        assert_eq!(m.update(1, Idle, 0), Some(EventTime(10)));
        assert_eq!(m.update(0, Idle, 0), Some(Idle));
        assert!(m.is_idle());
        // Coming back from idle re-announces the (unchanged) watermark.
        assert_eq!(m.update(1, EventTime(7), 0), Some(EventTime(10)));
        assert!(!m.is_idle());
    }

    #[test]
    fn watermark_never_goes_backwards() {
        let mut m = InputWatermarks::new(2, 0);
        m.update(0, EventTime(100), 0);
        m.update(1, Idle, 0);
        assert_eq!(m.current(), Some(100));
        // The idle input returns behind: the node's watermark stays.
        assert_eq!(m.update(1, EventTime(50), 0), None);
        assert_eq!(m.current(), Some(100));
        // An input's own watermark does not regress either.
        m.update(0, EventTime(10), 0);
        assert_eq!(m.input_watermark(0), Some(100));
    }

    #[test]
    fn unknown_input_that_goes_idle_releases() {
        let mut m = InputWatermarks::new(2, 0);
        m.update(0, EventTime(10), 0);
        assert_eq!(m.update(1, Idle, 0), Some(EventTime(10)));
    }
}
