//! File sizes of masked models in our format (issue 16): Linear 512x512 and 2048x2048 and the zoo
//! `mlp`, masked by magnitude (per layer) at 50 / 80 / 90 % and by 2:4, against the same model
//! unmasked and against format 1's layout (dense weights + a U8 mask). Sizes are deterministic.
//!
//! `cargo run -p prunekit-io --example sparse_sizes` prints the table of
//! docs/benchmarks.md ("Sparse storage (issue 16)").

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use prunekit_graph::{Graph, GraphBuilder};
use prunekit_io::native::{model_size, save, STRUCTURE_FILE};
use prunekit_io::sparse::{layout_sizes, Encoding, META_PREFIX};
use prunekit_prune::criteria::Norm;
use prunekit_prune::{magnitude_prune, prune_nm, Scope, Target};

fn linear(n: usize) -> Graph {
    let mut b = GraphBuilder::new("linear", 0);
    let x = b.input("x", &[n]);
    let y = b.linear(&x, n).unwrap();
    b.finish(&[&y]).unwrap()
}

/// Bytes of `g` written as format 1 did: every parameter dense, a U8 mask beside each masked one.
fn format_1_size(g: &Graph, dir: &Path) -> u64 {
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for (n, k, p) in g.params() {
        t.insert(format!("{}.{k}", n.name), p.tensor().clone());
        if let Some(m) = &p.mask {
            t.insert(
                format!("{}.{k}.mask", n.name),
                m.to_dtype(DType::U8).unwrap(),
            );
        }
    }
    let bytes = safetensors::tensor::serialize(t.iter().collect::<Vec<_>>(), None).unwrap();
    bytes.len() as u64 + std::fs::metadata(dir.join(STRUCTURE_FILE)).unwrap().len()
}

/// The layouts the weights file uses, e.g. `bitmask x2`.
fn layouts(dir: &Path) -> String {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut names: Vec<String> = header
        .metadata()
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(META_PREFIX))
        .map(|(_, v)| {
            let j: serde_json::Value = serde_json::from_str(v).unwrap();
            match (j["n"].as_u64(), j["m"].as_u64()) {
                (Some(n), Some(m)) => format!("nm {n}:{m}"),
                _ => j["encoding"].as_str().unwrap().to_string(),
            }
        })
        .collect();
    names.sort();
    names.dedup_by(|a, b| a == b);
    names.join(", ")
}

fn main() {
    type Make = fn() -> Graph;
    let models: [(&str, Make); 3] = [
        ("Linear 512x512", || linear(512)),
        ("Linear 2048x2048", || linear(2048)),
        ("zoo mlp", || prunekit_zoo::build("mlp", 0).unwrap()),
    ];
    type Prune = fn(&mut Graph);
    // beyond the goals: where the index layouts take over
    let extreme: [(&str, Prune); 2] = [
        ("magnitude 95%", |g| {
            magnitude_prune(g, Target::Ratio(0.95), Scope::Layer).unwrap();
        }),
        ("magnitude 99%", |g| {
            magnitude_prune(g, Target::Ratio(0.99), Scope::Layer).unwrap();
        }),
    ];
    let tmp = tempfile::tempdir().unwrap();
    println!(
        "| model | masking | dense file (bytes) | format 1 masked (bytes, x dense) | format 2 masked (bytes) | x dense | layout |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | --- |");
    let mut candidates = Vec::new();
    for (name, make) in models {
        let dense_dir = tmp.path().join("dense");
        save(&make(), &dense_dir).unwrap();
        let dense = model_size(&dense_dir).unwrap();
        let maskings: [(&str, Prune); 4] = [
            ("magnitude 50%", |g| {
                magnitude_prune(g, Target::Ratio(0.5), Scope::Layer).unwrap();
            }),
            ("magnitude 80%", |g| {
                magnitude_prune(g, Target::Ratio(0.8), Scope::Layer).unwrap();
            }),
            ("magnitude 90%", |g| {
                magnitude_prune(g, Target::Ratio(0.9), Scope::Layer).unwrap();
            }),
            ("2:4", |g| {
                prune_nm(g, &Norm::L1, 2, 4, false).unwrap();
            }),
        ];
        for (what, prune) in maskings.iter().chain(&extreme) {
            let mut g = make();
            prune(&mut g);
            let dir = tmp.path().join("masked");
            save(&g, &dir).unwrap();
            let size = model_size(&dir).unwrap();
            let old = format_1_size(&g, &dir);
            if name == "Linear 2048x2048" {
                let p = &g.node("linear1").unwrap().params["weight"];
                let sizes = layout_sizes(p.tensor(), p.mask.as_ref().unwrap()).unwrap();
                candidates.push((*what, sizes));
            }
            println!(
                "| {name} | {what} | {dense} | {old} ({:.3}) | {size} | {:.3} | {} |",
                old as f64 / dense as f64,
                size as f64 / dense as f64,
                layouts(&dir)
            );
        }
    }
    // every layout's bytes of tensor data for the 2048x2048 weight (headers not counted)
    println!();
    println!("| Linear 2048x2048 weight | nm | bitmask | delta16 | index32 | nonzero | dense + U8 mask |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (what, sizes) in candidates {
        let cell = |f: fn(&Encoding) -> bool| {
            let best = sizes[0].0;
            sizes
                .iter()
                .find(|(e, _)| f(e))
                .map_or("-".to_string(), |(e, b)| {
                    if *e == best {
                        format!("**{b}**")
                    } else {
                        b.to_string()
                    }
                })
        };
        println!(
            "| {what} | {} | {} | {} | {} | {} | {} |",
            cell(|e| matches!(e, Encoding::Nm { .. })),
            cell(|e| *e == Encoding::Bitmask),
            cell(|e| *e == Encoding::Delta16),
            cell(|e| *e == Encoding::Index32),
            cell(|e| *e == Encoding::Nonzero),
            cell(|e| *e == Encoding::Dense),
        );
    }
}
