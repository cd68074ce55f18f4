//! Transformer measures and the Hugging Face "will it load" check at the command line (issue 13
//! §2 and §5): a zoo Transformer (always), and the real all-MiniLM-L6-v2 directory (fetched by
//! scripts/fetch-hf-models.sh; skipped with a message when absent).

mod common;

use std::path::PathBuf;

use common::{fails_with, ok_json, s, uint};

fn minilm() -> Option<PathBuf> {
    let base = std::env::var_os("PRUNEKIT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/prunekit")))?;
    let p = base.join("all-minilm-l6-v2");
    if p.join("config.json").exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} is absent (bash scripts/fetch-hf-models.sh fetches it)",
            p.display()
        );
        None
    }
}

#[test]
fn info_states_macs_per_token_latency_and_memory_of_a_token_model() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("llama");
    ok_json(&["zoo", "create", "llama-tiny", "-o", s(&m), "--json"]);
    let v = ok_json(&["info", s(&m), "--latency-batch", "3", "--json"]);
    let t = uint(&v, "/seq_len");
    assert!(t > 1, "{v}");
    let macs = uint(&v, "/macs") as f64;
    let per = v["macs_per_token"].as_f64().unwrap();
    assert!((per - macs / t as f64).abs() < 1e-6, "{per} vs {macs}/{t}");
    assert_eq!(uint(&v, "/measured/latency/batch"), 1);
    assert_eq!(uint(&v, "/measured/latency_batch/batch"), 3);
    assert!(
        v["measured"]["latency_batch"]["median_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    if std::path::Path::new("/proc/self/status").exists() {
        assert_eq!(uint(&v, "/measured/memory/batch"), 3);
        assert!(uint(&v, "/measured/memory/peak_kb") > 0);
    }
    // the table names the sequence length beside the per-token figure and the batch
    let out = common::ok(&["info", s(&m), "--latency-batch", "2"]);
    assert!(
        out.contains(&format!("MACs per token (sequence length {t})")),
        "{out}"
    );
    assert!(out.contains(&format!("batch 2 × {t} tokens")), "{out}");
    // an image model has no token axis
    let c = d.path().join("cnn");
    ok_json(&["zoo", "create", "digits-cnn", "-o", s(&c), "--json"]);
    let v = ok_json(&["info", s(&c), "--json"]);
    assert!(
        v["seq_len"].is_null() && v["macs_per_token"].is_null(),
        "{v}"
    );
    // --format hf needs a model read from a Hugging Face directory: refused before pruning
    let out = d.path().join("out");
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            s(&out),
            "--structured",
            "0.5",
            "--format",
            "hf",
        ],
        &["not read from a Hugging Face directory"],
    );
    assert!(!out.exists());
}

#[test]
fn minilm_will_it_load_check_and_per_token_measures() {
    let Some(dir) = minilm() else { return };
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("global");
    // a global ranking gives layers widths of their own: refused before pruning, nothing written
    fails_with(
        &[
            "prune",
            s(&dir),
            "-o",
            s(&out),
            "--structured",
            "0.5",
            "--scope",
            "global",
            "--format",
            "hf",
        ],
        &["--scope layer", "--allow-nonuniform"],
    );
    assert!(!out.exists());
    // the stated sequence length sets the per-token figure: attention's share grows with it
    let a = ok_json(&["info", s(&dir), "--seq-len", "32", "--json"]);
    let b = ok_json(&["info", s(&dir), "--seq-len", "128", "--json"]);
    assert_eq!(uint(&a, "/seq_len"), 32);
    assert_eq!(uint(&b, "/seq_len"), 128);
    let (pa, pb) = (
        a["macs_per_token"].as_f64().unwrap(),
        b["macs_per_token"].as_f64().unwrap(),
    );
    assert!(pb > pa, "per token at 128 ({pb}) above at 32 ({pa})");
    // the encoder's linear layers (about 10.6M weights outside the embedding tables, one MAC
    // each per token) dominate at these lengths
    assert!(pa > 10e6 && pb < 1.5 * pa, "{pa} {pb}");
}

