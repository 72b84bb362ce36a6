//! Reading and writing `.npy` files (format version 1.0/2.0/3.0, `<f4`, C
//! order), so weights, masks and activations can be taken into numpy with
//! `np.load`.

use std::fs;
use std::io;
use std::path::Path;

use crate::tensor::Tensor;

const MAGIC: &[u8] = b"\x93NUMPY";

fn invalid(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: not a float32 .npy file: {why}", path.display()),
    )
}

/// The bytes of a version 1.0 `.npy` file holding `data` with `shape`.
pub fn encode_npy(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad with spaces so the data starts on a 64-byte boundary, ending in '\n'.
    let total = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn write_npy(path: impl AsRef<Path>, t: &Tensor) -> io::Result<()> {
    fs::write(path, encode_npy(&t.data(), t.shape()))
}

/// Parses `.npy` bytes into (values, shape). `path` is only for messages.
pub fn decode_npy(bytes: &[u8], path: &Path) -> io::Result<(Vec<f32>, Vec<usize>)> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(invalid(path, "missing the \\x93NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(invalid(path, format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| invalid(path, "header runs past the end of the file"))?;
    let header = std::str::from_utf8(header).map_err(|_| invalid(path, "header is not text"))?;
    let field = |key: &str| -> io::Result<&str> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| invalid(path, format!("header has no '{key}'")))?;
        let rest = header[at + key.len() + 2..].trim_start();
        Ok(rest.strip_prefix(':').unwrap_or(rest).trim_start())
    };
    let descr = field("descr")?;
    if !(descr.starts_with("'<f4'") || descr.starts_with("'float32'")) {
        return Err(invalid(
            path,
            format!(
                "dtype {} (only little-endian float32 '<f4' is read)",
                descr.split(',').next().unwrap_or("")
            ),
        ));
    }
    if field("fortran_order")?.starts_with("True") {
        return Err(invalid(path, "Fortran order (only C order is read)"));
    }
    let shape_txt = field("shape")?;
    let inner = shape_txt
        .strip_prefix('(')
        .and_then(|t| t.split_once(')'))
        .map(|(inside, _)| inside)
        .ok_or_else(|| invalid(path, "the shape is not a tuple like (2, 3)"))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| invalid(path, format!("bad dimension {s:?}")))
        })
        .collect::<io::Result<_>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| invalid(path, "shape overflows"))?;
    let body = &bytes[start + header_len..];
    if body.len()
        != n.checked_mul(4)
            .ok_or_else(|| invalid(path, "shape overflows"))?
    {
        return Err(invalid(
            path,
            format!(
                "shape {shape:?} needs {} data bytes, file has {}",
                4 * n,
                body.len()
            ),
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((data, shape))
}

pub fn read_npy(path: impl AsRef<Path>) -> io::Result<Tensor> {
    let path = path.as_ref();
    let bytes =
        fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let (data, shape) = decode_npy(&bytes, path)?;
    Ok(Tensor::from_vec(data, &shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads_header_to_64() {
        let shape = [2, 3, 5];
        let data: Vec<f32> = (0..30).map(|v| v as f32 * 0.5 - 3.0).collect();
        let bytes = encode_npy(&data, &shape);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(bytes[10 + header_len - 1], b'\n');
        let (back, s) = decode_npy(&bytes, Path::new("t.npy")).unwrap();
        assert_eq!((back, s), (data, shape.to_vec()));
        // Scalars and 1-D shapes use numpy's spellings "()" and "(n,)".
        let one = encode_npy(&[1.0, 2.0], &[2]);
        assert!(String::from_utf8_lossy(&one).contains("'shape': (2,)"));
        assert_eq!(
            decode_npy(&encode_npy(&[4.0], &[]), Path::new("s"))
                .unwrap()
                .1,
            Vec::<usize>::new()
        );
    }

    #[test]
    fn rejects_bad_files_with_reasons() {
        let p = Path::new("x.npy");
        assert!(decode_npy(b"hello world", p)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut b = encode_npy(&[1.0, 2.0, 3.0], &[3]);
        b.pop();
        assert!(decode_npy(&b, p)
            .unwrap_err()
            .to_string()
            .contains("needs 12 data bytes"));
        let mut f8 = encode_npy(&[1.0], &[1]);
        let at = f8.windows(3).position(|w| w == b"<f4").unwrap();
        f8[at + 2] = b'8';
        // A shape that is not a tuple is an error, not a panic.
        let mut bad_shape = encode_npy(&[1.0], &[1]);
        let at = bad_shape.windows(4).position(|w| w == b"(1,)").unwrap();
        bad_shape[at..at + 4].copy_from_slice(b")1,(");
        assert!(decode_npy(&bad_shape, p)
            .unwrap_err()
            .to_string()
            .contains("tuple"));
        assert!(decode_npy(&f8, p)
            .unwrap_err()
            .to_string()
            .contains("dtype"));
    }
}
