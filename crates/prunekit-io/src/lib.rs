//! Model files in and out. Each format is one module that turns a file into the same
//! [`prunekit_graph::Graph`] and back:
//!
//! | module | reads | writes |
//! | --- | --- | --- |
//! | [`native`] | our directory (`model.json` + `model.safetensors`, masks kept; versions 1 and 2) | the same, masked weights compressed ([`sparse`]) |
//! | [`onnx`] | `.onnx` (opsets 9-18; prost over the messages of `onnx.proto`) | `.onnx`, opset 17, IR 8 |
//! | [`pytorch`] | zip checkpoints (`torch.save` since 1.6) and safetensors state dicts, given the architecture | `.pt` and `.safetensors` state dicts with the pruned shapes |
//! | [`hf`] | Hugging Face directories (`config.json` + safetensors / `pytorch_model.bin` + tokenizer): BERT, Llama, Mistral, Qwen2 | the same directory layout, with the pruned widths ([`hf::save_dir`]) |
//! | [`gguf`] | GGUF files of Llama-family decoders (dequantised to f32; tokenizer from the metadata) | (as a Hugging Face directory) |
//! | [`npy`] | NumPy `.npy` arrays (model inputs) | `.npy` (model outputs) |
//!
//! [`detect`] picks the format from a file's content (magic bytes, the zip's entries, the
//! protobuf's structure), not its extension; [`load`] and [`save`] dispatch on it.

pub mod error;
pub mod fuzz;
pub mod gguf;
pub mod hf;
pub mod native;
pub mod npy;
pub mod onnx;
pub mod pytorch;
pub mod sparse;

use std::io::Read;
use std::path::Path;

use candle_core::Device;
use prunekit_graph::Graph;

pub use error::{IoError, Result, UnsupportedNode};

/// A model file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// our directory format ([`native`])
    Native,
    /// an ONNX protobuf ([`onnx`])
    Onnx,
    /// a PyTorch zip checkpoint (`torch.save`, a state dict) ([`pytorch`])
    PyTorch,
    /// a safetensors file (a state dict) ([`pytorch`])
    Safetensors,
    /// a GGUF file (llama.cpp) ([`gguf`])
    Gguf,
    /// a Hugging Face model directory (`config.json` + weights) ([`hf`])
    HuggingFace,
    /// a pickle written by `torch.save` before 1.6 (not a zip)
    LegacyPickle,
}

impl Format {
    /// The format's name as the CLI prints it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Native => "prunekit",
            Format::Onnx => "onnx",
            Format::PyTorch => "pytorch",
            Format::Safetensors => "safetensors",
            Format::Gguf => "gguf",
            Format::HuggingFace => "huggingface",
            Format::LegacyPickle => "legacy-pickle",
        }
    }

    /// Whether the file holds the architecture as well as the weights (a state dict does not).
    pub fn has_architecture(self) -> bool {
        matches!(self, Format::Native | Format::Onnx)
    }

    /// The format an output path asks for by its extension: `.onnx`, `.safetensors`, `.pt` /
    /// `.pth` / `.bin`; anything else (a directory) is ours.
    pub fn for_output(path: &Path) -> Format {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("onnx") => Format::Onnx,
            Some("safetensors") => Format::Safetensors,
            Some("pt" | "pth" | "bin") => Format::PyTorch,
            _ => Format::Native,
        }
    }
}

