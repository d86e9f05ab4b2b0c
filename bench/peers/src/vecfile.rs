//! The .fvecs / .ivecs files `bench/vectors.py` writes (the TEXMEX layout): each row is a
//! little-endian int32 count followed by that many float32 (.fvecs) or int32 (.ivecs) values.
//! Every row of a file must have the same count; a damaged or truncated file is an error, never
//! a panic or a silently shorter data set.

use std::path::Path;

/// Rows of equal width, stored flat.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows<T> {
    pub width: usize,
    pub values: Vec<T>,
}

impl<T> Rows<T> {
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.width).unwrap_or(0)
    }

    pub fn row(&self, i: usize) -> &[T] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

/// Splits `bytes` into rows of a 4-byte count and `count` 4-byte values, decoded by `value`.
fn parse<T>(bytes: &[u8], what: &str, value: fn([u8; 4]) -> T) -> Result<Rows<T>, String> {
    let word = |at: usize| -> [u8; 4] { bytes[at..at + 4].try_into().expect("a 4-byte slice") };
    if bytes.len() < 4 {
        return Err(format!("{what}: {} bytes, not even one row header", bytes.len()));
    }
    let width = i32::from_le_bytes(word(0));
    if width <= 0 || width > 1 << 20 {
        return Err(format!("{what}: first row declares {width} values"));
    }
    let width = width as usize;
    let row_bytes = 4 * (width + 1);
    if !bytes.len().is_multiple_of(row_bytes) {
        return Err(format!(
            "{what}: {} bytes is not a whole number of {row_bytes}-byte rows (truncated?)",
            bytes.len()
        ));
    }
    let rows = bytes.len() / row_bytes;
    let mut values = Vec::with_capacity(rows * width);
    for r in 0..rows {
        let start = r * row_bytes;
        let declared = i32::from_le_bytes(word(start));
        if declared as i64 != width as i64 {
            return Err(format!("{what}: row {r} declares {declared} values, the first row {width}"));
        }
        values.extend((0..width).map(|i| value(word(start + 4 + 4 * i))));
    }
    Ok(Rows { width, values })
}

pub fn parse_fvecs(bytes: &[u8], what: &str) -> Result<Rows<f32>, String> {
    let rows = parse(bytes, what, f32::from_le_bytes)?;
    if let Some(at) = rows.values.iter().position(|x| !x.is_finite()) {
        return Err(format!("{what}: value {at} is not finite"));
    }
    Ok(rows)
}

pub fn parse_ivecs(bytes: &[u8], what: &str) -> Result<Rows<i32>, String> {
    parse(bytes, what, i32::from_le_bytes)
}

pub fn read_fvecs(path: &Path) -> Result<Rows<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse_fvecs(&bytes, &path.display().to_string())
}

pub fn read_ivecs(path: &Path) -> Result<Rows<i32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse_ivecs(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(rows: &[Vec<f32>]) -> Vec<u8> {
        let mut out = Vec::new();
        for row in rows {
            out.extend_from_slice(&(row.len() as i32).to_le_bytes());
            for x in row {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn round_trips_rows() {
        let rows = vec![vec![1.0, -2.5, 3.0], vec![0.0, 0.5, 1e-3]];
        let parsed = parse_fvecs(&encode(&rows), "t").unwrap();
        assert_eq!(parsed.width, 3);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed.row(1), &rows[1][..]);
    }

    #[test]
    fn every_damaged_file_is_an_error() {
        let good = encode(&[vec![1.0, 2.0], vec![3.0, 4.0]]);
        // Every truncation inside a row, and the empty file; a cut between rows is a shorter
        // file, which the caller rejects by its row count.
        for cut in 0..good.len() {
            match parse_fvecs(&good[..cut], "t") {
                Ok(rows) => assert_eq!((cut, rows.len()), (12, 1)),
                Err(_) => assert_ne!(cut, 12),
            }
        }
        // A row whose count disagrees with the first row's.
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&3i32.to_le_bytes());
        assert!(parse_fvecs(&bad, "t").unwrap_err().contains("row 1"));
        // A negative or absurd width.
        let mut bad = good.clone();
        bad[0..4].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(parse_fvecs(&bad, "t").is_err());
        // A NaN value.
        let mut bad = good;
        bad[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(parse_fvecs(&bad, "t").unwrap_err().contains("not finite"));
    }
}
