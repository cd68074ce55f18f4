//! Structured pruning over the dependency analysis ([`prunekit_graph::channels`]): units (channels,
//! heads, KV groups, recurrent units, whole conv groups) are scored by a [`Criterion`], ranked within
//! their group (per-layer) or across groups (global), and removed physically: every coupled slice at
//! once, so the pruned graph computes what the unpruned graph computes with those slices masked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use prunekit_graph::channels::{analyse, ChannelAnalysis, Protection, SliceKey};
use prunekit_graph::{Graph, Op};
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
    /// prune in this many rounds, re-analysing and re-scoring between them; the last round ends
    /// at the widths one round would give (see [`prune_structured`])
    pub steps: usize,
    pub aggregate: Aggregate,
    pub normalize: Normalize,
    /// per-group ratios (by `ChannelGroup::key`) that replace `ratio` for those groups (layer
    /// scope), e.g. a sensitivity analysis' proposal; a ratio given for one space of a
    /// grouped-query attention (`attention1/kv_groups`, `attention1/query_heads`) applies to that
    /// space alone
    pub group_ratios: BTreeMap<String, f64>,
}

impl StructuredConfig {
    /// `ratio` of every group's units, every other setting at its default (layer scope, no
    /// caps, no rounding, one step, sum aggregation, mean normalisation).
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

/// What happened to one group in one pruning run: its unit count before, and how many of its
/// original units survive in the pruned graph (counted from the kept parameter slices, so the
/// count is the saved model's even where the analysis of the pruned graph names the group
/// differently, e.g. a grouped-query attention left with one query head per KV group).
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

/// Why a group lost fewer units than asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// `max_ratio` caps the group's removal
    MaxRatio,
    /// at least one unit of every group stays
    OneStays,
    /// kept widths are rounded up to a multiple of `round_to`
    RoundTo,
    /// units are coupled to a node in `protected`
    Protected,
    /// removing them would leave a parameter axis or a value with no entries
    /// ([`ChannelAnalysis::keep_nonempty`] took them back)
    KeepNonempty,
    /// channels coupled to a graph input or output, or protected by an op's channel rule (an op
    /// with no rule, softmax over channels, an elementwise op whose inputs cannot be followed)
    Coupled,
    /// grouped-query attention: the query heads are KV groups x query slots per group, and the
    /// reachable count nearest to the asked one was taken
    HeadProduct,
    /// global scope: every group reached its cap before the overall target
    GlobalCap,
    /// a group of the first round could not be found again after a removal
    Untraced,
}

/// A group (or a space of channels the analysis protected) that lost fewer units than the run
/// asked for, and what stopped the rest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shortfall {
    /// the group's key ([`ChannelGroup::key`](prunekit_graph::ChannelGroup::key)); for a
    /// grouped-query attention's query heads its two keys joined by ` x `
    pub group: String,
    /// units the request asked to remove (the ratio, or per-group ratio, raised to `min_ratio`;
    /// query heads for a grouped-query attention)
    pub asked: usize,
    /// units removed
    pub removed: usize,
    /// every limit that applied, in the order they were applied
    pub limits: Vec<Limit>,
    /// the same in words, naming the node, parameter or value responsible
    pub reason: String,
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: removed {} of the {} units asked: {}",
            self.group, self.removed, self.asked, self.reason
        )
    }
}

/// The head counts of one attention node before and after, read from its attributes
/// (`num_heads`, `num_kv_heads`): what the saved model has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeadCounts {
    pub node: String,
    pub heads_before: usize,
    pub heads_after: usize,
    pub kv_heads_before: usize,
    pub kv_heads_after: usize,
}

/// The outcome: per-group widths, what fell short and why, attention head counts, and for every
/// sliced parameter axis its original length and the original indices that were kept (what
/// [`verify`](crate::verify) needs to build the masked reference).
#[derive(Clone, Debug, Serialize)]
pub struct StructuredReport {
    pub criterion: String,
    pub groups: Vec<GroupPruned>,
    /// groups the criterion could not score, left as they were
    pub unscored: Vec<UnscoredGroup>,
    /// every group pruned less than asked, or not at all, with the reason
    pub shortfalls: Vec<Shortfall>,
    /// per attention node, its query and key/value head counts
    pub attention: Vec<HeadCounts>,
    /// set when the run asked for units but removed none: why, in one line
    pub warning: Option<String>,
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

