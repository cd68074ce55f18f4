//! Sensitivity analysis: prune one group (structured) or one weight (unstructured) alone at several
//! ratios, evaluate, record the metric drop and what it saved; then propose per-layer ratios that
//! reach a global saving with the least predicted drop (greedy on drop per unit saved, assuming
//! the layers' drops add up).

use std::collections::BTreeMap;

use prunekit_graph::channels::analyse;
use prunekit_graph::Graph;
use serde::Serialize;

use crate::criteria::Criterion;
use crate::{check_ratio, prune_structured, PruneError, Result, StructuredConfig};

/// What is pruned alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Granularity {
    /// one channel group (by `ChannelGroup::key`); saving = MACs removed
    Structured,
    /// one prunable weight (`node.param`); saving = weights zeroed
    Unstructured,
}

/// One measurement: the layer pruned alone at `ratio`.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub ratio: f64,
    pub metric: f64,
    /// base metric - metric (positive = worse)
    pub drop: f64,
    /// MACs removed (structured) or weights zeroed (unstructured)
    pub saving: f64,
}

/// One layer's curve.
#[derive(Clone, Debug, Serialize)]
pub struct Curve {
    pub layer: String,
    pub points: Vec<Point>,
}

/// Every layer's curve, and the totals savings are measured against.
#[derive(Clone, Debug, Serialize)]
pub struct Sensitivity {
    pub granularity: Granularity,
    pub criterion: String,
    pub base_metric: f64,
    /// total MACs (structured) or prunable weights (unstructured)
    pub total: f64,
    pub curves: Vec<Curve>,
}

/// Per-layer ratios that reach a saving, with the predicted drop.
#[derive(Clone, Debug, Serialize)]
pub struct Proposal {
    pub target_saving: f64,
    pub predicted_saving: f64,
    pub predicted_drop: f64,
    pub ratios: BTreeMap<String, f64>,
}

fn check_ratios(ratios: &[f64]) -> Result<()> {
    if ratios.is_empty() {
        return Err(PruneError::Invalid(
            "sensitivity needs at least one ratio".into(),
        ));
    }
    for &r in ratios {
        check_ratio("sensitivity", r)?;
    }
    Ok(())
}

/// Prunes every group (structured) or prunable weight (unstructured) alone at each ratio and
/// evaluates `metric` (higher is better, e.g. accuracy).
pub fn analyse_sensitivity(
    g: &Graph,
    granularity: Granularity,
    criterion: &dyn Criterion,
    ratios: &[f64],
    metric: &mut dyn FnMut(&Graph) -> Result<f64>,
    progress: &mut dyn FnMut(&str),
) -> Result<Sensitivity> {
    check_ratios(ratios)?;
    let base_metric = metric(g)?;
    let mut curves = Vec::new();
    let total = match granularity {
        Granularity::Structured => {
            let base_macs = g.macs()? as f64;
            let keys: Vec<String> = analyse(g)?.groups.iter().map(|gr| gr.key()).collect();
            for key in keys {
                let mut points = Vec::new();
                for &r in ratios {
                    let mut h = g.try_clone()?;
                    let mut cfg = StructuredConfig::new(0.0);
                    cfg.group_ratios.insert(key.clone(), r);
                    prune_structured(&mut h, &cfg, criterion)?;
                    let m = metric(&h)?;
                    points.push(Point {
                        ratio: r,
                        metric: m,
                        drop: base_metric - m,
                        saving: base_macs - h.macs()? as f64,
                    });
                }
                progress(&key);
                curves.push(Curve { layer: key, points });
            }
            base_macs
        }
        Granularity::Unstructured => {
            let mut total = 0.0;
            for (node, param) in crate::prunable_weights(g) {
                let n = g.node(&node)?.params[&param].tensor().elem_count() as f64;
                let mut points = Vec::new();
                for &r in ratios {
                    let mut h = g.try_clone()?;
                    let zeroed = prune_weight(&mut h, criterion, &node, &param, r)?;
                    let m = metric(&h)?;
                    points.push(Point {
                        ratio: r,
                        metric: m,
                        drop: base_metric - m,
                        saving: zeroed as f64,
                    });
                }
                total += n;
                let layer = format!("{node}.{param}");
                progress(&layer);
                curves.push(Curve { layer, points });
            }
            total
        }
    };
    Ok(Sensitivity {
        granularity,
        criterion: criterion.name().into(),
        base_metric,
        total,
        curves,
    })
}

