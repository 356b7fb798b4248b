//! The request log's storage format: a *page* holds the calls of one consumer organization to
//! one API that started in one UTC second and were shipped in one round, packed into one
//! column. A row per call cost the shipper more than the rest of metering (a B-tree insert of
//! sixteen columns and seven text ids per call); a page costs one row per second per
//! (consumer, API) and a few dozen bytes per call. Searches read the pages of the seconds they
//! cover (a request id's own second and its neighbours, a time range, or the seconds that an
//! `X-Request-Id` was seen in) and filter the calls in memory.
//!
//! Body (before base64, so that one `TEXT` column serves SQLite and PostgreSQL alike):
//! `version: u8 = 1`, then the page's distinct ids (`u16` count, 16 bytes each), its distinct
//! operations (`u16` count, each `u16` length + UTF-8), then its calls (`u32` count), each:
//! request id (16 bytes), start time (`i64` ms), subscription, version, app, plan (`u16` index
//! into the ids each), operation (`u16` index, `u16::MAX` for none), status (`u16`), latency µs,
//! bytes in, bytes out (`u64` each), units (`u32`), orphaned (`u8`), the client's
//! `X-Request-Id` (`u8` length + bytes). All integers little-endian.

use crate::usage::CallRecord;
use base64::Engine as _;
use portico_core::ids::{ApiId, AppId, OrgId, PlanId, SubscriptionId, VersionId};
use std::collections::HashMap;

/// A page's time span.
pub const SECOND: i64 = 1_000;
/// At most this many calls per page, so that a page's distinct ids (four per call at most)
/// always fit its `u16` indexes.
pub const MAX_CALLS: usize = 8_192;
const VERSION: u8 = 1;
const NONE: u16 = u16::MAX;

/// The second a call is filed under (its start, in ms at the second's start).
pub fn second_of(at_millis: i64) -> i64 {
    at_millis.div_euclid(SECOND) * SECOND
}

/// The second a Portico call id was made in (ids are UUIDv7: their first 48 bits are the Unix
/// time in ms), or `None` for an id of another kind.
pub fn second_of_id(id: &uuid::Uuid) -> Option<i64> {
    if id.get_version_num() != 7 {
        return None;
    }
    let b = id.as_bytes();
    let ms = b[..6].iter().fold(0i64, |acc, &x| (acc << 8) | i64::from(x));
    Some(second_of(ms))
}

/// One page to write: which consumer and API its calls belong to, their second, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub second: i64,
    pub consumer_org_id: OrgId,
    pub api_id: ApiId,
    pub calls: usize,
    /// base64 (standard alphabet, no padding) of the packed calls.
    pub body: String,
}

/// Groups calls into pages: one per (second, consumer organization, API), split at
/// [`MAX_CALLS`]. The order of calls within a page is kept.
pub fn pack(calls: &[&CallRecord]) -> Vec<Page> {
    // Consecutive calls mostly share a group: the last one is looked up without hashing.
    type Key = (i64, OrgId, ApiId);
    let mut index: HashMap<Key, usize> = HashMap::new();
    let mut groups: Vec<(Key, Vec<&CallRecord>)> = Vec::new();
    let mut last: Option<(Key, usize)> = None;
    for c in calls {
        let key = (second_of(c.at_millis), c.consumer_org_id, c.api_id);
        let i = match last {
            Some((k, i)) if k == key => i,
            _ => *index.entry(key).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            }),
        };
        last = Some((key, i));
        groups[i].1.push(c);
    }
    let mut out = Vec::with_capacity(groups.len());
    let mut raw = Vec::new();
    for ((second, org, api), group) in groups {
        for chunk in group.chunks(MAX_CALLS) {
            raw.clear();
            encode(chunk, &mut raw);
            out.push(Page {
                second,
                consumer_org_id: org,
                api_id: api,
                calls: chunk.len(),
                body: base64::engine::general_purpose::STANDARD_NO_PAD.encode(&raw),
            });
        }
    }
    out.sort_by_key(|p| p.second);
    out
}

/// Indexes of distinct values, in first-seen order. For each of its `N` fields, the value last
/// found is checked first (consecutive calls mostly share their ids).
struct Dict<K, const N: usize> {
    index: HashMap<K, u16>,
    order: Vec<K>,
    last: [Option<(K, u16)>; N],
}

impl<K: std::hash::Hash + Eq + Copy, const N: usize> Dict<K, N> {
    fn new() -> Self {
        Dict { index: HashMap::new(), order: Vec::new(), last: [None; N] }
    }
    fn of(&mut self, field: usize, k: K) -> u16 {
        if let Some((l, i)) = self.last[field]
            && l == k
        {
            return i;
        }
        let next = self.order.len() as u16;
        let i = *self.index.entry(k).or_insert_with(|| {
            self.order.push(k);
            next
        });
        self.last[field] = Some((k, i));
        i
    }
}

