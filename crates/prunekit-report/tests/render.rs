//! Renders a report built by hand (two models, sensitivity curves, sweeps) and checks that every
//! number reaches the Markdown and the HTML, that the HTML stands alone, and that writing is atomic.

use prunekit_measure::metrics::{
    BinaryMetrics, Classification, InferenceMemory, LayerStats, SplitEval, TopK, TrainTestGap,
};
use prunekit_measure::{Latency, Summary};
use prunekit_report::fmt::{int, ms, pct};
use prunekit_report::*;

fn latency(batch: usize, median_ms: f64) -> Latency {
    Latency {
        batch,
        warmup: 10,
        runs: 50,
        median_ms,
        p90_ms: median_ms * 1.1,
        threads: 2,
        sparse_layers: 0,
    }
}

fn layer(node: &str, op: &str, width: usize, params: usize, nonzeros: usize) -> LayerStats {
    LayerStats {
        node: node.into(),
        op: op.into(),
        output_shape: vec![width, 8, 8],
        width: Some(width),
        live_width: Some(width),
        params,
        nonzeros,
        sparsity: 1.0 - nonzeros as f64 / params as f64,
        macs: params as u64 * 64,
        effective_macs: nonzeros as u64 * 64,
    }
}

fn model(name: &str, scale: usize, acc: f64, ms_: f64) -> ModelReport {
    let layers = vec![
        layer("conv<1>", "conv2d", 16 / scale, 160 / scale, 150 / scale),
        layer("conv2", "conv2d", 32 / scale, 4640 / scale, 2000 / scale),
        layer("fc", "linear", 10, 650, 330),
    ];
    let params = layers.iter().map(|l| l.params).sum();
    let nonzeros = layers.iter().map(|l| l.nonzeros).sum();
    ModelReport {
        name: name.into(),
        path: Some(format!("/models/{name}")),
        summary: Summary {
            metrics: [
                ("accuracy".to_string(), acc),
                ("f1".to_string(), acc - 0.0123),
            ]
            .into_iter()
            .collect(),
            headline: Some("accuracy".into()),
            loss: Some(0.0454 * scale as f64),
            params,
            nonzeros,
            weight_sparsity: 1.0 - nonzeros as f64 / params as f64,
            macs: 337_536 / scale as u64,
            effective_macs: 300_001 / scale as u64,
            latency_ms: ms_,
            latency: latency(1, ms_),
            file_bytes: 157_880 / scale as u64,
            seq_len: None,
            macs_per_token: None,
        },
        layers,
        gap: Some(TrainTestGap {
            train: SplitEval {
                samples: 1438,
                metrics: [("accuracy".to_string(), 0.9993)].into_iter().collect(),
                loss: 0.0005,
            },
            test: SplitEval {
                samples: 359,
                metrics: [("accuracy".to_string(), acc)].into_iter().collect(),
                loss: 0.0454,
            },
            headline: "accuracy".into(),
            headline_gap: Some(0.9993 - acc),
            loss_gap: 0.0449,
        }),
        classification: Some(Classification {
            samples: 359,
            classes: 2,
            top_k: vec![TopK {
                k: 5,
                accuracy: 0.9972,
            }],
            binary: Some(BinaryMetrics {
                threshold: 0.5,
                tp: 170,
                fp: 3,
                tn: 180,
                fn_: 6,
                precision: Some(170.0 / 173.0),
                recall: Some(170.0 / 176.0),
                f1: None,
                roc_auc: Some(0.9876),
            }),
        }),
        latency_batch: Some(latency(32, 1.832 / scale as f64)),
        memory: Some(InferenceMemory {
            batch: 32,
            baseline_kb: 15_040,
            peak_kb: 22_724,
            delta_kb: 7_684 / scale as u64,
            hwm_reset: true,
        }),
        robustness: Some(Robustness {
            perturbation: "gaussian noise (std)".into(),
            metric: "accuracy".into(),
            points: vec![
                RobustnessPoint {
                    level: 0.1,
                    metric: Some(acc - 0.0011),
                },
                RobustnessPoint {
                    level: 0.5,
                    metric: Some(acc - 0.0789),
                },
            ],
        }),
        samples: vec![TextSample {
            prompt: "KING.\n".into(),
            text: format!("What <news> | from {name}? ```` end"),
            sampling: "48 tokens, temperature 0.8, top-k 40, seed 0".into(),
        }],
        detections: vec![DetectionPicture {
            image: 0,
            width: 4,
            height: 2,
            png_base64: "iVBORw0KGgo=".into(),
            truth: vec![PictureBox {
                class: 3,
                bbox: [0.0, 0.0, 2.0, 2.0],
                score: None,
            }],
            predicted: vec![PictureBox {
                class: 3,
                bbox: [0.5, 0.0, 2.0, 1.5],
                score: Some(0.875 / scale as f32),
            }],
        }],
    }
}

