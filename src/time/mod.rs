//! Time: the injected `Clock`, the `Watermark` type, per-partition watermark generators with
//! idleness, and the min-over-non-idle-inputs merge with diagnostics (which input holds a
//! node's watermark, and since when).
//!
//! Conventions (the same as Flink's): event times are milliseconds since the Unix epoch; a
//! watermark `W` promises that no further event with a time `<= W` is expected. A window
//! `[start, end)` fires once the watermark reaches `end - 1`.
//! Nothing here reads the system time except `SystemClock`.

pub mod clock;
pub mod generator;
pub mod watermark;

pub use clock::{Clock, ClockRef, ManualClock, SystemClock};
pub use generator::{BoundedOutOfOrderness, PartitionWatermarks};
pub use watermark::{InputWatermarks, Watermark};
