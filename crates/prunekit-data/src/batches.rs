//! Seeded, shuffling mini-batch index loader.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// A seeded mini-batch loader over the indices `0..n`.
///
/// With `shuffle`, each epoch uses its own permutation, drawn from an rng
/// seeded with `seed` mixed with the epoch number: the batches of an epoch
/// are a pure function of `(n, batch_size, shuffle, drop_last, seed, epoch)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batches {
    n: usize,
    batch_size: usize,
    shuffle: bool,
    drop_last: bool,
    seed: u64,
}

/// SplitMix64 finaliser: a good bijective mixer of 64-bit words.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Batches {
    /// A loader over `0..n` in batches of `batch_size`.
    ///
    /// `shuffle`: a new seeded permutation for each epoch (`seed` mixed with
    /// the epoch number); otherwise indices in order. `drop_last`: drop a
    /// final batch smaller than `batch_size`.
    ///
    /// # Panics
    /// If `batch_size` is 0.
    pub fn new(n: usize, batch_size: usize, shuffle: bool, drop_last: bool, seed: u64) -> Self {
        assert!(batch_size > 0, "Batches::new: batch_size must be positive");
        Self {
            n,
            batch_size,
            shuffle,
            drop_last,
            seed,
        }
    }

    /// Number of indices the loader covers.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the loader covers no indices.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The batches of index lists for `epoch`.
    pub fn epoch(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.n).collect();
        if self.shuffle {
            let mixed = splitmix64(self.seed ^ splitmix64(epoch as u64));
            let mut rng = StdRng::seed_from_u64(mixed);
            order.shuffle(&mut rng);
        }
        order
            .chunks(self.batch_size)
            .filter(|c| !self.drop_last || c.len() == self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Number of batches in every epoch.
    pub fn num_batches(&self) -> usize {
        if self.drop_last {
            self.n / self.batch_size
        } else {
            self.n.div_ceil(self.batch_size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_per_epoch() {
        for &(n, bs) in &[(0, 3), (1, 4), (10, 3), (12, 4), (100, 7)] {
            for shuffle in [false, true] {
                let b = Batches::new(n, bs, shuffle, false, 42);
                for e in 0..3 {
                    let batches = b.epoch(e);
                    assert_eq!(batches.len(), b.num_batches());
                    let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
                    all.sort_unstable();
                    assert_eq!(all, (0..n).collect::<Vec<_>>(), "n={n} bs={bs}");
                    assert!(batches.iter().all(|c| !c.is_empty() && c.len() <= bs));
                }
            }
        }
    }

    #[test]
    fn unshuffled_is_in_order() {
        let b = Batches::new(5, 2, false, false, 0);
        assert_eq!(b.epoch(3), vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[test]
    fn deterministic_per_seed_and_epoch() {
        let b = Batches::new(50, 8, true, false, 7);
        assert_eq!(b.epoch(0), b.epoch(0));
        assert_eq!(b.epoch(5), Batches::new(50, 8, true, false, 7).epoch(5));
        assert_ne!(b.epoch(0), b.epoch(1));
        assert_ne!(b.epoch(1), b.epoch(2));
        assert_ne!(b.epoch(0), Batches::new(50, 8, true, false, 8).epoch(0));
        // Shuffled really shuffles.
        let flat: Vec<usize> = b.epoch(0).into_iter().flatten().collect();
        assert_ne!(flat, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn drop_last() {
        let keep = Batches::new(10, 4, true, false, 1);
        let drop = Batches::new(10, 4, true, true, 1);
        assert_eq!(keep.num_batches(), 3);
        assert_eq!(drop.num_batches(), 2);
        let k = keep.epoch(2);
        let d = drop.epoch(2);
        assert_eq!(k.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(d.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4]);
        // Same permutation, only the short tail is dropped.
        assert_eq!(&k[..2], &d[..]);
        // Exact multiples lose nothing; fewer than a batch gives none.
        assert_eq!(Batches::new(8, 4, false, true, 0).epoch(0).len(), 2);
        assert!(Batches::new(3, 4, true, true, 0).epoch(0).is_empty());
        assert_eq!(Batches::new(3, 4, true, true, 0).num_batches(), 0);
    }
}
