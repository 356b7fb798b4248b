//! The journal's record format: `[len: u32 LE][crc32(body): u32 LE][body]`, body =
//! `kind: u8` + a fixed call layout, then fields added since, each optional at the end (a
//! segment written by an older Portico still decodes): units (`u32`), the client's
//! `X-Request-Id` (`u8` length + bytes). A torn or corrupt frame stops decoding there.
//!
//! The end of a call whose begin is in the journal is a short record ([`OUTCOME`]): the call's
//! id and what its begin could not know (status, latency, bytes, units). The shipper completes
//! it from the begin, which the journal writes to the same segment, earlier. A Portico from
//! before outcome records reads one as a damaged record (and skips the rest of its segment):
//! let the journal drain (`portico_journal_pending_bytes` 0) before going back to one.

use portico_core::usage::UsageEvent;
use portico_store::usage::CallRecord;
use uuid::Uuid;

pub const BEGIN: u8 = 1;
pub const END: u8 = 2;
pub const SEAL: u8 = 3;
/// The end of a call whose begin record is in the same segment (its outcome only).
pub const OUTCOME: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The call is about to be forwarded.
    Begin(CallRecord),
    /// A call refused without being forwarded (and, in segments written before outcome
    /// records, any call's end): the whole record.
    End(CallRecord),
    /// The segment will get no more records.
    Seal,
    /// The call that began in this segment is done: its begin, completed with this.
    Outcome(Outcome),
}

/// What a call's end adds to its begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub request_id: Uuid,
    pub status: u16,
    pub latency_micros: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub units: u32,
}

impl Outcome {
    /// The call's whole record: its begin's, with the outcome.
    pub fn complete(&self, begin: &mut CallRecord) {
        let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        begin.status = i64::from(self.status);
        begin.latency_micros = big(self.latency_micros);
        begin.bytes_in = big(self.bytes_in);
        begin.bytes_out = big(self.bytes_out);
        begin.units = i64::from(self.units);
    }
}

fn put_id(buf: &mut Vec<u8>, id: Uuid) {
    buf.extend_from_slice(id.as_bytes());
}