fn encode(calls: &[&CallRecord], out: &mut Vec<u8>) {
    let mut ids: Dict<uuid::Uuid, 4> = Dict::new();
    let mut ops: Dict<&str, 1> = Dict::new();
    let mut body = Vec::with_capacity(calls.len() * 72);
    for c in calls {
        body.extend_from_slice(c.request_id.as_bytes());
        body.extend_from_slice(&c.at_millis.to_le_bytes());
        let row = [c.subscription_id.as_uuid(), c.version_id.as_uuid(), c.app_id.as_uuid(), c.plan_id.as_uuid()];
        for (field, id) in row.into_iter().enumerate() {
            body.extend_from_slice(&ids.of(field, id).to_le_bytes());
        }
        let op = match c.operation.as_deref() {
            Some(op) => ops.of(0, &op[..floor_char_boundary(op, u16::MAX as usize)]),
            None => NONE,
        };
        body.extend_from_slice(&op.to_le_bytes());
        body.extend_from_slice(&(c.status.clamp(0, i64::from(u16::MAX)) as u16).to_le_bytes());
        for n in [c.latency_micros, c.bytes_in, c.bytes_out] {
            body.extend_from_slice(&(n.max(0) as u64).to_le_bytes());
        }
        body.extend_from_slice(&(c.units.clamp(0, i64::from(u32::MAX)) as u32).to_le_bytes());
        body.push(u8::from(c.orphaned));
        let client = c.client_request_id.as_deref().unwrap_or("");
        let client = &client[..floor_char_boundary(client, u8::MAX as usize)];
        body.push(client.len() as u8);
        body.extend_from_slice(client.as_bytes());
    }
    out.push(VERSION);
    out.extend_from_slice(&(ids.order.len() as u16).to_le_bytes());
    for id in &ids.order {
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(&(ops.order.len() as u16).to_le_bytes());
    for op in &ops.order {
        out.extend_from_slice(&(op.len() as u16).to_le_bytes());
        out.extend_from_slice(op.as_bytes());
    }
    out.extend_from_slice(&(calls.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn id(&mut self) -> Option<uuid::Uuid> {
        self.array().map(uuid::Uuid::from_bytes)
    }
}

/// The calls of a stored page, or `None` if the body is damaged (a page Portico did not write).
pub fn unpack(body: &str, consumer_org_id: OrgId, api_id: ApiId) -> Option<Vec<CallRecord>> {
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD.decode(body).ok()?;
    let mut r = Reader { b: &raw, at: 0 };
    if r.array::<1>()? != [VERSION] {
        return None;
    }
    let ids: Vec<uuid::Uuid> = (0..r.u16()?).map(|_| r.id()).collect::<Option<_>>()?;
    let ops: Vec<&str> = (0..r.u16()?)
        .map(|_| {
            let n = usize::from(r.u16()?);
            std::str::from_utf8(r.take(n)?).ok()
        })
        .collect::<Option<_>>()?;
    let n = u32::from_le_bytes(r.array()?) as usize;
    let mut out = Vec::with_capacity(n.min(MAX_CALLS));
    let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for _ in 0..n {
        let request_id = r.id()?;
        let at_millis = i64::from_le_bytes(r.array()?);
        let mut id = || ids.get(usize::from(r.u16()?)).copied();
        let (sub, version, app, plan) = (id()?, id()?, id()?, id()?);
        let operation = match r.u16()? {
            NONE => None,
            i => Some((*ops.get(usize::from(i))?).to_owned()),
        };
        let status = i64::from(r.u16()?);
        let (latency, bytes_in, bytes_out) = (r.u64()?, r.u64()?, r.u64()?);
        let units = i64::from(u32::from_le_bytes(r.array()?));
        let orphaned = r.array::<1>()? != [0];
        let len = usize::from(r.array::<1>()?[0]);
        let client = std::str::from_utf8(r.take(len)?).ok()?;
        out.push(CallRecord {
            request_id,
            at_millis,
            subscription_id: SubscriptionId::from_uuid(sub),
            api_id,
            version_id: VersionId::from_uuid(version),
            app_id: AppId::from_uuid(app),
            consumer_org_id,
            plan_id: PlanId::from_uuid(plan),
            operation,
            status,
            latency_micros: big(latency),
            bytes_in: big(bytes_in),
            bytes_out: big(bytes_out),
            units,
            client_request_id: (!client.is_empty()).then(|| client.to_owned()),
            orphaned,
        });
    }
    (r.at == raw.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id_from(n: u128) -> uuid::Uuid {
        uuid::Uuid::from_u128(n)
    }

    prop_compose! {
        fn call()(
            ids in proptest::array::uniform4(0u128..6),
            org in 0u128..2,
            api in 0u128..2,
            at in 1_700_000_000_000i64..1_700_000_005_000,
            op in proptest::option::of("[a-zA-Z_ /{}é]{0,12}"),
            status in 0i64..600,
            latency in 0i64..10_000_000,
            bytes in (0i64..1 << 40, 0i64..1 << 40),
            units in 0i64..1000,
            client in proptest::option::of("[a-z0-9.-]{1,40}"),
            orphaned in any::<bool>(),
            rid in any::<u128>(),
        ) -> CallRecord {
            CallRecord {
                request_id: id_from(rid),
                at_millis: at,
                subscription_id: SubscriptionId::from_uuid(id_from(ids[0])),
                api_id: ApiId::from_uuid(id_from(100 + api)),
                version_id: VersionId::from_uuid(id_from(ids[1])),
                app_id: AppId::from_uuid(id_from(ids[2])),
                consumer_org_id: OrgId::from_uuid(id_from(200 + org)),
                plan_id: PlanId::from_uuid(id_from(ids[3])),
                operation: op,
                status,
                latency_micros: latency,
                bytes_in: bytes.0,
                bytes_out: bytes.1,
                units,
                client_request_id: client,
                orphaned,
            }
        }
    }

    proptest! {
        /// Packing then unpacking gives back every call, each in the page of its second,
        /// consumer and API.
        #[test]
        fn pages_round_trip(calls in proptest::collection::vec(call(), 0..200)) {
            let refs: Vec<&CallRecord> = calls.iter().collect();
            let pages = pack(&refs);
            let mut back = Vec::new();
            for p in &pages {
                let got = unpack(&p.body, p.consumer_org_id, p.api_id).expect("a page Portico wrote");
                prop_assert_eq!(got.len(), p.calls);
                for c in &got {
                    prop_assert_eq!(second_of(c.at_millis), p.second);
                    prop_assert_eq!((c.consumer_org_id, c.api_id), (p.consumer_org_id, p.api_id));
                }
                back.extend(got);
            }
            let key = |c: &CallRecord| (c.request_id, c.at_millis, c.status);
            let mut want = calls.clone();
            want.sort_by_key(key);
            back.sort_by_key(key);
            prop_assert_eq!(back, want);
        }

        /// A damaged body is refused, never a panic.
        #[test]
        fn damaged_pages_are_refused(calls in proptest::collection::vec(call(), 1..20), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
            let refs: Vec<&CallRecord> = calls.iter().collect();
            let page = &pack(&refs)[0];
            let raw = base64::engine::general_purpose::STANDARD_NO_PAD.decode(&page.body).unwrap();
            let short = &raw[..cut.index(raw.len())];
            prop_assert!(unpack(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(short), page.consumer_org_id, page.api_id).is_none());
            let mut bent = raw.clone();
            let i = cut.index(bent.len());
            bent[i] ^= flip;
            // Either refused or decoded to some calls: never a panic.
            let _ = unpack(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bent), page.consumer_org_id, page.api_id);
        }
    }

    #[test]
    fn a_v7_id_names_its_second() {
        let id = uuid::Builder::from_unix_timestamp_millis(1_700_000_001_234, &[7u8; 10]).into_uuid();
        assert_eq!(second_of_id(&id), Some(1_700_000_001_000));
        assert_eq!(second_of_id(&uuid::Uuid::new_v4()), None);
        assert_eq!(second_of(-1), -1_000);
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let op = "é".repeat(40_000);
        let client = "ü".repeat(200);
        let c = CallRecord {
            request_id: uuid::Uuid::nil(),
            at_millis: 5,
            subscription_id: SubscriptionId::from_uuid(uuid::Uuid::nil()),
            api_id: ApiId::from_uuid(uuid::Uuid::nil()),
            version_id: VersionId::from_uuid(uuid::Uuid::nil()),
            app_id: AppId::from_uuid(uuid::Uuid::nil()),
            consumer_org_id: OrgId::from_uuid(uuid::Uuid::nil()),
            plan_id: PlanId::from_uuid(uuid::Uuid::nil()),
            operation: Some(op),
            status: 200,
            latency_micros: 1,
            bytes_in: 1,
            bytes_out: 1,
            units: 1,
            client_request_id: Some(client),
            orphaned: false,
        };
        let p = &pack(&[&c])[0];
        let back = &unpack(&p.body, p.consumer_org_id, p.api_id).unwrap()[0];
        assert_eq!(back.operation.as_ref().unwrap().len(), 65_534);
        assert_eq!(back.client_request_id.as_ref().unwrap().len(), 254);
    }
}
