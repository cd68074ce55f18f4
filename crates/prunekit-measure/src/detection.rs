//! Object detection metrics (issue 14 §2): box IoU, per-class non-maximum suppression, and mean
//! average precision at one IoU threshold (`map@0.5`) and averaged over the COCO thresholds
//! 0.50:0.05:0.95 (`map@0.5:0.95`).
//!
//! Matching follows the COCO evaluation (Lin et al. 2014; `pycocotools` `COCOeval.evaluateImg`):
//! detections of a class, in order of falling score, each take the unmatched ground-truth box of
//! the same image and class with the highest IoU, if that IoU reaches the threshold; otherwise
//! the detection is a false positive. Average precision is the area under the precision envelope
//! with all-point interpolation (PASCAL VOC 2010 onwards, Everingham et al. 2010 §4.2): the
//! precision at recall r is the highest precision at any recall >= r, summed over the recall
//! steps. Classes without a ground-truth box are left out of the mean (COCO reports them as -1).
//! Coordinates are continuous (`[x1, y1, x2, y2]`, area `(x2 - x1)(y2 - y1)`), not VOC's
//! inclusive pixel indices (+1).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An axis-aligned box `[x1, y1, x2, y2]` (x2 >= x1, y2 >= y1), in pixels.
pub type BoxXyxy = [f32; 4];

/// A ground-truth object.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// index of the image
    pub image: usize,
    pub class: usize,
    pub bbox: BoxXyxy,
}

/// A detection: its box, class and confidence.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// index of the image
    pub image: usize,
    pub class: usize,
    pub bbox: BoxXyxy,
    pub score: f32,
}

pub use prunekit_data::canvas::iou;

/// Greedy non-maximum suppression within each image and class: detections in order of falling
/// score are kept unless they overlap a kept one of the same image and class by IoU above
/// `threshold`. Returns the kept detections, highest score first.
pub fn nms(mut dets: Vec<Detection>, threshold: f32) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        let suppressed = kept
            .iter()
            .any(|k| k.image == d.image && k.class == d.class && iou(&k.bbox, &d.bbox) > threshold);
        if !suppressed {
            kept.push(d);
        }
    }
    kept
}

/// Options of [`decode`]: which cells become detections.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeConfig {
    /// the lowest score kept (objectness x class probability); default 0.01
    pub score_threshold: f32,
    /// the IoU above which [`nms`] suppresses a lower-scored box of the same class; default 0.5
    pub nms_iou: f32,
    /// the most detections kept per image, best first (COCO's maxDets); default 100
    pub max_per_image: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            score_threshold: 0.01,
            nms_iou: 0.5,
            max_per_image: 100,
        }
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Decodes a detector's output `[B, 5 + C, H, W]` (the layout of
/// `prunekit_data::TaskKind::Detection`) into boxes in input pixels: every cell proposes its
/// best class with score `sigmoid(objectness) * softmax(class logits)[best]`, centre
/// `((x + sigmoid(dx)) * stride, (y + sigmoid(dy)) * stride)` and size `exp(s) * stride`
/// (the exponent capped at ln 1000), clipped to the `H * stride x W * stride` image; those
/// scoring at least `cfg.score_threshold` go through per-class [`nms`] and the best
/// `cfg.max_per_image` of each image are kept. Images are numbered from `first_image`.
///
/// # Errors
/// An output that is not 4-D with more than 5 channels; a candle error.
pub fn decode(
    output: &candle_core::Tensor,
    stride: usize,
    first_image: usize,
    cfg: &DecodeConfig,
) -> candle_core::Result<Vec<Detection>> {
    let od = output.dims();
    if od.len() != 4 || od[1] <= 5 {
        candle_core::bail!(
            "a detector's output must be [batch, 5 + classes, height, width], not {od:?}"
        );
    }
    let (batch, ch, gh, gw) = (od[0], od[1], od[2], od[3]);
    let v = output
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (hw, s) = (gh * gw, stride as f32);
    let (img_w, img_h) = ((gw * stride) as f32, (gh * stride) as f32);
    let max_log = 1000f32.ln();
    let mut out = Vec::new();
    for b in 0..batch {
        let m = &v[b * ch * hw..(b + 1) * ch * hw];
        let at = |k: usize, cell: usize| m[k * hw + cell];
        let mut dets = Vec::new();
        for cell in 0..hw {
            let obj = sigmoid(at(0, cell));
            if obj < cfg.score_threshold {
                continue;
            }
            let (mut best, mut top) = (0usize, f32::NEG_INFINITY);
            for c in 0..ch - 5 {
                if at(5 + c, cell) > top {
                    (best, top) = (c, at(5 + c, cell));
                }
            }
            let denom: f32 = (0..ch - 5).map(|c| (at(5 + c, cell) - top).exp()).sum();
            let score = obj / denom;
            if score.is_nan() || score < cfg.score_threshold {
                continue;
            }
            let (y, x) = ((cell / gw) as f32, (cell % gw) as f32);
            let cx = (x + sigmoid(at(1, cell))) * s;
            let cy = (y + sigmoid(at(2, cell))) * s;
            let w = at(3, cell).min(max_log).exp() * s;
            let h = at(4, cell).min(max_log).exp() * s;
            dets.push(Detection {
                image: first_image + b,
                class: best,
                bbox: [
                    (cx - w / 2.0).clamp(0.0, img_w),
                    (cy - h / 2.0).clamp(0.0, img_h),
                    (cx + w / 2.0).clamp(0.0, img_w),
                    (cy + h / 2.0).clamp(0.0, img_h),
                ],
                score,
            });
        }
        let mut kept = nms(dets, cfg.nms_iou);
        kept.truncate(cfg.max_per_image);
        out.extend(kept);
    }
    Ok(out)
}

