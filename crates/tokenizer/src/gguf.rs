//! A small reader for the metadata section of GGUF files (header and key/value pairs only; the
//! tensor section is not read). Enough for the tokenizer, without a tensor library.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{Result, TokenizerError};

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Unsigned integer (u8, u16, u32 or u64 in the file).
    Uint(u64),
    /// Signed integer (i8, i16, i32 or i64 in the file).
    Int(i64),
    /// Float (f32 or f64 in the file).
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string (invalid bytes replaced).
    String(String),
    /// Array of values.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::Uint(v) => Some(v),
            Self::Int(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The metadata of a GGUF file.
#[derive(Debug, Clone, Default)]
pub struct GgufMetadata {
    /// GGUF format version.
    pub version: u32,
    /// Number of tensors the file declares.
    pub tensor_count: u64,
    /// Key/value pairs.
    pub kv: BTreeMap<String, MetaValue>,
}

impl GgufMetadata {
    /// Reads the metadata of the GGUF file at `path`.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::read(&mut BufReader::new(file)).map_err(|e| match e {
            TokenizerError::Gguf(msg) => TokenizerError::Gguf(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Reads the metadata from the start of a GGUF stream.
    pub fn read<R: Read>(r: &mut R) -> Result<Self> {
        let mut p = Parser { r };
        let magic = p.u32()?;
        if magic != 0x4655_4747 {
            return Err(TokenizerError::Gguf("not a GGUF file (bad magic)".into()));
        }
        let version = p.u32()?;
        if !(1..=3).contains(&version) {
            return Err(TokenizerError::Gguf(format!(
                "unsupported GGUF version {version}"
            )));
        }
        let wide = version >= 2;
        let tensor_count = p.count(wide)?;
        let kv_count = p.count(wide)?;
        let mut kv = BTreeMap::new();
        for _ in 0..kv_count {
            let key = p.string(wide)?;
            let ty = p.u32()?;
            let value = p.value(ty, wide)?;
            kv.insert(key, value);
        }
        Ok(Self {
            version,
            tensor_count,
            kv,
        })
    }

    /// Looks a key up.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.kv.get(key)
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// An unsigned integer value.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }
}

/// Upper bound on lengths read from the file, to fail cleanly on corrupt input.
const MAX_LEN: u64 = 1 << 31;

struct Parser<'a, R: Read> {
    r: &'a mut R,
}

impl<R: Read> Parser<'_, R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| TokenizerError::Gguf(format!("truncated metadata: {e}")))?;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn count(&mut self, wide: bool) -> Result<u64> {
        let n = if wide {
            self.u64()?
        } else {
            self.u32()? as u64
        };
        if n > MAX_LEN {
            return Err(TokenizerError::Gguf(format!("implausible length {n}")));
        }
        Ok(n)
    }
    fn string(&mut self, wide: bool) -> Result<String> {
        let n = self.count(wide)? as usize;
        let mut buf = vec![0u8; n];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| TokenizerError::Gguf(format!("truncated string: {e}")))?;
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
    fn value(&mut self, ty: u32, wide: bool) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::Uint(self.bytes::<1>()?[0] as u64),
            1 => MetaValue::Int(self.bytes::<1>()?[0] as i8 as i64),
            2 => MetaValue::Uint(u16::from_le_bytes(self.bytes()?) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(self.bytes()?) as i64),
            4 => MetaValue::Uint(self.u32()? as u64),
            5 => MetaValue::Int(i32::from_le_bytes(self.bytes()?) as i64),
            6 => MetaValue::Float(f32::from_le_bytes(self.bytes()?) as f64),
            7 => MetaValue::Bool(self.bytes::<1>()?[0] != 0),
            8 => MetaValue::String(self.string(wide)?),
            9 => {
                let ety = self.u32()?;
                let n = self.count(wide)?;
                let mut items = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    items.push(self.value(ety, wide)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::Uint(self.u64()?),
            11 => MetaValue::Int(i64::from_le_bytes(self.bytes()?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.bytes()?)),
            other => return Err(TokenizerError::Gguf(format!("unknown value type {other}"))),
        })
    }
}

/// Writes GGUF metadata (version 3, no tensors); test support for building tiny files.
pub fn write_metadata<W: std::io::Write>(
    w: &mut W,
    kv: &[(&str, MetaValue)],
) -> std::io::Result<()> {
    fn string<W: std::io::Write>(w: &mut W, s: &str) -> std::io::Result<()> {
        w.write_all(&(s.len() as u64).to_le_bytes())?;
        w.write_all(s.as_bytes())
    }
    fn ty(v: &MetaValue) -> u32 {
        match v {
            MetaValue::Uint(_) => 10,
            MetaValue::Int(_) => 11,
            MetaValue::Float(_) => 12,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
        }
    }
    fn value<W: std::io::Write>(w: &mut W, v: &MetaValue) -> std::io::Result<()> {
        match v {
            MetaValue::Uint(x) => w.write_all(&x.to_le_bytes()),
            MetaValue::Int(x) => w.write_all(&x.to_le_bytes()),
            MetaValue::Float(x) => w.write_all(&x.to_le_bytes()),
            MetaValue::Bool(b) => w.write_all(&[*b as u8]),
            MetaValue::String(s) => string(w, s),
            MetaValue::Array(items) => {
                let et = items.first().map_or(10, ty);
                w.write_all(&et.to_le_bytes())?;
                w.write_all(&(items.len() as u64).to_le_bytes())?;
                items.iter().try_for_each(|i| value(w, i))
            }
        }
    }
    w.write_all(&0x4655_4747u32.to_le_bytes())?;
    w.write_all(&3u32.to_le_bytes())?;
    w.write_all(&0u64.to_le_bytes())?;
    w.write_all(&(kv.len() as u64).to_le_bytes())?;
    for (k, v) in kv {
        string(w, k)?;
        w.write_all(&ty(v).to_le_bytes())?;
        value(w, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trip() {
        let kv = vec![
            ("general.architecture", MetaValue::String("llama".into())),
            ("llama.block_count", MetaValue::Uint(2)),
            ("x.neg", MetaValue::Int(-3)),
            ("x.flag", MetaValue::Bool(true)),
            (
                "tokenizer.ggml.tokens",
                MetaValue::Array(vec![
                    MetaValue::String("a".into()),
                    MetaValue::String("b".into()),
                ]),
            ),
        ];
        let mut buf = Vec::new();
        write_metadata(&mut buf, &kv).unwrap();
        let md = GgufMetadata::read(&mut buf.as_slice()).unwrap();
        assert_eq!(md.version, 3);
        assert_eq!(md.get_str("general.architecture"), Some("llama"));
        assert_eq!(md.get_u64("llama.block_count"), Some(2));
        assert_eq!(md.get("x.neg"), Some(&MetaValue::Int(-3)));
        assert_eq!(
            md.get("tokenizer.ggml.tokens")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(GgufMetadata::read(&mut &b"NOPE0000"[..]).is_err());
        let mut buf = Vec::new();
        write_metadata(&mut buf, &[("k", MetaValue::String("value".into()))]).unwrap();
        buf.truncate(buf.len() - 2);
        assert!(GgufMetadata::read(&mut buf.as_slice()).is_err());
    }
}
