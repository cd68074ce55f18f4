//! Structured pruning over the dependency analysis ([`prunekit_graph::channels`]): units (channels,
//! heads, KV groups, recurrent units, whole conv groups) are scored by a [`Criterion`], ranked within
//! their group (per-layer) or across groups (global), and removed physically: every coupled slice at
//! once, so the pruned graph computes what the unpruned graph computes with those slices masked.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prunekit_graph::channels::{analyse, ChannelAnalysis, SliceKey};
use prunekit_graph::Graph;
use serde::Serialize;

pub use crate::criteria::{Criterion, Norm};

use crate::magnitude::Scope;
use crate::{check_ratio, PruneError, Result};

/// How a unit's per-parameter scores combine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Aggregate {
    #[default]
    Sum,
    Mean,
    Max,
}

/// How scores are normalised within a group before ranking (matters for global ranking).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Normalize {
    None,
    /// divide by the group's mean score
    #[default]
    Mean,
    /// divide by the group's largest score
    Max,
}

/// Every knob of one structured pruning run.
#[derive(Clone, Debug)]
pub struct StructuredConfig {
    /// fraction of units to remove, in [0, 1)
    pub ratio: f64,
    /// rank within each group (Layer) or across all groups (Global)
    pub scope: Scope,
    /// each group loses at least this fraction of its units
    pub min_ratio: f64,
    /// and at most this fraction (at least one unit always stays)
    pub max_ratio: f64,
    /// kept unit counts are rounded up to a multiple of this (capped at the group's size)
    pub round_to: usize,
    /// node names whose output channels (every space they create: channels, heads, units) are
    /// never pruned, nor anything coupled to them
    pub protected: Vec<String>,
    /// prune in this many rounds, re-analysing and re-scoring between them
    pub steps: usize,
    pub aggregate: Aggregate,
    pub normalize: Normalize,
    /// per-group ratios (by `ChannelGroup::key`) that replace `ratio` for those groups (layer
    /// scope), e.g. a sensitivity analysis' proposal
    pub group_ratios: BTreeMap<String, f64>,
}

impl StructuredConfig {
    pub fn new(ratio: f64) -> Self {
        Self {
            ratio,
            scope: Scope::Layer,
            min_ratio: 0.0,
            max_ratio: 1.0,
            round_to: 1,
            protected: Vec::new(),
            steps: 1,
            aggregate: Aggregate::Sum,
            normalize: Normalize::Mean,
            group_ratios: BTreeMap::new(),
        }
    }
}

/// What happened to one group in one pruning run.
#[derive(Clone, Debug, Serialize)]
pub struct GroupPruned {
    pub group: String,
    pub label: String,
    pub before: usize,
    pub after: usize,
}

/// A group the criterion could not score (e.g. `bn-scale` where no BatchNorm follows, `fpgm` on
/// recurrent units or attention heads): left out of the ranking, none of its units removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnscoredGroup {
    /// [`prunekit_graph::ChannelGroup::key`]
    pub group: String,
    pub label: String,
    pub reason: String,
}

/// The outcome: per-group widths, the groups left unscored, and for every sliced parameter axis
/// its original length and the original indices that were kept (what [`verify`] needs to build
/// the masked reference).
#[derive(Clone, Debug, Serialize)]
pub struct StructuredReport {
    pub criterion: String,
    pub groups: Vec<GroupPruned>,
    /// groups the criterion could not score, left as they were
    pub unscored: Vec<UnscoredGroup>,
    #[serde(skip)]
    pub kept: BTreeMap<SliceKey, (usize, Vec<usize>)>,
}

impl StructuredReport {
    /// Removed original indices per sliced parameter axis.
    pub fn removed(&self) -> BTreeMap<SliceKey, BTreeSet<usize>> {
        self.kept
            .iter()
            .map(|(k, (len, kept))| {
                let kept: BTreeSet<usize> = kept.iter().copied().collect();
                (k.clone(), (0..*len).filter(|i| !kept.contains(i)).collect())
            })
            .collect()
    }
}