fn sample() -> Report {
    let before = model("dense", 1, 0.9889, 0.123);
    let after = model("pruned & <masked>", 2, 0.9861, 0.093);
    let comparison = Comparison::new(&before, &after);
    let curve = |layer: &str, k: f64| SensitivityCurve {
        layer: layer.into(),
        points: [0.0, 0.25, 0.5, 0.75, 0.9]
            .iter()
            .map(|&r| SensitivityPoint {
                ratio: r,
                drop: k * r * r,
            })
            .collect(),
    };
    let sweep = |label: &str, k: f64| Sweep {
        label: label.into(),
        metric: "accuracy".into(),
        unit: Unit::Fraction,
        points: [0.0, 0.5, 0.75, 0.9, 0.95]
            .iter()
            .map(|&s| SweepPoint {
                sparsity: s,
                mac_fraction: 1.0 - k * s,
                metric: 0.99 - 0.3 * s.powi(4),
                macs: Some((337_536.0 * (1.0 - k * s)) as u64),
                latency_ms: Some(0.12 * (1.0 - 0.6 * k * s)),
            })
            .collect(),
    };
    Report {
        title: "Pruning report: dense → pruned".into(),
        dataset: Some(DatasetInfo {
            name: "digits".into(),
            train_samples: 1438,
            test_samples: 359,
            sample_shape: vec![1, 8, 8],
            classes: 10,
            task: Some("classification".into()),
            headline: Some("accuracy".into()),
        }),
        models: vec![before, after],
        comparison: Some(comparison),
        sensitivity: Some(Sensitivity {
            metric: "accuracy".into(),
            unit: Unit::Fraction,
            curves: vec![
                curve("conv<1>", 0.3),
                curve("conv2", 0.1),
                curve("fc", 0.02),
            ],
        }),
        sweeps: vec![sweep("global magnitude", 0.0), sweep("structured L1", 0.9)],
    }
}

#[test]
fn json_round_trips() {
    let r = sample();
    let back: Report = serde_json::from_str(&to_json(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}

/// The numbers of report.json, as the renderers write them.
fn expected_strings(r: &Report) -> Vec<String> {
    let mut want = Vec::new();
    for m in &r.models {
        let s = &m.summary;
        want.push(pct(s.accuracy().unwrap()));
        want.push(pct(s.metrics["f1"]));
        want.push(format!("{:.4}", s.loss.unwrap()));
        want.push(int(s.params as u64));
        want.push(int(s.nonzeros as u64));
        want.push(int(s.macs));
        want.push(int(s.effective_macs));
        want.push(ms(s.latency.median_ms));
        want.push(ms(s.latency.p90_ms));
        want.push(int(s.file_bytes));
        let lb = m.latency_batch.unwrap();
        want.push(ms(lb.median_ms));
        want.push(format!("batch {}", lb.batch));
        want.push(format!("{} threads", lb.threads));
        let mem = m.memory.unwrap();
        want.push(int(mem.delta_kb));
        want.push(int(mem.peak_kb));
        for p in &m.robustness.as_ref().unwrap().points {
            want.push(format!("{}: {}", p.level, pct(p.metric.unwrap())));
        }
        let gap = m.gap.as_ref().unwrap();
        want.push(pct(gap.train.metrics["accuracy"]));
        want.push(format!("{:.4}", gap.train.loss));
        let c = m.classification.as_ref().unwrap();
        let b = c.binary.unwrap();
        want.push(format!("{} / {} / {} / {}", b.tp, b.fp, b.tn, b.fn_));
        for l in &m.layers {
            want.push(int(l.params as u64));
            want.push(int(l.nonzeros as u64));
            want.push(pct(l.sparsity));
            want.push(int(l.macs));
            want.push(int(l.effective_macs));
        }
    }
    for row in &r.comparison.as_ref().unwrap().rows {
        if let Some(x) = row.ratio.filter(|_| row.unit != Unit::Fraction) {
            want.push(prunekit_report::fmt::ratio(x));
        }
    }
    for c in &r.sensitivity.as_ref().unwrap().curves {
        for p in &c.points {
            want.push(format!("{:.2} pt", 100.0 * p.drop));
        }
    }
    for s in &r.sweeps {
        for p in &s.points {
            want.push(pct(p.metric));
            want.push(pct(p.mac_fraction));
            want.push(ms(p.latency_ms.unwrap()));
        }
    }
    want
}

#[test]
fn every_number_reaches_markdown_and_html() {
    let r = sample();
    let (md, html) = (to_markdown(&r), to_html(&r).unwrap());
    for s in expected_strings(&r) {
        assert!(md.contains(&s), "markdown lacks {s}");
        assert!(html.contains(&esc(&s)), "html lacks {s}");
    }
    // an undefined metric is shown as "-", never NaN
    assert!(!md.contains("NaN") && !html.contains("NaN"));
}

#[test]
fn html_stands_alone_and_escapes() {
    let html = to_html(&sample()).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("src="));
    assert!(html.contains("<style>"));
    // before/after panels, layer widths and sparsity, sensitivity, three sweep charts
    assert!(
        html.matches("<svg").count() >= 6 + 2 + 1 + 3,
        "too few charts"
    );
    assert!(html.contains("pruned &amp; &lt;masked&gt;"));
    assert!(!html.contains("<masked>"));
    assert!(html.contains("Sensitivity") && html.contains("Latency vs MACs"));
}

#[test]
fn one_model_renders_without_comparison() {
    let mut r = sample();
    r.models.truncate(1);
    r.comparison = None;
    r.sensitivity = None;
    r.sweeps.clear();
    let html = to_html(&r).unwrap();
    assert!(html.contains("Layer widths") && !html.contains("after / before"));
    assert!(to_markdown(&r).contains(&int(r.models[0].summary.params as u64)));
}

#[test]
fn comparison_ratios_and_verdicts() {
    let r = sample();
    let c = r.comparison.as_ref().unwrap();
    let params = c.row("params").unwrap();
    let (b, a) = (&r.models[0].summary, &r.models[1].summary);
    assert_eq!(params.ratio, Some(a.params as f64 / b.params as f64));
    assert_eq!(params.verdict(), Some(true)); // fewer is better
    let acc = c.row("accuracy").unwrap();
    assert_eq!(acc.verdict(), Some(false)); // -0.28 pt
    assert!((acc.change.unwrap() - (0.9861 - 0.9889)).abs() < 1e-12);
    assert!(c.row("latency, batch 32 (median)").is_some());
    // layers matched by name
    assert_eq!(c.layers.len(), 3);
    assert_eq!(c.layers[0].before_width, Some(16));
    assert_eq!(c.layers[0].after_width, Some(8));
}

#[test]
fn writes_three_files_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/report");
    let files = write_report(&out, &sample()).unwrap();
    for p in [&files.markdown, &files.html, &files.json] {
        assert!(p.is_file(), "{} missing", p.display());
    }
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "left-over files: {names:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
    assert_eq!(json["models"][0]["summary"]["params"], 5450);

    // a file where the directory should be: a clear error, nothing written
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = write_report(&file, &sample()).unwrap_err().to_string();
    assert!(e.contains("not a directory"), "{e}");
    let e = write_report(&file.join("sub"), &sample())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot write the report"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn a_sequence_model_states_macs_per_token_and_tokens_per_batch() {
    let mut b = model("dense", 1, 0.95, 1.0);
    let mut a = model("pruned", 2, 0.94, 0.5);
    for m in [&mut b, &mut a] {
        m.summary.seq_len = Some(128);
        m.summary.macs_per_token = Some(m.summary.macs as f64 / 128.0);
    }
    let c = Comparison::new(&b, &a);
    let row = c
        .row("MACs per token (sequence length 128)")
        .expect("a per-token row");
    assert_eq!(row.before, Some(337_536.0 / 128.0));
    assert!(c.row("latency, batch 1 × 128 tokens (median)").is_some());
    let r = Report {
        models: vec![b, a],
        comparison: Some(c),
        ..sample()
    };
    let md = to_markdown(&r);
    assert!(md.contains("MACs per token (sequence length 128)"), "{md}");
    assert!(md.contains("batch 1 × 128 tokens"), "{md}");
    // other models have neither
    assert!(!to_markdown(&sample()).contains("per token"));
}

