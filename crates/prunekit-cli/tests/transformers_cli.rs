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