/// The ground-truth objects of box targets `[B, M, 5]` (rows `[class, x1, y1, x2, y2]`, class
/// < 0 for none), images numbered from `first_image`.
///
/// # Errors
/// Targets that are not `[B, M, 5]`; a candle error.
pub fn ground_truths(
    targets: &candle_core::Tensor,
    first_image: usize,
) -> candle_core::Result<Vec<GroundTruth>> {
    let (batch, rows, width) = targets.dims3()?;
    if width != 5 {
        candle_core::bail!(
            "box targets must be [batch, objects, 5], not {:?}",
            targets.dims()
        );
    }
    let v = targets
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out = Vec::new();
    for b in 0..batch {
        for r in v[b * rows * 5..(b + 1) * rows * 5].chunks_exact(5) {
            if r[0] >= 0.0 {
                out.push(GroundTruth {
                    image: first_image + b,
                    class: r[0] as usize,
                    bbox: [r[1], r[2], r[3], r[4]],
                });
            }
        }
    }
    Ok(out)
}

/// Average precision of one class at one IoU threshold (see the module docs), or `None` when
/// the class has no ground-truth box.
pub fn average_precision(
    dets: &[Detection],
    gts: &[GroundTruth],
    class: usize,
    threshold: f32,
) -> Option<f64> {
    let mut by_image: BTreeMap<usize, Vec<(BoxXyxy, bool)>> = BTreeMap::new();
    let mut total = 0usize;
    for g in gts.iter().filter(|g| g.class == class) {
        by_image.entry(g.image).or_default().push((g.bbox, false));
        total += 1;
    }
    if total == 0 {
        return None;
    }
    let mut ds: Vec<&Detection> = dets.iter().filter(|d| d.class == class).collect();
    ds.sort_by(|a, b| b.score.total_cmp(&a.score));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut points = Vec::with_capacity(ds.len()); // (recall, precision) after each detection
    for d in ds {
        let mut best: Option<(usize, f32)> = None;
        if let Some(objs) = by_image.get(&d.image) {
            for (j, (b, matched)) in objs.iter().enumerate() {
                let o = iou(&d.bbox, b);
                if !matched && o >= threshold && best.is_none_or(|(_, bo)| o > bo) {
                    best = Some((j, o));
                }
            }
        }
        match best {
            Some((j, _)) => {
                if let Some(objs) = by_image.get_mut(&d.image) {
                    objs[j].1 = true;
                }
                tp += 1;
            }
            None => fp += 1,
        }
        points.push((tp as f64 / total as f64, tp as f64 / (tp + fp) as f64));
    }
    // the precision envelope, from the right, then the area over the recall steps
    let mut ap = 0.0;
    let mut envelope = 0.0f64;
    let mut env: Vec<f64> = vec![0.0; points.len()];
    for i in (0..points.len()).rev() {
        envelope = envelope.max(points[i].1);
        env[i] = envelope;
    }
    let mut prev_recall = 0.0;
    for (i, &(r, _)) in points.iter().enumerate() {
        if r > prev_recall {
            ap += (r - prev_recall) * env[i];
            prev_recall = r;
        }
    }
    Some(ap)
}

