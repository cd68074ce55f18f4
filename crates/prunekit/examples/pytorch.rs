//! A PyTorch state dict in (with its architecture), pruned, written back as a state dict with the
//! pruned shapes and the widths to rebuild the module:
//! `cargo run --release -p prunekit --example pytorch -- [WEIGHTS.pt ARCH] [OUT.pt]`.
//! Without arguments it writes the zoo's LSTM classifier as a .pt first.

use std::path::PathBuf;

use prunekit::prelude::*;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (weights, arch) = match args.as_slice() {
        [w, a, ..] => (PathBuf::from(w), a.clone()),
        _ => {
            let p = dir.path().join("lstm.pt");
            save(&prunekit::zoo::build("lstm-classifier", 0)?, &p, None)?;
            (p, "lstm-classifier".to_string())
        }
    };
    let output = args
        .get(2)
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("lstm-pruned.pt"));
    let template = prunekit::zoo::build(&arch, 0)?;
    let mut g = prunekit::io::pytorch::load_state_dict(&weights, template)?;
    // half of the recurrent hidden units (each takes its rows of every gate and its column of W_hh)
    prune_structured(&mut g, &StructuredConfig::new(0.5), &Norm::L2)?;
    save(&g, &output, Some(&weights))?;
    println!(
        "{} ({arch}) -> {} ({} params); widths in {}",
        weights.display(),
        output.display(),
        g.param_count(),
        prunekit::io::pytorch::widths_path(&output).display()
    );
    Ok(())
}