/// A tiny GPT-2 directory (GPT2LMHeadModel's keys and Conv1D layouts, tied lm_head), random
/// weights: n_embd 16, 4 heads, n_inner 24, 2 layers, vocab 30.
fn tiny_gpt2(dir: &std::path::Path) {
    let (v, h, inner, pos) = (30usize, 16usize, 24usize, 12usize);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("transformer.wte.weight".into(), vec![v, h]),
        ("transformer.wpe.weight".into(), vec![pos, h]),
        ("transformer.ln_f.weight".into(), vec![h]),
        ("transformer.ln_f.bias".into(), vec![h]),
    ];
    for i in 0..2 {
        let p = format!("transformer.h.{i}");
        for (k, sh) in [
            ("ln_1.weight", vec![h]),
            ("ln_1.bias", vec![h]),
            ("ln_2.weight", vec![h]),
            ("ln_2.bias", vec![h]),
            ("attn.c_attn.weight", vec![h, 3 * h]),
            ("attn.c_attn.bias", vec![3 * h]),
            ("attn.c_proj.weight", vec![h, h]),
            ("attn.c_proj.bias", vec![h]),
            ("mlp.c_fc.weight", vec![h, inner]),
            ("mlp.c_fc.bias", vec![inner]),
            ("mlp.c_proj.weight", vec![inner, h]),
            ("mlp.c_proj.bias", vec![h]),
            // an older checkpoint's causal-mask buffer: read by no node, carried along
            ("attn.bias", vec![1, 1, pos, pos]),
        ] {
            shapes.push((format!("{p}.{k}"), sh));
        }
    }
    let mut seed = 7u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(k, sh)| {
            let n: usize = sh.iter().product();
            let bytes = (0..n)
                .flat_map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_le_bytes()
                })
                .collect();
            (k, sh, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(k, sh, b)| {
            let t = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sh.clone(), b)
                .unwrap();
            (k.clone(), t)
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    safetensors::tensor::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let config = format!(
        r#"{{"model_type": "gpt2", "vocab_size": {v}, "n_embd": {h}, "n_layer": 2, "n_head": 4, "n_inner": {inner}, "n_positions": {pos}, "activation_function": "gelu_new"}}"#
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
}

#[test]
fn gpt2_prune_for_hugging_face_keeps_the_hidden_size_and_says_who_loads_it() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("gpt2");
    tiny_gpt2(&m);
    let v = ok_json(&["info", s(&m), "--seq-len", "8", "--json"]);
    assert_eq!(uint(&v, "/seq_len"), 8, "{v}");
    let out = d.path().join("pruned");
    let o = common::prunekit(&[
        "prune",
        s(&m),
        "-o",
        s(&out),
        "--structured",
        "0.5",
        "--format",
        "hf",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("transformer/wte") && err.contains("keeps its width"),
        "{err}"
    );
    assert!(
        err.contains("pruned_heads") && err.contains("transformers 5"),
        "{err}"
    );
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["n_embd"], 16, "{c}");
    assert_eq!(c["n_inner"], 12, "{c}");
    assert_eq!(c["pruned_heads"]["1"].as_array().unwrap().len(), 2, "{c}");
    // the written directory reads back with the pruned widths
    let v = ok_json(&["info", s(&out), "--json"]);
    assert!(uint(&v, "/params") > 0, "{v}");
    // the carried mask buffers are written back with their layers
    let st = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert!(st.tensor("transformer.h.1.attn.bias").is_ok());
    // a format without a place for them says what it leaves out
    let onnx = d.path().join("m.onnx");
    let o = common::prunekit(&["export", s(&m), "-o", s(&onnx)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("2 tensor(s)") && err.contains("attn.bias") && err.contains("--format hf"),
        "{err}"
    );
}

/// Distillation of a depth-pruned MiniLM on unlabelled lines at a shorter --seq-len: the student
/// is saved at its own length (128) again, records the distillation (not a dataset `eval` would
/// try to load), and `eval` without data measures it.
#[test]
fn minilm_distilled_at_a_short_length_is_saved_at_its_own() {
    let Some(dir) = minilm() else { return };
    let d = tempfile::tempdir().unwrap();
    let text = d.path().join("lines.txt");
    let lines: Vec<String> = (0..24)
        .map(|i| format!("line number {i} says something about the weather today"))
        .collect();
    std::fs::write(&text, lines.join("\n")).unwrap();
    let p = d.path().join("p");
    ok_json(&["prune", s(&dir), "-o", s(&p), "--layers", "4", "--json"]);
    let f = d.path().join("f");
    let v = ok_json(&[
        "finetune",
        s(&p),
        "-o",
        s(&f),
        "--teacher",
        s(&dir),
        "--text",
        s(&text),
        "--seq-len",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--optimizer",
        "adamw",
        "--lr",
        "1e-4",
        "--json",
    ]);
    assert_eq!(v["epochs"].as_array().unwrap().len(), 1, "{v}");
    let info = ok_json(&["info", s(&f), "--json"]);
    assert_eq!(
        uint(&info, "/seq_len"),
        uint(&ok_json(&["info", s(&p), "--json"]), "/seq_len")
    );
    assert!(info["meta"]["distillation"].is_string(), "{}", info["meta"]);
    let e = ok_json(&["eval", s(&f), "--json"]);
    assert!(
        e["dataset"].is_null() && e["params"].as_u64().unwrap() > 0,
        "{e}"
    );
}