/// The COCO IoU thresholds 0.50, 0.55, ..., 0.95.
pub fn coco_thresholds() -> Vec<f32> {
    (0..10).map(|i| 0.5 + 0.05 * i as f32).collect()
}

/// Mean average precision over the classes that have ground truth, at `threshold`; `None` when
/// no class has any.
pub fn mean_average_precision(
    dets: &[Detection],
    gts: &[GroundTruth],
    classes: usize,
    threshold: f32,
) -> Option<f64> {
    let aps: Vec<f64> = (0..classes)
        .filter_map(|c| average_precision(dets, gts, c, threshold))
        .collect();
    (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64)
}

/// `map@0.5` and `map@0.5:0.95` (the mean over [`coco_thresholds`]), by those names; empty when
/// there is no ground truth.
pub fn detection_metrics(
    dets: &[Detection],
    gts: &[GroundTruth],
    classes: usize,
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    if let Some(v) = mean_average_precision(dets, gts, classes, 0.5) {
        m.insert("map@0.5".to_string(), v);
    }
    let at: Vec<f64> = coco_thresholds()
        .into_iter()
        .filter_map(|t| mean_average_precision(dets, gts, classes, t))
        .collect();
    if !at.is_empty() {
        m.insert(
            "map@0.5:0.95".to_string(),
            at.iter().sum::<f64>() / at.len() as f64,
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(image: usize, class: usize, bbox: BoxXyxy) -> GroundTruth {
        GroundTruth { image, class, bbox }
    }

    fn det(image: usize, class: usize, bbox: BoxXyxy, score: f32) -> Detection {
        Detection {
            image,
            class,
            bbox,
            score,
        }
    }

    #[test]
    fn iou_by_hand() {
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]), 1.0);
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[10.0, 0.0, 20.0, 10.0]), 0.0);
        assert_eq!(iou(&[0.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0]), 0.0);
    }

    /// Three ground-truth boxes of one class in two images; detections by score: a hit (P 1,
    /// R 1/3), a miss (P 1/2, R 1/3), a hit (P 2/3, R 2/3); the third box is never found.
    /// Envelope: 1 up to R 1/3, 2/3 up to R 2/3: AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
    #[test]
    fn average_precision_by_hand() {
        let gts = [
            gt(0, 0, [0.0, 0.0, 10.0, 10.0]),
            gt(1, 0, [0.0, 0.0, 10.0, 10.0]),
            gt(1, 0, [20.0, 20.0, 30.0, 30.0]),
        ];
        let dets = [
            det(0, 0, [0.0, 0.0, 10.0, 10.0], 0.9),
            det(1, 0, [50.0, 50.0, 60.0, 60.0], 0.8),
            det(1, 0, [0.0, 0.0, 10.0, 10.0], 0.7),
        ];
        let ap = average_precision(&dets, &gts, 0, 0.5).unwrap();
        assert!((ap - 5.0 / 9.0).abs() < 1e-12, "{ap}");
        // the same box found twice: the second copy is a false positive (each box matches once)
        let twice = [
            det(0, 0, [0.0, 0.0, 10.0, 10.0], 0.9),
            det(0, 0, [0.0, 0.0, 10.0, 10.0], 0.8),
        ];
        let ap = average_precision(&twice, &gts[..1], 0, 0.5).unwrap();
        assert_eq!(ap, 1.0, "the duplicate comes after recall 1");
        // a class without ground truth is left out of the mean; one with it but no detections is 0
        assert_eq!(average_precision(&dets, &gts, 1, 0.5), None);
        assert_eq!(average_precision(&[], &gts, 0, 0.5), Some(0.0));
        let m = mean_average_precision(&dets, &gts, 3, 0.5).unwrap();
        assert!((m - 5.0 / 9.0).abs() < 1e-12);
    }

    /// A detection with IoU 0.58 counts at the thresholds 0.50 and 0.55 and misses at the other
    /// eight: map@0.5:0.95 = 2/10 of a perfect score.
    #[test]
    fn coco_range_by_hand() {
        let gts = [gt(0, 2, [0.0, 0.0, 10.0, 10.0])];
        // [0, 0, 10, 5.8]: intersection 58, union 100
        let dets = [det(0, 2, [0.0, 0.0, 10.0, 5.8], 0.5)];
        let m = detection_metrics(&dets, &gts, 5);
        assert_eq!(m["map@0.5"], 1.0);
        assert!((m["map@0.5:0.95"] - 0.2).abs() < 1e-12, "{m:?}");
        assert!(detection_metrics(&dets, &[], 5).is_empty());
        assert_eq!(coco_thresholds().len(), 10);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes_per_class_and_image() {
        let dets = vec![
            det(0, 0, [0.0, 0.0, 10.0, 10.0], 0.6),
            det(0, 0, [1.0, 0.0, 11.0, 10.0], 0.9), // IoU 0.82 with the first: it wins
            det(0, 1, [0.0, 0.0, 10.0, 10.0], 0.5), // another class: kept
            det(1, 0, [0.0, 0.0, 10.0, 10.0], 0.4), // another image: kept
            det(0, 0, [30.0, 30.0, 40.0, 40.0], 0.3), // far away: kept
        ];
        let kept = nms(dets, 0.5);
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.5, 0.4, 0.3]);
    }

    /// A 1x(5+2)x2x2 output whose cell (y 1, x 0) holds a confident class-1 box: objectness
    /// logit 4, centre offsets 0 (sigmoid 0.5), size e^ln2 = 2 strides; the other cells are off.
    #[test]
    fn decode_by_hand_and_back_to_the_ground_truth() {
        let d = &candle_core::Device::Cpu;
        let mut v = vec![-10f32; 7 * 4];
        let cell = 2; // y 1, x 0 on a 2x2 grid
        v[cell] = 4.0;
        v[4 + cell] = 0.0;
        v[8 + cell] = 0.0;
        v[12 + cell] = 2f32.ln();
        v[16 + cell] = 2f32.ln();
        v[20 + cell] = 0.0; // class 0 logit
        v[24 + cell] = 2.0; // class 1 logit
        let out = candle_core::Tensor::from_vec(v, (1, 7, 2, 2), d).unwrap();
        let dets = decode(&out, 8, 5, &DecodeConfig::default()).unwrap();
        assert_eq!(dets.len(), 1);
        let det = dets[0];
        assert_eq!((det.image, det.class), (5, 1));
        // centre (0.5 * 8, 1.5 * 8) = (4, 12), side 16: [-4, 4, 12, 20] clipped to the 16x16 image
        assert_eq!(det.bbox, [0.0, 4.0, 12.0, 16.0]);
        let want = sigmoid(4.0) / (1.0 + (-2f32).exp());
        assert!((det.score - want).abs() < 1e-6);
        let t = candle_core::Tensor::new(
            &[[[1f32, 0.0, 4.0, 12.0, 16.0], [-1.0, 0.0, 0.0, 0.0, 0.0]]],
            d,
        )
        .unwrap();
        let gts = ground_truths(&t, 5).unwrap();
        assert_eq!(gts, vec![gt(5, 1, [0.0, 4.0, 12.0, 16.0])]);
        assert_eq!(detection_metrics(&dets, &gts, 2)["map@0.5:0.95"], 1.0);
        assert!(decode(&t, 8, 0, &DecodeConfig::default()).is_err());
    }
}
