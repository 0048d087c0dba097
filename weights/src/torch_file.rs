//! Reading PyTorch checkpoints (`torch.save` of a state dict) without Python: the
//! legacy format torchvision's published VGG files use (pickles followed by raw
//! storages) and the zip format of newer PyTorch (`archive/data.pkl` plus one entry per
//! storage). Only what a state dict of float tensors needs of the pickle protocol is
//! implemented; anything else is an error that names the opcode or class.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};

/// A tensor read from a checkpoint: float32, contiguous, little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` f32 values as little-endian bytes.
    pub data: Vec<u8>,
}

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not a readable PyTorch checkpoint: {0}")]
pub struct TorchFileError(String);

fn bad(msg: impl Into<String>) -> TorchFileError {
    TorchFileError(msg.into())
}

/// Reads every tensor of a state dict, by name.
pub fn read_state_dict(bytes: &[u8]) -> Result<BTreeMap<String, RawTensor>, TorchFileError> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes)
    } else {
        read_legacy(bytes)
    }
}

/// A value on the pickle machine's stack.
#[derive(Debug, Clone)]
#[allow(dead_code)] // some payloads are only ever shown, through Debug, in errors
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as LONG1 gives it (little-endian bytes).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// `module.name` from GLOBAL / STACK_GLOBAL.
    Global(String),
    /// A storage reference: (key, dtype name).
    Storage(String, String),
    /// A tensor: storage, offset, size, stride.
    Tensor {
        storage: String,
        dtype: String,
        offset: usize,
        size: Vec<usize>,
        stride: Vec<usize>,
    },
    Mark,
}

impl Value {
    fn int(&self) -> Result<i64, TorchFileError> {
        match self {
            Self::Int(i) => Ok(*i),
            Self::Bool(b) => Ok(i64::from(*b)),
            other => Err(bad(format!("expected an integer, found {other:?}"))),
        }
    }

    fn usizes(&self) -> Result<Vec<usize>, TorchFileError> {
        match self {
            Self::Tuple(v) | Self::List(v) => v
                .iter()
                .map(|x| usize::try_from(x.int()?).map_err(|_| bad("negative size")))
                .collect(),
            other => Err(bad(format!("expected a tuple of sizes, found {other:?}"))),
        }
    }

    fn text(&self) -> Result<&str, TorchFileError> {
        match self {
            Self::Str(s) => Ok(s),
            other => Err(bad(format!("expected a string, found {other:?}"))),
        }
    }
}

