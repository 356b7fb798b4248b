//! `portico-metering` counts every call exactly once. The gateway hands each call to the
//! [`journal::Journal`] (a durable local log: a *begin* record before forwarding, an *end*
//! record after), and the [`shipper::Shipper`] moves the journal into the store: the daily
//! rollups, one row per call (the request log) and the segment's shipped offset, in one
//! transaction per round, so nothing is counted twice. A gateway killed mid-traffic loses no call; a call
//! cut off by the kill is recorded as orphaned and never billed.
//!
//! Not yet (the metering issue): minute rollups with latency sketches, retention, the journal
//! size bound and its metrics.

pub mod codec;
pub mod journal;
pub mod shipper;

pub use journal::Journal;
pub use shipper::{RequestLog, Shipped, Shipper};

/// `YYYY-MM-DD`, as the store keys days.
pub fn day_string(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}
