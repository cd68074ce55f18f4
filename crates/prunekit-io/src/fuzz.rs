//! A byte-mutation fuzzer for the importers, on stable Rust (no libFuzzer): valid seed files
//! (an ONNX model, a safetensors state dict, a PyTorch zip checkpoint, our model directory, a
//! .npy array) are mutated (bit flips, interesting integers written over length fields, cut,
//! spliced, duplicated or deleted spans) and handed to the reader of their format. Every input
//! must return `Ok` or `Err`: a panic is a finding (caught and counted with the input kept).
//! Allocation bounds are checked by the caller's global allocator (see `tests/fuzz.rs` and
//! `examples/fuzz.rs`, which count the largest single allocation against the input's size).
//!
//! Long run (the evidence of issue 12): `cargo run --release -p prunekit-io --example fuzz --
//! 1000000`.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use candle_core::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One format under test: its seed bytes and how to read a file of it.
pub struct Target {
    pub name: &'static str,
    pub seed: Vec<u8>,
    /// the file name the mutated bytes are written to (inside the harness's directory); for our
    /// format, the weights or structure file inside a model directory
    pub file: &'static str,
    pub read: fn(&Path) -> bool,
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// inputs tried, per target
    pub inputs: Vec<(&'static str, u64)>,
    /// inputs the reader accepted (Ok), per target
    pub accepted: Vec<(&'static str, u64)>,
    /// panics: (target, the input's path kept on disk, the message)
    pub panics: Vec<(&'static str, PathBuf, String)>,
}

impl Report {
    pub fn total(&self) -> u64 {
        self.inputs.iter().map(|(_, n)| n).sum()
    }
}

/// Values that break length and shape fields.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 40,
    u64::MAX,
];

/// A mutation of `seed`.
pub fn mutate(seed: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut v = seed.to_vec();
    let rounds = 1 + rng.random_range(0..4);
    for _ in 0..rounds {
        if v.is_empty() {
            v.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..v.len());
        match rng.random_range(0..8) {
            0 => v[at] ^= 1 << rng.random_range(0..8),
            1 => v[at] = rng.random(),
            2 => {
                let x = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
                let bytes = x.to_le_bytes();
                let w = width.min(v.len() - at);
                v[at..at + w].copy_from_slice(&bytes[..w]);
            }
            3 => v.truncate(at),
            4 => {
                let len = rng.random_range(1..=64.min(v.len() - at));
                v.drain(at..at + len);
            }
            5 => {
                let len = rng.random_range(1..=64.min(v.len() - at));
                let chunk: Vec<u8> = v[at..at + len].to_vec();
                let to = rng.random_range(0..=v.len());
                v.splice(to..to, chunk);
            }
            6 => {
                // a protobuf varint length of 2^31 or more
                let big = [0x80u8, 0x80, 0x80, 0x80, 0x08];
                let to = rng.random_range(0..=v.len());
                v.splice(to..to, big);
            }
            _ => {
                let len = rng.random_range(1..=16);
                let to = rng.random_range(0..=v.len());
                let fill: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                v.splice(to..to, fill);
            }
        }
    }
    v
}

/// Runs `iterations` mutated inputs of each target in `dir`, from `seed`. Panics are caught;
/// the panicking input stays at `dir/panic-<target>-<k>`. `after_each(target, input length)`
/// runs after every input (the caller checks its allocator there).
pub fn run(
    targets: &[Target],
    iterations: u64,
    seed: u64,
    dir: &Path,
    mut after_each: impl FnMut(&'static str, usize),
) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report::default();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for t in targets {
        let (mut n, mut ok) = (0u64, 0u64);
        let path = dir.join(t.file);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        for _ in 0..iterations {
            let bytes = mutate(&t.seed, &mut rng);
            if std::fs::write(&path, &bytes).is_err() {
                continue;
            }
            n += 1;
            match std::panic::catch_unwind(AssertUnwindSafe(|| (t.read)(&path))) {
                Ok(true) => ok += 1,
                Ok(false) => {}
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    let keep = dir.join(format!("panic-{}-{}", t.name, report.panics.len()));
                    let _ = std::fs::write(&keep, &bytes);
                    report.panics.push((t.name, keep, msg));
                }
            }
            after_each(t.name, bytes.len());
        }
        report.inputs.push((t.name, n));
        report.accepted.push((t.name, ok));
    }
    std::panic::set_hook(hook);
    report
}

/// The standard targets, with seeds made from small models (a conv net masked 50%, an attention
/// block; for our format, Linears whose masks take the compressed layouts) written by prunekit's
/// own writers into `dir`.
///
/// Errors: a seed cannot be written.
pub fn standard_targets(dir: &Path) -> crate::Result<Vec<Target>> {
    let mut g = prunekit_graph::GraphBuilder::new("fuzz-seed", 0);
    let x = g.input("x", &[1, 6, 6]);
    let x = g.conv2d(&x, 4, 3, 1, 1)?;
    let x = g.batch_norm(&x)?;
    let x = g.relu(&x)?;
    let x = g.flatten(&x)?;
    let y = g.linear(&x, 3)?;
    let g = g.finish(&[&y])?;
    // a mask, so our format's mask tensors are fuzzed too
    let n = &g.nodes[0];
    let w = n.params["weight"].tensor();
    let mask = w.ge(0.0)?.to_dtype(w.dtype())?;
    let mut g = g;
    let name = g.nodes[0].name.clone();
    g.set_mask(&name, "weight", mask)?;
    let seeds = dir.join("seeds");
    std::fs::create_dir_all(&seeds).map_err(|e| crate::IoError::io(&seeds, e))?;
    let onnx = seeds.join("m.onnx");
    crate::save(&g, &onnx, None)?;
    // attention (causal GQA, RoPE, key padding mask), so the importer's block recognition is fuzzed
    let mut a = prunekit_graph::GraphBuilder::new("fuzz-attention", 0);
    let x = a.input("x", &[4, 8]);
    let m = a.input("mask", &[4]);
    let y = a.attention_masked(&x, &m, 2, 1, 4, true, Some(10000.0))?;
    let a = a.finish(&[&y])?;
    let onnx_attention = seeds.join("attention.onnx");
    crate::save(&a, &onnx_attention, None)?;
    let st = seeds.join("m.safetensors");
    crate::save(&g, &st, None)?;
    let pt = seeds.join("m.pt");
    crate::save(&g, &pt, None)?;
    let native = seeds.join("native");
    crate::native::save(&native_seed()?, &native)?;
    let npy = seeds.join("x.npy");
    crate::npy::write(&npy, g.nodes[0].params["weight"].tensor())?;
    let gguf = seeds.join("llama.gguf");
    tiny_llama_gguf(&gguf)?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| crate::IoError::io(p, e));
    Ok(vec![
        Target {
            name: "gguf",
            seed: read(&gguf)?,
            file: "in.gguf",
            read: |p| {
                let opts = crate::hf::HfOptions { seq_len: Some(4) };
                crate::gguf::load(p, &Device::Cpu, &opts).is_ok()
            },
        },
        Target {
            name: "onnx",
            seed: read(&onnx)?,
            file: "in.onnx",
            read: |p| crate::onnx::load(p, &Device::Cpu).is_ok(),
        },
        Target {
            name: "onnx-attention",
            seed: read(&onnx_attention)?,
            file: "in.onnx",
            read: |p| crate::onnx::load(p, &Device::Cpu).is_ok(),
        },
        Target {
            name: "safetensors",
            seed: read(&st)?,
            file: "in.safetensors",
            read: |p| crate::pytorch::read_state_dict(p).is_ok(),
        },
        Target {
            name: "pytorch-zip",
            seed: read(&pt)?,
            file: "in.pt",
            read: |p| crate::pytorch::read_state_dict(p).is_ok(),
        },
        Target {
            name: "native-weights",
            seed: read(&native.join(crate::native::WEIGHTS_FILE))?,
            file: "native/model.safetensors",
            read: native_reader,
        },
        Target {
            name: "native-json",
            seed: read(&native.join(crate::native::STRUCTURE_FILE))?,
            file: "native-json/model.json",
            read: native_reader,
        },
        Target {
            name: "npy",
            seed: read(&npy)?,
            file: "in.npy",
            read: |p| crate::npy::read(p, &Device::Cpu).is_ok(),
        },
        Target {
            name: "detect",
            seed: read(&onnx)?,
            file: "detect.bin",
            read: |p| crate::detect(p).is_ok(),
        },
    ])
}

