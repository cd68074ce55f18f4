//! Errors of model files: each names the file and, where there is one, the node, tensor or
//! parameter, and the problem.

use std::path::{Path, PathBuf};

use prunekit_graph::GraphError;

/// A node of a file that no importer supports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedNode {
    /// the node's name in the file (may be empty)
    pub node: String,
    /// its `op_type` (ONNX) or class
    pub op_type: String,
    /// the domain and opset version it was written for
    pub opset: String,
}

impl std::fmt::Display for UnsupportedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (node `{}`, opset {})",
            self.op_type, self.node, self.opset
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The file as a whole is wrong (truncated, wrong magic, a missing tensor, ...).
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// One node of the file cannot be imported.
    #[error("{path}: node `{node}` ({op_type}): {msg}")]
    Node {
        path: PathBuf,
        node: String,
        op_type: String,
        msg: String,
    },
    /// Nodes whose op no importer supports: every one of them, not only the first.
    #[error("{path}: {} unsupported node(s): {}", .nodes.len(), list(.nodes))]
    Unsupported {
        path: PathBuf,
        nodes: Vec<UnsupportedNode>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Graph(#[from] GraphError),
}

fn list(nodes: &[UnsupportedNode]) -> String {
    nodes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<candle_core::Error> for IoError {
    fn from(e: candle_core::Error) -> Self {
        IoError::Graph(GraphError::from(e))
    }
}

impl IoError {
    pub fn file(path: &Path, msg: impl Into<String>) -> Self {
        IoError::File {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        IoError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The first line of an error's text: candle appends a backtrace when RUST_BACKTRACE is set, and
/// every error of this crate is one line.
pub(crate) fn one_line(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or("").trim_end().to_string()
}

pub type Result<T> = std::result::Result<T, IoError>;
