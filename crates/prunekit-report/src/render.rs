//! Markdown and self-contained HTML renderings of a [`Report`].

use std::fmt::Write as _;

use plotters::prelude::RGBColor;

use crate::charts::{self, BarSeries, Bars, Line, Lines, AFTER, BEFORE};
use crate::fmt::{self as f, int, ms, opt, pct};
use crate::model::{
    Comparison, ComparisonRow, DetectionPicture, ModelReport, PictureBox, Report, Sensitivity,
    Sweep, Unit,
};
use crate::{ReportError, Result};

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes the characters that break a Markdown table cell.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn shape(s: &[usize]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A row's cells: measure, before, after, after/before, change.
pub fn row_cells(r: &ComparisonRow) -> [String; 5] {
    let ratio = match (r.ratio, r.unit) {
        (_, Unit::Fraction) => "-".to_string(),
        (Some(x), Unit::Milliseconds) if x > 0.0 && x <= 1.0 => {
            format!("{} ({:.2}× faster)", f::ratio(x), 1.0 / x)
        }
        (Some(x), Unit::Milliseconds) if x > 1.0 => {
            format!("{} ({:.2}× slower)", f::ratio(x), x)
        }
        (Some(x), _) => f::ratio(x),
        (None, _) => "-".to_string(),
    };
    [
        r.measure.clone(),
        opt(r.before, |v| f::value(r.unit, v)),
        opt(r.after, |v| f::value(r.unit, v)),
        ratio,
        opt(r.change, |c| f::change(r.unit, c)),
    ]
}

/// The whole-model measures of one model: (measure, value) pairs.
pub fn summary_cells(m: &ModelReport) -> Vec<(String, String)> {
    let s = &m.summary;
    let mut names: Vec<&String> = s.metrics.keys().collect();
    if let Some(h) = &s.headline {
        names.sort_by_key(|n| *n != h);
    }
    let mut rows: Vec<(String, String)> = names
        .into_iter()
        .map(|n| {
            let v = s.metrics[n];
            let cell = match crate::model::metric_unit(n) {
                crate::model::Unit::Fraction => pct(v),
                _ => f::plain(v),
            };
            (format!("test {n}"), cell)
        })
        .collect();
    rows.push(("test loss".into(), opt(s.loss, f::plain)));
    // the confusion counts behind precision / recall / F1 (the metrics themselves are above)
    if let Some(b) = m.classification.as_ref().and_then(|c| c.binary.as_ref()) {
        rows.push((
            format!("TP / FP / TN / FN (threshold {})", b.threshold),
            format!("{} / {} / {} / {}", b.tp, b.fp, b.tn, b.fn_),
        ));
    }
    if let Some(r) = &m.robustness {
        let fraction = crate::model::metric_unit(&r.metric) == crate::model::Unit::Fraction;
        let cells: Vec<String> = r
            .points
            .iter()
            .map(|p| {
                let v = match p.metric {
                    Some(v) if fraction => pct(v),
                    Some(v) => f::plain(v),
                    None => "-".into(),
                };
                format!("{}: {v}", p.level)
            })
            .collect();
        rows.push((
            format!("test {} under {}", r.metric, r.perturbation),
            cells.join(", "),
        ));
    }
    rows.extend([
        ("params".into(), int(s.params as u64)),
        ("nonzero params".into(), int(s.nonzeros as u64)),
        ("weight sparsity".into(), pct(s.weight_sparsity)),
        ("MACs per sample".into(), int(s.macs)),
        (
            "MACs per sample, zeros skipped".into(),
            int(s.effective_macs),
        ),
    ]);
    if let (Some(t), Some(per)) = (s.seq_len, s.macs_per_token) {
        rows.push((
            format!("MACs per token (sequence length {t})"),
            int(per.round() as u64),
        ));
    }
    for l in std::iter::once(&s.latency).chain(m.latency_batch.as_ref()) {
        let b = crate::model::batch_label(l.batch, s.seq_len);
        rows.push((
            format!("latency, {b} (median / p90)"),
            format!("{} / {}", ms(l.median_ms), ms(l.p90_ms)),
        ));
        rows.push((
            format!("latency, {b}: timing"),
            format!(
                "{} timed runs after {} warm-up, {} threads{}",
                l.runs,
                l.warmup,
                l.threads,
                match l.sparse_layers {
                    0 => String::new(),
                    n => format!(", {n} layer(s) on sparse kernels"),
                }
            ),
        ));
    }
    rows.push(("file size".into(), f::bytes(s.file_bytes)));
    if let Some(mem) = &m.memory {
        rows.push((
            format!(
                "peak resident memory, {}",
                crate::model::batch_label(mem.batch, s.seq_len)
            ),
            f::kib(mem.peak_kb),
        ));
        rows.push((
            "of which the inference added".into(),
            format!(
                "{}{}",
                f::kib(mem.delta_kb),
                if mem.hwm_reset {
                    ""
                } else {
                    " (high-water mark not reset: a lower bound)"
                }
            ),
        ));
    }
    rows
}

fn layer_header() -> [&'static str; 9] {
    [
        "node",
        "op",
        "output",
        "width (live / rows)",
        "params",
        "nonzeros",
        "sparsity",
        "MACs",
        "MACs, zeros skipped",
    ]
}

fn layer_cells(m: &ModelReport) -> Vec<[String; 9]> {
    m.layers
        .iter()
        .map(|l| {
            [
                l.node.clone(),
                l.op.clone(),
                shape(&l.output_shape),
                match (l.live_width, l.width) {
                    (Some(a), Some(b)) => format!("{a} / {b}"),
                    _ => "-".into(),
                },
                int(l.params as u64),
                int(l.nonzeros as u64),
                pct(l.sparsity),
                int(l.macs),
                int(l.effective_macs),
            ]
        })
        .collect()
}

fn layer_comparison_cells(c: &Comparison) -> Vec<[String; 8]> {
    let w = |v: Option<usize>| v.map_or("removed".to_string(), |x| x.to_string());
    let p = |v: Option<usize>| v.map_or("removed".to_string(), |x| int(x as u64));
    let s = |v: Option<f64>| v.map_or("removed".to_string(), pct);
    c.layers
        .iter()
        .map(|l| {
            [
                l.node.clone(),
                l.op.clone(),
                w(l.before_width),
                w(l.after_width),
                p(l.before_params),
                p(l.after_params),
                s(l.before_sparsity),
                s(l.after_sparsity),
            ]
        })
        .collect()
}

fn gap_cells(m: &ModelReport) -> Option<(Vec<[String; 4]>, String, String)> {
    let g = m.gap.as_ref()?;
    let h = &g.headline;
    let fraction = crate::model::metric_unit(h) == crate::model::Unit::Fraction;
    let cell = |v: Option<f64>| match v {
        Some(v) if fraction => pct(v),
        Some(v) => f::plain(v),
        None => "-".into(),
    };
    let row = |name: &str, e: &prunekit_measure::metrics::SplitEval| {
        [
            name.to_string(),
            int(e.samples as u64),
            cell(e.metrics.get(h).copied()),
            f::plain(e.loss),
        ]
    };
    let gap = match g.headline_gap {
        Some(v) if fraction => f::pt(v),
        Some(v) => format!("{v:+.4}"),
        None => "-".into(),
    };
    Some((
        vec![row("train", &g.train), row("test", &g.test)],
        format!(
            "train - test {h}: {gap}; test - train loss: {}",
            format_args!("{:+.4}", g.loss_gap)
        ),
        h.clone(),
    ))
}

fn dataset_line(r: &Report) -> Option<String> {
    let d = r.dataset.as_ref()?;
    Some(format!(
        "Dataset: {} — measured on the test split ({} samples of shape {}, {} classes; {} training samples)",
        d.name,
        int(d.test_samples as u64),
        shape(&d.sample_shape),
        d.classes,
        int(d.train_samples as u64)
    ))
}

const METHOD: &str = "Latency: eval-mode forward passes of a random input batch on the CPU, timed \
    after untimed warm-up runs; the median and the 90th percentile of the timed runs are reported \
    with the number of threads the kernels used. Peak resident memory: the resident-set high-water \
    mark (VmHWM) around one cold forward pass at the stated batch, the mark reset just before it; \
    prunekit report measures each model in a fresh process that has only loaded the model, so the \
    peak is what loading the model and one inference need, and \"added\" is the peak minus the \
    resident set (VmRSS) just before the pass. Width: rows of a layer's weight that hold any \
    nonzero value (output channels or features). Sparsity: the fraction of the weight matrices \
    and kernels (rank >= 2) that is zero; biases and norm scales are not counted. MACs: multiply-accumulates per sample, counted from the graph; \"zeros \
    skipped\" removes, for every weight, its MACs times its zero fraction.";

fn sensitivity_cells(s: &Sensitivity) -> (Vec<String>, Vec<Vec<String>>) {
    let mut ratios: Vec<f64> = s
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.ratio))
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios.dedup();
    let mut header = vec!["layer".to_string()];
    header.extend(ratios.iter().map(|r| format!("pruned {}", pct(*r))));
    let rows = s
        .curves
        .iter()
        .map(|c| {
            let mut row = vec![c.layer.clone()];
            for r in &ratios {
                row.push(
                    c.points
                        .iter()
                        .find(|p| p.ratio == *r)
                        .map_or("-".into(), |p| drop_str(s.unit, p.drop)),
                );
            }
            row
        })
        .collect();
    (header, rows)
}