/// Appends one framed record to `buf` (an [`OUTCOME`] takes the event's outcome only, and is
/// nothing without an event).
pub fn encode(kind: u8, event: Option<&UsageEvent>, buf: &mut Vec<u8>) {
    if kind == OUTCOME && event.is_none() {
        return;
    }
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]);
    buf.push(kind);
    if kind == OUTCOME
        && let Some(e) = event
    {
        put_id(buf, e.request_id);
        buf.extend_from_slice(&e.status.to_le_bytes());
        for n in [e.latency_micros, e.bytes_in, e.bytes_out] {
            buf.extend_from_slice(&n.to_le_bytes());
        }
        buf.extend_from_slice(&e.units.to_le_bytes());
    } else if let Some(e) = event {
        put_id(buf, e.request_id);
        buf.extend_from_slice(&((e.at.unix_timestamp_nanos() / 1_000_000) as i64).to_le_bytes());
        for id in [
            e.api_id.as_uuid(),
            e.version_id.as_uuid(),
            e.app_id.as_uuid(),
            e.subscription_id.as_uuid(),
            e.consumer_org_id.as_uuid(),
            e.plan_id.as_uuid(),
        ] {
            put_id(buf, id);
        }
        buf.extend_from_slice(&e.status.to_le_bytes());
        for n in [e.latency_micros, e.bytes_in, e.bytes_out] {
            buf.extend_from_slice(&n.to_le_bytes());
        }
        let op = e.operation.as_deref().unwrap_or("").as_bytes();
        let op = &op[..op.len().min(u16::MAX as usize)];
        buf.extend_from_slice(&(op.len() as u16).to_le_bytes());
        buf.extend_from_slice(op);
        buf.extend_from_slice(&e.units.to_le_bytes());
        let client = e.client_request_id.as_deref().unwrap_or("").as_bytes();
        let client = &client[..client.len().min(u8::MAX as usize)];
        buf.push(client.len() as u8);
        buf.extend_from_slice(client);
    }
    let body_len = (buf.len() - start - 8) as u32;
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }
    fn id(&mut self) -> Option<Uuid> {
        Uuid::from_slice(self.take(16)?).ok()
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn decode_call(body: &[u8]) -> Option<CallRecord> {
    use portico_core::ids::*;
    let mut r = Reader { b: body, at: 0 };
    let request_id = r.id()?;
    let at_millis = r.u64()? as i64;
    let (api, version, app, sub, org, plan) = (r.id()?, r.id()?, r.id()?, r.id()?, r.id()?, r.id()?);
    let status = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
    let (latency, bytes_in, bytes_out) = (r.u64()?, r.u64()?, r.u64()?);
    let op_len = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
    let op = std::str::from_utf8(r.take(op_len)?).ok()?.to_owned();
    // Records written before units existed end here: one unit each.
    let units = match r.take(4) {
        Some(b) => u32::from_le_bytes(b.try_into().ok()?),
        None => 1,
    };
    // Records written before the client's request id was kept end here.
    let client_request_id = match r.take(1) {
        Some(&[n]) => Some(std::str::from_utf8(r.take(usize::from(n))?).ok()?.to_owned()).filter(|s| !s.is_empty()),
        _ => None,
    };
    let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Some(CallRecord {
        request_id,
        at_millis,
        subscription_id: SubscriptionId::from_uuid(sub),
        api_id: ApiId::from_uuid(api),
        version_id: VersionId::from_uuid(version),
        app_id: AppId::from_uuid(app),
        consumer_org_id: OrgId::from_uuid(org),
        plan_id: PlanId::from_uuid(plan),
        operation: (!op.is_empty()).then_some(op),
        status: i64::from(status),
        latency_micros: big(latency),
        bytes_in: big(bytes_in),
        bytes_out: big(bytes_out),
        units: i64::from(units),
        client_request_id,
        orphaned: false,
    })
}

fn decode_outcome(body: &[u8]) -> Option<Outcome> {
    let mut r = Reader { b: body, at: 0 };
    Some(Outcome {
        request_id: r.id()?,
        status: u16::from_le_bytes(r.take(2)?.try_into().ok()?),
        latency_micros: r.u64()?,
        bytes_in: r.u64()?,
        bytes_out: r.u64()?,
        units: u32::from_le_bytes(r.take(4)?.try_into().ok()?),
    })
}

/// Decodes whole frames from the start of `buf`. Returns each record with the offset just
/// past it, how many bytes they took, and whether it stopped at a corrupt frame (rather than
/// at a partial one, still being written).
pub fn decode(buf: &[u8]) -> (Vec<(Record, usize)>, usize, bool) {
    let mut d = Decoder::new(buf);
    let out = d.by_ref().collect();
    (out, d.used(), d.corrupt())
}

/// Whole frames from the start of a buffer, one at a time (the shipper consumes each as it is
/// decoded: nothing is collected). Each item is a record and the offset just past it.
pub struct Decoder<'a> {
    buf: &'a [u8],
    at: usize,
    corrupt: bool,
    done: bool,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, at: 0, corrupt: false, done: false }
    }

    /// How many bytes the records decoded so far took.
    pub fn used(&self) -> usize {
        self.at
    }

    /// Whether decoding stopped at a corrupt frame (rather than at a partial one, still being
    /// written, or at the end).
    pub fn corrupt(&self) -> bool {
        self.corrupt
    }
}

