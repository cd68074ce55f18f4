//! Compressed masked weights in our format (issue 16): every layout of `prunekit_io::sparse`
//! round-trips bit-exactly (values, masks, dtypes), a magnitude- or N:M-masked 512x512 Linear is
//! as small on disk as the goals say, and every kind of inconsistent compressed tensor is a
//! one-line error naming it.

#[path = "../../prunekit-graph/tests/common/mod.rs"]
mod common;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use prunekit_graph::{Executor, Graph, GraphBuilder, GraphError};
use prunekit_io::native::{load, model_size, save, STRUCTURE_FILE, WEIGHTS_FILE};
use prunekit_io::sparse::META_PREFIX;
use prunekit_prune::criteria::Norm;
use prunekit_prune::{magnitude_prune, prune_nm, Scope, Target};

/// One Linear `input -> out` with N(0, 0.25) weights (seeded).
fn linear(input: usize, out: usize, seed: u64) -> Graph {
    let mut b = GraphBuilder::new("linear", seed);
    let x = b.input("x", &[input]);
    let y = b.linear(&x, out).unwrap();
    let g = b.finish(&[&y]).unwrap();
    randomize_params(&g, seed);
    g
}

/// A conv (8 -> 4 channels, 3x3) then a Linear, for N:M groups with spatial positions.
fn conv_net(seed: u64) -> Graph {
    let mut b = GraphBuilder::new("conv", seed);
    let x = b.input("image", &[8, 5, 5]);
    let x = b.named("conv").conv2d(&x, 4, 3, 1, 1).unwrap();
    let x = b.relu(&x).unwrap();
    let x = b.flatten(&x).unwrap();
    let y = b.linear(&x, 6).unwrap();
    let g = b.finish(&[&y]).unwrap();
    randomize_params(&g, seed);
    g
}

/// The bytes of a tensor as safetensors stores them (any dtype).
fn raw(t: &Tensor) -> Vec<u8> {
    safetensors::View::data(t).into_owned()
}

/// Every parameter's dtype, shape and bytes, and every mask's, are equal.
fn assert_same_params(a: &Graph, b: &Graph) {
    for ((na, ka, pa), (nb, kb, pb)) in a.params().zip(b.params()) {
        let what = format!("{}.{ka}", na.name);
        assert_eq!((&na.name, ka), (&nb.name, kb));
        assert_eq!(pa.tensor().dtype(), pb.tensor().dtype(), "{what}");
        assert_eq!(pa.tensor().dims(), pb.tensor().dims(), "{what}");
        assert!(
            raw(pa.tensor()) == raw(pb.tensor()),
            "{what}: values differ"
        );
        match (&pa.mask, &pb.mask) {
            (None, None) => {}
            (Some(ma), Some(mb)) => {
                assert_eq!(ma.dtype(), mb.dtype(), "{what} mask");
                assert!(raw(ma) == raw(mb), "{what}: masks differ");
            }
            (ma, mb) => panic!("{what}: mask present {} vs {}", ma.is_some(), mb.is_some()),
        }
    }
    assert_eq!(a.params().count(), b.params().count());
}

/// A weights file's tensors as raw bytes, editable by the tests.
struct Raw {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Raw {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

type Tensors = BTreeMap<String, Raw>;
type Meta = HashMap<String, String>;
type Edit<'a> = dyn Fn(&mut Tensors, &mut Meta) + 'a;

fn read_weights(dir: &Path) -> (Tensors, Meta) {
    let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let r = Raw {
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            };
            (k, r)
        })
        .collect();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (tensors, header.metadata().clone().unwrap_or_default())
}

/// Rewrites the weights file through `f` (tensors and header metadata).
fn edit_weights(dir: &Path, f: impl FnOnce(&mut Tensors, &mut Meta)) {
    let (mut t, mut m) = read_weights(dir);
    f(&mut t, &mut m);
    let bytes = safetensors::tensor::serialize(t.iter().collect::<Vec<_>>(), Some(m)).unwrap();
    std::fs::write(dir.join(WEIGHTS_FILE), bytes).unwrap();
}

