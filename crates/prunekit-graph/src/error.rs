//! Errors of the graph crate: every variant names what it is about (a node, a file, a parameter).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("node `{node}` ({op}): {msg}")]
    Shape {
        node: String,
        op: String,
        msg: String,
    },
    #[error("node `{node}`: input `{input}` is not defined before it")]
    UnknownInput { node: String, input: String },
    #[error("duplicate value name `{0}`")]
    DuplicateName(String),
    #[error("invalid name `{0}`: use letters, digits, `_`, `-` or `/` (no dots)")]
    InvalidName(String),
    #[error("unknown node `{0}`")]
    UnknownNode(String),
    #[error("graph output `{0}` is not a node or input of the graph")]
    UnknownOutput(String),
    #[error("node `{node}`: parameter `{param}`: {msg}")]
    Param {
        node: String,
        param: String,
        msg: String,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model input `{name}`: {msg}")]
    Input { name: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("node `{node}` ({op}): {source}")]
    Forward {
        node: String,
        op: String,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error(transparent)]
    Candle(Box<candle_core::Error>),
}

impl From<candle_core::Error> for GraphError {
    fn from(e: candle_core::Error) -> Self {
        GraphError::Candle(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, GraphError>;

impl GraphError {
    pub fn shape(node: &str, op: &str, msg: impl Into<String>) -> Self {
        GraphError::Shape {
            node: node.to_string(),
            op: op.to_string(),
            msg: msg.into(),
        }
    }
    pub fn param(node: &str, param: &str, msg: impl Into<String>) -> Self {
        GraphError::Param {
            node: node.to_string(),
            param: param.to_string(),
            msg: msg.into(),
        }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        GraphError::File {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GraphError::Io {
            path: path.into(),
            source,
        }
    }
}