/// The score of every unit of the analysis (higher is more important), or None for a unit none
/// of whose slices the criterion scores.
///
/// Per slice (a unit's indices along one parameter axis) the criterion gives one sum per term
/// ([`Criterion::slice_terms`]). With [`Criterion::whole_unit`] the sums of every slice of the
/// unit are added and reduced once ([`Criterion::reduce_terms`]: Taylor's (1/B) sum_b (sum_S w
/// g_b)^2, Fisher's sum); otherwise each slice is reduced alone and the slice scores combine by
/// `aggregate`. Scores are then normalised within each group by `normalize` (over its scored
/// units).
pub fn unit_scores(
    g: &Graph,
    a: &ChannelAnalysis,
    criterion: &dyn Criterion,
    aggregate: Aggregate,
    normalize: Normalize,
) -> Result<Vec<Option<f64>>> {
    criterion.prepare(g)?;
    // per slice key and term: the terms summed over every axis but the key's
    let mut per_index: HashMap<SliceKey, Option<Vec<Vec<f64>>>> = HashMap::new();
    for u in &a.units {
        for k in u.slices.keys() {
            if per_index.contains_key(k) {
                continue;
            }
            let terms = criterion.slice_terms(g, &k.node, &k.param, k.axis)?;
            if let Some(terms) = &terms {
                let len = crate::criteria::param_of(g, &k.node, &k.param)?
                    .tensor()
                    .dim(k.axis)?;
                if let Some(bad) = terms.iter().find(|t| t.len() != len) {
                    return Err(PruneError::Invalid(format!(
                        "criterion `{}` gave {} slice scores for axis {} of `{}.{}` of length {len}",
                        criterion.name(),
                        bad.len(),
                        k.axis,
                        k.node,
                        k.param
                    )));
                }
            }
            per_index.insert(k.clone(), terms);
        }
    }
    let mut scores = Vec::with_capacity(a.units.len());
    for u in &a.units {
        // per scored slice: the per-term sums over the unit's indices
        let parts: Vec<Vec<f64>> = u
            .slices
            .iter()
            .filter_map(|(k, idx)| {
                let terms = per_index[k].as_ref()?;
                Some(
                    terms
                        .iter()
                        .map(|t| idx.iter().map(|&i| t[i]).sum())
                        .collect(),
                )
            })
            .collect();
        if parts.is_empty() {
            scores.push(None);
            continue;
        }
        let score = if criterion.whole_unit() {
            let mut total = vec![0.0; parts[0].len()];
            for p in &parts {
                if p.len() != total.len() {
                    return Err(PruneError::Invalid(format!(
                        "criterion `{}` gave slices of unit {} with {} and {} terms",
                        criterion.name(),
                        u.id,
                        total.len(),
                        p.len()
                    )));
                }
                total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
            }
            criterion.reduce_terms(&total)
        } else {
            let per_slice: Vec<f64> = parts.iter().map(|p| criterion.reduce_terms(p)).collect();
            match aggregate {
                Aggregate::Sum => per_slice.iter().sum(),
                Aggregate::Mean => per_slice.iter().sum::<f64>() / per_slice.len() as f64,
                Aggregate::Max => per_slice.iter().copied().fold(f64::MIN, f64::max),
            }
        };
        scores.push(Some(score));
    }
    for group in &a.groups {
        let vals: Vec<f64> = group.units.iter().filter_map(|&u| scores[u]).collect();
        let div = match normalize {
            Normalize::None => 1.0,
            Normalize::Mean => vals.iter().sum::<f64>() / vals.len().max(1) as f64,
            Normalize::Max => vals.iter().copied().fold(0.0, f64::max),
        };
        if div > 0.0 {
            for &u in &group.units {
                if let Some(s) = scores[u].as_mut() {
                    *s /= div;
                }
            }
        }
    }
    Ok(scores)
}

/// The groups of `a` with a unit that has no score (see [`unit_scores`]), and why: they are left
/// out of the ranking.
pub fn unscored_groups(
    a: &ChannelAnalysis,
    scores: &[Option<f64>],
    criterion: &dyn Criterion,
) -> Vec<UnscoredGroup> {
    a.groups
        .iter()
        .filter_map(|gr| {
            let missing = gr.units.iter().filter(|&&u| scores[u].is_none()).count();
            if missing == 0 {
                return None;
            }
            let mut reason = criterion.unscored_reason();
            if missing < gr.units.len() {
                reason = format!(
                    "{reason} ({missing} of its {} units have no scored parameter)",
                    gr.units.len()
                );
            }
            Some(UnscoredGroup {
                group: gr.key(),
                label: gr.label.clone(),
                reason,
            })
        })
        .collect()
}

