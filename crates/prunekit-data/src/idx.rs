//! Reader for the idx-ubyte format (LeCun's MNIST container), raw or gzip-compressed.

use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// idx element type code for unsigned bytes.
const IDX_U8: u8 = 0x08;

/// Reads an idx file of unsigned bytes, returning its dimensions and its data
/// (row-major, `dims.iter().product()` bytes).
///
/// The file may be gzip-compressed; compression is detected by the gzip magic
/// bytes `1f 8b`, not by the file name. Errors name the file and say what is
/// wrong: missing file, corrupt gzip, bad magic number, unsupported element
/// type, truncation, or trailing garbage.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::with_capacity(raw.len().saturating_mul(4));
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::UnexpectedEof {
                    DataError::Truncated {
                        path: path.to_path_buf(),
                    }
                } else {
                    DataError::BadGzip {
                        path: path.to_path_buf(),
                        source,
                    }
                }
            })?;
        out
    } else {
        raw
    };
    parse_idx(path, bytes)
}

/// Parses the decompressed content of an idx file (see [`read_idx`]).
pub(crate) fn parse_idx(path: &Path, mut bytes: Vec<u8>) -> Result<(Vec<usize>, Vec<u8>)> {
    let truncated = || DataError::Truncated {
        path: path.to_path_buf(),
    };
    if bytes.len() < 4 {
        // Too short even for the magic number: if what there is already
        // disagrees with a magic number, say so; otherwise it is truncated.
        if bytes.iter().take(2).any(|&b| b != 0) {
            return Err(DataError::BadMagic {
                path: path.to_path_buf(),
                magic: bytes,
            });
        }
        return Err(truncated());
    }
    let (zero0, zero1, code, ndims) = (bytes[0], bytes[1], bytes[2], bytes[3] as usize);
    if zero0 != 0 || zero1 != 0 || ndims == 0 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            magic: bytes[..4].to_vec(),
        });
    }
    if code != IDX_U8 {
        return Err(DataError::UnsupportedIdxType {
            path: path.to_path_buf(),
            code,
        });
    }
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(truncated());
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    // A product that overflows cannot possibly be present in the file.
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(truncated)?;
    let available = bytes.len() - header_len;
    if available < count {
        return Err(truncated());
    }
    if available > count {
        return Err(DataError::TrailingData {
            path: path.to_path_buf(),
            extra: available - count,
        });
    }
    bytes.drain(..header_len);
    Ok((dims, bytes))
}

/// Encodes unsigned-byte data as an idx file (header + data). Used by tests
/// and handy for writing small fixtures.
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&[0, 0, IDX_U8, dims.len() as u8]);
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).expect("gzip in memory");
        enc.finish().expect("gzip in memory")
    }

    fn sample() -> (Vec<usize>, Vec<u8>) {
        let dims = vec![3, 2, 4];
        let data: Vec<u8> = (0..24u8).map(|v| v.wrapping_mul(37)).collect();
        (dims, data)
    }

    #[test]
    fn round_trip_raw_and_gzip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (dims, data) = sample();
        let idx = encode_idx(&dims, &data);

        let raw_path = dir.path().join("x-idx3-ubyte");
        std::fs::write(&raw_path, &idx).expect("write");
        assert_eq!(
            read_idx(&raw_path).expect("raw"),
            (dims.clone(), data.clone())
        );

        let gz_path = dir.path().join("x-idx3-ubyte.gz");
        std::fs::write(&gz_path, gzip(&idx)).expect("write");
        assert_eq!(
            read_idx(&gz_path).expect("gz"),
            (dims.clone(), data.clone())
        );

        // Detection is by content, not by name.
        let gz_noext = dir.path().join("compressed-without-extension");
        std::fs::write(&gz_noext, gzip(&idx)).expect("write");
        assert_eq!(read_idx(&gz_noext).expect("gz"), (dims, data));
    }

    #[test]
    fn one_dimensional_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("labels-idx1-ubyte.gz");
        std::fs::write(&p, gzip(&encode_idx(&[5], &[0, 1, 2, 3, 9]))).expect("write");
        assert_eq!(read_idx(&p).expect("read"), (vec![5], vec![0, 1, 2, 3, 9]));
    }

    #[test]
    fn truncated_files_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (dims, data) = sample();
        let idx = encode_idx(&dims, &data);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("short-data", idx[..idx.len() - 1].to_vec()),
            ("short-header", idx[..9].to_vec()),
            ("short-magic", vec![0, 0]),
            ("empty", vec![]),
            ("short-data.gz", gzip(&idx[..idx.len() - 5])),
        ];
        for (name, bytes) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).expect("write");
            let err = read_idx(&p).expect_err(name);
            assert!(
                matches!(err, DataError::Truncated { .. }),
                "{name}: {err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(name) && msg.contains("truncated idx file"),
                "{msg}"
            );
        }
        // A gzip stream cut in the middle.
        let gz = gzip(&idx);
        let p = dir.path().join("cut-stream.gz");
        std::fs::write(&p, &gz[..gz.len() / 2]).expect("write");
        let err = read_idx(&p).expect_err("cut gzip stream");
        assert!(
            matches!(err, DataError::Truncated { .. } | DataError::BadGzip { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("cut-stream.gz"));
    }

    #[test]
    fn bad_magic_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("not-idx");
        std::fs::write(&p, b"hello, this is not an idx file").expect("write");
        let err = read_idx(&p).expect_err("bad magic");
        assert!(matches!(err, DataError::BadMagic { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("not-idx") && msg.contains("bad magic number"),
            "{msg}"
        );

        let p = dir.path().join("not-idx.gz");
        std::fs::write(&p, gzip(b"\x01\x02\x03\x04\x05")).expect("write");
        let err = read_idx(&p).expect_err("bad magic in gzip");
        assert!(matches!(err, DataError::BadMagic { .. }), "{err:?}");

        let p = dir.path().join("float-idx");
        let mut bytes = encode_idx(&[1], &[0, 0, 0, 0]);
        bytes[2] = 0x0d;
        bytes.truncate(8);
        bytes.extend_from_slice(&1.0f32.to_be_bytes());
        std::fs::write(&p, bytes).expect("write");
        let err = read_idx(&p).expect_err("float idx");
        assert!(
            matches!(err, DataError::UnsupportedIdxType { code: 0x0d, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn trailing_bytes_and_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("long");
        let mut bytes = encode_idx(&[2], &[1, 2]);
        bytes.push(7);
        std::fs::write(&p, bytes).expect("write");
        let err = read_idx(&p).expect_err("trailing");
        assert!(
            matches!(err, DataError::TrailingData { extra: 1, .. }),
            "{err:?}"
        );

        let missing = dir.path().join("nope");
        let err = read_idx(&missing).expect_err("missing");
        assert!(matches!(err, DataError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nope"));
    }
}
