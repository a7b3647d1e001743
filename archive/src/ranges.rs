//! A set of page ranges, for the restore plan: which pages a newer segment already decided.

use std::collections::BTreeMap;

/// Disjoint, non-touching half-open ranges `[start, end)`.
#[derive(Default, Debug)]
pub struct Ranges {
    /// start -> end.
    map: BTreeMap<u64, u64>,
}

impl Ranges {
    /// Adds `[start, end)` and returns the parts of it that were not in the set before,
    /// ascending.
    pub fn add(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut new = Vec::new();
        let mut at = start;
        let mut merged = (start, end);
        // The range that starts before `start` may reach into it.
        if let Some((&s, &e)) = self.map.range(..start).next_back() {
            if e >= start {
                at = at.max(e);
                merged.0 = s;
                merged.1 = merged.1.max(e);
                self.map.remove(&s);
            }
        }
        let inside: Vec<(u64, u64)> = self.map.range(start..=end).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in inside {
            if s > at {
                new.push((at, s.min(end)));
            }
            at = at.max(e);
            merged.1 = merged.1.max(e);
            self.map.remove(&s);
        }
        if at < end {
            new.push((at, end));
        }
        self.map.insert(merged.0, merged.1);
        new
    }

    /// The ranges of `[0, end)` not in the set, ascending.
    pub fn gaps(&self, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = 0;
        for (&s, &e) in &self.map {
            if s > at {
                out.push((at, s.min(end)));
            }
            at = at.max(e);
        }
        if at < end {
            out.push((at, end));
        }
        out.retain(|(s, e)| s < e);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `add` returns exactly the pages it added, and `gaps` exactly those never added,
        /// as a set of pages says.
        #[test]
        fn add_and_gaps_agree_with_a_page_set(adds in prop::collection::vec((0u64..200, 1u64..40), 0..30)) {
            let mut r = Ranges::default();
            let mut pages = std::collections::BTreeSet::new();
            for (s, n) in adds {
                let new: Vec<u64> = r.add(s, s + n).into_iter().flat_map(|(a, b)| a..b).collect();
                let expect: Vec<u64> = (s..s + n).filter(|p| !pages.contains(p)).collect();
                prop_assert_eq!(new, expect);
                pages.extend(s..s + n);
            }
            let gaps: Vec<u64> = r.gaps(260).into_iter().flat_map(|(a, b)| a..b).collect();
            let expect: Vec<u64> = (0..260).filter(|p| !pages.contains(p)).collect();
            prop_assert_eq!(gaps, expect);
        }
    }
}