/// The format of the file or directory at `path`, from its content.
///
/// Errors: the path does not exist or cannot be read; the content is none of the formats (the
/// message says what the first bytes were).
pub fn detect(path: &Path) -> Result<Format> {
    let meta = std::fs::metadata(path).map_err(|e| IoError::io(path, e))?;
    if meta.is_dir() {
        if path.join(native::STRUCTURE_FILE).is_file() {
            return Ok(Format::Native);
        }
        if path.join("config.json").is_file() {
            return Ok(Format::HuggingFace);
        }
        return Err(IoError::file(
            path,
            format!(
                "a directory without {} (our format) or config.json (Hugging Face)",
                native::STRUCTURE_FILE
            ),
        ));
    }
    if path
        .file_name()
        .is_some_and(|f| f == native::STRUCTURE_FILE)
    {
        return Ok(Format::Native);
    }
    let mut head = [0u8; 16];
    let n = {
        let mut f = std::fs::File::open(path).map_err(|e| IoError::io(path, e))?;
        read_up_to(&mut f, &mut head).map_err(|e| IoError::io(path, e))?
    };
    let head = &head[..n];
    if n == 0 {
        return Err(IoError::file(path, "the file is empty"));
    }
    if head.starts_with(b"PK\x03\x04") {
        return Ok(Format::PyTorch);
    }
    if head.starts_with(b"GGUF") {
        return Ok(Format::Gguf);
    }
    if head.starts_with(b"\x93NUMPY") {
        return Err(IoError::file(
            path,
            "a NumPy array (.npy), not a model; give it with --input",
        ));
    }
    if n >= 9 && head[8] == b'{' {
        let header = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        if header > 1 && header < meta.len() {
            return Ok(Format::Safetensors);
        }
    }
    // torch.save before 1.6: a pickle (protocol 2: 0x80 0x02) starting with the magic number
    if head.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        return Ok(Format::LegacyPickle);
    }
    if onnx::looks_like_onnx(path, meta.len())? {
        return Ok(Format::Onnx);
    }
    Err(IoError::file(
        path,
        format!(
            "unknown model format (first bytes {:02x?}); prunekit reads its own directories, ONNX, PyTorch zip checkpoints and safetensors",
            &head[..n.min(8)]
        ),
    ))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Loads a model whose file carries its architecture (ours or ONNX), picking the format from
/// the content.
///
/// Errors: the format's own (each names the file and the node or tensor); a state dict
/// (PyTorch, safetensors), which needs an architecture ([`pytorch::load_state_dict`]); a format
/// not read yet (GGUF, Hugging Face); a legacy pickle (the message says how to convert it).
pub fn load(path: &Path, device: &Device) -> Result<Graph> {
    load_with(path, device, &hf::HfOptions::default())
}

/// [`load`] with the options of Transformer files (the sequence length of a Hugging Face
/// directory or GGUF file; other formats carry their shapes).
///
/// Errors: those of [`load`].
pub fn load_with(path: &Path, device: &Device, opts: &hf::HfOptions) -> Result<Graph> {
    match detect(path)? {
        Format::Native => Ok(native::load(path, device)?),
        Format::Onnx => onnx::load(path, device),
        f @ (Format::PyTorch | Format::Safetensors) => Err(IoError::file(
            path,
            format!(
                "a {} state dict holds weights but no architecture: give the architecture (`--arch NAME` with a zoo architecture, or `--arch MODEL.onnx`)",
                f.name()
            ),
        )),
        Format::LegacyPickle => Err(pytorch::legacy_pickle_error(path)),
        Format::Gguf => gguf::load(path, device, opts),
        Format::HuggingFace => hf::load_dir(path, device, opts),
    }
}

/// Saves `g` in the format `out`'s extension names ([`Format::for_output`]); refuses to write
/// over `protect` (the input model). Every file is written to a temporary name and renamed.
///
/// Errors: the format's own; `out` is the input model.
pub fn save(g: &Graph, out: &Path, protect: Option<&Path>) -> Result<Format> {
    if let Some(p) = protect {
        if same_file(p, out) {
            return Err(IoError::file(
                out,
                "refusing to overwrite the input model; choose another output path",
            ));
        }
    }
    let f = Format::for_output(out);
    match f {
        Format::Native => native::save(g, out)?,
        Format::Onnx => onnx::save(g, out)?,
        Format::Safetensors => pytorch::save_safetensors(g, out)?,
        Format::PyTorch => pytorch::save_pt(g, out)?,
        _ => unreachable!("for_output names only writable formats"),
    }
    Ok(f)
}

/// Whether two paths name the same model (a directory or a file; either may name a model.json).
pub fn same_file(a: &Path, b: &Path) -> bool {
    native::same_model(a, b)
}

/// Size in bytes of a saved model: a file's length, or the files of our directory.
///
/// Errors: the path cannot be read.
pub fn model_size(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| IoError::io(path, e))?;
    if meta.is_dir() {
        Ok(native::model_size(path)?)
    } else {
        Ok(meta.len())
    }
}
