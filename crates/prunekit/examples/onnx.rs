//! ONNX in, prune, ONNX out: `cargo run --release -p prunekit --example onnx -- [MODEL.onnx] [OUT.onnx]`.
//! Without arguments it first writes the zoo's ResNet-20 as ONNX into a temporary directory.

use std::path::PathBuf;

use prunekit::prelude::*;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let input = match args.next() {
        Some(p) => p,
        None => {
            let p = dir.path().join("resnet20.onnx");
            save(&prunekit::zoo::build("resnet20", 0)?, &p, None)?;
            p
        }
    };
    let output = args
        .next()
        .unwrap_or_else(|| dir.path().join("pruned.onnx"));
    let mut g = load(&input, &Device::Cpu)?;
    let before = summarize(&g, None)?;
    prune_structured(&mut g, &StructuredConfig::new(0.4), &Norm::L2)?;
    let after = summarize(&g, None)?;
    save(&g, &output, Some(&input))?;
    println!(
        "{} -> {}: params {} -> {}, MACs {} -> {}",
        input.display(),
        output.display(),
        before.params,
        after.params,
        before.macs,
        after.macs
    );
    Ok(())
}