fn drop_str(unit: Unit, d: f64) -> String {
    match unit {
        Unit::Fraction => format!("{:.2} pt", 100.0 * d),
        u => f::value(u, d),
    }
}

fn sweep_cells(s: &Sweep) -> (Vec<String>, Vec<Vec<String>>) {
    let header = vec![
        "sparsity".to_string(),
        "MACs / dense".to_string(),
        s.metric.clone(),
        "MACs".to_string(),
        "latency".to_string(),
    ];
    let rows = s
        .points
        .iter()
        .map(|p| {
            vec![
                pct(p.sparsity),
                pct(p.mac_fraction),
                f::value(s.unit, p.metric),
                p.macs.map_or("-".into(), int),
                opt(p.latency_ms, ms),
            ]
        })
        .collect();
    (header, rows)
}

/// A box as `class [x1, y1, x2, y2]` (and its score for a detection).
fn box_text(b: &PictureBox) -> String {
    let [x1, y1, x2, y2] = b.bbox;
    let score = b.score.map(|s| format!(" {s:.2}")).unwrap_or_default();
    format!("{}{score} [{x1:.0}, {y1:.0}, {x2:.0}, {y2:.0}]", b.class)
}

/// Colour of true boxes (dashed) and detections (solid) on a detection picture.
const TRUTH_COLOR: &str = "#2ca02c";
const DETECTION_COLOR: &str = "#ff7f0e";

