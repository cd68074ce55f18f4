//! Sensitivity analysis (prunekit-prune) on a model trained with prunekit-train, tested here where
//! both meet (the pruning crate does not depend on the trainer): every group gets a curve, savings
//! grow with the ratio, and the proposal's per-group ratios reach the target when applied.

use prunekit_prune::{
    analyse_sensitivity, propose, prune_structured, Granularity, Norm, StructuredConfig,
};
use prunekit_train::{evaluate, fit, TrainConfig};

#[test]
fn structured_and_unstructured_curves_and_a_proposal_that_reaches_its_target() {
    let (split, _) = prunekit_data::digits(0, 0.2).unwrap();
    let mut g = prunekit_zoo::build("digits-mlp", 0).unwrap();
    let mut cfg = TrainConfig::sgd_cosine(5, 32, 0.05, split.train.len());
    cfg.progress = false;
    fit(&mut g, &split.train, None, &cfg).unwrap();
    let mut metric = |h: &prunekit_graph::Graph| -> prunekit_prune::Result<f64> {
        Ok(evaluate(h, &split.test, 256)
            .map_err(|e| prunekit_prune::PruneError::Invalid(e.to_string()))?
            .accuracy()
            .unwrap_or(0.0))
    };
    let ratios = [0.25, 0.5, 0.75];
    let s = analyse_sensitivity(
        &g,
        Granularity::Structured,
        &Norm::L1,
        &ratios,
        &mut metric,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(s.curves.len(), 2, "two hidden layers");
    for c in &s.curves {
        assert_eq!(c.points.len(), 3);
        assert!(
            c.points.windows(2).all(|w| w[0].saving < w[1].saving),
            "{c:?}"
        );
    }
    let p = propose(&s, 0.3).unwrap();
    let mut pruned = g.clone();
    let mut cfg = StructuredConfig::new(0.0);
    cfg.group_ratios = p.ratios.clone();
    prune_structured(&mut pruned, &cfg, &Norm::L1).unwrap();
    let saved = 1.0 - pruned.macs().unwrap() as f64 / g.macs().unwrap() as f64;
    assert!(saved >= 0.3 - 1e-9, "saved {saved}, proposal {p:?}");

    let u = analyse_sensitivity(
        &g,
        Granularity::Unstructured,
        &Norm::L1,
        &[0.5, 0.9],
        &mut metric,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(u.curves.len(), 3, "three weight matrices");
    assert!(u
        .curves
        .iter()
        .all(|c| c.points[1].saving > c.points[0].saving));
    // bad input
    assert!(analyse_sensitivity(
        &g,
        Granularity::Structured,
        &Norm::L1,
        &[],
        &mut metric,
        &mut |_| {}
    )
    .is_err());
    assert!(propose(&s, 1.5).is_err());
    let mut bad = StructuredConfig::new(0.0);
    bad.group_ratios.insert("nope".into(), 0.5);
    let err = prune_structured(&mut g.clone(), &bad, &Norm::L1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`nope`") && err.contains("linear1"), "{err}");
}
