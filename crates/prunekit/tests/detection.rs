//! Issue 14 §2 end to end without Fashion-MNIST: canvases of three synthetic shapes (a filled
//! square, a ring, a cross) placed by the seeded canvas generator, the `yolo-tiny` detector
//! trained on them with the detection loss, scored by mAP after decoding and NMS, pruned to
//! fewer MACs (the structured rewrite checked against masking through the upsample + concat
//! neck), fine-tuned, and drawn in report pictures. A mis-strided dataset is a clear error.

use prunekit::data::canvas::{canvas_dataset, make_canvases, CanvasConfig};
use prunekit::data::{Dataset, Normalization};
use prunekit::prelude::*;
use prunekit::train::{fit, OptimizerKind, TrainConfig};

const SIDE: usize = 12;

/// One 12x12 u8 image per class: a filled square, a ring (2-pixel border), a cross.
fn shapes() -> (Vec<u8>, Vec<u8>) {
    let mut images = Vec::new();
    for class in 0..3 {
        for y in 0..SIDE {
            for x in 0..SIDE {
                let on = match class {
                    0 => true,
                    1 => !(2..SIDE - 2).contains(&x) || !(2..SIDE - 2).contains(&y),
                    _ => (4..8).contains(&x) || (4..8).contains(&y),
                };
                images.push(if on { 255 } else { 0 });
            }
        }
    }
    (images, vec![0, 1, 2])
}

fn split(stride: usize) -> (Dataset, Dataset) {
    let (images, labels) = shapes();
    let cfg = CanvasConfig {
        size: 32,
        max_objects: 2,
        min_side: 10,
        max_side: 16,
        max_overlap: 0.1,
        background: 0.1,
    };
    let train = make_canvases(&images, &labels, (SIDE, SIDE), 384, &cfg, 1).unwrap();
    let test = make_canvases(&images, &labels, (SIDE, SIDE), 64, &cfg, 2).unwrap();
    let all: Vec<f32> = train.iter().flat_map(|c| c.pixels.clone()).collect();
    let norm = Normalization::compute(&all);
    (
        canvas_dataset("shapes/train", &train, &cfg, 3, stride, &norm).unwrap(),
        canvas_dataset("shapes/test", &test, &cfg, 3, stride, &norm).unwrap(),
    )
}

/// `yolo-tiny` on 32x32 images with 3 classes (output [8, 8, 8] per image, stride 4).
fn detector() -> Graph {
    let opts = prunekit::zoo::ZooOptions {
        input: Some(vec![1, 32, 32]),
        classes: Some(3),
        ..Default::default()
    };
    prunekit::zoo::build_with("yolo-tiny", 0, &opts).unwrap()
}

fn train_cfg(epochs: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerKind::adamw(0.0005),
        progress: false,
        ..TrainConfig::sgd_cosine(epochs, 16, lr, 384)
    }
}

fn map50(g: &Graph, data: &Dataset) -> f64 {
    let e = prunekit::measure::evaluate(g, data, 64).unwrap();
    assert_eq!(e.headline, "map@0.5");
    assert!(e.get("map@0.5:0.95").unwrap() <= e.get("map@0.5").unwrap());
    e.headline_value().unwrap()
}

#[test]
fn a_detector_trains_prunes_through_its_neck_and_recovers() {
    let (train, test) = split(4);
    let mut g = detector();
    let untrained = map50(&g, &test);
    fit(&mut g, &train, None, &train_cfg(12, 0.003)).unwrap();
    let dense = map50(&g, &test);
    assert!(
        dense > 0.9 && dense > untrained + 0.5,
        "untrained {untrained}, trained {dense}"
    );

    // structured pruning couples the upsampled lateral conv with the concat and the neck conv
    let original = g.try_clone().unwrap();
    let report = prune_structured(&mut g, &StructuredConfig::new(0.3), &Norm::L1).unwrap();
    let inputs = vec![prunekit::prune::random_inputs(&original, 2, 0).unwrap()];
    let check = verify(&original, &g, &report.removed(), &inputs).unwrap();
    assert!(check.max_rel_error < 1e-4, "{}", check.max_rel_error);
    let (before, after) = (original.macs().unwrap(), g.macs().unwrap());
    assert!(after * 10 < before * 6, "MACs {before} -> {after}");
    // the head keeps its 5 + 3 maps
    assert_eq!(g.validate().unwrap()["head"], vec![8, 8, 8]);
    fit(&mut g, &train, None, &train_cfg(6, 0.001)).unwrap();
    let tuned = map50(&g, &test);
    eprintln!(
        "map@0.5: untrained {untrained:.4}, dense {dense:.4}, pruned + fine-tuned {tuned:.4}"
    );
    assert!(
        tuned > dense - 0.05,
        "dense {dense}, pruned + fine-tuned {tuned}"
    );

    // report pictures: the first test images, their true boxes, a PNG
    let pics = prunekit::report::assemble::detection_pictures(&g, &test).unwrap();
    assert_eq!(pics.len(), 4);
    assert!(pics.iter().all(|p| p.png_base64.starts_with("iVBORw0KGgo")));
    assert!(pics.iter().all(|p| (p.width, p.height) == (32, 32)));
    assert_eq!(
        pics.iter().map(|p| p.truth.len()).sum::<usize>(),
        (0..4)
            .map(|i| prunekit::measure::detection::ground_truths(
                &test.batch(&[i], &Device::Cpu).unwrap().target,
                0
            )
            .unwrap()
            .len())
            .sum::<usize>()
    );
}

#[test]
fn a_detector_on_data_of_another_stride_is_refused_by_name() {
    let (_, test8) = split(8);
    let g = detector();
    let err = prunekit::measure::evaluate(&g, &test8, 16)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stride 8") && err.contains("[8, 4, 4]") && err.contains("[8, 8, 8]"),
        "{err}"
    );
}