/// Runs one pickle from `r` and returns its value.
fn unpickle(r: &mut Cursor<&[u8]>) -> Result<Value, TorchFileError> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let pop = |stack: &mut Vec<Value>| stack.pop().ok_or_else(|| bad("pickle stack underflow"));
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>, TorchFileError> {
        let at = stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| bad("pickle MARK missing"))?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = read_u8(r)?;
        match op {
            0x80 => {
                read_u8(r)?; // PROTO
            }
            0x95 => {
                read_n(r, 8)?; // FRAME
            }
            b'.' => return pop(&mut stack), // STOP
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'J' => stack.push(Value::Int(i64::from(i32::from_le_bytes(arr(r)?)))),
            b'K' => stack.push(Value::Int(i64::from(read_u8(r)?))),
            b'M' => stack.push(Value::Int(i64::from(u16::from_le_bytes(arr(r)?)))),
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = read_u8(r)? as usize;
                let b = read_n(r, n)?;
                if n > 8 {
                    stack.push(Value::BigInt(b));
                    continue;
                }
                let mut v: i64 = 0;
                for (i, byte) in b.iter().enumerate() {
                    v |= i64::from(*byte) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(arr(r)?))),
            b'X' => {
                let n = u32::from_le_bytes(arr(r)?) as usize;
                stack.push(Value::Str(utf8(read_n(r, n)?)?));
            }
            0x8c => {
                let n = read_u8(r)? as usize;
                stack.push(Value::Str(utf8(read_n(r, n)?)?));
            }
            0x8d => {
                let n = usize::try_from(u64::from_le_bytes(arr(r)?))
                    .map_err(|_| bad("string too long"))?;
                stack.push(Value::Str(utf8(read_n(r, n)?)?));
            }
            b'U' => {
                let n = read_u8(r)? as usize;
                stack.push(Value::Str(
                    String::from_utf8_lossy(&read_n(r, n)?).into_owned(),
                ));
            }
            b'T' => {
                let n = u32::from_le_bytes(arr(r)?) as usize;
                stack.push(Value::Str(
                    String::from_utf8_lossy(&read_n(r, n)?).into_owned(),
                ));
            }
            b'C' => {
                let n = read_u8(r)? as usize;
                stack.push(Value::Bytes(read_n(r, n)?));
            }
            b'B' => {
                let n = u32::from_le_bytes(arr(r)?) as usize;
                stack.push(Value::Bytes(read_n(r, n)?));
            }
            b'c' => {
                let module = read_line(r)?;
                let name = read_line(r)?;
                stack.push(Value::Global(format!("{module}.{name}")));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                stack.push(Value::Global(format!(
                    "{}.{}",
                    module.text()?,
                    name.text()?
                )));
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85 => {
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a]));
            }
            0x86 => {
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a, b]));
            }
            0x87 => {
                let c = pop(&mut stack)?;
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a, b, c]));
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Dict(pairs(items)?));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(bad("APPEND to a non-list")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(bad("APPENDS to a non-list")),
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err(bad("SETITEM on a non-dict")),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.extend(pairs(items)?),
                    _ => return Err(bad("SETITEMS on a non-dict")),
                }
            }
            b'q' => {
                let k = u32::from(read_u8(r)?);
                memo.insert(
                    k,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| bad("BINPUT on an empty stack"))?,
                );
            }
            b'r' => {
                let k = u32::from_le_bytes(arr(r)?);
                memo.insert(
                    k,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| bad("LONG_BINPUT on an empty stack"))?,
                );
            }
            0x94 => {
                let k = u32::try_from(memo.len()).map_err(|_| bad("memo too large"))?;
                memo.insert(
                    k,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| bad("MEMOIZE on an empty stack"))?,
                );
            }
            b'h' => {
                let k = u32::from(read_u8(r)?);
                stack.push(
                    memo.get(&k)
                        .cloned()
                        .ok_or_else(|| bad("BINGET of an unknown memo"))?,
                );
            }
            b'j' => {
                let k = u32::from_le_bytes(arr(r)?);
                stack.push(
                    memo.get(&k)
                        .cloned()
                        .ok_or_else(|| bad("LONG_BINGET of an unknown memo"))?,
                );
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(persistent(&pid)?);
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                stack.push(reduce(&callable, args)?);
            }
            b'b' => {
                // BUILD: state for the object below; a state dict's `_metadata` is not needed.
                pop(&mut stack)?;
            }
            other => return Err(bad(format!("unsupported pickle opcode 0x{other:02x}"))),
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, TorchFileError> {
    if !items.len().is_multiple_of(2) {
        return Err(bad("odd number of dict items"));
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// `('storage', torch.FloatStorage, key, location, numel[, view])`.
fn persistent(pid: &Value) -> Result<Value, TorchFileError> {
    let Value::Tuple(t) = pid else {
        return Err(bad(format!("unexpected persistent id {pid:?}")));
    };
    match t.as_slice() {
        [Value::Str(kind), Value::Global(dtype), key, ..] if kind == "storage" => {
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                other => return Err(bad(format!("storage key {other:?}"))),
            };
            Ok(Value::Storage(
                key,
                dtype.rsplit('.').next().unwrap_or_default().to_owned(),
            ))
        }
        _ => Err(bad(format!("unexpected persistent id {pid:?}"))),
    }
}

fn reduce(callable: &Value, args: Value) -> Result<Value, TorchFileError> {
    let Value::Global(name) = callable else {
        return Err(bad(format!("cannot call {callable:?}")));
    };
    let Value::Tuple(args) = args else {
        return Err(bad(format!("{name}: arguments are not a tuple")));
    };
    match name.as_str() {
        "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let (Some(Value::Storage(storage, dtype)), Some(offset), Some(size), Some(stride)) =
                (args.first(), args.get(1), args.get(2), args.get(3))
            else {
                return Err(bad(format!("{name}: unexpected arguments")));
            };
            Ok(Value::Tensor {
                storage: storage.clone(),
                dtype: dtype.clone(),
                offset: usize::try_from(offset.int()?).map_err(|_| bad("negative offset"))?,
                size: size.usizes()?,
                stride: stride.usizes()?,
            })
        }
        "torch._utils._rebuild_parameter" => args
            .into_iter()
            .next()
            .ok_or_else(|| bad("_rebuild_parameter without a tensor")),
        _ => Err(bad(format!("unsupported class or function {name}"))),
    }
}

/// The state dict's tensors, before their storages are read.
fn tensors(v: Value) -> Result<Vec<(String, Value)>, TorchFileError> {
    let Value::Dict(items) = v else {
        return Err(bad(
            "the checkpoint is not a state dict (a mapping of names to tensors)",
        ));
    };
    let mut out = Vec::new();
    for (k, t) in items {
        let name = k.text()?.to_owned();
        match t {
            Value::Tensor { .. } => out.push((name, t)),
            // Buffers such as `num_batches_tracked` scalars: not features.
            Value::Int(_) | Value::Float(_) | Value::None => {}
            other => return Err(bad(format!("{name}: not a tensor ({other:?})"))),
        }
    }
    Ok(out)
}