/// One detection picture as inline SVG, `scale` screen pixels per image pixel: the grey image,
/// the true boxes dashed green, the detections solid orange labelled `class score`.
fn detection_svg(p: &DetectionPicture, scale: f32) -> String {
    let (w, h) = (p.width as f32 * scale, p.height as f32 * scale);
    let mut out = format!(
        "<svg class=\"det\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\"><title>test image {}</title><image width=\"{w}\" height=\"{h}\" \
         style=\"image-rendering:pixelated\" href=\"data:image/png;base64,{}\"/>",
        p.image, p.png_base64
    );
    let rect = |b: &PictureBox, color: &str, dash: &str| {
        let [x1, y1, x2, y2] = b.bbox.map(|v| v * scale);
        format!(
            "<rect x=\"{x1:.1}\" y=\"{y1:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" \
             stroke=\"{color}\" stroke-width=\"2\"{dash}/>",
            (x2 - x1).max(0.0),
            (y2 - y1).max(0.0)
        )
    };
    for b in &p.truth {
        out.push_str(&rect(b, TRUTH_COLOR, " stroke-dasharray=\"5 3\""));
    }
    for b in &p.predicted {
        out.push_str(&rect(b, DETECTION_COLOR, ""));
        let (x, y) = (b.bbox[0] * scale + 2.0, (b.bbox[1] * scale - 3.0).max(11.0));
        let _ = write!(
            out,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"11\" fill=\"{DETECTION_COLOR}\" \
             font-family=\"sans-serif\">{} {:.2}</text>",
            b.class,
            b.score.unwrap_or(0.0)
        );
    }
    out.push_str("</svg>");
    out
}

/// Markdown rows of a model's detection pictures: image, true objects, detections.
fn detection_rows(m: &ModelReport) -> Vec<Vec<String>> {
    m.detections
        .iter()
        .map(|p| {
            let list = |v: &[PictureBox]| v.iter().map(box_text).collect::<Vec<_>>().join("; ");
            vec![p.image.to_string(), list(&p.truth), list(&p.predicted)]
        })
        .collect()
}