#[test]
fn detection_pictures_are_drawn_in_the_html_and_listed_in_the_markdown() {
    let r = sample();
    let md = to_markdown(&r);
    assert!(md.contains("### Detections of `dense`"), "{md}");
    assert!(
        md.contains("| 0 | 3 [0, 0, 2, 2] | 3 0.88 [0, 0, 2, 2] |"),
        "{md}"
    );
    assert!(md.contains("3 0.44 [0, 0, 2, 2]"), "{md}");
    let html = to_html(&r).unwrap();
    assert!(html.contains("<h3>Detections</h3>"));
    // scaled 2x: the true box 4x4 dashed, the detection at (1, 0) 3x3 with its label
    assert!(html.contains("<rect x=\"0.0\" y=\"0.0\" width=\"4.0\" height=\"4.0\" fill=\"none\" stroke=\"#2ca02c\" stroke-width=\"2\" stroke-dasharray=\"5 3\"/>"), "{html}");
    assert!(html.contains("<rect x=\"1.0\" y=\"0.0\" width=\"3.0\" height=\"3.0\""));
    assert!(html.contains(">3 0.88</text>") && html.contains("data:image/png;base64,iVBORw0KGgo="));
    let back: Report = serde_json::from_str(&to_json(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn generated_samples_are_shown_escaped() {
    let r = sample();
    let md = to_markdown(&r);
    assert!(md.contains("### Samples of `dense`"), "{md}");
    assert!(
        md.contains("````text\nKING.\nWhat <news> | from dense? ` ` ` ` end\n````"),
        "{md}"
    );
    let html = to_html(&r).unwrap();
    assert!(
        html.contains("<pre class=\"sample\"><b>KING.\n</b>What &lt;news&gt; | from pruned &amp; &lt;masked&gt;? ```` end</pre>"),
        "samples escaped in the HTML"
    );
    let back: Report = serde_json::from_str(&to_json(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}
