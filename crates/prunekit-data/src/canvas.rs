//! Detection canvases (issue 14 §2): real Fashion-MNIST images placed at seeded random
//! positions and scales on a noisy background, so that every box and class is known exactly.
//!
//! A canvas is `size x size` grey values in [0, 1]: a background of uniform noise (each pixel
//! drawn from [0, `background`)), then 1 to `max_objects` objects, each a source image scaled
//! bilinearly to a side drawn from `min_side..=max_side` pixels and pasted at a random position
//! inside the canvas (the brighter of object and canvas wins, as the items are bright on black).
//! An object is placed only where its box overlaps every earlier box by IoU at most
//! `max_overlap` (up to 50 draws per object; a canvas may hold fewer objects when none fits).
//! Its box is the tight box of the object's nonzero pixels after scaling, in canvas pixels
//! `[x1, y1, x2, y2]` (x2, y2 exclusive), its class the source image's label. The same seed and
//! sources give the same canvases.

use rand::Rng;

use crate::dataset::{Dataset, Feature, Normalization, Target, BOX_ROW};
use crate::error::{DataError, Result};
use crate::task::{Task, TaskKind};

/// Options of [`make_canvases`].
#[derive(Clone, Debug, PartialEq)]
pub struct CanvasConfig {
    /// side of the square canvas, 16..=1024; default 96
    pub size: usize,
    /// objects per canvas: 1..=`max_objects` (uniform); default 4
    pub max_objects: usize,
    /// smallest side of a placed object, in pixels; default 20
    pub min_side: usize,
    /// largest side of a placed object, in pixels (at most `size`); default 40
    pub max_side: usize,
    /// the largest IoU allowed between two objects' boxes; default 0.2
    pub max_overlap: f32,
    /// background noise amplitude in [0, 1); default 0.1
    pub background: f32,
}

impl Default for CanvasConfig {
    fn default() -> Self {
        Self {
            size: 96,
            max_objects: 4,
            min_side: 20,
            max_side: 40,
            max_overlap: 0.2,
            background: 0.1,
        }
    }
}

/// One object on a canvas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CanvasObject {
    /// the source image's label
    pub class: u32,
    /// `[x1, y1, x2, y2]` in canvas pixels (x2, y2 exclusive)
    pub bbox: [f32; 4],
}

/// One canvas: `size * size` values in [0, 1], row-major, and its objects.
#[derive(Clone, Debug, PartialEq)]
pub struct Canvas {
    /// `size * size` grey values in [0, 1], row-major
    pub pixels: Vec<f32>,
    /// the objects placed, in order
    pub objects: Vec<CanvasObject>,
}

/// Bilinear resize of a `h x w` u8 image to `side x side` values in [0, 1] (pixel centres
/// aligned, as `align_corners = false`).
fn resize(src: &[u8], h: usize, w: usize, side: usize) -> Vec<f32> {
    let mut out = vec![0f32; side * side];
    let (sy, sx) = (h as f32 / side as f32, w as f32 / side as f32);
    for y in 0..side {
        let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f32);
        let (y0, ty) = (fy.floor() as usize, fy - fy.floor());
        let y1 = (y0 + 1).min(h - 1);
        for x in 0..side {
            let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f32);
            let (x0, tx) = (fx.floor() as usize, fx - fx.floor());
            let x1 = (x0 + 1).min(w - 1);
            let p = |yy: usize, xx: usize| f32::from(src[yy * w + xx]) / 255.0;
            let top = p(y0, x0) * (1.0 - tx) + p(y0, x1) * tx;
            let bottom = p(y1, x0) * (1.0 - tx) + p(y1, x1) * tx;
            out[y * side + x] = top * (1.0 - ty) + bottom * ty;
        }
    }
    out
}