impl Iterator for Decoder<'_> {
    type Item = (Record, usize);

    fn next(&mut self) -> Option<(Record, usize)> {
        if self.done {
            return None;
        }
        let (buf, at) = (self.buf, self.at);
        let frame = buf.get(at..at + 8).and_then(|head| {
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            buf.get(at + 8..at + 8 + len).map(|body| (len, crc, body))
        });
        let Some((len, crc, body)) = frame else {
            self.done = true;
            return None;
        };
        if len == 0 || crc32fast::hash(body) != crc {
            (self.done, self.corrupt) = (true, true);
            return None;
        }
        let rec = match body[0] {
            BEGIN => decode_call(&body[1..]).map(Record::Begin),
            END => decode_call(&body[1..]).map(Record::End),
            SEAL => Some(Record::Seal),
            OUTCOME => decode_outcome(&body[1..]).map(Record::Outcome),
            _ => None,
        };
        match rec {
            Some(r) => {
                self.at = at + 8 + len;
                Some((r, self.at))
            }
            None => {
                (self.done, self.corrupt) = (true, true);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_core::ids::*;
    use proptest::prelude::*;

    pub(crate) fn event(status: u16) -> UsageEvent {
        UsageEvent {
            request_id: Uuid::new_v4(),
            at: time::OffsetDateTime::from_unix_timestamp(1_764_000_000).unwrap(),
            api_id: ApiId::new(),
            version_id: VersionId::new(),
            app_id: AppId::new(),
            subscription_id: SubscriptionId::new(),
            consumer_org_id: OrgId::new(),
            plan_id: PlanId::new(),
            operation: Some("getThing".into()),
            status,
            latency_micros: 1234,
            bytes_in: 10,
            bytes_out: 20,
            units: 3,
            client_request_id: Some("client-id-42".into()),
        }
    }

    #[test]
    fn round_trips_and_stops_at_a_torn_frame() {
        let (a, b) = (event(200), event(429));
        let mut buf = Vec::new();
        encode(BEGIN, Some(&a), &mut buf);
        encode(END, Some(&a), &mut buf);
        encode(END, Some(&b), &mut buf);
        encode(SEAL, None, &mut buf);
        let (recs, used, corrupt) = decode(&buf);
        assert_eq!((recs.len(), used, corrupt), (4, buf.len(), false));
        assert!(recs[0].1 < recs[1].1 && recs[1].1 < recs[2].1, "offsets grow record by record");
        match &recs[2].0 {
            Record::End(c) => {
                assert_eq!(
                    (c.request_id, c.status, c.operation.as_deref(), c.bytes_out),
                    (b.request_id, 429, Some("getThing"), 20)
                );
                assert_eq!(c.subscription_id, b.subscription_id);
                assert_eq!(c.client_request_id.as_deref(), Some("client-id-42"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(recs[3], (Record::Seal, buf.len()));
        // A frame cut short is left for later; a flipped bit stops decoding there.
        let (recs, used, corrupt) = decode(&buf[..buf.len() - 3]);
        assert_eq!((recs.len(), corrupt), (3, false));
        assert!(used < buf.len());
        let mut bad = buf.clone();
        bad[20] ^= 1;
        let (recs, used, corrupt) = decode(&bad);
        assert_eq!((recs.len(), used, corrupt), (0, 0, true));
    }

    #[test]
    fn an_outcome_completes_its_begin_into_the_whole_end_record() {
        let begun = UsageEvent { status: 0, latency_micros: 0, bytes_in: 0, bytes_out: 0, ..event(0) };
        let done = UsageEvent {
            status: 502,
            latency_micros: 98_765,
            bytes_in: 1 << 40,
            bytes_out: 77,
            units: 0,
            ..begun.clone()
        };
        let mut buf = Vec::new();
        encode(BEGIN, Some(&begun), &mut buf);
        encode(OUTCOME, Some(&done), &mut buf);
        let outcome_len = buf.len();
        encode(END, Some(&done), &mut buf);
        let (recs, used, corrupt) = decode(&buf);
        assert_eq!((recs.len(), used, corrupt), (3, buf.len(), false));
        let (Record::Begin(mut call), Record::Outcome(o), Record::End(whole)) =
            (recs[0].0.clone(), recs[1].0.clone(), recs[2].0.clone())
        else {
            panic!("{recs:?}")
        };
        assert_eq!(o.request_id, begun.request_id);
        o.complete(&mut call);
        assert_eq!(call, whole);
        assert!(outcome_len - recs[0].1 < 64, "an outcome is short: {} bytes", outcome_len - recs[0].1);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }
    }
}