/// The seed of our format: a conv, BatchNorm statistics and Linears whose masks take three of the
/// compressed layouts of [`crate::sparse`]: a bitmask (conv), N:M 1:8 (Linear 144 -> 4) and u16
/// gaps (Linear 4 -> 24, two weights kept).
fn native_seed() -> crate::Result<prunekit_graph::Graph> {
    let mut b = prunekit_graph::GraphBuilder::new("fuzz-native", 0);
    let x = b.input("x", &[1, 6, 6]);
    let x = b.named("conv").conv2d(&x, 4, 3, 1, 1)?;
    let x = b.batch_norm(&x)?;
    let x = b.relu(&x)?;
    let x = b.flatten(&x)?;
    let x = b.named("nm").linear(&x, 4)?;
    let y = b.named("gaps").linear(&x, 24)?;
    let mut g = b.finish(&[&y])?;
    let w = g.node("conv")?.params["weight"].tensor().clone();
    let mask = w.ge(0.0)?.to_dtype(w.dtype())?;
    g.set_mask("conv", "weight", mask)?;
    let dev = w.device().clone();
    let one_of_8: Vec<f32> = (0..4 * 144)
        .map(|i| f32::from(u8::from(i % 8 == (i / 8 + i / 144) % 8)))
        .collect();
    g.set_mask(
        "nm",
        "weight",
        candle_core::Tensor::from_vec(one_of_8, (4, 144), &dev)?,
    )?;
    let two: Vec<f32> = (0..24 * 4)
        .map(|i| f32::from(u8::from(i == 5 || i == 70)))
        .collect();
    g.set_mask(
        "gaps",
        "weight",
        candle_core::Tensor::from_vec(two, (24, 4), &dev)?,
    )?;
    Ok(g)
}