/// Masks the `ratio` lowest-scored elements of one weight (keeping its existing mask, which
/// counts, and the best weight of every output row); returns how many of its elements are
/// zero-masked now.
pub fn prune_weight(
    g: &mut Graph,
    criterion: &dyn Criterion,
    node: &str,
    param: &str,
    ratio: f64,
) -> Result<usize> {
    check_ratio("weight", ratio)?;
    let n = g
        .node(node)?
        .params
        .get(param)
        .map_or(0, |p| p.tensor().elem_count());
    let count = (ratio * n as f64).floor() as usize;
    Ok(crate::unstructured::prune_one(g, criterion, node, param, count)?.zeros)
}

/// Greedy allocation: start every layer at ratio 0 and repeatedly advance the layer whose next
/// measured ratio costs the least drop per unit saved, until the saving reaches `target` (a
/// fraction of the total). Drops below zero count as zero.
pub fn propose(s: &Sensitivity, target: f64) -> Result<Proposal> {
    if !(0.0..1.0).contains(&target) {
        return Err(PruneError::Invalid(format!(
            "target saving {target} is outside [0, 1)"
        )));
    }
    let want = target * s.total;
    let mut level = vec![0usize; s.curves.len()]; // index into points + 1 (0 = unpruned)
    let at = |c: &Curve, l: usize| -> (f64, f64) {
        if l == 0 {
            (0.0, 0.0)
        } else {
            let p = &c.points[l - 1];
            (p.drop.max(0.0), p.saving)
        }
    };
    let (mut saving, mut drop) = (0.0, 0.0);
    while saving < want {
        let mut best: Option<(usize, f64)> = None;
        for (i, c) in s.curves.iter().enumerate() {
            if level[i] >= c.points.len() {
                continue;
            }
            let (d0, s0) = at(c, level[i]);
            let (d1, s1) = at(c, level[i] + 1);
            let gain = s1 - s0;
            if gain <= 0.0 {
                continue;
            }
            let cost = (d1 - d0).max(0.0) / gain;
            if best.is_none_or(|(_, b)| cost < b) {
                best = Some((i, cost));
            }
        }
        let Some((i, _)) = best else {
            return Err(PruneError::Invalid(format!(
                "the measured ratios save at most {:.1}% of the total, less than the target {:.1}%",
                100.0 * saving / s.total.max(1.0),
                100.0 * target
            )));
        };
        let (d0, s0) = at(&s.curves[i], level[i]);
        level[i] += 1;
        let (d1, s1) = at(&s.curves[i], level[i]);
        saving += s1 - s0;
        drop += d1 - d0;
    }
    let ratios = s
        .curves
        .iter()
        .zip(&level)
        .filter(|(_, &l)| l > 0)
        .map(|(c, &l)| (c.layer.clone(), c.points[l - 1].ratio))
        .collect();
    Ok(Proposal {
        target_saving: target,
        predicted_saving: saving / s.total.max(1.0),
        predicted_drop: drop,
        ratios,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(layer: &str, pts: &[(f64, f64, f64)]) -> Curve {
        Curve {
            layer: layer.into(),
            points: pts
                .iter()
                .map(|&(ratio, drop, saving)| Point {
                    ratio,
                    metric: 1.0 - drop,
                    drop,
                    saving,
                })
                .collect(),
        }
    }

    #[test]
    fn proposal_prunes_the_insensitive_layer_first() {
        let s = Sensitivity {
            granularity: Granularity::Structured,
            criterion: "l1".into(),
            base_metric: 1.0,
            total: 100.0,
            curves: vec![
                curve("a", &[(0.25, 0.10, 10.0), (0.5, 0.30, 20.0)]),
                curve(
                    "b",
                    &[(0.25, 0.00, 10.0), (0.5, 0.01, 20.0), (0.75, 0.5, 30.0)],
                ),
            ],
        };
        let p = propose(&s, 0.2).unwrap();
        assert_eq!(p.ratios.get("b"), Some(&0.5));
        assert!(!p.ratios.contains_key("a"));
        assert!((p.predicted_drop - 0.01).abs() < 1e-12);
        let p = propose(&s, 0.3).unwrap();
        assert_eq!(p.ratios.get("a"), Some(&0.25), "{p:?}");
        let err = propose(&s, 0.6).unwrap_err().to_string();
        assert!(err.contains("at most 50.0%"), "{err}");
    }
}