/// The layout recorded for parameter `key` (None: dense).
fn layout(dir: &Path, key: &str) -> Option<serde_json::Value> {
    let (_, meta) = read_weights(dir);
    meta.get(&format!("{META_PREFIX}{key}"))
        .map(|j| serde_json::from_str(j).unwrap())
}

/// model.json's `version`.
fn version(dir: &Path) -> u64 {
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(STRUCTURE_FILE)).unwrap()).unwrap();
    j["version"].as_u64().unwrap()
}

fn saved(g: &Graph) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    save(g, &dir).unwrap();
    (tmp, dir)
}

/// Loads and expects an error of one line; a panic fails with a clear message.
fn load_err(dir: &Path) -> String {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(dir, &Device::Cpu)));
    let e: GraphError = match r {
        Err(_) => panic!("load panicked instead of returning an error"),
        Ok(Ok(_)) => panic!("load succeeded on bad input"),
        Ok(Err(e)) => e,
    };
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    assert!(msg.contains(WEIGHTS_FILE), "{msg}");
    msg
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` does not mention `{p}`");
    }
}

/// A mask of `shape` keeping exactly the flat indices `kept`.
fn mask_at(shape: &[usize], kept: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v = vec![0f32; n];
    for &i in kept {
        v[i] = 1.0;
    }
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn random_mask(shape: &[usize], keep: f64, seed: u64) -> Tensor {
    uniform(shape, 0.0, 1.0, seed)
        .lt(keep)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

// ----------------------------------------------------------------------------------------------
// round trips, one per layout

/// Saves, checks the layout of `key` (and that no U8 mask or dense copy is stored beside a
/// compressed one), loads, and compares every parameter and mask bit for bit.
fn roundtrip_as(g: &Graph, key: &str, want: &str) -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = saved(g);
    let got = layout(&dir, key);
    let name = got
        .as_ref()
        .map_or("dense", |j| j["encoding"].as_str().unwrap());
    assert_eq!(name, want, "{key}: {got:?}");
    let (tensors, _) = read_weights(&dir);
    assert!(!tensors.contains_key(&format!("{key}.mask")), "no U8 mask");
    if want != "nonzero" {
        assert!(!tensors.contains_key(key), "no dense copy of {key}");
    }
    let back = load(&dir, &Device::Cpu).unwrap();
    assert_same_params(g, &back);
    (tmp, dir)
}

#[test]
fn magnitude_masks_store_as_a_bitmask_and_roundtrip_bit_exact() {
    let mut g = linear(64, 48, 1);
    magnitude_prune(&mut g, Target::Ratio(0.5), Scope::Layer).unwrap();
    let (_tmp, dir) = roundtrip_as(&g, "linear1.weight", "bitmask");
    assert_eq!(
        layout(&dir, "linear1.weight").unwrap(),
        serde_json::json!({"encoding": "bitmask", "shape": [48, 64]})
    );
    assert_eq!(version(&dir), 2);
    // unmasked, nothing needs version 2: older readers still read it
    let (_tmp1, dense) = saved(&linear(64, 48, 1));
    assert_eq!(version(&dense), 1);
    // the loaded model computes what the saved one does, bit for bit
    let back = load(&dir, &Device::Cpu).unwrap();
    let x = randn_f32(&[3, 64], 2);
    let ya = Executor::new(0).eval(&g, std::slice::from_ref(&x)).unwrap();
    let yb = Executor::new(0).eval(&back, &[x]).unwrap();
    assert_eq!(bits(&ya[0]), bits(&yb[0]));
}

#[test]
fn very_sparse_masks_store_as_indices() {
    // 99% masked: u16 gaps
    let mut g = linear(512, 512, 3);
    magnitude_prune(&mut g, Target::Ratio(0.99), Scope::Layer).unwrap();
    roundtrip_as(&g, "linear1.weight", "delta16");
    // gaps beyond 16 bits: u32 indices
    let mut g = linear(512, 512, 4);
    g.set_mask(
        "linear1",
        "weight",
        mask_at(&[512, 512], &[0, 200_000, 262_143]),
    )
    .unwrap();
    roundtrip_as(&g, "linear1.weight", "index32");
    // everything masked (a small tensor: no values at all)
    let mut g = linear(16, 8, 5);
    g.set_mask("linear1", "weight", mask_at(&[8, 16], &[]))
        .unwrap();
    roundtrip_as(&g, "linear1.weight", "delta16");
}

#[test]
fn nm_masks_store_as_positions_and_roundtrip_bit_exact() {
    for (n, m, want_bytes) in [
        (2usize, 4usize, 48 * 64 / 2 * 2 / 8),
        (1, 4, 48 * 64 / 4 * 2 / 8),
    ] {
        let mut g = linear(64, 48, 6);
        prune_nm(&mut g, &Norm::L1, n, m, true).unwrap();
        let (_tmp, dir) = roundtrip_as(&g, "linear1.weight", "nm");
        assert_eq!(
            layout(&dir, "linear1.weight").unwrap(),
            serde_json::json!({"encoding": "nm", "shape": [48, 64], "n": n, "m": m})
        );
        let (t, _) = read_weights(&dir);
        assert_eq!(t["linear1.weight.nm_indices"].data.len(), want_bytes);
        assert_eq!(t["linear1.weight.values"].shape, vec![48 * 64 * n / m]);
    }
    // groups along the input channels of a convolution (3x3 positions innermost), an M that is
    // not a power of two (3 bits per position)
    let mut g = conv_net(7);
    prune_nm(&mut g, &Norm::L1, 1, 8, false).unwrap();
    roundtrip_as(&g, "conv.weight", "nm");
    let mut g = linear(60, 10, 8);
    prune_nm(&mut g, &Norm::L1, 1, 6, true).unwrap();
    let (_tmp, dir) = roundtrip_as(&g, "linear1.weight", "nm");
    assert_eq!(layout(&dir, "linear1.weight").unwrap()["m"], 6);
}

#[test]
fn a_nearly_dense_mask_over_nonzero_values_stores_the_values_only() {
    let mut g = linear(64, 32, 9);
    g.set_mask("linear1", "weight", random_mask(&[32, 64], 0.99, 10))
        .unwrap();
    roundtrip_as(&g, "linear1.weight", "nonzero");
    // a kept weight that is exactly 0: the values no longer say the mask, the bitmask does
    let mut g = linear(64, 32, 9);
    let w = g.node("linear1").unwrap().params["weight"].tensor().clone();
    let w = w
        .slice_assign(
            &[0..1, 0..1],
            &Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    g.node("linear1").unwrap().params["weight"]
        .value
        .set(&w)
        .unwrap();
    g.set_mask("linear1", "weight", random_mask(&[32, 64], 0.99, 10))
        .unwrap();
    assert_eq!(
        g.node("linear1").unwrap().params["weight"]
            .mask
            .as_ref()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0],
        1.0,
        "the seed keeps element 0"
    );
    roundtrip_as(&g, "linear1.weight", "bitmask");
}

#[test]
fn half_precision_and_f64_models_keep_their_dtype_compressed() {
    for dtype in [DType::F16, DType::BF16, DType::F64] {
        let mut g = conv_net(11);
        g.to_dtype(dtype).unwrap();
        magnitude_prune(&mut g, Target::Ratio(0.8), Scope::Layer).unwrap();
        let (_tmp, dir) = roundtrip_as(&g, "linear1.weight", "bitmask");
        let (t, _) = read_weights(&dir);
        assert_eq!(
            t["linear1.weight.values"].dtype,
            safetensors::Dtype::from(dtype),
            "{dtype:?}"
        );
        let back = load(&dir, &Device::Cpu).unwrap();
        assert_eq!(back.dtype(), dtype);
    }
}

#[test]
fn masked_values_are_positive_zero_and_kept_values_keep_their_bits() {
    // masking a negative weight leaves +0.0, so what the file drops is what the graph held
    let mut g = linear(8, 4, 12);
    g.set_mask("linear1", "weight", random_mask(&[4, 8], 0.5, 13))
        .unwrap();
    let p = &g.node("linear1").unwrap().params["weight"];
    let m = p
        .mask
        .as_ref()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let w = p.tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (v, k) in w.iter().zip(&m) {
        if *k == 0.0 {
            assert_eq!(v.to_bits(), 0, "masked values are +0.0");
        }
    }
    roundtrip_as(&g, "linear1.weight", "bitmask");
}

// ----------------------------------------------------------------------------------------------
// sizes on disk (deterministic: not a timing test)

/// File size of a 512x512 Linear (weights and bias, f32) masked by magnitude at 50 / 80 / 90 %
/// and by 2:4, against the same model unmasked. Prints the table of docs/benchmarks.md.
#[test]
fn masked_512x512_linear_files_meet_the_size_goals() {
    let dense = {
        let (_tmp, dir) = saved(&linear(512, 512, 20));
        model_size(&dir).unwrap()
    };
    type Prune = fn(&mut Graph);
    let cases: [(&str, Prune, f64); 4] = [
        (
            "magnitude 50%",
            |g| {
                magnitude_prune(g, Target::Ratio(0.5), Scope::Layer).unwrap();
            },
            0.55,
        ),
        (
            "magnitude 80%",
            |g| {
                magnitude_prune(g, Target::Ratio(0.8), Scope::Layer).unwrap();
            },
            0.25,
        ),
        (
            "magnitude 90%",
            |g| {
                magnitude_prune(g, Target::Ratio(0.9), Scope::Layer).unwrap();
            },
            0.15,
        ),
        (
            "2:4",
            |g| {
                prune_nm(g, &Norm::L1, 2, 4, true).unwrap();
            },
            0.6,
        ),
    ];
    eprintln!("| masking | bytes | x dense ({dense} bytes) | goal | layout |");
    for (what, prune, goal) in cases {
        let mut g = linear(512, 512, 20);
        prune(&mut g);
        let (_tmp, dir) = saved(&g);
        let size = model_size(&dir).unwrap();
        let ratio = size as f64 / dense as f64;
        let enc = layout(&dir, "linear1.weight").unwrap()["encoding"].clone();
        eprintln!("| {what} | {size} | {ratio:.3} | {goal} | {enc} |");
        assert!(
            ratio <= goal,
            "{what}: {size} bytes = {ratio:.3} x dense, goal {goal}"
        );
        assert_same_params(&g, &load(&dir, &Device::Cpu).unwrap());
    }
}

// ----------------------------------------------------------------------------------------------
// bad input: one-line errors naming the tensor, never a panic or a wrong weight

fn set_u16(r: &mut Raw, i: usize, v: u16) {
    r.data[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn an_index_past_the_shape_is_an_error() {
    // u16 gaps running past 512 * 512
    let mut g = linear(512, 512, 30);
    magnitude_prune(&mut g, Target::Ratio(0.99), Scope::Layer).unwrap();
    let (_tmp, dir) = saved(&g);
    edit_weights(&dir, |t, _| {
        let idx = t.get_mut("linear1.weight.indices").unwrap();
        let last = idx.data.len() / 2 - 1;
        set_u16(idx, last, u16::MAX);
        set_u16(idx, last - 1, u16::MAX);
        set_u16(idx, last - 2, u16::MAX);
        set_u16(idx, last - 3, u16::MAX);
    });
    let e = load_err(&dir);
    assert_mentions(
        &e,
        &["linear1.weight.indices", "past the end", "[512, 512]"],
    );
    // u32 indices
    let mut g = linear(512, 512, 31);
    g.set_mask("linear1", "weight", mask_at(&[512, 512], &[0, 200_000]))
        .unwrap();
    let (_tmp, dir) = saved(&g);
    edit_weights(&dir, |t, _| {
        let idx = t.get_mut("linear1.weight.indices").unwrap();
        idx.data[4..8].copy_from_slice(&(512u32 * 512).to_le_bytes());
    });
    assert_mentions(
        &load_err(&dir),
        &[
            "linear1.weight.indices",
            "index 1 is 262144",
            "past the end",
        ],
    );
}

#[test]
fn indices_that_repeat_or_go_back_are_errors() {
    let mut g = linear(512, 512, 32);
    magnitude_prune(&mut g, Target::Ratio(0.99), Scope::Layer).unwrap();
    let (_tmp, dir) = saved(&g);
    edit_weights(&dir, |t, _| {
        set_u16(t.get_mut("linear1.weight.indices").unwrap(), 3, 0)
    });
    assert_mentions(
        &load_err(&dir),
        &["linear1.weight.indices", "gap 3 is 0", "repeated"],
    );
    let mut g = linear(512, 512, 33);
    g.set_mask("linear1", "weight", mask_at(&[512, 512], &[7, 200_000]))
        .unwrap();
    let (_tmp, dir) = saved(&g);
    edit_weights(&dir, |t, _| {
        let idx = t.get_mut("linear1.weight.indices").unwrap();
        idx.data[4..8].copy_from_slice(&7u32.to_le_bytes());
    });
    assert_mentions(
        &load_err(&dir),
        &["linear1.weight.indices", "does not increase"],
    );
}

#[test]
fn a_value_count_other_than_the_bitmask_popcount_is_an_error() {
    for delta in [-1i64, 1] {
        let mut g = linear(64, 48, 34);
        magnitude_prune(&mut g, Target::Ratio(0.5), Scope::Layer).unwrap();
        let (_tmp, dir) = saved(&g);
        edit_weights(&dir, |t, _| {
            let v = t.get_mut("linear1.weight.values").unwrap();
            if delta < 0 {
                v.data.truncate(v.data.len() - 4);
            } else {
                v.data.extend_from_slice(&1f32.to_le_bytes());
            }
            v.shape = vec![v.data.len() / 4];
        });
        let e = load_err(&dir);
        let k = (48 * 64 / 2) as i64 + delta;
        assert_mentions(
            &e,
            &[
                "linear1.weight.values",
                &format!("holds {k} values"),
                "linear1.weight.bitmask",
                &format!("keeps {}", 48 * 64 / 2),
            ],
        );
    }
}

#[test]
fn a_bitmask_of_the_wrong_length_or_with_stray_bits_is_an_error() {
    let mut g = linear(64, 48, 35);
    magnitude_prune(&mut g, Target::Ratio(0.5), Scope::Layer).unwrap();
    let (_tmp, dir) = saved(&g);
    edit_weights(&dir, |t, _| {
        let b = t.get_mut("linear1.weight.bitmask").unwrap();
        b.data.pop();
        b.shape = vec![b.data.len()];
    });
    assert_mentions(
        &load_err(&dir),
        &[
            "linear1.weight.bitmask",
            "has 383 bytes",
            "[48, 64]",
            "needs 384",
        ],
    );
    // 5 x 5 = 25 elements: the last byte holds one element, its other 7 bits must be 0
    let mut g = linear(5, 5, 36);
    magnitude_prune(&mut g, Target::Ratio(0.5), Scope::Layer).unwrap();
    let (_tmp, dir) = saved(&g);
    edit_weights(&dir, |t, _| {
        let b = t.get_mut("linear1.weight.bitmask").unwrap();
        *b.data.last_mut().unwrap() |= 0x80;
    });
    assert_mentions(&load_err(&dir), &["linear1.weight.bitmask", "bits past"]);
}

#[test]
fn nm_positions_that_break_the_pattern_are_errors() {
    // 1:6: 3 bits per position, so 6 and 7 can be written and are refused
    let mut g = linear(60, 10, 37);
    prune_nm(&mut g, &Norm::L1, 1, 6, true).unwrap();
    let (_tmp, dir) = saved(&g);
    edit_weights(&dir, |t, _| {
        let b = t.get_mut("linear1.weight.nm_indices").unwrap();
        b.data[0] |= 0b111; // group 0's position: 7
    });
    assert_mentions(
        &load_err(&dir),
        &[
            "linear1.weight.nm_indices",
            "group 0 holds position 7",
            "M = 6",
        ],
    );
    // 2:4: group 1 holding the same position twice
    let mut g = linear(64, 48, 38);
    prune_nm(&mut g, &Norm::L1, 2, 4, true).unwrap();
    let (_tmp, dir) = saved(&g);
    edit_weights(&dir, |t, _| {
        let b = t.get_mut("linear1.weight.nm_indices").unwrap();
        // byte 0 = group 0 (bits 0-3) and group 1 (bits 4-7): group 1 holds 2 and 2
        b.data[0] = (b.data[0] & 0x0f) | (0b10 << 4) | (0b10 << 6);
    });
    assert_mentions(
        &load_err(&dir),
        &["linear1.weight.nm_indices", "group 1 repeats position 2"],
    );
    // N, M that do not fit the shape or each other; a value count other than groups x N
    for (n, m, what) in [
        (2, 5, "does not divide axis 1"),
        (4, 4, "1 <= N < M"),
        (0, 4, "1 <= N < M"),
        (1, 4, "groups of 1:4 keep"),
    ] {
        let (_tmp, dir) = saved(&g);
        edit_weights(&dir, |_, meta| {
            meta.insert(
                format!("{META_PREFIX}linear1.weight"),
                serde_json::json!({"encoding": "nm", "shape": [48, 64], "n": n, "m": m})
                    .to_string(),
            );
        });
        assert_mentions(&load_err(&dir), &["linear1.weight", what]);
    }
    // positions of the wrong byte length
    let (_tmp, dir) = saved(&g);
    edit_weights(&dir, |t, _| {
        let b = t.get_mut("linear1.weight.nm_indices").unwrap();
        b.data.push(0);
        b.shape = vec![b.data.len()];
    });
    assert_mentions(
        &load_err(&dir),
        &["linear1.weight.nm_indices", "has 385 bytes", "need 384"],
    );
}

#[test]
fn shapes_that_overflow_differ_or_are_absurd_for_the_file_are_refused() {
    let mut g = linear(64, 48, 39);
    magnitude_prune(&mut g, Target::Ratio(0.5), Scope::Layer).unwrap();
    let key = format!("{META_PREFIX}linear1.weight");
    // a product beyond 2^64
    let (_tmp, dir) = saved(&g);
    edit_weights(&dir, |_, meta| {
        meta.insert(
            key.clone(),
            r#"{"encoding": "bitmask", "shape": [4294967296, 4294967296, 2]}"#.into(),
        );
    });
    assert_mentions(&load_err(&dir), &["linear1.weight", "overflows"]);
    // not model.json's shape
    let (_tmp, dir) = saved(&g);
    edit_weights(&dir, |_, meta| {
        meta.insert(
            key.clone(),
            r#"{"encoding": "bitmask", "shape": [64, 48]}"#.into(),
        );
    });
    assert_mentions(
        &load_err(&dir),
        &["linear1.weight", "[64, 48]", "linear op needs [48, 64]"],
    );
    // model.json declaring a 40000 x 40000 Linear (1.6e9 elements, within the per-tensor limit)
    // whose file holds two u32 indices and two values: refused before 6.4 GB are allocated
    let mut g = linear(512, 512, 40);
    g.set_mask("linear1", "weight", mask_at(&[512, 512], &[0, 200_000]))
        .unwrap();
    let (_tmp, dir) = saved(&g);
    let p = dir.join(STRUCTURE_FILE);
    let json = std::fs::read_to_string(&p).unwrap().replace("512", "40000");
    std::fs::write(&p, json).unwrap();
    edit_weights(&dir, |t, meta| {
        meta.insert(
            key.clone(),
            r#"{"encoding": "index32", "shape": [40000, 40000]}"#.into(),
        );
        let bias = t.get_mut("linear1.bias").unwrap();
        bias.data = vec![0; 40000 * 4];
        bias.shape = vec![40000];
    });
    assert_mentions(
        &load_err(&dir),
        &[
            "linear1.weight",
            "1600000000 elements",
            "16 bytes",
            "refused",
        ],
    );
}

#[test]
fn inconsistent_layout_metadata_and_tensors_are_errors() {
    let mut g = linear(64, 48, 41);
    magnitude_prune(&mut g, Target::Ratio(0.5), Scope::Layer).unwrap();
    let key = format!("{META_PREFIX}linear1.weight");
    let cases: Vec<(&str, Box<Edit>)> = vec![
        (
            "unknown layout `zip`",
            Box::new(|_, m| {
                m.insert(
                    key.clone(),
                    r#"{"encoding": "zip", "shape": [48, 64]}"#.into(),
                );
            }),
        ),
        (
            "unreadable metadata",
            Box::new(|_, m| {
                m.insert(key.clone(), "{not json".into());
            }),
        ),
        (
            "describes no parameter",
            Box::new(|_, m| {
                m.insert(
                    format!("{META_PREFIX}linear9.weight"),
                    r#"{"encoding": "bitmask", "shape": [1]}"#.into(),
                );
            }),
        ),
        (
            "missing tensor `linear1.weight.values`",
            Box::new(|t, _| {
                t.remove("linear1.weight.values");
            }),
        ),
        (
            "`linear1.weight.values` holds U8",
            Box::new(|t, _| {
                let v = t.get_mut("linear1.weight.values").unwrap();
                v.dtype = safetensors::Dtype::U8;
                v.shape = vec![v.data.len()];
            }),
        ),
        (
            "`linear1.weight.bitmask` holds U16",
            Box::new(|t, _| {
                let b = t.get_mut("linear1.weight.bitmask").unwrap();
                b.dtype = safetensors::Dtype::U16;
                b.shape = vec![b.data.len() / 2];
            }),
        ),
        (
            "tensor `linear1.weight.values` has shape [2, 768]",
            Box::new(|t, _| {
                t.get_mut("linear1.weight.values").unwrap().shape = vec![2, 768];
            }),
        ),
        (
            "tensor `linear1.weight.mask` belongs to no parameter",
            Box::new(|t, _| {
                t.insert(
                    "linear1.weight.mask".into(),
                    Raw {
                        dtype: safetensors::Dtype::U8,
                        shape: vec![48, 64],
                        data: vec![1; 48 * 64],
                    },
                );
            }),
        ),
    ];
    for (want, f) in cases {
        let (_tmp, dir) = saved(&g);
        edit_weights(&dir, |t, m| f(t, m));
        assert_mentions(&load_err(&dir), &[want]);
    }
}

#[test]
fn the_fuzz_seed_of_our_format_holds_the_compressed_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    prunekit_io::fuzz::standard_targets(tmp.path()).unwrap();
    let dir = tmp.path().join("seeds/native");
    let enc = |k: &str| layout(&dir, k).map(|j| j["encoding"].as_str().unwrap().to_string());
    assert_eq!(enc("conv.weight").as_deref(), Some("bitmask"));
    assert_eq!(enc("nm.weight").as_deref(), Some("nm"));
    assert_eq!(layout(&dir, "nm.weight").unwrap()["m"], 8);
    assert_eq!(enc("gaps.weight").as_deref(), Some("delta16"));
    load(&dir, &Device::Cpu).unwrap();
}