fn md_table(out: &mut String, header: &[String], rows: &[Vec<String>], right_from: usize) {
    let _ = writeln!(
        out,
        "| {} |",
        header.iter().map(|h| md(h)).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(
        out,
        "|{}|",
        (0..header.len())
            .map(|i| if i >= right_from { " ---: " } else { " --- " })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} |",
            r.iter().map(|c| md(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    out.push('\n');
}

fn strings<const N: usize>(a: [&str; N]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The report as Markdown: every number of the JSON in tables.
pub fn to_markdown(r: &Report) -> String {
    let mut out = format!("# {}\n\n", r.title);
    if let Some(d) = dataset_line(r) {
        let _ = writeln!(out, "{d}\n");
    }
    if let Some(c) = &r.comparison {
        let _ = writeln!(out, "## {} → {}\n", c.before, c.after);
        let rows: Vec<Vec<String>> = c.rows.iter().map(|r| row_cells(r).to_vec()).collect();
        md_table(
            &mut out,
            &strings(["measure", &c.before, &c.after, "after / before", "change"]),
            &rows,
            1,
        );
        let _ = writeln!(out, "### Layers, {} → {}\n", c.before, c.after);
        let rows: Vec<Vec<String>> = layer_comparison_cells(c)
            .into_iter()
            .map(Vec::from)
            .collect();
        md_table(
            &mut out,
            &strings([
                "node",
                "op",
                "width before",
                "width after",
                "params before",
                "params after",
                "sparsity before",
                "sparsity after",
            ]),
            &rows,
            2,
        );
    }
    for m in &r.models {
        let _ = writeln!(out, "## Model `{}`\n", m.name);
        if let Some(p) = &m.path {
            let _ = writeln!(out, "Loaded from `{p}`.\n");
        }
        let rows: Vec<Vec<String>> = summary_cells(m)
            .into_iter()
            .map(|(a, b)| vec![a, b])
            .collect();
        md_table(&mut out, &strings(["measure", "value"]), &rows, 1);
        if let Some((rows, line, h)) = gap_cells(m) {
            let _ = writeln!(out, "### Train / test\n");
            let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
            md_table(
                &mut out,
                &strings(["split", "samples", h.as_str(), "loss"]),
                &rows,
                1,
            );
            let _ = writeln!(out, "{line}\n");
        }
        if !m.samples.is_empty() {
            let _ = writeln!(out, "### Samples of `{}`\n", m.name);
            for smp in &m.samples {
                // a fence of four backticks: the text would need four in a row to close it
                let _ = writeln!(
                    out,
                    "{}:\n\n````text\n{}{}\n````\n",
                    md(&smp.sampling),
                    smp.prompt,
                    smp.text.replace("````", "` ` ` `")
                );
            }
        }
        if !m.detections.is_empty() {
            let _ = writeln!(out, "### Detections of `{}`\n", m.name);
            let _ = writeln!(
                out,
                "The first test images: objects as `class [x1, y1, x2, y2]`, detections as `class \
                 score [box]` (score >= {}); pictures in report.html.\n",
                crate::assemble::PICTURE_SCORE
            );
            md_table(
                &mut out,
                &strings(["image", "objects", "detections"]),
                &detection_rows(m),
                3,
            );
        }
        let _ = writeln!(out, "### Layers of `{}`\n", m.name);
        let rows: Vec<Vec<String>> = layer_cells(m).into_iter().map(Vec::from).collect();
        md_table(&mut out, &strings(layer_header()), &rows, 3);
    }
    if let Some(s) = &r.sensitivity {
        let _ = writeln!(
            out,
            "## Sensitivity: {} drop when one layer is pruned\n",
            s.metric
        );
        let (h, rows) = sensitivity_cells(s);
        md_table(&mut out, &h, &rows, 1);
    }
    for s in &r.sweeps {
        let _ = writeln!(out, "## Sweep: {}\n", s.label);
        let (h, rows) = sweep_cells(s);
        md_table(&mut out, &h, &rows, 0);
    }
    let _ = writeln!(out, "## Method\n\n{METHOD}");
    out
}

const CSS: &str = r#"
:root { --ink:#282c34; --muted:#5f6b7a; --line:#dde2e8; --good:#1d7a3e; --good-bg:#e3f4e8;
  --bad:#b3261e; --bad-bg:#fbe6e4; --before:#96a0af; --after:#2563b4; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--ink); margin: 0; background: #f4f6f8; line-height: 1.45; }
main { max-width: 1220px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 28px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 17px; margin: 22px 0 8px; }
p.sub { color: var(--muted); margin: 0 0 8px; }
section.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 6px 20px 18px; margin-top: 18px; }
.kpis { display: grid; grid-template-columns: repeat(auto-fit, minmax(210px, 1fr)); gap: 14px; margin: 16px 0 6px; }
.kpi { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px 16px; }
.kpi .name { font-size: 14px; color: var(--muted); }
.kpi .big { font-size: 30px; font-weight: 700; margin: 2px 0; }
.kpi .big .word { font-size: 18px; font-weight: 600; }
.models { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 18px; }
.models h2 { margin-top: 18px; }
.models > div:only-child { max-width: 820px; }
.kpi .detail { font-size: 14px; color: var(--muted); }
.kpi.good { border-color: #9fd3b0; background: var(--good-bg); } .kpi.good .big { color: var(--good); }
.kpi.bad { border-color: #efb3ad; background: var(--bad-bg); } .kpi.bad .big { color: var(--bad); }
table { border-collapse: collapse; width: 100%; font-size: 14.5px; margin: 6px 0 10px; background: #fff; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv td:first-child { width: 56%; }
table.kv td.num { white-space: normal; }
tbody tr:nth-child(even) { background: #fafbfc; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-weight: 600; }
.badge.good { color: var(--good); background: var(--good-bg); }
.badge.bad { color: var(--bad); background: var(--bad-bg); }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 14px; }
.charts.one { grid-template-columns: 1fr; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 8px; }
svg.chart { display: block; width: 100%; height: auto; }
.dets { display: flex; flex-wrap: wrap; gap: 8px; }
.legend { font-size: 14px; color: var(--muted); margin: 4px 0 8px; }
figure .legend { margin: 4px 8px 0; }
.sw { display: inline-block; width: 14px; height: 14px; border-radius: 3px; vertical-align: -2px; margin: 0 6px 0 14px; }
.legend .sw:first-child { margin-left: 0; }
code { background: #eef1f4; padding: 1px 5px; border-radius: 4px; }
.method { color: var(--muted); font-size: 14px; }
pre.sample { white-space: pre-wrap; background: #f7f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; font-size: 13.5px; }
"#;

fn html_table(out: &mut String, header: &[String], rows: &[Vec<String>], right_from: usize) {
    html_table_class(out, "", header, rows, right_from)
}

fn html_table_class(
    out: &mut String,
    class: &str,
    header: &[String],
    rows: &[Vec<String>],
    right_from: usize,
) {
    let _ = write!(out, "<table class=\"{class}\"><thead><tr>");
    for (i, h) in header.iter().enumerate() {
        let cls = if i >= right_from {
            " class=\"num\""
        } else {
            ""
        };
        let _ = write!(out, "<th{cls}>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            let cls = if i >= right_from {
                " class=\"num\""
            } else {
                ""
            };
            let _ = write!(out, "<td{cls}>{}</td>", esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>\n");
}

fn legend(items: &[(&str, RGBColor)]) -> String {
    let mut s = String::from("<div class=\"legend\">");
    for (name, c) in items {
        let _ = write!(
            s,
            "<span class=\"sw\" style=\"background:{}\"></span>{}",
            charts::css(*c),
            esc(name)
        );
    }
    s.push_str("</div>");
    s
}

fn verdict_class(r: &ComparisonRow) -> &'static str {
    match r.verdict() {
        Some(true) => "good",
        Some(false) => "bad",
        None => "",
    }
}

fn chart(e: String) -> ReportError {
    ReportError::Chart(e)
}

/// Before/after bar panels (params, MACs, batch-1 latency, accuracy).
fn comparison_charts(c: &Comparison) -> Result<String> {
    let mut out = String::from("<div class=\"charts\">");
    let mut panels: Vec<(&ComparisonRow, String, &str)> = Vec::new();
    for (measure, title, x_desc) in [
        ("params", "Parameters", "parameters"),
        ("nonzeros", "Nonzero parameters", "nonzero parameters"),
        ("MACs", "MACs per sample", "multiply-accumulates per sample"),
        ("accuracy", "Test accuracy", "accuracy (%)"),
    ] {
        if let Some(r) = c.row(measure) {
            panels.push((r, title.to_string(), x_desc));
        }
    }
    for r in c.rows.iter().filter(|r| r.unit == Unit::Milliseconds) {
        let title = r.measure.replace(" (median)", "");
        panels.push((r, capitalise(&title), "milliseconds (median)"));
    }
    for (row, title, x_desc) in panels {
        let title = title.as_str();
        let (Some(b), Some(a)) = (row.before, row.after) else {
            continue;
        };
        let headline = match (row.unit, row.ratio) {
            (Unit::Fraction, _) => format!("{title}: {}", f::pt(a - b)),
            (_, Some(r)) => format!("{title}: {} of before", f::ratio(r)),
            _ => title.to_string(),
        };
        let fmt: &dyn Fn(f64) -> String = match row.unit {
            Unit::Fraction => &|v| pct(v),
            Unit::Milliseconds => &|v| format!("{v:.3} ms"),
            _ => &|v| f::human(v),
        };
        let axis_fmt: Option<&dyn Fn(f64) -> String> = match row.unit {
            Unit::Fraction => Some(&|v| format!("{:.0}%", 100.0 * v)),
            Unit::Milliseconds => Some(&|v| format!("{v:.2}")),
            _ => None,
        };
        let bars = Bars {
            title: headline,
            categories: vec![c.before.clone(), c.after.clone()],
            series: vec![
                BarSeries {
                    color: BEFORE,
                    values: vec![Some(b), None],
                },
                BarSeries {
                    color: AFTER,
                    values: vec![None, Some(a)],
                },
            ],
            single_bar_per_band: true,
            x_desc: x_desc.to_string(),
            fmt,
            axis_fmt,
            x_max: (row.unit == Unit::Fraction).then_some(1.0),
            width: 600,
        };
        let _ = write!(out, "<figure>{}</figure>", bars.draw().map_err(chart)?);
    }
    out.push_str("</div>");
    Ok(out)
}

/// One model's layers: its name, colour, widths and sparsities.
type LayerSeries = (String, RGBColor, Vec<Option<f64>>, Vec<Option<f64>>);

/// Per-layer width and sparsity bars: before and after, or one model.
fn layer_charts(names: Vec<String>, series: Vec<LayerSeries>) -> Result<String> {
    if names.is_empty() {
        return Ok(String::new());
    }
    let items: Vec<(&str, RGBColor)> = series.iter().map(|s| (s.0.as_str(), s.1)).collect();
    let mut out = legend(&items);
    out.push_str("<div class=\"charts\">");
    let widths = Bars {
        title: "Layer widths".into(),
        categories: names.clone(),
        series: series
            .iter()
            .map(|s| BarSeries {
                color: s.1,
                values: s.2.clone(),
            })
            .collect(),
        single_bar_per_band: false,
        x_desc: "output channels / features with a nonzero weight".into(),
        fmt: &|v| format!("{v:.0}"),
        axis_fmt: None,
        x_max: None,
        width: 600,
    };
    let sparsity = Bars {
        title: "Layer sparsity".into(),
        categories: names,
        series: series
            .iter()
            .map(|s| BarSeries {
                color: s.1,
                values: s.3.clone(),
            })
            .collect(),
        single_bar_per_band: false,
        x_desc: "share of the layer's parameters that are zero (%)".into(),
        fmt: &|v| format!("{:.1}%", 100.0 * v),
        axis_fmt: Some(&|v| format!("{:.0}%", 100.0 * v)),
        x_max: Some(1.0),
        width: 600,
    };
    for b in [widths, sparsity] {
        let _ = write!(out, "<figure>{}</figure>", b.draw().map_err(chart)?);
    }
    out.push_str("</div>");
    Ok(out)
}

/// A line chart in a figure, its legend above it.
fn line_figure(l: &Lines) -> Result<String> {
    let items: Vec<(&str, RGBColor)> = l
        .lines
        .iter()
        .enumerate()
        .map(|(i, x)| (x.name.as_str(), charts::series_color(i)))
        .collect();
    Ok(format!(
        "<figure>{}{}</figure>",
        legend(&items),
        l.draw().map_err(chart)?
    ))
}

fn sensitivity_chart(s: &Sensitivity) -> Result<String> {
    let scale = if s.unit == Unit::Fraction { 100.0 } else { 1.0 };
    let lines = Lines {
        title: if s.unit == Unit::Fraction {
            format!(
                "{} drop in percentage points, one layer pruned",
                capitalise(&s.metric)
            )
        } else {
            format!("{} drop, one layer pruned", capitalise(&s.metric))
        },
        lines: s
            .curves
            .iter()
            .map(|c| Line {
                name: c.layer.clone(),
                points: c.points.iter().map(|p| (p.ratio, p.drop * scale)).collect(),
            })
            .collect(),
        x_desc: "share of the layer pruned (%)".into(),
        y_desc: if s.unit == Unit::Fraction {
            format!("{} drop (pt)", s.metric)
        } else {
            format!("{} drop", s.metric)
        },
        x_fmt: &|v| format!("{:.0}%", 100.0 * v),
        y_fmt: &|v| format!("{v:.1}"),
        y_from_zero: true,
        width: 1100,
        height: 520,
    };
    Ok(format!(
        "<div class=\"charts one\">{}</div>",
        line_figure(&lines)?
    ))
}

fn sweep_charts(sweeps: &[Sweep]) -> Result<String> {
    let Some(first) = sweeps.first() else {
        return Ok(String::new());
    };
    let frac = first.unit == Unit::Fraction;
    let scale = if frac { 100.0 } else { 1.0 };
    let metric_desc = if frac {
        format!("{} (%)", first.metric)
    } else {
        first.metric.clone()
    };
    let y_fmt: &dyn Fn(f64) -> String = &|v| format!("{v:.1}");
    let pct_fmt: &dyn Fn(f64) -> String = &|v| format!("{:.0}%", 100.0 * v);
    let mut out = String::from("<div class=\"charts\">");
    let by_sparsity = Lines {
        title: format!("{} vs sparsity", capitalise(&first.metric)),
        lines: sweeps
            .iter()
            .map(|s| Line {
                name: s.label.clone(),
                points: s
                    .points
                    .iter()
                    .map(|p| (p.sparsity, p.metric * scale))
                    .collect(),
            })
            .collect(),
        x_desc: "sparsity: share of parameters zero or removed (%)".into(),
        y_desc: metric_desc.clone(),
        x_fmt: pct_fmt,
        y_fmt,
        y_from_zero: false,
        width: 600,
        height: 440,
    };
    let by_macs = Lines {
        title: format!("{} vs MACs", capitalise(&first.metric)),
        lines: sweeps
            .iter()
            .map(|s| Line {
                name: s.label.clone(),
                points: s
                    .points
                    .iter()
                    .map(|p| (p.mac_fraction, p.metric * scale))
                    .collect(),
            })
            .collect(),
        x_desc: "MACs relative to the dense model (%)".into(),
        y_desc: metric_desc,
        x_fmt: pct_fmt,
        y_fmt,
        y_from_zero: false,
        width: 600,
        height: 440,
    };
    for l in [by_sparsity, by_macs] {
        out.push_str(&line_figure(&l)?);
    }
    let latency: Vec<Line> = sweeps
        .iter()
        .map(|s| Line {
            name: s.label.clone(),
            points: s
                .points
                .iter()
                .filter_map(|p| Some((p.macs? as f64, p.latency_ms?)))
                .collect(),
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    if !latency.is_empty() {
        let l = Lines {
            title: "Latency vs MACs".into(),
            lines: latency,
            x_desc: "MACs per sample".into(),
            y_desc: "latency (ms, median)".into(),
            x_fmt: &|v| f::human(v),
            y_fmt: &|v| format!("{v:.2}"),
            y_from_zero: true,
            width: 600,
            height: 440,
        };
        out.push_str(&line_figure(&l)?);
    }
    out.push_str("</div>");
    Ok(out)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

fn kpis(c: &Comparison) -> String {
    let mut out = String::from("<div class=\"kpis\">");
    let mut card = |name: &str, big: String, detail: String, cls: &str| {
        // "1.33× faster": the number large, the word after it smaller
        let big = match big.split_once(' ') {
            Some((num, word)) => format!("{}<span class=\"word\"> {}</span>", esc(num), esc(word)),
            None => esc(&big),
        };
        let _ = write!(
            out,
            "<div class=\"kpi {cls}\"><div class=\"name\">{}</div><div class=\"big\">{big}</div><div class=\"detail\">{}</div></div>",
            esc(name),
            esc(&detail)
        );
    };
    for r in &c.rows {
        let wanted = matches!(r.measure.as_str(), "accuracy" | "params" | "MACs")
            || r.unit == Unit::Milliseconds;
        if !wanted {
            continue;
        }
        let (Some(b), Some(a)) = (r.before, r.after) else {
            continue;
        };
        let big = match (r.unit, r.ratio) {
            (Unit::Fraction, _) => f::pt(a - b),
            (Unit::Milliseconds, Some(x)) if x > 0.0 && x <= 1.0 => {
                format!("{:.2}× faster", 1.0 / x)
            }
            (Unit::Milliseconds, Some(x)) => format!("{x:.2}× slower"),
            (_, Some(x)) => f::ratio(x),
            _ => "-".into(),
        };
        card(
            &r.measure,
            big,
            format!("{} → {}", f::value(r.unit, b), f::value(r.unit, a)),
            verdict_class(r),
        );
    }
    out.push_str("</div>");
    out
}

/// The report as one self-contained HTML page: inline CSS and inline SVG charts, no scripts, no
/// external references.
pub fn to_html(r: &Report) -> Result<String> {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title><style>{CSS}</style></head><body><main>\n<h1>{}</h1>",
        esc(&r.title),
        esc(&r.title)
    );
    if let Some(d) = dataset_line(r) {
        let _ = write!(out, "<p class=\"sub\">{}</p>", esc(&d));
    }
    if let Some(c) = &r.comparison {
        let _ = write!(
            out,
            "<h2>Before (<code>{}</code>) → after (<code>{}</code>)</h2>",
            esc(&c.before),
            esc(&c.after)
        );
        out.push_str(&kpis(c));
        out.push_str("<section class=\"card\"><h3>Every measure</h3><table><thead><tr>");
        let header = ["measure", &c.before, &c.after, "after / before", "change"];
        for (i, h) in header.iter().enumerate() {
            let cls = if i > 0 { " class=\"num\"" } else { "" };
            let _ = write!(out, "<th{cls}>{}</th>", esc(h));
        }
        out.push_str("</tr></thead><tbody>");
        for row in &c.rows {
            let cells = row_cells(row);
            let cls = verdict_class(row);
            out.push_str("<tr>");
            for (i, cell) in cells.iter().enumerate() {
                if i == 0 {
                    let _ = write!(out, "<td>{}</td>", esc(cell));
                } else if (i == 3 || i == 4) && !cls.is_empty() && cell != "-" {
                    let _ = write!(
                        out,
                        "<td class=\"num\"><span class=\"badge {cls}\">{}</span></td>",
                        esc(cell)
                    );
                } else {
                    let _ = write!(out, "<td class=\"num\">{}</td>", esc(cell));
                }
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table></section>\n");
        out.push_str(&legend(&[
            (c.before.as_str(), BEFORE),
            (c.after.as_str(), AFTER),
        ]));
        out.push_str(&comparison_charts(c)?);
        let _ = write!(
            out,
            "<h2>Layers: {} → {}</h2>",
            esc(&c.before),
            esc(&c.after)
        );
        let names = c.layers.iter().map(|l| l.node.clone()).collect();
        let w = |v: Option<usize>| v.map(|x| x as f64);
        out.push_str(&layer_charts(
            names,
            vec![
                (
                    c.before.clone(),
                    BEFORE,
                    c.layers.iter().map(|l| w(l.before_width)).collect(),
                    c.layers.iter().map(|l| l.before_sparsity).collect(),
                ),
                (
                    c.after.clone(),
                    AFTER,
                    c.layers.iter().map(|l| w(l.after_width)).collect(),
                    c.layers.iter().map(|l| l.after_sparsity).collect(),
                ),
            ],
        )?);
        let rows: Vec<Vec<String>> = layer_comparison_cells(c)
            .into_iter()
            .map(Vec::from)
            .collect();
        out.push_str("<section class=\"card\">");
        html_table(
            &mut out,
            &strings([
                "node",
                "op",
                "width before",
                "width after",
                "params before",
                "params after",
                "sparsity before",
                "sparsity after",
            ]),
            &rows,
            2,
        );
        out.push_str("</section>");
    }
    // each model's measures, side by side when there are two; then each model's layers
    out.push_str("<div class=\"models\">");
    for m in &r.models {
        let _ = write!(out, "<div><h2>Model <code>{}</code></h2>", esc(&m.name));
        if let Some(p) = &m.path {
            let _ = write!(
                out,
                "<p class=\"sub\">Loaded from <code>{}</code></p>",
                esc(p)
            );
        }
        out.push_str("<section class=\"card\"><h3>Measures</h3>");
        let rows: Vec<Vec<String>> = summary_cells(m)
            .into_iter()
            .map(|(a, b)| vec![a, b])
            .collect();
        html_table_class(&mut out, "kv", &strings(["measure", "value"]), &rows, 1);
        if let Some((rows, line, h)) = gap_cells(m) {
            out.push_str("<h3>Train / test</h3>");
            let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
            html_table(
                &mut out,
                &strings(["split", "samples", h.as_str(), "loss"]),
                &rows,
                1,
            );
            let _ = write!(out, "<p class=\"sub\">{}</p>", esc(&line));
        }
        if !m.samples.is_empty() {
            out.push_str("<h3>Samples</h3>");
            for smp in &m.samples {
                let _ = write!(
                    out,
                    "<p class=\"sub\">{}</p><pre class=\"sample\"><b>{}</b>{}</pre>",
                    esc(&smp.sampling),
                    esc(&smp.prompt),
                    esc(&smp.text)
                );
            }
        }
        if !m.detections.is_empty() {
            let _ = write!(
                out,
                "<h3>Detections</h3><p class=\"sub\">true objects dashed green, detections \
                 (score &ge; {}) orange with class and score</p><div class=\"dets\">",
                crate::assemble::PICTURE_SCORE
            );
            for p in &m.detections {
                out.push_str(&detection_svg(p, 2.0));
            }
            out.push_str("</div>");
        }
        out.push_str("</section></div>");
    }
    out.push_str("</div>\n");
    for m in &r.models {
        let _ = write!(out, "<h2>Layers of <code>{}</code></h2>", esc(&m.name));
        if r.comparison.is_none() {
            let names = m.layers.iter().map(|l| l.node.clone()).collect();
            out.push_str(&layer_charts(
                names,
                vec![(
                    m.name.clone(),
                    AFTER,
                    m.layers
                        .iter()
                        .map(|l| l.live_width.map(|x| x as f64))
                        .collect(),
                    m.layers.iter().map(|l| Some(l.sparsity)).collect(),
                )],
            )?);
        }
        out.push_str("<section class=\"card\">");
        let rows: Vec<Vec<String>> = layer_cells(m).into_iter().map(Vec::from).collect();
        html_table(&mut out, &strings(layer_header()), &rows, 3);
        out.push_str("</section>\n");
    }
    if let Some(s) = &r.sensitivity {
        let _ = write!(
            out,
            "<h2>Sensitivity: {} drop when one layer is pruned</h2>",
            esc(&s.metric)
        );
        out.push_str(&sensitivity_chart(s)?);
        let (h, rows) = sensitivity_cells(s);
        out.push_str("<section class=\"card\">");
        html_table(&mut out, &h, &rows, 1);
        out.push_str("</section>");
    }
    if !r.sweeps.is_empty() {
        out.push_str("<h2>Sweeps</h2>");
        out.push_str(&sweep_charts(&r.sweeps)?);
        for s in &r.sweeps {
            let _ = write!(out, "<section class=\"card\"><h3>{}</h3>", esc(&s.label));
            let (h, rows) = sweep_cells(s);
            html_table(&mut out, &h, &rows, 0);
            out.push_str("</section>");
        }
    }
    let _ = writeln!(
        out,
        "<h2>Method</h2><p class=\"method\">{}</p></main></body></html>",
        esc(METHOD)
    );
    Ok(out)
}