    /// Units removed over all groups.
    pub fn removed_units(&self) -> usize {
        self.groups.iter().map(|gr| gr.before - gr.after).sum()
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

/// Tolerance for `ratio * n` landing a rounding error below (or above) a whole number.
const EPS: f64 = 1e-9;

/// floor(ratio * n): units a ratio asks for.
fn share(ratio: f64, n: usize) -> usize {
    (ratio * n as f64 + EPS).floor() as usize
}

/// Rounds the kept count up to a multiple of `round_to` (capped at n); returns the removal count.
fn round_kept(n: usize, remove: usize, round_to: usize) -> usize {
    if round_to <= 1 {
        return remove;
    }
    let kept = (n - remove).div_ceil(round_to) * round_to;
    n - kept.min(n)
}

/// The most units `max_ratio` (and the one unit that always stays) lets a group of `n` lose.
fn cap(cfg: &StructuredConfig, n: usize) -> usize {
    share(cfg.max_ratio, n).min(n.saturating_sub(1))
}

/// The least units `min_ratio` makes a group of `n` lose.
fn floor_count(cfg: &StructuredConfig, n: usize) -> usize {
    ((cfg.min_ratio * n as f64 - EPS).ceil().max(0.0) as usize).min(n)
}

/// One group of the first analysis: what was asked of it and what it will lose.
#[derive(Clone, Debug, Default)]
struct GroupPlan {
    n: usize,
    /// units asked for (0 for the members of a head product, which is reported as a whole)
    asked: usize,
    /// units the run removes by its last round
    remove: usize,
    limits: Vec<(Limit, String)>,
}

/// Applies the caps, in order, to `asked` removals from a group of `n` units of which `free` are
/// not protected: `max_ratio` (one unit always stays), protection, then `round_to` (kept widths
/// rounded up). Returns the removal count and the limits that lowered it.
fn limited(
    cfg: &StructuredConfig,
    n: usize,
    asked: usize,
    free: usize,
    protectors: &[String],
) -> (usize, Vec<(Limit, String)>) {
    let mut limits = Vec::new();
    let hi = cap(cfg, n);
    let mut k = asked;
    if k > hi {
        if hi < share(cfg.max_ratio, n) {
            limits.push((
                Limit::OneStays,
                format!("one of its {n} units always stays"),
            ));
        } else {
            limits.push((
                Limit::MaxRatio,
                format!("max_ratio {} allows {hi} of {n}", cfg.max_ratio),
            ));
        }
        k = hi;
    }
    if k > free {
        limits.push((
            Limit::Protected,
            format!(
                "{} of its {n} units are coupled to protected {}",
                n - free,
                names(protectors)
            ),
        ));
        k = free;
    }
    let r = round_kept(n, k, cfg.round_to);
    if r < k {
        limits.push((
            Limit::RoundTo,
            format!(
                "round_to {} keeps {} of {n} (a multiple of {}, or all)",
                cfg.round_to,
                n - r,
                cfg.round_to
            ),
        ));
    }
    (r, limits)
}

/// "`a`, `b`" (at most four, then a count).
fn names<T: fmt::Display>(items: &[T]) -> String {
    let mut v: Vec<String> = items.iter().take(4).map(|s| s.to_string()).collect();
    if items.len() > 4 {
        v.push(format!("and {} more", items.len() - 4));
    }
    v.join(", ")
}

/// The protected nodes a group's locked units come from.
fn protectors(a: &ChannelAnalysis, units: &[usize], cfg: &StructuredConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for &u in units {
        for s in &a.units[u].sources {
            if cfg.protected.contains(s) && !out.contains(&format!("`{s}`")) {
                out.push(format!("`{s}`"));
            }
        }
    }
    out
}

/// Groups whose units share parameter slices (a grouped-query attention's KV groups and query
/// slots both index the query rows): connected sets of two or more groups, each sorted.
fn product_sets(a: &ChannelAnalysis) -> Vec<Vec<usize>> {
    let mut owner: HashMap<(&SliceKey, usize), usize> = HashMap::new();
    let mut parent: Vec<usize> = (0..a.groups.len()).collect();
    fn root(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    for u in &a.units {
        for (k, idx) in &u.slices {
            for &i in idx {
                if let Some(&other) = owner.get(&(k, i)) {
                    let (x, y) = (root(&mut parent, other), root(&mut parent, u.group));
                    parent[x.max(y)] = x.min(y);
                } else {
                    owner.insert((k, i), u.group);
                }
            }
        }
    }
    let mut sets: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for gi in 0..a.groups.len() {
        sets.entry(root(&mut parent, gi)).or_default().push(gi);
    }
    sets.into_values().filter(|s| s.len() > 1).collect()
}

/// The kept counts a group can end at: every removal from `min_ratio`'s floor to the cap (and
/// the free units), with kept widths rounded as `round_to` says. Largest first.
fn reachable_kept(cfg: &StructuredConfig, n: usize, free: usize) -> Vec<usize> {
    let hi = cap(cfg, n).min(free);
    let lo = floor_count(cfg, n).min(hi);
    let mut v: Vec<usize> = (lo..=hi)
        .map(|k| n - round_kept(n, k, cfg.round_to))
        .collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.dedup();
    v
}

/// Kept counts of the members of a head product (sizes `n`, reachable kept counts `options`) whose
/// product is nearest to `(1 - ratio) * prod(n)`: the ratio applies to the query heads overall.
/// Ties go to the most even split (the members' kept fractions closest to each other), then to
/// keeping more of the earlier member (an attention's KV groups come first, so at ratio 0.5 an
/// attention with 2 KV groups of 4 query heads keeps 2 groups of 2).
fn nearest_product(n: &[usize], options: &[Vec<usize>], ratio: f64) -> Vec<usize> {
    let total: f64 = n.iter().map(|&x| x as f64).product();
    let target = (1.0 - ratio) * total;
    let mut best: Option<(f64, f64, Vec<usize>)> = None;
    let mut pick = vec![0usize; n.len()];
    loop {
        let kept: Vec<usize> = pick.iter().zip(options).map(|(&i, o)| o[i]).collect();
        let prod: f64 = kept.iter().map(|&k| k as f64).product();
        let logs: Vec<f64> = kept
            .iter()
            .zip(n)
            .map(|(&k, &m)| (k as f64 / m as f64).ln())
            .collect();
        let spread = logs.iter().copied().fold(f64::MIN, f64::max)
            - logs.iter().copied().fold(f64::MAX, f64::min);
        let cand = ((prod - target).abs(), spread, kept);
        let better = match &best {
            None => true,
            Some(b) => {
                let by = |x: f64, y: f64| (x - y).abs() > EPS && x < y;
                by(cand.0, b.0)
                    || ((cand.0 - b.0).abs() <= EPS
                        && (by(cand.1, b.1) || ((cand.1 - b.1).abs() <= EPS && cand.2 > b.2)))
            }
        };
        if better {
            best = Some(cand);
        }
        // next combination
        let mut i = 0;
        loop {
            if i == pick.len() {
                return best.map(|b| b.2).unwrap_or_else(|| n.to_vec());
            }
            pick[i] += 1;
            if pick[i] < options[i].len() {
                break;
            }
            pick[i] = 0;
            i += 1;
        }
    }
}

/// The ratios nearest to `ratio` (at most six) at which a head product of `total` heads, whose
/// members can keep the counts in `options`, keeps an exact product: "0.333 (6 heads), ...".
fn exact_head_ratios(options: &[Vec<usize>], total: usize, ratio: f64) -> String {
    let mut products: BTreeSet<usize> = [1].into();
    for o in options {
        products = products
            .iter()
            .flat_map(|&p| o.iter().map(move |&k| p * k))
            .collect();
    }
    let mut v: Vec<(f64, usize)> = products
        .into_iter()
        .filter(|&k| k < total)
        .map(|k| (1.0 - k as f64 / total as f64, k))
        .collect();
    v.sort_by(|a, b| (a.0 - ratio).abs().total_cmp(&(b.0 - ratio).abs()));
    v.truncate(6);
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v.iter()
        .map(|(r, k)| format!("{r:.3} ({k} heads)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A head product's request: the query heads asked for and the limits that applied.
#[derive(Clone, Debug)]
struct ProductPlan {
    members: Vec<usize>,
    asked: usize,
    limits: Vec<(Limit, String)>,
}

/// The one-round plan over the first analysis: per group, the units asked for and the units the
/// run removes; the head products; and the global target's shortfall, if any.
struct Plan {
    groups: Vec<GroupPlan>,
    products: Vec<ProductPlan>,
    global: Option<Shortfall>,
}

/// `unscored[gi]` marks groups the criterion cannot score: their units are held (in `locked`) and
/// they do not count towards the global target.
fn plan(
    a: &ChannelAnalysis,
    scores: &[f64],
    locked: &BTreeSet<usize>,
    unscored: &[bool],
    cfg: &StructuredConfig,
) -> Plan {
    let free = |gi: usize| -> Vec<usize> {
        let mut v: Vec<usize> = a.groups[gi]
            .units
            .iter()
            .copied()
            .filter(|u| !locked.contains(u))
            .collect();
        v.sort_by(|&x, &y| scores[x].total_cmp(&scores[y]).then(x.cmp(&y)));
        v
    };
    let ng = a.groups.len();
    let sizes: Vec<usize> = a.groups.iter().map(|gr| gr.units.len()).collect();
    let free_n: Vec<usize> = (0..ng).map(|gi| free(gi).len()).collect();
    let who: Vec<Vec<String>> = (0..ng)
        .map(|gi| protectors(a, &a.groups[gi].units, cfg))
        .collect();
    // the ratio (or the global ranking's share) each group is asked at, before min_ratio
    let mut global = None;
    let shares: Vec<usize> = match cfg.scope {
        Scope::Layer => (0..ng)
            .map(|gi| {
                let r = cfg
                    .group_ratios
                    .get(&a.groups[gi].key())
                    .copied()
                    .unwrap_or(cfg.ratio);
                share(r, sizes[gi])
            })
            .collect(),
        Scope::Global => {
            // the ratio applies to the units the criterion scores (unscored groups are held)
            let total: usize = (0..ng)
                .filter(|&gi| !unscored[gi])
                .map(|gi| sizes[gi])
                .sum();
            let target = share(cfg.ratio, total);
            let mut order: Vec<(usize, usize)> = Vec::new(); // (unit, group)
            for gi in 0..ng {
                order.extend(free(gi).into_iter().map(|u| (u, gi)));
            }
            order.sort_by(|x, y| scores[x.0].total_cmp(&scores[y.0]).then(x.0.cmp(&y.0)));
            let mut per_group = vec![0usize; ng];
            let mut taken = 0;
            for &(_, gi) in &order {
                if taken == target {
                    break;
                }
                if per_group[gi] < cap(cfg, sizes[gi]) {
                    per_group[gi] += 1;
                    taken += 1;
                }
            }
            let locked_n: usize = (0..ng).map(|gi| sizes[gi] - free_n[gi]).sum();
            if taken + share(cfg.ratio, locked_n) < target {
                global = Some(Shortfall {
                    group: "all groups (global scope)".into(),
                    asked: target,
                    removed: taken,
                    limits: vec![Limit::GlobalCap],
                    reason: format!(
                        "every group reached its cap (max_ratio {}, one unit stays, protection) \
                         before {target} of the {total} units",
                        cfg.max_ratio
                    ),
                });
            }
            per_group
        }
    };
    let mut groups: Vec<GroupPlan> = (0..ng)
        .map(|gi| {
            let n = sizes[gi];
            let asked = shares[gi].max(floor_count(cfg, n));
            let (remove, mut limits) = limited(cfg, n, asked, free_n[gi], &who[gi]);
            let mut asked = asked;
            if cfg.scope == Scope::Global {
                // the global ranking leaves protected units out; they were asked at the ratio
                let locked_share = share(cfg.ratio, n - free_n[gi]);
                if locked_share > 0 {
                    asked += locked_share;
                    limits.push((
                        Limit::Protected,
                        format!(
                            "{} of its {n} units are coupled to protected {}",
                            n - free_n[gi],
                            names(&who[gi])
                        ),
                    ));
                }
            }
            GroupPlan {
                n,
                asked,
                remove,
                limits,
            }
        })
        .collect();
    // head products: the ratio applies to the product of the members' counts (unless a member
    // has a ratio of its own)
    let mut products = Vec::new();
    for members in product_sets(a) {
        if members
            .iter()
            .any(|&gi| cfg.group_ratios.contains_key(&a.groups[gi].key()))
        {
            continue;
        }
        let n: Vec<usize> = members.iter().map(|&gi| sizes[gi]).collect();
        let ratio = match cfg.scope {
            Scope::Layer => cfg.ratio,
            Scope::Global => {
                let asked: usize = members.iter().map(|&gi| shares[gi]).sum();
                asked as f64 / n.iter().sum::<usize>().max(1) as f64
            }
        };
        let options: Vec<Vec<usize>> = members
            .iter()
            .map(|&gi| reachable_kept(cfg, sizes[gi], free_n[gi]))
            .collect();
        let kept = nearest_product(&n, &options, ratio);
        let total: usize = n.iter().product();
        let asked = share(ratio, total);
        let reached = total - kept.iter().product::<usize>();
        let mut limits = Vec::new();
        for &gi in &members {
            let gp = &mut groups[gi];
            // the caps that shaped the reachable counts still explain a shortfall
            limits.extend(
                std::mem::take(&mut gp.limits)
                    .into_iter()
                    .map(|(l, why)| (l, format!("`{}`: {why}", a.groups[gi].key()))),
            );
            gp.asked = 0;
        }
        for (&gi, &k) in members.iter().zip(&kept) {
            groups[gi].remove = sizes[gi] - k;
        }
        if reached < asked {
            let dims: Vec<String> = kept.iter().map(|k| k.to_string()).collect();
            limits.insert(
                0,
                (
                    Limit::HeadProduct,
                    format!(
                        "the query heads are {} (of {}), the reachable count nearest to {:.1}; ratios that reach a head count exactly: {}",
                        dims.join(" x "),
                        total,
                        (1.0 - ratio) * total as f64,
                        exact_head_ratios(&options, total, ratio)
                    ),
                ),
            );
        }
        products.push(ProductPlan {
            members,
            asked,
            limits,
        });
    }
    Plan {
        groups,
        products,
        global,
    }
}

/// Kept units after `step` of `steps`, from `n` down to `last`: geometric interpolation of the
/// original count (n (last/n)^(step/steps), rounded), exactly `last` at the last step.
fn scheduled(n: usize, last: usize, step: usize, steps: usize) -> usize {
    if step >= steps || n == 0 {
        return last;
    }
    let f = n as f64 * (last as f64 / n as f64).powf(step as f64 / steps as f64);
    (f.round() as usize).clamp(last, n)
}

/// Follows the units of the first analysis through removals: each is identified by its slice
/// entries (parameter axis, original index) that are still in the graph.
struct Tracer {
    /// per original unit: its entries, sorted
    entries: Vec<Vec<(SliceKey, usize)>>,
    group_of: Vec<usize>,
}

/// Per sliced parameter axis: its original length, and the original index at each current index.
type Origin = BTreeMap<SliceKey, (usize, Vec<usize>)>;

impl Tracer {
    fn new(a: &ChannelAnalysis) -> Self {
        Tracer {
            entries: a
                .units
                .iter()
                .map(|u| {
                    u.slices
                        .iter()
                        .flat_map(|(k, idx)| idx.iter().map(move |&i| (k.clone(), i)))
                        .collect()
                })
                .collect(),
            group_of: a.units.iter().map(|u| u.group).collect(),
        }
    }

    fn survives(origin: &Origin, key: &SliceKey, i: usize) -> bool {
        origin
            .get(key)
            .is_none_or(|(_, kept)| kept.binary_search(&i).is_ok())
    }

    /// The entries of an original unit still in the graph.
    fn surviving(&self, origin: &Origin, u: usize) -> Vec<(SliceKey, usize)> {
        self.entries[u]
            .iter()
            .filter(|(k, i)| Self::survives(origin, k, *i))
            .cloned()
            .collect()
    }

    /// Per unit of `now` (an analysis of the pruned graph): the original unit it is, if any.
    fn trace(&self, origin: &Origin, now: &ChannelAnalysis) -> Vec<Option<usize>> {
        let mut by_entries: HashMap<Vec<(SliceKey, usize)>, usize> = HashMap::new();
        for u in 0..self.entries.len() {
            let e = self.surviving(origin, u);
            if !e.is_empty() {
                by_entries.entry(e).or_insert(u);
            }
        }
        now.units
            .iter()
            .map(|u| {
                let mut e: Vec<(SliceKey, usize)> = u
                    .slices
                    .iter()
                    .flat_map(|(k, idx)| {
                        idx.iter()
                            .map(move |&i| (k.clone(), origin.get(k).map_or(i, |(_, m)| m[i])))
                    })
                    .collect();
                e.sort();
                by_entries.get(&e).copied()
            })
            .collect()
    }

    /// Per original group: how many of its units still have an entry in the graph.
    fn survivors(&self, origin: &Origin, groups: usize) -> Vec<usize> {
        let mut count = vec![0; groups];
        for u in 0..self.entries.len() {
            if self.entries[u]
                .iter()
                .any(|(k, i)| Self::survives(origin, k, *i))
            {
                count[self.group_of[u]] += 1;
            }
        }
        count
    }
}

/// Per attention node: (num_heads, num_kv_heads).
fn head_counts(g: &Graph) -> BTreeMap<String, (usize, usize)> {
    g.nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Attention(at) => Some((n.name.clone(), (at.num_heads, at.num_kv_heads))),
            _ => None,
        })
        .collect()
}

fn with_limits(
    group: String,
    asked: usize,
    removed: usize,
    limits: &[(Limit, String)],
) -> Shortfall {
    Shortfall {
        group,
        asked,
        removed,
        limits: limits.iter().map(|l| l.0).collect(),
        reason: limits
            .iter()
            .map(|l| l.1.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Prunes `g` in place by `cfg`, scoring with `criterion`.
///
/// Each group (`Scope::Layer`) loses `floor(ratio * n)` of its `n` units (its own ratio from
/// `group_ratios`, at least `min_ratio`'s share), or (`Scope::Global`) the share the ranking of
/// normalised scores across all groups gives it; then `max_ratio` caps it (one unit always stays),
/// protected units are left out and kept widths are rounded up to a multiple of `round_to`.
/// Groups that share slices form a product (a grouped-query attention's KV groups x query slots
/// per group): there the ratio applies to the query heads overall, and the members' kept counts
/// are the reachable pair whose product is nearest to `(1 - ratio)` of the heads.
///
/// With `steps = K`, these widths are computed once, from the first analysis (for the global scope
/// from the first round's scores), and round `s` prunes each group to `n (w/n)^(s/K)` units
/// (rounded; original size `n`, final width `w`), re-analysing the graph and re-scoring the units
/// (the criterion's `prepare` runs again) before each round: K rounds end at the widths of one.
///
/// Whatever falls short of the request is listed in [`StructuredReport::shortfalls`] with the
/// reason: the limits above, [`ChannelAnalysis::keep_nonempty`] keeping a parameter axis or value
/// non-empty, and channels the analysis protected (coupled to a graph input or output, or to an
/// op whose channel rule cannot follow them; a graph output's own channels are not listed).
///
/// Errors: a ratio outside [0, 1) (min and max ratios outside [0, 1]), `steps` or `round_to` 0,
/// an unknown protected node or group key, per-group ratios with the global scope, a model with
/// no prunable group, or a positive ratio where every unit is protected; errors of the criterion
/// and of the removal (the graph is then unchanged by the failed round).
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
    let mut locked = protected_units(g, &first, &cfg.protected)?;
    let asks =
        cfg.ratio > 0.0 || cfg.min_ratio > 0.0 || cfg.group_ratios.values().any(|&r| r > 0.0);
    if asks && first.units.iter().all(|u| locked.contains(&u.id)) {
        return Err(PruneError::Invalid(format!(
            "nothing can be removed: every prunable unit is coupled to a protected node ({})",
            names(&protectors(
                &first,
                &(0..first.units.len()).collect::<Vec<_>>(),
                cfg
            ))
        )));
    }
    let heads_before = head_counts(g);
    let scored = unit_scores(g, &first, criterion, cfg.aggregate, cfg.normalize)?;
    // groups the criterion cannot score are neither ranked (in any scope) nor pruned: their units
    // are held like protected ones, and they are reported as unscored rather than as shortfalls
    let unscored = unscored_groups(&first, &scored, criterion);
    if unscored.len() == first.groups.len() {
        return Err(no_group_scored(criterion, &unscored));
    }
    for gr in &first.groups {
        if unscored.iter().any(|u| u.group == gr.key()) {
            locked.extend(gr.units.iter().copied());
        }
    }
    let scores: Vec<f64> = scored.iter().map(|s| s.unwrap_or(0.0)).collect();
    let held: Vec<bool> = first
        .groups
        .iter()
        .map(|gr| unscored.iter().any(|u| u.group == gr.key()))
        .collect();
    let planned = plan(&first, &scores, &locked, &held, cfg);
    let tracer = Tracer::new(&first);
    let mut origin: Origin = BTreeMap::new();
    // per original group: what keep_nonempty took back, in words
    let mut taken_back: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut round = Some((first.clone(), scores, locked));
    for step in 1..=cfg.steps {
        let (a, scores, locked) = match round.take() {
            Some(r) => r,
            None => {
                let a = analyse(g)?;
                let locked = protected_units(g, &a, &cfg.protected)?;
                let scores = unit_scores(g, &a, criterion, cfg.aggregate, cfg.normalize)?
                    .into_iter()
                    .map(|s| s.unwrap_or(0.0))
                    .collect::<Vec<f64>>();
                (a, scores, locked)
            }
        };
        let traced: Vec<Option<usize>> = if step == 1 {
            (0..a.units.len()).map(Some).collect()
        } else {
            tracer.trace(&origin, &a)
        };
        let original_group = |u: usize| traced[u].map(|o| tracer.group_of[o]);
        let mut remove = Vec::new();
        for group in &a.groups {
            let Some(og) = group.units.iter().find_map(|&u| original_group(u)) else {
                continue;
            };
            let gp = &planned.groups[og];
            let keep = scheduled(gp.n, gp.n - gp.remove, step, cfg.steps);
            let mut free: Vec<usize> = group
                .units
                .iter()
                .copied()
                .filter(|u| !locked.contains(u) && original_group(*u) == Some(og))
                .collect();
            free.sort_by(|&x, &y| scores[x].total_cmp(&scores[y]).then(x.cmp(&y)));
            let k = group.units.len().saturating_sub(keep).min(free.len());
            remove.extend_from_slice(&free[..k]);
        }
        for (u, what) in a.keep_nonempty(g, &mut remove, &|u| scores[u])? {
            if let Some(og) = original_group(u) {
                taken_back.entry(og).or_default().insert(what);
            }
        }
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
    let after = tracer.survivors(&origin, first.groups.len());
    let groups: Vec<GroupPruned> = first
        .groups
        .iter()
        .zip(&after)
        .map(|(gr, &a)| GroupPruned {
            group: gr.name.clone(),
            label: gr.label.clone(),
            before: gr.units.len(),
            after: a,
        })
        .collect();
    // what fell short of the plan: keep_nonempty, or a group lost between rounds
    let short_of_plan = |gi: usize| -> Vec<(Limit, String)> {
        let removed = groups[gi].before - groups[gi].after;
        if removed >= planned.groups[gi].remove {
            return Vec::new();
        }
        match taken_back.get(&gi) {
            Some(what) => vec![(
                Limit::KeepNonempty,
                format!(
                    "removing more would empty {}",
                    names(&what.iter().collect::<Vec<_>>())
                ),
            )],
            None => vec![(
                Limit::Untraced,
                "its units could not be followed from one round to the next".into(),
            )],
        }
    };
    let mut shortfalls: Vec<Shortfall> = Vec::new();
    for (gi, gp) in planned.groups.iter().enumerate() {
        let removed = groups[gi].before - groups[gi].after;
        let key = first.groups[gi].key();
        if removed < gp.asked && !unscored.iter().any(|u| u.group == key) {
            let mut limits = gp.limits.clone();
            limits.extend(short_of_plan(gi));
            shortfalls.push(with_limits(
                first.groups[gi].key(),
                gp.asked,
                removed,
                &limits,
            ));
        }
    }
    for p in &planned.products {
        let total: usize = p.members.iter().map(|&gi| groups[gi].before).product();
        let kept: usize = p.members.iter().map(|&gi| groups[gi].after).product();
        if total - kept < p.asked {
            let mut limits = p.limits.clone();
            for &gi in &p.members {
                limits.extend(short_of_plan(gi));
            }
            let keys: Vec<String> = p.members.iter().map(|&gi| first.groups[gi].key()).collect();
            shortfalls.push(with_limits(
                keys.join(" x "),
                p.asked,
                total - kept,
                &limits,
            ));
        }
    }
    shortfalls.extend(planned.global.clone());
    for s in &first.protected_spaces {
        let head = g.outputs.contains(&s.node)
            && s.reasons
                .iter()
                .all(|r| matches!(r, Protection::GraphOutput { .. }));
        let asked = share(cfg.ratio, s.protected);
        if head || asked == 0 {
            continue;
        }
        shortfalls.push(Shortfall {
            group: s.key(),
            asked,
            removed: 0,
            limits: vec![Limit::Coupled],
            reason: format!(
                "{} of its {} {} are coupled to {}",
                s.protected,
                s.size,
                s.label,
                names(&s.reasons)
            ),
        });
    }
    let heads_after = head_counts(g);
    let attention = heads_before
        .iter()
        .map(|(node, &(h0, kv0))| {
            let (h1, kv1) = heads_after.get(node).copied().unwrap_or((h0, kv0));
            HeadCounts {
                node: node.clone(),
                heads_before: h0,
                heads_after: h1,
                kv_heads_before: kv0,
                kv_heads_after: kv1,
            }
        })
        .collect();
    let mut report = StructuredReport {
        criterion: criterion.name().to_string(),
        groups,
        unscored,
        shortfalls,
        attention,
        warning: None,
        kept: origin,
    };
    if asks && report.removed_units() == 0 {
        let asked_any = planned.groups.iter().any(|gp| gp.asked > 0)
            || planned.products.iter().any(|p| p.asked > 0);
        report.warning = Some(if asked_any {
            let why: Vec<String> = report.shortfalls.iter().map(|s| s.to_string()).collect();
            format!("structured pruning removed nothing: {}", why.join("; "))
        } else {
            let largest = first
                .groups
                .iter()
                .max_by_key(|gr| gr.units.len())
                .map(|gr| (gr.key(), gr.units.len()))
                .unwrap_or_default();
            format!(
                "structured pruning removed nothing: ratio {} asks for less than one unit of \
                 every group (the largest, `{}`, has {} units)",
                cfg.ratio, largest.0, largest.1
            )
        });
    }
    Ok(report)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_head_ratios_list_the_reachable_products_nearest_the_request() {
        // SmolLM2: 3 KV groups x 3 query slots; every kept count from 3 down to 1 is reachable
        let opts = vec![vec![3, 2, 1], vec![3, 2, 1]];
        let s = exact_head_ratios(&opts, 9, 0.5);
        // kept products 1, 2, 3, 4, 6 (9 is "nothing removed"): the six nearest, by ratio
        assert_eq!(
            s,
            "0.333 (6 heads), 0.556 (4 heads), 0.667 (3 heads), 0.778 (2 heads), 0.889 (1 heads)"
        );
        let s = exact_head_ratios(&[vec![4, 3, 2, 1]], 4, 0.1);
        assert!(s.starts_with("0.250 (3 heads)"), "{s}");
    }

    #[test]
    fn the_schedule_interpolates_from_the_original_size_and_ends_at_the_width() {
        for (n, last, steps) in [(16, 4, 6), (16, 8, 3), (7, 1, 5), (64, 63, 4), (5, 5, 3)] {
            let widths: Vec<usize> = (1..=steps).map(|s| scheduled(n, last, s, steps)).collect();
            assert_eq!(widths[steps - 1], last, "{n} -> {last}: {widths:?}");
            assert!(widths.windows(2).all(|w| w[0] >= w[1]), "{widths:?}");
            assert!(
                widths.iter().all(|&w| (last..=n).contains(&w)),
                "{widths:?}"
            );
        }
        // 16 -> 4 in 6 rounds, geometric: 16 * (1/4)^(s/6)
        let w: Vec<usize> = (1..=6).map(|s| scheduled(16, 4, s, 6)).collect();
        assert_eq!(w, vec![13, 10, 8, 6, 5, 4]);
    }

    #[test]
    fn head_products_take_the_nearest_reachable_count() {
        let all = |n: usize| (1..=n).rev().collect::<Vec<_>>();
        // 2 KV groups x 4 query slots (llama-tiny)
        let gqa = |r| nearest_product(&[2, 4], &[all(2), all(4)], r);
        assert_eq!(gqa(0.0), vec![2, 4]);
        assert_eq!(
            gqa(0.5),
            vec![2, 2],
            "4 of 8 heads; the even split keeps both KV groups"
        );
        assert_eq!(gqa(0.25), vec![2, 3]);
        assert_eq!(gqa(0.75), vec![1, 2]);
        assert_eq!(gqa(0.9), vec![1, 1]);
        // 3 KV groups x 3 query slots (SmolLM2-135M): 4.5 of 9 heads -> 4
        assert_eq!(nearest_product(&[3, 3], &[all(3), all(3)], 0.5), vec![2, 2]);
        // only what the caps allow: at most half of the KV groups may go
        assert_eq!(
            nearest_product(&[4, 2], &[vec![4, 3, 2], all(2)], 0.75),
            vec![2, 1]
        );
    }
}
