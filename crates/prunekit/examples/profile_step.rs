//! Per-op time of one training step of a zoo model whose single input is a sequence of token ids
//! (`gru-text`, `gru-recommender`, `bert-tiny`), at a chosen sequence length, vocabulary, class count
//! and batch: each node's forward and backward in milliseconds (median of 5), as
//! `prunekit bench --profile` prints for the image models.
//!
//! ```text
//! cargo run --release -p prunekit --example profile_step -- gru-text 128 6000 2 32
//! cargo run --release -p prunekit --example profile_step -- gru-recommender 20 9067 9066 256
//! ```
//! Arguments: ARCH STEPS VOCAB CLASSES BATCH. The ids are arbitrary valid ids (the time does not
//! depend on their values).

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: profile_step ARCH STEPS VOCAB CLASSES BATCH";
    let arch = args.first().context(usage)?;
    let num = |i: usize| -> Result<usize> {
        let v: usize = args.get(i).context(usage)?.parse().context(usage)?;
        anyhow::ensure!(v > 0, "{usage}: sizes must be positive");
        Ok(v)
    };
    let (steps, vocab, classes, batch) = (num(1)?, num(2)?, num(3)?, num(4)?);
    let g = prunekit_zoo::build_with(
        arch,
        0,
        &prunekit_zoo::ZooOptions {
            input: Some(vec![steps]),
            classes: Some(classes),
            vocab: Some(vec![vocab]),
        },
    )?;
    let ids: Vec<u32> = (0..batch * steps)
        .map(|i| ((i * 7919) % vocab) as u32)
        .collect();
    let x = Tensor::from_vec(ids, (batch, steps), &Device::Cpu)?;
    let ops = prunekit_measure::profile::profile_training_step(&g, &x, 5)?;
    let mut total = 0.0;
    println!("{arch}: batch {batch}, {steps} steps, vocabulary {vocab}, {classes} classes");
    for o in &ops {
        total += o.forward_ms + o.backward_ms;
        println!(
            "{:20} {:12} forward {:8.3} ms  backward {:8.3} ms",
            o.node, o.op, o.forward_ms, o.backward_ms
        );
    }
    println!("total {total:.2} ms");
    Ok(())
}