/// A GGUF file of a one-layer Llama (hidden 8, 2 query / 1 key-value heads of 4, FFN 8, a
/// vocabulary of 6 byte-level BPE tokens), as the seed of the GGUF target.
fn tiny_llama_gguf(path: &Path) -> crate::Result<()> {
    use candle_core::quantized::gguf_file::{write, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let err = |e: candle_core::Error| crate::IoError::file(path, e.to_string());
    let shapes: &[(&str, &[usize])] = &[
        ("token_embd.weight", &[6, 8]),
        ("blk.0.attn_norm.weight", &[8]),
        ("blk.0.attn_q.weight", &[8, 8]),
        ("blk.0.attn_k.weight", &[4, 8]),
        ("blk.0.attn_v.weight", &[4, 8]),
        ("blk.0.attn_output.weight", &[8, 8]),
        ("blk.0.ffn_norm.weight", &[8]),
        ("blk.0.ffn_gate.weight", &[8, 8]),
        ("blk.0.ffn_up.weight", &[8, 8]),
        ("blk.0.ffn_down.weight", &[8, 8]),
        ("output_norm.weight", &[8]),
    ];
    let mut qs = Vec::new();
    for (k, (name, shape)) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i + k) % 7) as f32 * 0.1 - 0.3).collect();
        let t = candle_core::Tensor::from_vec(v, *shape, &Device::Cpu).map_err(err)?;
        // one F16 tensor, so a converting path is fuzzed too (quantised blocks need 32 columns)
        let dt = if *name == "blk.0.ffn_up.weight" {
            GgmlDType::F16
        } else {
            GgmlDType::F32
        };
        qs.push((*name, QTensor::quantize(&t, dt).map_err(err)?));
    }
    let tokens = ["a", "b", "c", "ab", "bc", "abc"]
        .iter()
        .map(|t| Value::String(t.to_string()))
        .collect();
    let merges = ["a b", "b c", "ab c"]
        .iter()
        .map(|m| Value::String(m.to_string()))
        .collect();
    let md = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.embedding_length", Value::U32(8)),
        ("llama.feed_forward_length", Value::U32(8)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.context_length", Value::U32(16)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.merges", Value::Array(merges)),
    ];
    let mdr: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let tr: Vec<(&str, &QTensor)> = qs.iter().map(|(k, v)| (*k, v)).collect();
    let mut f = std::fs::File::create(path).map_err(|e| crate::IoError::io(path, e))?;
    write(&mut f, &mdr, &tr).map_err(err)
}

/// Reads our format from the directory of `p` (the other file of the pair is the seed's).
fn native_reader(p: &Path) -> bool {
    let dir = p.parent().unwrap_or(Path::new("."));
    let seeds = dir.parent().unwrap_or(Path::new(".")).join("seeds/native");
    for f in [crate::native::STRUCTURE_FILE, crate::native::WEIGHTS_FILE] {
        let mine = dir.join(f);
        if mine != p && !mine.exists() {
            let _ = std::fs::copy(seeds.join(f), &mine);
        }
    }
    crate::native::load(dir, &Device::Cpu).is_ok()
}

/// A global allocator that records the largest single allocation since the last
/// [`CountingAlloc::take_largest`]: a fuzz binary installs it with `#[global_allocator]` to check
/// that no input makes a reader allocate more than its size justifies.
pub struct CountingAlloc {
    largest: std::sync::atomic::AtomicUsize,
}

impl CountingAlloc {
    pub const fn new() -> Self {
        Self {
            largest: std::sync::atomic::AtomicUsize::new(0),
        }
    }
    /// The largest allocation (bytes) since the last call; resets it.
    pub fn take_largest(&self) -> usize {
        self.largest.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is updated.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        self.largest
            .fetch_max(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller upholds GlobalAlloc's contract, which System's alloc shares.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` was allocated by System with `layout` (see `alloc`).
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        self.largest
            .fetch_max(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as in `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        self.largest
            .fetch_max(new, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by System with `layout`; the caller upholds the rest.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

/// The most one input may make a reader allocate at once: 16 times its size plus 16 MiB
/// (decoded tensors, their f32 copies and the graph's own).
pub fn allocation_bound(input_len: usize) -> usize {
    16 * input_len + (16 << 20)
}
