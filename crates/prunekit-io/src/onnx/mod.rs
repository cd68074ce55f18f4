//! ONNX in and out: [`load`] reads opsets 9-18 into a `Graph` ([`import`]), [`save`] writes
//! opset 17 ([`export`]). The protobuf messages are prost messages of the official
//! `onnx.proto` ([`proto`]).

pub mod export;
pub mod import;
pub mod proto;

pub use export::{save, to_model, IR_VERSION, OPSET};
pub use import::{import_model, load, looks_like_onnx, unsupported_nodes, OPSETS, SUPPORTED};

/// Reads and decodes an ONNX file without importing it (for `prunekit info`).
///
/// Errors: the file cannot be read, is over 2 GiB, or is not a valid ONNX protobuf.
pub fn read(path: &std::path::Path) -> crate::Result<proto::ModelProto> {
    import::read_model(path)
}

/// Gate blocks of a recurrent weight, bias or state as ONNX stacks them, in PyTorch's (and
/// prunekit's) order: `LSTM_FROM_ONNX[k]` is the ONNX block that holds PyTorch's block k
/// (ONNX LSTM i o f c -> PyTorch i f g o; GRU z r h -> r z n).
pub(crate) const LSTM_FROM_ONNX: [usize; 4] = [0, 2, 3, 1];
/// PyTorch's LSTM blocks i f g o in ONNX's order i o f c.
pub(crate) const LSTM_TO_ONNX: [usize; 4] = [0, 3, 1, 2];
/// GRU blocks: r z n <-> z r h (the same swap both ways).
pub(crate) const GRU_SWAP: [usize; 3] = [1, 0, 2];

/// The blocks of `v` (each `per` values) in the order `order` names them.
pub(crate) fn reorder_blocks(v: &[f32], order: &[usize], per: usize) -> Vec<f32> {
    order
        .iter()
        .flat_map(|&g| v[g * per..(g + 1) * per].to_vec())
        .collect()
}
