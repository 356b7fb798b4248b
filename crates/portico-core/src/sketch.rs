//! A mergeable latency sketch (the DDSketch idea: logarithmic buckets with a fixed relative
//! error): any quantile of the values added is answered within 1% of the true value, and two
//! sketches merge exactly, by adding bucket counts. Rollups keep one per row, so p50 / p95 / p99
//! can be read for any range by merging the rows in it.
//!
//! Stored as compact JSON: `{"b":[index,…],"c":[count,…],"z":zeros}`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Relative accuracy: a reported quantile is within this fraction of the true one.
pub const RELATIVE_ACCURACY: f64 = 0.01;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySketch {
    /// bucket index → count; bucket `i` holds values in (γ^(i-1), γ^i].
    bins: BTreeMap<i32, u64>,
    /// Values ≤ 0 (a latency of 0 µs).
    zeros: u64,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(rename = "b")]
    bins: Vec<i32>,
    #[serde(rename = "c")]
    counts: Vec<u64>,
    #[serde(rename = "z", default)]
    zeros: u64,
}

impl LatencySketch {
    pub fn new() -> Self {
        Self::default()
    }

    fn index(v: f64) -> i32 {
        (v.ln() / gamma().ln()).ceil() as i32
    }

    /// Adds one value (microseconds).
    pub fn add(&mut self, micros: u64) {
        self.add_n(micros, 1);
    }

    pub fn add_n(&mut self, micros: u64, n: u64) {
        if micros == 0 {
            self.zeros += n;
        } else {
            *self.bins.entry(Self::index(micros as f64)).or_default() += n;
        }
    }

    pub fn merge(&mut self, other: &LatencySketch) {
        self.zeros += other.zeros;
        for (i, c) in &other.bins {
            *self.bins.entry(*i).or_default() += c;
        }
    }

    pub fn count(&self) -> u64 {
        self.zeros + self.bins.values().sum::<u64>()
    }

    /// The `q`-quantile (0..=1) in microseconds, by nearest rank; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).clamp(1, n);
        if rank <= self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        let g = gamma();
        for (i, c) in &self.bins {
            seen += c;
            if seen >= rank {
                // The bucket's representative value: 2γ^i / (γ + 1), within the accuracy.
                return Some(2.0 * g.powi(*i) / (g + 1.0));
            }
        }
        None
    }

    pub fn to_json(&self) -> String {
        let w = Wire {
            bins: self.bins.keys().copied().collect(),
            counts: self.bins.values().copied().collect(),
            zeros: self.zeros,
        };
        serde_json::to_string(&w).unwrap_or_else(|_| "{}".into())
    }

    /// Reads a stored sketch; anything unreadable is an empty sketch (a rollup's counts stay
    /// right even if its sketch was damaged).
    pub fn from_json(s: &str) -> Self {
        match serde_json::from_str::<Wire>(s) {
            Ok(w) if w.bins.len() == w.counts.len() => {
                LatencySketch { bins: w.bins.into_iter().zip(w.counts).collect(), zeros: w.zeros }
            }
            _ => LatencySketch::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(values: &mut [u64], q: f64) -> f64 {
        values.sort_unstable();
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1] as f64
    }

    proptest! {
        #[test]
        fn quantiles_are_within_the_relative_accuracy(mut values in proptest::collection::vec(1u64..10_000_000, 1..400), q in 0.0f64..=1.0) {
            let mut s = LatencySketch::new();
            for v in &values { s.add(*v); }
            let got = s.quantile(q).unwrap();
            let want = exact(&mut values, q);
            prop_assert!((got - want).abs() <= want * RELATIVE_ACCURACY * 1.0001, "q={q} got={got} want={want}");
        }

        #[test]
        fn merging_equals_sketching_everything(a in proptest::collection::vec(0u64..5_000_000, 0..200), b in proptest::collection::vec(0u64..5_000_000, 0..200)) {
            let (mut sa, mut sb, mut all) = (LatencySketch::new(), LatencySketch::new(), LatencySketch::new());
            for v in &a { sa.add(*v); all.add(*v); }
            for v in &b { sb.add(*v); all.add(*v); }
            let mut ab = sa.clone();
            ab.merge(&sb);
            let mut ba = sb.clone();
            ba.merge(&sa);
            prop_assert_eq!(&ab, &all);
            prop_assert_eq!(&ba, &all, "merge is commutative");
            prop_assert_eq!(LatencySketch::from_json(&ab.to_json()), ab, "round-trips through storage");
        }
    }

    #[test]
    fn empty_zero_and_damaged() {
        assert_eq!(LatencySketch::new().quantile(0.5), None);
        let mut s = LatencySketch::new();
        s.add(0);
        s.add(0);
        s.add(1000);
        assert_eq!(s.quantile(0.5), Some(0.0));
        assert!((s.quantile(1.0).unwrap() - 1000.0).abs() <= 10.0);
        assert_eq!(LatencySketch::from_json("not json"), LatencySketch::new());
        assert_eq!(LatencySketch::from_json(r#"{"b":[1,2],"c":[1]}"#), LatencySketch::new());
    }
}
