//! Image augmentation: random zero-padded crop and random horizontal flip.

use rand::rngs::StdRng;
use rand::Rng;

/// Augmentation for image samples `[C, H, W]`.
///
/// * `crop_padding = p > 0`: pad the image with `p` zeros on every side, then
///   crop back to `H x W` at a uniformly random offset in `0..=2p` along each
///   axis — i.e. shift the image by `-p..=p` pixels, filling with zeros.
/// * `hflip`: mirror the image left–right with probability 0.5.
///
/// The crop is applied first, then the flip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding of the random crop (0 disables it).
    pub crop_padding: usize,
    /// Whether to flip horizontally with probability 0.5.
    pub hflip: bool,
}

impl Augment {
    /// Whether this augmentation leaves every sample unchanged.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.hflip
    }

    /// Augments one sample in place, drawing randomness from `rng`.
    ///
    /// `shape` is the sample's shape: its last two entries are height and
    /// width, and any leading entries are channels (so `[C, H, W]` and
    /// `[H, W]` both work). An identity augmentation draws nothing from `rng`
    /// and accepts any shape.
    ///
    /// # Panics
    /// If the augmentation is not the identity and `shape` has fewer than two
    /// dimensions, or `sample.len()` is not the product of `shape`.
    pub fn apply(&self, sample: &mut [f32], shape: &[usize], rng: &mut StdRng) {
        if self.is_identity() {
            return;
        }
        assert!(
            shape.len() >= 2,
            "Augment::apply needs an image shape [.., H, W], got {shape:?}"
        );
        assert_eq!(
            sample.len(),
            shape.iter().product::<usize>(),
            "Augment::apply: sample length does not match shape {shape:?}"
        );
        let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        if h == 0 || w == 0 {
            return;
        }
        if self.crop_padding > 0 {
            let p = self.crop_padding;
            let oy = rng.random_range(0..=2 * p);
            let ox = rng.random_range(0..=2 * p);
            // Output (i, j) reads input (i + oy - p, j + ox - p).
            shift(
                sample,
                h,
                w,
                oy as isize - p as isize,
                ox as isize - p as isize,
            );
        }
        if self.hflip && rng.random_bool(0.5) {
            hflip(sample, w);
        }
    }
}

/// Shifts every `h x w` plane of `sample` so that output `(i, j)` holds input
/// `(i + dy, j + dx)`, or 0 where that lies outside the plane.
fn shift(sample: &mut [f32], h: usize, w: usize, dy: isize, dx: isize) {
    if dy == 0 && dx == 0 {
        return;
    }
    let mut plane = vec![0.0f32; h * w];
    for chan in sample.chunks_exact_mut(h * w) {
        plane.copy_from_slice(chan);
        for i in 0..h {
            let si = i as isize + dy;
            let row = &mut chan[i * w..(i + 1) * w];
            if si < 0 || si >= h as isize {
                row.fill(0.0);
                continue;
            }
            let src = &plane[si as usize * w..(si as usize + 1) * w];
            for (j, out) in row.iter_mut().enumerate() {
                let sj = j as isize + dx;
                *out = if sj < 0 || sj >= w as isize {
                    0.0
                } else {
                    src[sj as usize]
                };
            }
        }
    }
}