/// Units created by a protected node (its output channels, heads or hidden units, and everything
/// coupled to them), after checking every protected name exists.
fn protected_units(
    g: &Graph,
    a: &ChannelAnalysis,
    protected: &[String],
) -> Result<BTreeSet<usize>> {
    for name in protected {
        if g.node(name).is_err() {
            return Err(PruneError::Invalid(format!(
                "protected node `{name}` is not in the model"
            )));
        }
    }
    Ok(a.units
        .iter()
        .filter(|u| u.sources.iter().any(|s| protected.contains(s)))
        .map(|u| u.id)
        .collect())
}

/// How many units of a group of `n` (of which `eligible` may go) to remove at `ratio`.
fn removal_count(cfg: &StructuredConfig, ratio: f64, n: usize, eligible: usize) -> usize {
    let lo = (cfg.min_ratio * n as f64).ceil() as usize;
    let hi = ((cfg.max_ratio * n as f64).floor() as usize).min(n.saturating_sub(1));
    let want = ((ratio * n as f64).floor() as usize).clamp(lo.min(hi), hi);
    round_kept(n, want, cfg.round_to).min(eligible)
}

/// Rounds the kept count up to a multiple of `round_to` (capped at n); returns the removal count.
fn round_kept(n: usize, remove: usize, round_to: usize) -> usize {
    if round_to <= 1 {
        return remove;
    }
    let kept = (n - remove).div_ceil(round_to) * round_to;
    n - kept.min(n)
}

/// Chooses the units to remove in one round.
fn choose(
    a: &ChannelAnalysis,
    scores: &[f64],
    locked: &BTreeSet<usize>,
    cfg: &StructuredConfig,
    ratio: f64,
) -> Vec<usize> {
    let ranked = |units: &[usize]| -> Vec<usize> {
        let mut v: Vec<usize> = units
            .iter()
            .copied()
            .filter(|u| !locked.contains(u))
            .collect();
        v.sort_by(|&x, &y| scores[x].total_cmp(&scores[y]).then(x.cmp(&y)));
        v
    };
    let mut out = Vec::new();
    match cfg.scope {
        Scope::Layer => {
            for group in &a.groups {
                let r = ranked(&group.units);
                let ratio = cfg
                    .group_ratios
                    .get(&group.key())
                    .map_or(ratio, |&g| 1.0 - (1.0 - g).powf(1.0 / cfg.steps as f64));
                let k = removal_count(cfg, ratio, group.units.len(), r.len());
                out.extend_from_slice(&r[..k]);
            }
        }
        Scope::Global => {
            let total: usize = a.groups.iter().map(|gr| gr.units.len()).sum();
            let target = (ratio * total as f64).floor() as usize;
            let mut order: Vec<(usize, usize)> = Vec::new(); // (unit, group)
            for (gi, group) in a.groups.iter().enumerate() {
                order.extend(ranked(&group.units).into_iter().map(|u| (u, gi)));
            }
            order.sort_by(|x, y| scores[x.0].total_cmp(&scores[y.0]).then(x.0.cmp(&y.0)));
            let mut per_group = vec![0usize; a.groups.len()];
            let cap = |gi: usize| {
                let n = a.groups[gi].units.len();
                ((cfg.max_ratio * n as f64).floor() as usize).min(n.saturating_sub(1))
            };
            let mut taken = 0;
            for &(_, gi) in &order {
                if taken == target {
                    break;
                }
                if per_group[gi] < cap(gi) {
                    per_group[gi] += 1;
                    taken += 1;
                }
            }
            for (gi, group) in a.groups.iter().enumerate() {
                let n = group.units.len();
                let r = ranked(&group.units);
                let lo = ((cfg.min_ratio * n as f64).ceil() as usize).min(cap(gi));
                let k = round_kept(n, per_group[gi].max(lo), cfg.round_to).min(r.len());
                out.extend_from_slice(&r[..k]);
            }
        }
    }
    out
}

