//! A spam classifier on top of a sentence encoder, dense against pruned (issue 13 section 4): both
//! encoders embed the same SpamAssassin mails (subject + body, de-duplicated), a linear probe
//! (logistic regression on the frozen 384-d embeddings, AdamW) is trained on each encoder's
//! training embeddings and scored on the held-out 20% by F1 of the spam class.
//!
//! ```sh
//! bash scripts/fetch-spam.sh && bash scripts/fetch-hf-models.sh
//! cargo run --release -p prunekit --example encoder_spam -- DENSE_MODEL PRUNED_MODEL [MAILS]
//! ```
//!
//! `encoder_spam --train-text OUT [MAILS]` writes the training mails' text (never a held-out one)
//! to OUT, one mail line per line, as unlabelled text for `prunekit finetune --teacher --text`.

use anyhow::{bail, Context, Result};
use prunekit::data::{text, Dataset, Feature, Target};
use prunekit::graph::GraphBuilder;
use prunekit::train::{fit, TrainConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!("usage: encoder_spam DENSE_MODEL PRUNED_MODEL [MAILS (default 2000)] | encoder_spam --train-text OUT [MAILS]");
    }
    let n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let dir = prunekit::data::spam_cache_dir()
        .context("no SpamAssassin corpus: run scripts/fetch-spam.sh")?;
    let mails = prunekit::data::read_spam_corpus(&dir)?;
    let texts: Vec<String> = mails
        .iter()
        .map(|m| prunekit::data::mail_text(&m.text))
        .collect();
    let labels: Vec<u32> = mails.iter().map(|m| m.label).collect();
    let (mut keep, _, _) = prunekit::data::dedup_mails(&texts, &labels);
    // a seeded shuffle, then the first n; stratification by a stable interleave of the classes
    let mut rng = 0x9e3779b97f4a7c15u64;
    for i in (1..keep.len()).rev() {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        keep.swap(i, (rng >> 33) as usize % (i + 1));
    }
    keep.truncate(n);
    let test_every = 5; // every 5th mail of each class is held out (20%)
    let mut seen = [0usize; 2];
    let (mut tr, mut te) = (Vec::new(), Vec::new());
    for &i in &keep {
        let c = labels[i] as usize;
        seen[c] += 1;
        if seen[c] % test_every == 0 {
            te.push(i)
        } else {
            tr.push(i)
        }
    }
    if args[1] == "--train-text" {
        let lines: Vec<&str> = tr.iter().flat_map(|&i| texts[i].lines()).collect();
        std::fs::write(&args[2], lines.join("\n"))
            .with_context(|| format!("writing {}", args[2]))?;
        println!(
            "wrote {} lines of {} training mails to {}",
            lines.len(),
            tr.len(),
            args[2]
        );
        return Ok(());
    }
    println!(
        "{} mails ({} train / {} test), spam {}",
        keep.len(),
        tr.len(),
        te.len(),
        keep.iter().filter(|&&i| labels[i] == 1).count()
    );
    for model in &args[1..3] {
        let g = prunekit::io::load(std::path::Path::new(model), &candle_core::Device::Cpu)?;
        let tok = text::tokenizer(&g)?;
        let t0 = std::time::Instant::now();
        let embed = |idx: &[usize]| -> Result<Vec<Vec<f32>>> {
            let refs: Vec<&str> = idx.iter().map(|&i| texts[i].as_str()).collect();
            Ok(text::sentence_embeddings(&g, &tok, &refs, 32)?)
        };
        let (etr, ete) = (embed(&tr)?, embed(&te)?);
        let secs = t0.elapsed().as_secs_f64();
        let dim = etr[0].len();
        let ds = |e: &[Vec<f32>], idx: &[usize], name: &str| -> Result<Dataset> {
            Ok(Dataset::with_task(
                name,
                vec![Feature::float("embedding", vec![dim], e.concat())],
                Target::Class {
                    labels: idx.iter().map(|&i| labels[i]).collect(),
                    num_classes: 2,
                },
                prunekit::data::spam_task(),
            )?)
        };
        let (dtr, dte) = (ds(&etr, &tr, "spam/train")?, ds(&ete, &te, "spam/test")?);
        let mut b = GraphBuilder::new("probe", 0);
        let x = b.input("embedding", &[dim]);
        let y = b.named("classifier").linear(&x, 2)?;
        let mut probe = b.finish(&[&y])?;
        let mut cfg = TrainConfig::sgd_cosine(60, 64, 0.01, dtr.len());
        cfg.optimizer = prunekit::train::OptimizerKind::adamw(0.0);
        cfg.progress = false;
        fit(&mut probe, &dtr, None, &cfg)?;
        let e = prunekit::measure::evaluate(&probe, &dte, 256)?;
        println!(
            "{model}: spam F1 {:.4}, accuracy {:.4}, AUC {:.4} (embedding {} mails: {secs:.1} s)",
            e.metrics["f1"],
            e.metrics["accuracy"],
            e.metrics.get("auc").copied().unwrap_or(f64::NAN),
            tr.len() + te.len()
        );
    }
    Ok(())
}
