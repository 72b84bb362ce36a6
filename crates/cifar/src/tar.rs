//! A minimal streaming tar reader, just enough for the official CIFAR
//! archives: ustar and GNU headers in 512-byte blocks, GNU long names ('L')
//! and pax `path` records, everything else skipped. Wanted members are read
//! whole into memory; nothing is written to disk.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::bufread::GzDecoder;

use crate::error::CifarError;

const BLOCK: usize = 512;
/// Long-name and pax bodies are tiny in practice; anything bigger means a
/// corrupt header, and must not drive a huge allocation.
const MAX_META_BODY: u64 = 1 << 20;
/// Cap on the up-front allocation for one member, so a corrupt size field
/// cannot request more memory than the data that actually arrives.
const MAX_PREALLOC: u64 = 256 << 20;

/// Reads the members named in `wanted` (full member paths, e.g.
/// `cifar-10-batches-bin/test_batch.bin`) out of a `.tar.gz` file.
/// Members that are absent are simply missing from the returned map.
pub(crate) fn read_gz_members(
    archive: &Path,
    wanted: &[String],
) -> Result<HashMap<String, Vec<u8>>, CifarError> {
    let file = File::open(archive).map_err(|source| CifarError::Io {
        path: archive.to_path_buf(),
        source,
    })?;
    // Large buffers on both sides of the decoder: the compressed file is read
    // in few syscalls and 512-byte header reads do not each hit inflate.
    let gz = GzDecoder::new(BufReader::with_capacity(1 << 20, file));
    let reader = BufReader::with_capacity(1 << 16, gz);
    read_tar_members(reader, wanted).map_err(|detail| CifarError::CorruptArchive {
        archive: archive.to_path_buf(),
        detail,
    })
}

/// The tar walk itself, over any byte stream. Errors are a description of
/// what is wrong with the stream.
pub(crate) fn read_tar_members<R: Read>(
    mut reader: R,
    wanted: &[String],
) -> Result<HashMap<String, Vec<u8>>, String> {
    let mut found = HashMap::new();
    let mut header = [0u8; BLOCK];
    // Set by a GNU 'L' or pax 'x' entry; applies to the next header only.
    let mut next_name: Option<String> = None;
    loop {
        if !read_block(&mut reader, &mut header)? {
            // EOF on a block boundary without the end marker: lenient, like
            // most tar readers; missing members are reported by the caller.
            break;
        }
        if header.iter().all(|&b| b == 0) {
            break;
        }
        verify_checksum(&header)?;
        let size = parse_size(&header[124..136])?;
        let padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        match header[156] {
            b'L' => {
                let body = read_meta_body(&mut reader, size, padding)?;
                let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                next_name = Some(String::from_utf8_lossy(&body[..end]).into_owned());
            }
            b'x' => {
                let body = read_meta_body(&mut reader, size, padding)?;
                if let Some(path) = pax_path(&body) {
                    next_name = Some(path);
                }
            }
            b'0' | b'\0' | b'7' => {
                let name = next_name.take().unwrap_or_else(|| header_name(&header));
                let name = name.trim_start_matches("./").to_string();
                if wanted.contains(&name) {
                    let body = read_body(&mut reader, size)?;
                    skip(&mut reader, padding)?;
                    found.insert(name, body);
                } else {
                    skip(&mut reader, size + padding)?;
                }
            }
            _ => {
                next_name = None;
                skip(&mut reader, size + padding)?;
            }
        }
    }
    // Read to the end so that the gzip decoder checks its CRC and length:
    // that is what catches damage inside member data.
    io::copy(&mut reader, &mut io::sink()).map_err(describe)?;
    Ok(found)
}

fn describe(e: io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        "unexpected end of data".to_string()
    } else {
        e.to_string()
    }
}

/// Fills one block. Returns false on a clean EOF before its first byte.
fn read_block<R: Read>(reader: &mut R, block: &mut [u8; BLOCK]) -> Result<bool, String> {
    let mut filled = 0;
    while filled < BLOCK {
        match reader.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err("truncated tar header".to_string()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(describe(e)),
        }
    }
    Ok(true)
}

fn read_body<R: Read>(reader: &mut R, size: u64) -> Result<Vec<u8>, String> {
    let mut body = Vec::with_capacity(size.min(MAX_PREALLOC) as usize);
    reader.take(size).read_to_end(&mut body).map_err(describe)?;
    if (body.len() as u64) < size {
        return Err(format!(
            "tar member truncated: {} of {size} bytes",
            body.len()
        ));
    }
    Ok(body)
}

fn read_meta_body<R: Read>(reader: &mut R, size: u64, padding: u64) -> Result<Vec<u8>, String> {
    if size > MAX_META_BODY {
        return Err(format!("implausible tar extended header of {size} bytes"));
    }
    let body = read_body(reader, size)?;
    skip(reader, padding)?;
    Ok(body)
}

fn skip<R: Read>(reader: &mut R, n: u64) -> Result<(), String> {
    let copied = io::copy(&mut reader.take(n), &mut io::sink()).map_err(describe)?;
    if copied < n {
        return Err("unexpected end of data inside a tar member".to_string());
    }
    Ok(())
}

fn verify_checksum(header: &[u8; BLOCK]) -> Result<(), String> {
    let stored = parse_octal(&header[148..156]).ok_or("bad tar header checksum field")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in header.iter().enumerate() {
        // The checksum is computed with its own field taken as spaces.
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    // Some old writers summed signed chars; accept either.
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err("tar header checksum mismatch".to_string())
    }
}

/// Octal number padded with spaces or NULs; None on any other character.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    let mut digits = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ');
    digits.try_fold((), |(), &b| {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add((b - b'0') as u64)?;
        Some(())
    })?;
    Some(value)
}

/// The size field: octal, or GNU base-256 when the top bit is set.
fn parse_size(field: &[u8]) -> Result<u64, String> {
    if field[0] & 0x80 != 0 {
        let mut value: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(b as u64))
                .ok_or("tar member size out of range")?;
        }
        return Ok(value);
    }
    let size = parse_octal(field).ok_or("bad tar member size field")?;
    if size > u64::MAX / 2 {
        return Err("tar member size out of range".to_string());
    }
    Ok(size)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn header_name(header: &[u8; BLOCK]) -> String {
    let name = c_string(&header[0..100]);
    // Only POSIX ustar has the prefix field; GNU headers ("ustar  ") reuse
    // those bytes for other things.
    if &header[257..263] == b"ustar\0" {
        let prefix = c_string(&header[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// The `path` record of a pax extended header ("<len> path=<value>\n").
fn pax_path(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    text.lines().find_map(|record| {
        let (_, key_value) = record.split_once(' ')?;
        key_value.strip_prefix("path=").map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_fields() {
        assert_eq!(parse_octal(b"00000001750\0"), Some(1000));
        assert_eq!(parse_octal(b"   17 \0"), Some(15));
        assert_eq!(parse_octal(b"\0\0\0"), Some(0));
        assert_eq!(parse_octal(b"0009"), None);
        assert_eq!(parse_size(b"\x80\0\0\0\0\0\0\0\0\0\x01\x00").unwrap(), 256);
        assert!(parse_size(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
    }

    #[test]
    fn pax_path_record() {
        assert_eq!(
            pax_path(b"30 mtime=1.0\n40 path=a/very/long/name.bin\n"),
            Some("a/very/long/name.bin".to_string())
        );
        assert_eq!(pax_path(b"20 mtime=1.0\n"), None);
    }
}
