//! NumPy `.npy` arrays (through the npyz crate): model inputs in, model outputs out, so any tool
//! can compare its outputs with prunekit's (`prunekit predict MODEL --input X.npy -o Y.npy`).
//!
//! Arrays are read in C order; float arrays (f32, f64, f16 not supported) become f32 tensors and
//! integer arrays (any width, signed or not) become u32 id tensors. Shapes include the batch axis.

use std::io::BufReader;
use std::path::Path;

use candle_core::{Device, Tensor};
use npyz::{TypeChar, WriterBuilder};

use crate::error::{IoError, Result};

/// The most elements one array may declare: 2^31 (as every tensor of a graph).
pub const MAX_ELEMENTS: u64 = 1 << 31;

/// Reads a `.npy` file: an f32 tensor for float arrays, u32 for integer arrays (ids).
///
/// Errors (each names the file): not a .npy file; Fortran order; a dtype other than float 4/8 or
/// integer 1/2/4/8 bytes; a declared size beyond [`MAX_ELEMENTS`] or beyond what the file holds
/// (checked before allocating); an integer outside 0..2^32.
pub fn read(path: &Path, device: &Device) -> Result<Tensor> {
    let len = std::fs::metadata(path)
        .map_err(|e| IoError::io(path, e))?
        .len();
    check_header_length(path, len)?;
    let f = std::fs::File::open(path).map_err(|e| IoError::io(path, e))?;
    let npy = npyz::NpyFile::new(BufReader::new(f))
        .map_err(|e| IoError::file(path, format!("not a NumPy .npy file: {e}")))?;
    if npy.order() != npyz::Order::C {
        return Err(IoError::file(
            path,
            "the array is in Fortran order; save it in C order (np.ascontiguousarray)",
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let count = npy
        .shape()
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| {
            IoError::file(
                path,
                format!("shape {shape:?} declares more than 2^31 elements"),
            )
        })?;
    let npyz::DType::Plain(ts) = npy.dtype() else {
        return Err(IoError::file(
            path,
            "a structured (record) array; save a plain numeric array",
        ));
    };
    let width = ts.size_field();
    if count.saturating_mul(width) > len {
        return Err(IoError::file(
            path,
            format!(
                "shape {shape:?} of {width}-byte values needs {} bytes, the file has {len}",
                count * width
            ),
        ));
    }
    let bad = |e: std::io::Error| IoError::file(path, format!("truncated or corrupt data: {e}"));
    match (ts.type_char(), width) {
        (TypeChar::Float, 4) => {
            let v: Vec<f32> = npy.into_vec().map_err(bad)?;
            Ok(Tensor::from_vec(v, shape, device)?)
        }
        (TypeChar::Float, 8) => {
            let v: Vec<f64> = npy.into_vec().map_err(bad)?;
            let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
            Ok(Tensor::from_vec(v, shape, device)?)
        }
        (TypeChar::Int | TypeChar::Uint, 1 | 2 | 4 | 8) => {
            let v: Vec<i128> = match (ts.type_char(), width) {
                (TypeChar::Int, 1) => widen(npy.into_vec::<i8>().map_err(bad)?),
                (TypeChar::Int, 2) => widen(npy.into_vec::<i16>().map_err(bad)?),
                (TypeChar::Int, 4) => widen(npy.into_vec::<i32>().map_err(bad)?),
                (TypeChar::Int, _) => widen(npy.into_vec::<i64>().map_err(bad)?),
                (_, 1) => widen(npy.into_vec::<u8>().map_err(bad)?),
                (_, 2) => widen(npy.into_vec::<u16>().map_err(bad)?),
                (_, 4) => widen(npy.into_vec::<u32>().map_err(bad)?),
                _ => widen(npy.into_vec::<u64>().map_err(bad)?),
            };
            let ids = v
                .iter()
                .map(|&x| u32::try_from(x).ok())
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| {
                    let first = v.iter().find(|&&x| u32::try_from(x).is_err());
                    IoError::file(
                        path,
                        format!(
                            "integer {} is not an id (0 to 2^32 - 1)",
                            first.copied().unwrap_or_default()
                        ),
                    )
                })?;
            Ok(Tensor::from_vec(ids, shape, device)?)
        }
        (c, w) => Err(IoError::file(
            path,
            format!(
                "dtype {c:?} of {w} bytes is not read; save float32, float64 or an integer array"
            ),
        )),
    }
}

/// The header's declared length must fit in the file (and 1 MiB) before npyz reads it: npyz
/// allocates what the header declares.
fn check_header_length(path: &Path, len: u64) -> Result<()> {
    let mut head = [0u8; 12];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| IoError::io(path, e))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]).map_err(|e| IoError::io(path, e))? {
                0 => break,
                k => n += k,
            }
        }
        n
    };
    if n < 10 || &head[..6] != b"\x93NUMPY" {
        return Err(IoError::file(
            path,
            "not a NumPy .npy file (no \\x93NUMPY magic)",
        ));
    }
    let (declared, prefix) = match head[6] {
        1 => (u64::from(u16::from_le_bytes([head[8], head[9]])), 10),
        2 | 3 if n >= 12 => (
            u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]])),
            12,
        ),
        v => {
            return Err(IoError::file(
                path,
                format!("not a NumPy .npy file (format version {v})"),
            ))
        }
    };
    if declared > (1 << 20) || prefix + declared > len {
        return Err(IoError::file(
            path,
            format!("the header declares {declared} bytes, the file has {len}"),
        ));
    }
    Ok(())
}