/// Mirrors every row (of width `w`) of `sample` left–right.
fn hflip(sample: &mut [f32], w: usize) {
    for row in sample.chunks_exact_mut(w) {
        row.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const SHAPE: [usize; 3] = [2, 5, 6];

    /// Distinct positive values, so that any value identifies its position.
    fn image() -> Vec<f32> {
        (1..=SHAPE.iter().product::<usize>())
            .map(|v| v as f32)
            .collect()
    }

    #[test]
    fn default_is_identity() {
        let aug = Augment::default();
        assert!(aug.is_identity());
        let mut x = image();
        let mut rng = StdRng::seed_from_u64(3);
        let before = rng.clone();
        aug.apply(&mut x, &SHAPE, &mut rng);
        assert_eq!(x, image());
        // Draws nothing, and tolerates non-image shapes.
        let mut v = vec![1.0, 2.0, 3.0];
        aug.apply(&mut v, &[3], &mut rng);
        assert_eq!(v, vec![1.0, 2.0, 3.0]);
        assert_eq!(rng.random::<u64>(), before.clone().random::<u64>());
        assert!(!Augment {
            crop_padding: 1,
            hflip: false
        }
        .is_identity());
    }

    #[test]
    fn flip_twice_is_identity() {
        let aug = Augment {
            crop_padding: 0,
            hflip: true,
        };
        let (mut flipped, mut kept) = (0, 0);
        for seed in 0..64 {
            // Two rngs in the same state make the same flip decision, so the
            // second application undoes the first either way.
            let mut r1 = StdRng::seed_from_u64(seed);
            let mut r2 = r1.clone();
            let mut x = image();
            aug.apply(&mut x, &SHAPE, &mut r1);
            if x == image() {
                kept += 1;
            } else {
                flipped += 1;
                // A flip mirrors each row.
                assert_eq!(&x[..6], &[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]);
            }
            aug.apply(&mut x, &SHAPE, &mut r2);
            assert_eq!(x, image(), "seed {seed}");
        }
        assert!(flipped > 10 && kept > 10, "flipped {flipped}, kept {kept}");

        let mut x = image();
        hflip(&mut x, SHAPE[2]);
        hflip(&mut x, SHAPE[2]);
        assert_eq!(x, image());
    }

    #[test]
    fn crop_preserves_shape_and_values_come_from_shifted_image() {
        let p = 2;
        let aug = Augment {
            crop_padding: p,
            hflip: false,
        };
        let (h, w) = (SHAPE[1], SHAPE[2]);
        let orig = image();
        let mut offsets = std::collections::HashSet::new();
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut x = orig.clone();
            aug.apply(&mut x, &SHAPE, &mut rng);
            assert_eq!(x.len(), orig.len());
            // Infer the shift from any non-zero value, then check all of them.
            let (k, &v) = x
                .iter()
                .enumerate()
                .find(|(_, &v)| v != 0.0)
                .expect("a shift of at most 2 keeps some pixels of a 5x6 image");
            let src = v as usize - 1;
            let (i, j) = ((k / w) % h, k % w);
            let (si, sj) = ((src / w) % h, src % w);
            let dy = si as isize - i as isize;
            let dx = sj as isize - j as isize;
            assert!(dy.abs() <= p as isize && dx.abs() <= p as isize);
            offsets.insert((dy, dx));
            for c in 0..SHAPE[0] {
                for i in 0..h {
                    for j in 0..w {
                        let (si, sj) = (i as isize + dy, j as isize + dx);
                        let expect =
                            if (0..h as isize).contains(&si) && (0..w as isize).contains(&sj) {
                                orig[(c * h + si as usize) * w + sj as usize]
                            } else {
                                0.0
                            };
                        assert_eq!(x[(c * h + i) * w + j], expect, "seed {seed} ({c},{i},{j})");
                    }
                }
            }
        }
        // All 25 offsets in -2..=2 x -2..=2 show up over 200 draws.
        assert_eq!(offsets.len(), (2 * p + 1) * (2 * p + 1));
    }

    #[test]
    fn shift_fills_with_zeros() {
        let mut x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        shift(&mut x, 3, 3, 1, -1);
        assert_eq!(x, vec![0.0, 4.0, 5.0, 0.0, 7.0, 8.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn augment_is_deterministic_for_a_seed() {
        let aug = Augment {
            crop_padding: 1,
            hflip: true,
        };
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut x = image();
            aug.apply(&mut x, &SHAPE, &mut rng);
            x
        };
        assert_eq!(run(9), run(9));
    }
}