/// Intersection over union of two boxes `[x1, y1, x2, y2]` (continuous coordinates, area
/// `(x2 - x1)(y2 - y1)`); 0 when either has no area. The one IoU of prunekit: canvases use it to
/// bound overlaps, `prunekit_measure::detection` to match detections.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// `n` canvases from the source images `images` (`labels.len()` images of `h x w` u8 pixels,
/// row-major) with `cfg`, seeded.
///
/// # Errors
/// [`DataError::InvalidArgument`] for a bad `cfg` (sides outside 4..=size, no objects, overlap
/// outside [0, 1], noise outside [0, 1)), no source image, or `images` not holding
/// `labels.len() * h * w` pixels.
pub fn make_canvases(
    images: &[u8],
    labels: &[u8],
    (h, w): (usize, usize),
    n: usize,
    cfg: &CanvasConfig,
    seed: u64,
) -> Result<Vec<Canvas>> {
    let bad = |m: String| Err(DataError::InvalidArgument(format!("canvases: {m}")));
    if !(16..=1024).contains(&cfg.size)
        || cfg.max_objects == 0
        || cfg.min_side < 4
        || cfg.min_side > cfg.max_side
        || cfg.max_side > cfg.size
        || !(0.0..=1.0).contains(&cfg.max_overlap)
        || !(0.0..1.0).contains(&cfg.background)
    {
        return bad(format!("invalid options {cfg:?}"));
    }
    if labels.is_empty() || h == 0 || w == 0 || images.len() != labels.len() * h * w {
        return bad(format!(
            "{} source pixels for {} images of {h}x{w}",
            images.len(),
            labels.len()
        ));
    }
    let mut rng = crate::rng(seed);
    let s = cfg.size;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut pixels: Vec<f32> = (0..s * s)
            .map(|_| rng.random::<f32>() * cfg.background)
            .collect();
        let mut objects: Vec<CanvasObject> = Vec::new();
        let want = rng.random_range(1..=cfg.max_objects);
        for _ in 0..want {
            for _attempt in 0..50 {
                let k = rng.random_range(0..labels.len());
                let side = rng.random_range(cfg.min_side..=cfg.max_side);
                let (ox, oy) = (
                    rng.random_range(0..=s - side),
                    rng.random_range(0..=s - side),
                );
                let obj = resize(&images[k * h * w..(k + 1) * h * w], h, w, side);
                // the tight box of the object's nonzero pixels
                let (mut x1, mut y1, mut x2, mut y2) = (side, side, 0, 0);
                for y in 0..side {
                    for x in 0..side {
                        if obj[y * side + x] > 0.0 {
                            x1 = x1.min(x);
                            y1 = y1.min(y);
                            x2 = x2.max(x + 1);
                            y2 = y2.max(y + 1);
                        }
                    }
                }
                if x2 == 0 {
                    break; // a blank source image: nothing to place
                }
                let bbox = [
                    (ox + x1) as f32,
                    (oy + y1) as f32,
                    (ox + x2) as f32,
                    (oy + y2) as f32,
                ];
                if objects
                    .iter()
                    .any(|o| iou(&o.bbox, &bbox) > cfg.max_overlap)
                {
                    continue;
                }
                for y in 0..side {
                    for x in 0..side {
                        let p = &mut pixels[(oy + y) * s + ox + x];
                        *p = p.max(obj[y * side + x]);
                    }
                }
                objects.push(CanvasObject {
                    class: u32::from(labels[k]),
                    bbox,
                });
                break;
            }
        }
        out.push(Canvas { pixels, objects });
    }
    Ok(out)
}

/// Checks that `stride` (pixels per output cell of a detector) divides the canvas side.
///
/// # Errors
/// [`DataError::InvalidArgument`] for a stride of 0 or one that does not divide `cfg.size`.
pub fn check_stride(cfg: &CanvasConfig, stride: usize) -> Result<()> {
    if stride == 0 || !cfg.size.is_multiple_of(stride) {
        return Err(DataError::InvalidArgument(format!(
            "detection: a stride of {stride} does not divide the canvas side {}",
            cfg.size
        )));
    }
    Ok(())
}

