//! Reference counts of physical pages: how many of the live map and the history entries
//! point at each page (a rollback makes a history page live again, so a page can have
//! several). Kept in leaves of `LEAF` pages, each made by the first reference to one of its
//! pages: a store never written costs no memory but the leaf table. The volume changes them
//! under its lock, so they are plain numbers.

use crate::{OutOfMemory, PhysPage};

/// Pages per leaf: 16 KiB of counts for 16 MiB of 4 KiB pages, as the remap table's leaves
/// (a file system that writes a little every 2 GiB, as ext4's block groups, makes one leaf
/// of each there).
const LEAF: u64 = 4096;

/// The reference count of every physical page of a store.
pub struct PageRefs {
    leaves: Vec<Option<Box<[u32]>>>,
    pages: u64,
}

impl PageRefs {
    /// Counts for `pages` physical pages, all 0; an error when the memory for the leaf table
    /// cannot be had.
    pub fn try_new(pages: u64) -> Result<PageRefs, OutOfMemory> {
        let n = usize::try_from(pages.div_ceil(LEAF)).unwrap_or(usize::MAX);
        Ok(PageRefs {
            leaves: crate::leaf_table(n)?,
            pages,
        })
    }

    /// The references to `p`.
    pub fn get(&self, p: PhysPage) -> u32 {
        let (leaf, i) = self.split(p);
        self.leaves[leaf].as_ref().map_or(0, |counts| counts[i])
    }

    /// Adds a reference to `p`; returns how many it has now.
    pub fn add(&mut self, p: PhysPage) -> u32 {
        let (leaf, i) = self.split(p);
        let counts = self.leaves[leaf].get_or_insert_with(|| vec![0; LEAF as usize].into());
        counts[i] += 1;
        counts[i]
    }

    /// Adds a reference to each of the `n` pages from `first`, a leaf at a time; returns
    /// the most references one of them has now.
    pub fn add_run(&mut self, first: PhysPage, n: u64) -> u32 {
        let mut most = 0;
        let (mut p, end) = (first.0, first.0 + n);
        while p < end {
            let (leaf, i) = self.split(PhysPage(p));
            let k = (end - p).min(LEAF - i as u64) as usize;
            let counts = self.leaves[leaf].get_or_insert_with(|| vec![0; LEAF as usize].into());
            for c in &mut counts[i..i + k] {
                *c += 1;
                most = most.max(*c);
            }
            p += k as u64;
        }
        most
    }

    /// Drops a reference to `p`; returns how many are left. Dropping one from a page with
    /// none is a bug of the caller's accounting.
    pub fn remove(&mut self, p: PhysPage) -> u32 {
        let (leaf, i) = self.split(p);
        let count = self.leaves[leaf].as_mut().map(|counts| &mut counts[i]);
        match count {
            Some(c) if *c > 0 => {
                *c -= 1;
                *c
            }
            _ => panic!("physical page {} dereferenced below zero", p.0),
        }
    }

    /// Every page with a reference, in order.
    pub fn referenced(&self) -> impl Iterator<Item = PhysPage> + '_ {
        self.leaves
            .iter()
            .enumerate()
            .filter_map(|(n, leaf)| Some((n as u64 * LEAF, leaf.as_ref()?)))
            .flat_map(|(first, counts)| {
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(move |(i, _)| PhysPage(first + i as u64))
            })
    }

    /// The pages with a reference as words of a bitmap, 64 pages each (bit `b` of word
    /// `w`: page `64 w + b`): the words with a bit set, in order.
    pub fn used_words(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        const WORDS: usize = LEAF as usize / 64;
        self.leaves
            .iter()
            .enumerate()
            .filter_map(|(n, leaf)| Some((n * WORDS, leaf.as_ref()?)))
            .flat_map(|(first, counts)| {
                counts
                    .chunks_exact(64)
                    .enumerate()
                    .filter_map(move |(j, c)| {
                        let bits = c
                            .iter()
                            .enumerate()
                            .fold(0u64, |w, (b, &n)| w | (u64::from(n > 0) << b));
                        (bits != 0).then_some((first + j, bits))
                    })
            })
    }

    /// Bytes of memory the counts take: the leaf table and the leaves made.
    pub fn memory_bytes(&self) -> u64 {
        let slots = self.leaves.len() * std::mem::size_of::<Option<Box<[u32]>>>();
        let made = self.leaves.iter().filter(|l| l.is_some()).count();
        (slots + made * LEAF as usize * 4) as u64
    }

    fn split(&self, p: PhysPage) -> (usize, usize) {
        let p = p.0;
        assert!(p < self.pages, "physical page {p} of {}", self.pages);
        ((p / LEAF) as usize, (p % LEAF) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_and_down_and_lists_the_referenced() {
        let mut r = PageRefs::try_new(3 * LEAF + 7).expect("memory");
        let empty = r.memory_bytes();
        assert_eq!(r.get(PhysPage(5)), 0);
        r.add(PhysPage(5));
        r.add(PhysPage(5));
        r.add(PhysPage(3 * LEAF + 6));
        assert_eq!(r.memory_bytes(), empty + 2 * LEAF * 4, "two leaves made");
        assert_eq!(r.get(PhysPage(5)), 2);
        let words: Vec<(usize, u64)> = r.used_words().collect();
        assert_eq!(words, [(0, 1 << 5), (3 * LEAF as usize / 64, 1 << 6)]);
        assert_eq!(r.add_run(PhysPage(LEAF - 2), 4), 1, "across two leaves");
        assert_eq!(r.get(PhysPage(LEAF)), 1);
        assert_eq!(r.add_run(PhysPage(4), 2), 3, "page 5 had two");
        r.remove(PhysPage(4));
        r.remove(PhysPage(5));
        for p in [LEAF - 2, LEAF - 1, LEAF, LEAF + 1] {
            r.remove(PhysPage(p));
        }
        let listed: Vec<u64> = r.referenced().map(|p| p.0).collect();
        assert_eq!(listed, [5, 3 * LEAF + 6]);
        assert_eq!(r.remove(PhysPage(5)), 1);
        assert_eq!(r.remove(PhysPage(5)), 0);
        assert_eq!(r.referenced().count(), 1);
    }

    #[test]
    #[should_panic(expected = "below zero")]
    fn dropping_a_reference_never_taken_is_caught() {
        let mut r = PageRefs::try_new(10).expect("memory");
        r.remove(PhysPage(1));
    }
}
