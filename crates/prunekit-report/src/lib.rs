//! Before/after reports of pruned models.
//!
//! A [`Report`] holds every number measured (one model, or two with their [`Comparison`], plus
//! sensitivity curves and sweeps when other passes produce them). It renders as Markdown
//! ([`to_markdown`]), one self-contained HTML page with inline CSS and SVG charts drawn with plotters
//! ([`to_html`]), and JSON ([`to_json`]); [`write_report`] writes the three files atomically.

pub mod assemble;
mod charts;
pub mod fmt;
pub mod model;
mod render;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use assemble::{add_recalibration_rows, build_report, model_report, ModelToReport};
pub use model::{
    Comparison, ComparisonRow, DatasetInfo, DetectionPicture, LayerComparison, ModelReport,
    PictureBox, Report, Robustness, RobustnessPoint, Sensitivity, SensitivityCurve,
    SensitivityPoint, Sweep, SweepPoint, TextSample, Unit,
};
pub use render::{esc, row_cells, summary_cells, to_html, to_markdown};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write the report to {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} exists and is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("cannot draw a chart: {0}")]
    Chart(String),
    #[error("cannot draw a detection picture: {0}")]
    Picture(String),
    #[error(transparent)]
    Measure(#[from] prunekit_measure::MeasureError),
    #[error(transparent)]
    Data(#[from] prunekit_data::DataError),
}

pub type Result<T> = std::result::Result<T, ReportError>;

/// The report as pretty-printed JSON.
pub fn to_json(r: &Report) -> Result<String> {
    Ok(serde_json::to_string_pretty(r)?)
}

/// The files [`write_report`] wrote.
#[derive(Clone, Debug)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub json: PathBuf,
}

const NAMES: [&str; 3] = ["report.md", "report.html", "report.json"];

/// Writes report.md, report.html and report.json into `dir` (created if missing). Everything is
/// rendered first, then each file is written to a temporary name in `dir` and synced; only when all
/// three are complete are they renamed into place. On any error the temporary files are removed and
/// no report file has been touched.
pub fn write_report(dir: &Path, r: &Report) -> Result<ReportFiles> {
    let contents = [to_markdown(r), to_html(r)?, to_json(r)?];
    if dir.exists() && !dir.is_dir() {
        return Err(ReportError::NotADirectory(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let pid = std::process::id();
    let temps: Vec<PathBuf> = NAMES
        .iter()
        .map(|n| dir.join(format!(".{n}.{pid}.tmp")))
        .collect();
    let cleanup = |temps: &[PathBuf]| {
        for t in temps {
            let _ = std::fs::remove_file(t);
        }
    };
    for (tmp, text) in temps.iter().zip(&contents) {
        let written = std::fs::File::create(tmp).and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
        if let Err(source) = written {
            cleanup(&temps);
            return Err(ReportError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    let finals: Vec<PathBuf> = NAMES.iter().map(|n| dir.join(n)).collect();
    for (i, (tmp, fin)) in temps.iter().zip(&finals).enumerate() {
        if let Err(source) = std::fs::rename(tmp, fin) {
            cleanup(&temps[i..]);
            return Err(ReportError::Io {
                path: fin.clone(),
                source,
            });
        }
    }
    Ok(ReportFiles {
        markdown: finals[0].clone(),
        html: finals[1].clone(),
        json: finals[2].clone(),
    })
}