/// Copies a tensor's elements (any strides) out of its storage.
fn materialize(
    name: &str,
    t: &Value,
    storages: &HashMap<String, Vec<u8>>,
) -> Result<RawTensor, TorchFileError> {
    let Value::Tensor {
        storage,
        dtype,
        offset,
        size,
        stride,
    } = t
    else {
        return Err(bad(format!("{name}: not a tensor")));
    };
    if dtype != "FloatStorage" {
        return Err(bad(format!(
            "{name}: {dtype} tensors are not supported (float32 only)"
        )));
    }
    let data = storages
        .get(storage)
        .ok_or_else(|| bad(format!("{name}: storage {storage} is missing")))?;
    let numel = size
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d))
        .filter(|n| *n <= data.len() / 4)
        .ok_or_else(|| bad(format!("{name}: shape {size:?} is larger than its storage")))?;
    if size.len() != stride.len() {
        return Err(bad(format!("{name}: shape and strides differ in rank")));
    }
    let mut out = Vec::with_capacity(numel * 4);
    let mut index = vec![0usize; size.len()];
    for _ in 0..numel {
        let at = offset + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        let bytes = data
            .get(at * 4..at * 4 + 4)
            .ok_or_else(|| bad(format!("{name}: reads past its storage")))?;
        out.extend_from_slice(bytes);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < size[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(RawTensor {
        shape: size.clone(),
        data: out,
    })
}

/// 0x1950a86a20f9469cfc6c, little-endian, as the legacy format's first pickle holds it.
const LEGACY_MAGIC: &[u8] = &[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

fn read_legacy(bytes: &[u8]) -> Result<BTreeMap<String, RawTensor>, TorchFileError> {
    let mut r = Cursor::new(bytes);
    // torch/serialization.py: MAGIC_NUMBER, PROTOCOL_VERSION, then system information.
    let magic = unpickle(&mut r)?;
    if !matches!(&magic, Value::BigInt(b) if b.as_slice() == LEGACY_MAGIC) {
        return Err(bad(
            "neither a zip archive nor a legacy torch.save file (no magic number)",
        ));
    }
    if unpickle(&mut r)?.int()? != 1001 {
        return Err(bad("unknown legacy protocol version"));
    }
    let _sys_info = unpickle(&mut r)?;
    let root = tensors(unpickle(&mut r)?)?;
    let Value::List(keys) = unpickle(&mut r)? else {
        return Err(bad("no storage key list"));
    };
    let mut storages = HashMap::new();
    for key in keys {
        let key = key.text()?.to_owned();
        let numel = usize::try_from(u64::from_le_bytes(arr(&mut r)?))
            .map_err(|_| bad("storage too large"))?;
        storages.insert(
            key,
            read_n(
                &mut r,
                numel
                    .checked_mul(4)
                    .ok_or_else(|| bad("storage too large"))?,
            )?,
        );
    }
    root.iter()
        .map(|(n, t)| Ok((n.clone(), materialize(n, t, &storages)?)))
        .collect()
}

fn read_zip(bytes: &[u8]) -> Result<BTreeMap<String, RawTensor>, TorchFileError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| bad(format!("zip: {e}")))?;
    let names: Vec<String> = zip.file_names().map(str::to_owned).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .ok_or_else(|| bad("the zip holds no data.pkl"))?
        .clone();
    let prefix = pkl.trim_end_matches("data.pkl").to_owned();
    let entry =
        |zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str| -> Result<Vec<u8>, TorchFileError> {
            let mut f = zip.by_name(name).map_err(|e| bad(format!("{name}: {e}")))?;
            let mut out = Vec::new();
            f.read_to_end(&mut out)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            Ok(out)
        };
    let data = entry(&mut zip, &pkl)?;
    let root = tensors(unpickle(&mut Cursor::new(&data[..]))?)?;
    let mut storages = HashMap::new();
    for (_, t) in &root {
        if let Value::Tensor { storage, .. } = t {
            if !storages.contains_key(storage) {
                let bytes = entry(&mut zip, &format!("{prefix}data/{storage}"))?;
                storages.insert(storage.clone(), bytes);
            }
        }
    }
    root.iter()
        .map(|(n, t)| Ok((n.clone(), materialize(n, t, &storages)?)))
        .collect()
}

fn read_u8(r: &mut Cursor<&[u8]>) -> Result<u8, TorchFileError> {
    Ok(arr::<1>(r)?[0])
}

fn arr<const N: usize>(r: &mut Cursor<&[u8]>) -> Result<[u8; N], TorchFileError> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)
        .map_err(|_| bad("the file ends early"))?;
    Ok(b)
}

fn read_n(r: &mut Cursor<&[u8]>, n: usize) -> Result<Vec<u8>, TorchFileError> {
    let left = r
        .get_ref()
        .len()
        .saturating_sub(usize::try_from(r.position()).unwrap_or(usize::MAX));
    if n > left {
        return Err(bad("the file ends early"));
    }
    let mut b = vec![0u8; n];
    r.read_exact(&mut b)
        .map_err(|_| bad("the file ends early"))?;
    Ok(b)
}

fn read_line(r: &mut Cursor<&[u8]>) -> Result<String, TorchFileError> {
    let mut out = Vec::new();
    loop {
        match read_u8(r)? {
            b'\n' => return utf8(out),
            c => out.push(c),
        }
    }
}

fn utf8(b: Vec<u8>) -> Result<String, TorchFileError> {
    String::from_utf8(b).map_err(|_| bad("a string is not UTF-8"))
}