/// Prunes `g` in place by `cfg`, scoring with `criterion`.
pub fn prune_structured(
    g: &mut Graph,
    cfg: &StructuredConfig,
    criterion: &dyn Criterion,
) -> Result<StructuredReport> {
    check_ratio("structured", cfg.ratio)?;
    for (what, r) in [("min", cfg.min_ratio), ("max", cfg.max_ratio)] {
        if !(0.0..=1.0).contains(&r) {
            return Err(PruneError::Invalid(format!(
                "{what} ratio {r} is outside [0, 1]"
            )));
        }
    }
    if cfg.steps == 0 || cfg.round_to == 0 {
        return Err(PruneError::Invalid(
            "steps and round_to must be at least 1".into(),
        ));
    }
    let first = analyse(g)?;
    for (key, &r) in &cfg.group_ratios {
        check_ratio(&format!("group `{key}`"), r)?;
        if first.group(key).is_none() {
            let known: Vec<String> = first.groups.iter().map(|gr| gr.key()).collect();
            return Err(PruneError::Invalid(format!(
                "no prunable group `{key}`; the groups are: {}",
                known.join(", ")
            )));
        }
        if cfg.scope != Scope::Layer {
            return Err(PruneError::Invalid(
                "per-group ratios need the layer scope".into(),
            ));
        }
    }
    if first.groups.is_empty() {
        let why = if first.blocked_by.is_empty() {
            "every channel reaches a graph input or output".to_string()
        } else {
            format!(
                "channels are blocked by {} and otherwise reach a graph input or output",
                first.blocked_by.join(", ")
            )
        };
        return Err(PruneError::Invalid(format!(
            "the model has no prunable channel groups: {why}"
        )));
    }
    let before: Vec<(String, String, usize)> = first
        .groups
        .iter()
        .map(|gr| (gr.name.clone(), gr.label.clone(), gr.units.len()))
        .collect();
    // per sliced parameter axis: original length, and the original index of each current index
    let mut origin: BTreeMap<SliceKey, (usize, Vec<usize>)> = BTreeMap::new();
    let step_ratio = 1.0 - (1.0 - cfg.ratio).powf(1.0 / cfg.steps as f64);
    let mut a = first;
    let mut unscored: Vec<UnscoredGroup> = Vec::new();
    for step in 0..cfg.steps {
        if step > 0 {
            a = analyse(g)?;
        }
        let locked = protected_units(g, &a, &cfg.protected)?;
        let scores = unit_scores(g, &a, criterion, cfg.aggregate, cfg.normalize)?;
        let left_out = unscored_groups(&a, &scores, criterion);
        if left_out.len() == a.groups.len() {
            return Err(no_group_scored(criterion, &left_out));
        }
        // the unscored groups are neither ranked (in any scope) nor pruned
        let ranked = if left_out.is_empty() {
            std::borrow::Cow::Borrowed(&a)
        } else {
            let mut view = a.clone();
            view.groups
                .retain(|gr| !left_out.iter().any(|u| u.group == gr.key()));
            std::borrow::Cow::Owned(view)
        };
        for u in left_out {
            if !unscored.contains(&u) {
                unscored.push(u);
            }
        }
        let scores: Vec<f64> = scores.iter().map(|s| s.unwrap_or(0.0)).collect();
        let mut remove = choose(&ranked, &scores, &locked, cfg, step_ratio);
        a.keep_nonempty(g, &mut remove, &|u| scores[u])?;
        if remove.is_empty() {
            continue;
        }
        for sliced in a.remove(g, &remove)? {
            let map = origin
                .entry(sliced.key)
                .or_insert_with(|| (sliced.len, (0..sliced.len).collect()));
            map.1 = sliced.kept.iter().map(|&i| map.1[i as usize]).collect();
        }
    }
    let after = analyse(g)?;
    let groups = before
        .into_iter()
        .map(|(name, label, n)| GroupPruned {
            after: after
                .groups
                .iter()
                .find(|gr| gr.name == name && gr.label == label)
                .map_or(n, |gr| gr.units.len()),
            group: name,
            label,
            before: n,
        })
        .collect();
    Ok(StructuredReport {
        criterion: criterion.name().to_string(),
        groups,
        unscored,
        kept: origin,
    })
}

/// The error when `criterion` can score none of the model's groups.
fn no_group_scored(criterion: &dyn Criterion, unscored: &[UnscoredGroup]) -> PruneError {
    let mut reasons: Vec<&str> = unscored.iter().map(|u| u.reason.as_str()).collect();
    reasons.sort_unstable();
    reasons.dedup();
    PruneError::Invalid(format!(
        "criterion `{}` can score none of the model's {} prunable groups ({}): {}; pick another \
         criterion",
        criterion.name(),
        unscored.len(),
        unscored
            .iter()
            .map(|u| u.group.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        reasons.join("; ")
    ))
}