/// Canvases as a detection dataset: input `image` `[1, size, size]` standardised with `norm`,
/// targets [`Target::Boxes`] of `cfg.max_objects` rows (`[class, x1, y1, x2, y2]`, class -1
/// for an unused row), task [`TaskKind::Detection`] of `classes` classes and `stride`.
///
/// # Errors
/// As [`check_stride`]; [`DataError::BadLabel`] for an object class not below `classes`.
pub fn canvas_dataset(
    name: &str,
    canvases: &[Canvas],
    cfg: &CanvasConfig,
    classes: usize,
    stride: usize,
    norm: &Normalization,
) -> Result<Dataset> {
    check_stride(cfg, stride)?;
    let rows = cfg.max_objects * BOX_ROW;
    let mut x = Vec::with_capacity(canvases.len() * cfg.size * cfg.size);
    let mut boxes = vec![0f32; canvases.len() * rows];
    for (c, out) in canvases.iter().zip(boxes.chunks_exact_mut(rows)) {
        x.extend_from_slice(&c.pixels);
        for (k, row) in out.chunks_exact_mut(BOX_ROW).enumerate() {
            match c.objects.get(k) {
                Some(o) => {
                    row[0] = o.class as f32;
                    row[1..].copy_from_slice(&o.bbox);
                }
                None => row[0] = -1.0,
            }
        }
    }
    norm.apply(&mut x);
    Dataset::with_task(
        name,
        vec![Feature::float("image", vec![1, cfg.size, cfg.size], x)],
        Target::Boxes {
            values: boxes,
            max_objects: cfg.max_objects,
            num_classes: classes,
        },
        Task::new(TaskKind::Detection { classes, stride }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 8x8 sources: a filled square with a one-pixel blank margin (class 3) and a vertical
    /// bar in columns 3..5 (class 7).
    fn sources() -> (Vec<u8>, Vec<u8>) {
        let mut img = vec![0u8; 2 * 64];
        for y in 1..7 {
            for x in 1..7 {
                img[y * 8 + x] = 200;
            }
            for x in 3..5 {
                img[64 + y * 8 + x] = 255;
            }
        }
        (img, vec![3, 7])
    }

    #[test]
    fn canvases_are_seeded_and_every_box_is_tight_and_inside() {
        let (img, labels) = sources();
        let cfg = CanvasConfig {
            size: 48,
            max_objects: 4,
            min_side: 8,
            max_side: 16,
            ..CanvasConfig::default()
        };
        let a = make_canvases(&img, &labels, (8, 8), 30, &cfg, 5).unwrap();
        assert_eq!(
            a,
            make_canvases(&img, &labels, (8, 8), 30, &cfg, 5).unwrap()
        );
        assert_ne!(
            a,
            make_canvases(&img, &labels, (8, 8), 30, &cfg, 6).unwrap()
        );
        let mut counts = [0usize; 5];
        for c in &a {
            assert_eq!(c.pixels.len(), 48 * 48);
            assert!(c.pixels.iter().all(|&p| (0.0..=1.0).contains(&p)));
            assert!((1..=4).contains(&c.objects.len()));
            counts[c.objects.len()] += 1;
            for (i, o) in c.objects.iter().enumerate() {
                assert!(o.class == 3 || o.class == 7);
                let [x1, y1, x2, y2] = o.bbox;
                assert!(0.0 <= x1 && x1 < x2 && x2 <= 48.0 && 0.0 <= y1 && y1 < y2 && y2 <= 48.0);
                // the bar is narrower than it is tall; the square is square (bilinear scaling
                // widens both by about a pixel a side)
                let (bw, bh) = (x2 - x1, y2 - y1);
                if o.class == 7 {
                    assert!(bw < bh, "{:?}", o.bbox);
                } else {
                    assert!((bw - bh).abs() <= 1.0, "{:?}", o.bbox);
                }
                // the object sits where its box says: its centre is bright (both shapes are
                // solid around their centre)
                let centre = c.pixels[((y1 + y2) / 2.0) as usize * 48 + ((x1 + x2) / 2.0) as usize];
                assert!(centre > 0.7, "{centre} at the centre of {:?}", o.bbox);
                for o2 in &c.objects[..i] {
                    assert!(iou(&o.bbox, &o2.bbox) <= cfg.max_overlap);
                }
            }
        }
        assert!(counts[1] > 0 && counts[4] > 0, "{counts:?}");
    }

    #[test]
    fn bad_options_or_sources_are_errors() {
        let (img, labels) = sources();
        let ok = CanvasConfig {
            size: 48,
            min_side: 8,
            max_side: 16,
            ..CanvasConfig::default()
        };
        for cfg in [
            CanvasConfig {
                max_side: 60,
                ..ok.clone()
            },
            CanvasConfig {
                min_side: 20,
                ..ok.clone()
            },
            CanvasConfig {
                max_objects: 0,
                ..ok.clone()
            },
            CanvasConfig {
                background: 1.0,
                ..ok.clone()
            },
        ] {
            assert!(
                make_canvases(&img, &labels, (8, 8), 2, &cfg, 0).is_err(),
                "{cfg:?}"
            );
        }
        assert!(make_canvases(&img[..100], &labels, (8, 8), 2, &ok, 0).is_err());
        assert!(make_canvases(&[], &[], (8, 8), 2, &ok, 0).is_err());
    }

    #[test]
    fn resize_keeps_a_constant_image_and_scales_a_bar() {
        let src = vec![255u8; 28 * 28];
        assert!(resize(&src, 28, 28, 13)
            .iter()
            .all(|&v| (v - 1.0).abs() < 1e-6));
        let (img, _) = sources();
        let up = resize(&img[..64], 8, 8, 16);
        assert_eq!(up[0], 0.0, "the blank corner stays blank");
        assert!(
            (up[8 * 16 + 8] - 200.0 / 255.0).abs() < 1e-6,
            "the centre keeps its value"
        );
    }
}
