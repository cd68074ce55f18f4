//! Reader for the idx-ubyte format (LeCun's MNIST container), raw or gzip-compressed.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{DataError, Result};

/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// idx element type code for unsigned bytes.
const IDX_U8: u8 = 0x08;

/// The most data bytes an idx file may declare: 2^31 (2 GiB; Fashion-MNIST's training images are
/// 47 MB). A header announcing more is refused before anything is allocated or decompressed.
pub const MAX_IDX_BYTES: u64 = 1 << 31;

/// Reads an idx file of unsigned bytes, returning its dimensions and its data
/// (row-major, `dims.iter().product()` bytes).
///
/// The file may be gzip-compressed; compression is detected by the gzip magic
/// bytes `1f 8b`, not by the file name. The header bounds everything that is read: the
/// dimensions' product must stay within [`MAX_IDX_BYTES`], exactly that many bytes are read (for a
/// gzip stream, decompressed) and at most one byte more, to detect trailing data, so a small
/// file that inflates without end (a gzip bomb) costs no more than its header declares. Errors name
/// the file and say what is wrong: missing file, corrupt gzip, bad magic number, unsupported element
/// type, a declared size over the limit, truncation, or trailing garbage.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut file, &mut magic).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    if got == 2 && magic == GZIP_MAGIC {
        let gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
        read_stream(path, gz, None).map_err(|e| match e {
            DataError::Io { source, .. } => gzip_error(path, source),
            other => other,
        })
    } else {
        read_stream(path, file, Some(file_len))
    }
}

/// An error of the gzip decoder: a stream that ends early is a truncated file.
fn gzip_error(path: &Path, source: std::io::Error) -> DataError {
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
}

/// Fills as much of `buf` as the reader holds; returns how many bytes were read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Parses the (decompressed) content of an idx file from a reader, reading no more than the
/// header declares plus one byte. `len`: the content's total length when known (an uncompressed
/// file), to refuse a short file before allocating and to count trailing bytes exactly.
fn read_stream(path: &Path, mut r: impl Read, len: Option<u64>) -> Result<(Vec<usize>, Vec<u8>)> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let truncated = || DataError::Truncated {
        path: path.to_path_buf(),
    };
    let mut head = [0u8; 4];
    let got = read_up_to(&mut r, &mut head).map_err(io)?;
    if got < 4 {
        // Too short even for the magic number: if what there is already
        // disagrees with a magic number, say so; otherwise it is truncated.
        if head[..got].iter().take(2).any(|&b| b != 0) {
            return Err(DataError::BadMagic {
                path: path.to_path_buf(),
                magic: head[..got].to_vec(),
            });
        }
        return Err(truncated());
    }
    let (zero0, zero1, code, ndims) = (head[0], head[1], head[2], head[3] as usize);
    if zero0 != 0 || zero1 != 0 || ndims == 0 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            magic: head.to_vec(),
        });
    }
    if code != IDX_U8 {
        return Err(DataError::UnsupportedIdxType {
            path: path.to_path_buf(),
            code,
        });
    }
    let mut dim_bytes = vec![0u8; 4 * ndims];
    if read_up_to(&mut r, &mut dim_bytes).map_err(io)? < dim_bytes.len() {
        return Err(truncated());
    }
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| DataError::TooLarge {
            path: path.to_path_buf(),
            dims: dims.clone(),
            limit: MAX_IDX_BYTES,
        })?;
    let header_len = 4 + 4 * ndims as u64;
    if let Some(len) = len {
        let available = len.saturating_sub(header_len);
        if available < count {
            return Err(truncated());
        }
        if available > count {
            return Err(DataError::TrailingData {
                path: path.to_path_buf(),
                extra: (available - count) as usize,
            });
        }
    }
    let count = count as usize;
    // grows with what really arrives: a header that overstates a short stream costs nothing
    let mut data = Vec::with_capacity(count.min(1 << 24));
    (&mut r)
        .take(count as u64)
        .read_to_end(&mut data)
        .map_err(io)?;
    if data.len() < count {
        return Err(truncated());
    }
    // one byte past the declared data tells trailing garbage; never read further
    let mut probe = [0u8; 1];
    if read_up_to(&mut r, &mut probe).map_err(io)? > 0 {
        return Err(DataError::TrailingData {
            path: path.to_path_buf(),
            extra: 1,
        });
    }
    Ok((dims, data))
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

    /// The decompressed content: an idx header declaring `dims`, then an endless run of zeros.
    /// Counts what the parser takes from it.
    struct Endless {
        header: Vec<u8>,
        taken: u64,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(1 << 16);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = self
                    .header
                    .get(self.taken as usize + i)
                    .copied()
                    .unwrap_or(0);
            }
            self.taken += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn an_endless_stream_is_read_only_as_far_as_the_header_declares() {
        let header = encode_idx(&[3, 5], &[]);
        let mut r = Endless {
            header: header.clone(),
            taken: 0,
        };
        let err = read_stream(Path::new("endless"), &mut r, None).expect_err("trailing data");
        assert!(matches!(err, DataError::TrailingData { .. }), "{err:?}");
        // reads come in chunks of up to 64 KiB: never more than one chunk past the data
        assert!(
            r.taken <= header.len() as u64 + 15 + (1 << 16),
            "{}",
            r.taken
        );
    }

    #[test]
    fn gzip_bombs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        // the header declares 4 bytes; the stream inflates to 16 MiB more
        let mut bomb = encode_idx(&[4], &[1, 2, 3, 4]);
        bomb.resize(bomb.len() + (16 << 20), 0);
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&bomb).expect("gzip in memory");
        let gz = enc.finish().expect("gzip in memory");
        assert!(gz.len() < 1 << 17, "{} compressed bytes", gz.len());
        let p = dir.path().join("bomb.gz");
        std::fs::write(&p, gz).expect("write");
        let err = read_idx(&p).expect_err("trailing data");
        assert!(matches!(err, DataError::TrailingData { .. }), "{err:?}");
        assert!(err.to_string().contains("bomb.gz"), "{err}");

        // the header declares 65536 x 65536 bytes (4 GiB, over the limit) in a 40-byte file:
        // refused from the header, raw or compressed, before reading any data
        let huge = encode_idx(&[65536, 65536], &[0; 16]);
        for (name, bytes) in [("huge-idx", huge.clone()), ("huge-idx.gz", gzip(&huge))] {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).expect("write");
            let err = read_idx(&p).expect_err("over the limit");
            assert!(matches!(err, DataError::TooLarge { .. }), "{name}: {err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(name) && msg.contains("[65536, 65536]") && msg.contains("limit"),
                "{msg}"
            );
        }
        // within the limit but far beyond the file: truncated, without allocating the claim
        let big = encode_idx(&[1 << 15, 1 << 15], &[7; 16]);
        for (name, bytes) in [("big-idx", big.clone()), ("big-idx.gz", gzip(&big))] {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).expect("write");
            let err = read_idx(&p).expect_err("truncated");
            assert!(
                matches!(err, DataError::Truncated { .. }),
                "{name}: {err:?}"
            );
        }
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
