//! `portico-metering` counts every call exactly once. The gateway hands each call to the
//! [`journal::Journal`] (a durable local log: a *begin* record before forwarding, an *end*
//! record after; bounded in size, with `portico_journal_backlog_bytes`), and the
//! [`shipper::Shipper`] moves the journal into the store: the daily usage, the minute and day
//! rollups with latency sketches, the request log (all calls, errors only, or none) and the
//! segment's shipped offset, in one transaction per round, so nothing is counted twice
//! (`portico_journal_lag_seconds` says how far behind it is). A gateway killed mid-traffic
//! loses no call; a call cut off by the kill is recorded as orphaned and never billed.

pub mod codec;
pub mod journal;
pub mod shipper;

pub use journal::Journal;
pub use shipper::{RequestLog, Shipped, Shipper, lower_thread_priority};

/// `YYYY-MM-DD`, as the store keys days.
pub fn day_string(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}