fn widen<T: Into<i128>>(v: Vec<T>) -> Vec<i128> {
    v.into_iter().map(Into::into).collect()
}

/// Writes `t` (any float or integer dtype; written as little-endian f32) to `path`, atomically.
///
/// Errors: the tensor cannot be converted; the file cannot be written.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let v = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let shape: Vec<u64> = t.dims().iter().map(|&d| d as u64).collect();
    let mut bytes = Vec::new();
    {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut bytes)
            .begin_nd()
            .map_err(|e| IoError::io(path, e))?;
        w.extend(v).map_err(|e| IoError::io(path, e))?;
        w.finish().map_err(|e| IoError::io(path, e))?;
    }
    crate::native::atomic_write(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of an int64 .npy array.
    fn int64_npy(ids: Vec<i64>, shape: &[u64]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(&mut bytes)
            .begin_nd()
            .unwrap();
        w.extend(ids).unwrap();
        w.finish().unwrap();
        bytes
    }

    #[test]
    fn f32_round_trip_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let t = Tensor::new(&[[1.5f32, -2.0, 3.25], [0.0, 4.0, 5.0]], &Device::Cpu).unwrap();
        write(&p, &t).unwrap();
        let back = read(&p, &Device::Cpu).unwrap();
        assert_eq!(back.dims(), &[2, 3]);
        assert_eq!(back.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
        // an int64 array written by hand (numpy's header layout) reads as u32 ids
        std::fs::write(&p, int64_npy(vec![3, 0, 7], &[1, 3])).unwrap();
        let back = read(&p, &Device::Cpu).unwrap();
        assert_eq!(back.dtype(), candle_core::DType::U32);
        assert_eq!(back.to_vec2::<u32>().unwrap(), vec![vec![3, 0, 7]]);
    }

    #[test]
    fn bad_arrays_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.npy");
        std::fs::write(&p, b"not numpy at all").unwrap();
        let e = read(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("bad.npy") && e.contains("not a NumPy"), "{e}");
        // a header that declares far more data than the file holds: an error before allocating
        let t = Tensor::zeros((9999, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        write(&p, &t).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(200);
        std::fs::write(&p, &bytes).unwrap();
        let e = read(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("bad.npy") && e.contains("the file has 200"),
            "{e}"
        );
        std::fs::write(&p, int64_npy(vec![-1], &[1])).unwrap();
        let e = read(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("-1") && e.contains("not an id"), "{e}");
    }
}
