//! Our format: a directory with model.json and model.safetensors, masks kept, bit-exact:
//! `cargo run --release -p prunekit --example native -- [MODEL_DIR] [OUT_DIR]`.
//! Without arguments it creates the zoo's digits CNN first; it masks 70% of the weights (the
//! masks travel with the file) and checks that the file reads back the same.

use std::path::PathBuf;

use prunekit::prelude::*;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let input = match args.next() {
        Some(p) => p,
        None => {
            let p = dir.path().join("digits-cnn");
            save(&prunekit::zoo::build("digits-cnn", 0)?, &p, None)?;
            p
        }
    };
    let output = args.next().unwrap_or_else(|| dir.path().join("masked"));
    let mut g = load(&input, &Device::Cpu)?;
    magnitude_prune(&mut g, Target::Ratio(0.7), Scope::Layer)?;
    save(&g, &output, Some(&input))?;
    let back = load(&output, &Device::Cpu)?;
    let (a, b) = (g.weight_counts()?, back.weight_counts()?);
    assert_eq!(a, b);
    println!(
        "{} -> {}: {:.1}% of the weights masked, read back identical",
        input.display(),
        output.display(),
        100.0 * b.sparsity()
    );
    Ok(())
}
