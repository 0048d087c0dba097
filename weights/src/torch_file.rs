//! Reading PyTorch checkpoints (`torch.save` of a state dict) without Python: the
//! legacy format torchvision's published VGG files use (pickles followed by raw
//! storages) and the zip format of newer PyTorch (`archive/data.pkl` plus one entry per
//! storage). Only what a state dict of float tensors needs of the pickle protocol is
//! implemented; anything else is an error that names the opcode or class.
//!
//! The file is untrusted, so what it can make the reader do is bounded by its size:
//! memo references share the value they name (never a copy), every value, item and
//! byte of text the pickle machine creates is counted against a budget of a few units
//! per byte of the file, containers nest at most 100 levels (so nothing that
//! walks or drops a value recurses deeper), every length read from the file is checked
//! against what is left of it before anything is allocated for it, storages are read
//! once and shared by the tensors that view them, and the tensors' own bytes together
//! may not exceed a few times the file's size.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::rc::Rc;

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

/// Deepest nesting of tuples, lists and dicts a pickle may build (a state dict needs 4).
const MAX_DEPTH: usize = 100;
/// Units (values, container items, bytes of text) the pickles may create per byte of
/// the file, and in addition; a state dict's pickle needs less than 2 per byte of it.
const UNITS_PER_BYTE: usize = 4;
const UNITS_EXTRA: usize = 4096;
/// Bytes of tensors the reader may return per byte of the file, and in addition: one
/// storage viewed by a few tensors (tied weights) fits, thousands of views do not.
const TENSOR_BYTES_PER_BYTE: usize = 4;
const TENSOR_BYTES_EXTRA: usize = 1 << 20;
/// Most dimensions a tensor may have (convolution weights have 4).
const MAX_RANK: usize = 8;
/// Longest storage key or dtype name accepted (torch writes short decimal keys).
const MAX_KEY: usize = 256;

/// Reads every tensor of a state dict, by name.
pub fn read_state_dict(bytes: &[u8]) -> Result<BTreeMap<String, RawTensor>, TorchFileError> {
    let mut budget = Budget::for_file(bytes.len());
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes, &mut budget)
    } else {
        read_legacy(bytes, &mut budget)
    }
}

/// What the pickles of one file may still create, in units: one per value, container
/// item or memo entry, one per byte of text.
struct Budget {
    left: usize,
    file_len: usize,
}

impl Budget {
    fn for_file(file_len: usize) -> Self {
        Self {
            left: file_len
                .saturating_mul(UNITS_PER_BYTE)
                .saturating_add(UNITS_EXTRA),
            file_len,
        }
    }

    fn spend(&mut self, units: usize) -> Result<(), TorchFileError> {
        self.left = self.left.checked_sub(units).ok_or_else(|| {
            bad(format!(
                "pickle builds more values than a file of {} bytes can hold",
                self.file_len
            ))
        })?;
        Ok(())
    }
}

/// A value on the pickle machine's stack. Cloning one is cheap: what it holds is
/// shared, which is how memo references (BINGET) share the value they name.
#[derive(Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as LONG1 gives it (little-endian bytes).
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Map>),
    /// `module.name` from GLOBAL / STACK_GLOBAL.
    Global(Rc<str>),
    /// A storage reference.
    Storage(Rc<StorageRef>),
    /// A tensor over a storage.
    Tensor(Rc<TensorRef>),
}

/// Items of a tuple or list, and how deep they nest (1 for no containers inside).
#[derive(Clone)]
struct Seq {
    items: Vec<Value>,
    depth: usize,
}

/// Items of a dict, in pickle order, and how deep they nest.
#[derive(Clone)]
struct Map {
    items: Vec<(Value, Value)>,
    depth: usize,
}

/// A storage reference: the storage's key and its dtype (`FloatStorage`).
struct StorageRef {
    key: Rc<str>,
    dtype: Rc<str>,
}

/// A tensor: storage, offset, size, stride (in elements).
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

impl Value {
    /// How deep containers nest in this value (0: not a container).
    fn depth(&self) -> usize {
        match self {
            Self::Tuple(s) | Self::List(s) => s.depth,
            Self::Dict(m) => m.depth,
            _ => 0,
        }
    }

    fn int(&self) -> Result<i64, TorchFileError> {
        match self {
            Self::Int(i) => Ok(*i),
            Self::Bool(b) => Ok(i64::from(*b)),
            other => Err(bad(format!(
                "expected an integer, found {}",
                describe(other)
            ))),
        }
    }

    fn usizes(&self, budget: &mut Budget) -> Result<Vec<usize>, TorchFileError> {
        match self {
            Self::Tuple(s) | Self::List(s) => {
                budget.spend(s.items.len())?;
                s.items
                    .iter()
                    .map(|x| usize::try_from(x.int()?).map_err(|_| bad("negative size")))
                    .collect()
            }
            other => Err(bad(format!(
                "expected a tuple of sizes, found {}",
                describe(other)
            ))),
        }
    }

    fn text(&self) -> Result<&Rc<str>, TorchFileError> {
        match self {
            Self::Str(s) => Ok(s),
            other => Err(bad(format!("expected a string, found {}", describe(other)))),
        }
    }
}

/// At most 60 characters of `s`, for error messages.
fn clip(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// A short description of a value for error messages: never its whole contents, which
/// memo references can make exponentially large when written out.
fn describe(v: &Value) -> String {
    match v {
        Value::None => "None".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Int(i) => format!("the integer {i}"),
        Value::BigInt(b) => format!("an integer of {} bytes", b.len()),
        Value::Float(f) => format!("the float {f}"),
        Value::Str(s) => format!("the string {:?}", clip(s)),
        Value::Bytes(b) => format!("{} bytes", b.len()),
        Value::Tuple(s) => format!("a tuple of {} items", s.items.len()),
        Value::List(s) => format!("a list of {} items", s.items.len()),
        Value::Dict(m) => format!("a dict of {} items", m.items.len()),
        Value::Global(g) => clip(g),
        Value::Storage(s) => format!("storage {} ({})", clip(&s.key), clip(&s.dtype)),
        Value::Tensor(t) => format!("a tensor of {} dimensions", t.size.len()),
    }
}

/// The depth of a container holding values of depths `inner`, if within [`MAX_DEPTH`].
fn container_depth(
    outer: usize,
    inner: impl Iterator<Item = usize>,
) -> Result<usize, TorchFileError> {
    let depth = inner.map(|d| d + 1).fold(outer.max(1), usize::max);
    if depth > MAX_DEPTH {
        return Err(bad(format!("pickle nests deeper than {MAX_DEPTH} levels")));
    }
    Ok(depth)
}

fn seq(items: Vec<Value>) -> Result<Rc<Seq>, TorchFileError> {
    let depth = container_depth(1, items.iter().map(Value::depth))?;
    Ok(Rc::new(Seq { items, depth }))
}

fn map(items: Vec<(Value, Value)>) -> Result<Map, TorchFileError> {
    let depth = container_depth(1, items.iter().map(|(k, v)| k.depth().max(v.depth())))?;
    Ok(Map { items, depth })
}

/// Appends to a list. A list the memo (or another value) also holds is copied first,
/// item by item (the memo keeps what it was given), and the copy is paid for.
fn extend_list(
    list: &mut Rc<Seq>,
    items: Vec<Value>,
    budget: &mut Budget,
) -> Result<(), TorchFileError> {
    let depth = container_depth(list.depth, items.iter().map(Value::depth))?;
    if Rc::get_mut(list).is_none() {
        budget.spend(list.items.len())?;
    }
    let list = Rc::make_mut(list);
    list.items.extend(items);
    list.depth = depth;
    Ok(())
}

/// Adds items to a dict, as [`extend_list`] does to a list.
fn extend_dict(
    dict: &mut Rc<Map>,
    items: Vec<(Value, Value)>,
    budget: &mut Budget,
) -> Result<(), TorchFileError> {
    let depth = container_depth(
        dict.depth,
        items.iter().map(|(k, v)| k.depth().max(v.depth())),
    )?;
    if Rc::get_mut(dict).is_none() {
        budget.spend(dict.items.len())?;
    }
    let dict = Rc::make_mut(dict);
    dict.items.extend(items);
    dict.depth = depth;
    Ok(())
}

/// The pickle machine's stack, with MARKs kept apart (as positions) so that a mark is
/// never taken for a value.
struct Stack {
    values: Vec<Value>,
    marks: Vec<usize>,
}

impl Stack {
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, v: Value, budget: &mut Budget) -> Result<(), TorchFileError> {
        budget.spend(1)?;
        self.values.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, TorchFileError> {
        if self.values.len() <= self.floor() {
            return Err(bad("pickle stack underflow"));
        }
        self.values
            .pop()
            .ok_or_else(|| bad("pickle stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, TorchFileError> {
        if self.values.len() <= self.floor() {
            return Err(bad("pickle stack underflow"));
        }
        self.values
            .last_mut()
            .ok_or_else(|| bad("pickle stack underflow"))
    }

    fn mark(&mut self, budget: &mut Budget) -> Result<(), TorchFileError> {
        budget.spend(1)?;
        self.marks.push(self.values.len());
        Ok(())
    }

    /// The values above the last MARK, which goes.
    fn pop_mark(&mut self) -> Result<Vec<Value>, TorchFileError> {
        let at = self.marks.pop().ok_or_else(|| bad("pickle MARK missing"))?;
        Ok(self.values.split_off(at))
    }
}

/// Reads `n` bytes of text or data whose length the file gives, refusing a length
/// longer than the rest of the file before anything is allocated for it.
fn read_counted(
    r: &mut Cursor<&[u8]>,
    n: u64,
    what: &str,
    budget: &mut Budget,
) -> Result<Vec<u8>, TorchFileError> {
    let left = left_in(r);
    let n = usize::try_from(n)
        .ok()
        .filter(|n| *n <= left)
        .ok_or_else(|| {
            bad(format!(
                "the pickle gives {what} of {n} bytes but only {left} bytes are left in the file"
            ))
        })?;
    budget.spend(n)?;
    read_n(r, n)
}

fn text(b: Vec<u8>, budget: &mut Budget) -> Result<Value, TorchFileError> {
    budget.spend(1)?;
    Ok(Value::Str(Rc::from(utf8(b)?)))
}

/// Latin-1 style short strings (SHORT_BINSTRING, BINSTRING): invalid UTF-8 becomes
/// U+FFFD, up to 3 bytes for 1, which is paid for.
fn lossy_text(b: &[u8], budget: &mut Budget) -> Result<Value, TorchFileError> {
    let s = String::from_utf8_lossy(b);
    budget.spend(s.len().saturating_add(1))?;
    Ok(Value::Str(Rc::from(s.as_ref())))
}

/// Runs one pickle from `r` and returns its value.
fn unpickle(r: &mut Cursor<&[u8]>, budget: &mut Budget) -> Result<Value, TorchFileError> {
    let mut stack = Stack {
        values: Vec::new(),
        marks: Vec::new(),
    };
    let mut memo: HashMap<u32, Value> = HashMap::new();
    loop {
        let op = read_u8(r)?;
        let v = match op {
            0x80 => {
                read_u8(r)?; // PROTO
                continue;
            }
            0x95 => {
                read_n(r, 8)?; // FRAME
                continue;
            }
            b'.' => return stack.pop(), // STOP
            b'(' => {
                stack.mark(budget)?;
                continue;
            }
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'}' => Value::Dict(Rc::new(map(Vec::new())?)),
            b']' => Value::List(seq(Vec::new())?),
            b')' => Value::Tuple(seq(Vec::new())?),
            b'J' => Value::Int(i64::from(i32::from_le_bytes(arr(r)?))),
            b'K' => Value::Int(i64::from(read_u8(r)?)),
            b'M' => Value::Int(i64::from(u16::from_le_bytes(arr(r)?))),
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = read_u8(r)?;
                let b = read_counted(r, u64::from(n), "an integer", budget)?;
                let n = b.len();
                if n > 8 {
                    Value::BigInt(Rc::from(b))
                } else {
                    let mut v: i64 = 0;
                    for (i, byte) in b.iter().enumerate() {
                        v |= i64::from(*byte) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    Value::Int(v)
                }
            }
            b'G' => Value::Float(f64::from_be_bytes(arr(r)?)),
            b'X' => {
                let n = u32::from_le_bytes(arr(r)?);
                text(read_counted(r, u64::from(n), "a string", budget)?, budget)?
            }
            0x8c => {
                let n = read_u8(r)?;
                text(read_counted(r, u64::from(n), "a string", budget)?, budget)?
            }
            0x8d => {
                let n = u64::from_le_bytes(arr(r)?);
                text(read_counted(r, n, "a string", budget)?, budget)?
            }
            b'U' => {
                let n = read_u8(r)?;
                lossy_text(&read_counted(r, u64::from(n), "a string", budget)?, budget)?
            }
            b'T' => {
                let n = u32::from_le_bytes(arr(r)?);
                lossy_text(&read_counted(r, u64::from(n), "a string", budget)?, budget)?
            }
            b'C' => {
                let n = read_u8(r)?;
                Value::Bytes(Rc::from(read_counted(r, u64::from(n), "bytes", budget)?))
            }
            b'B' => {
                let n = u32::from_le_bytes(arr(r)?);
                Value::Bytes(Rc::from(read_counted(r, u64::from(n), "bytes", budget)?))
            }
            b'c' => {
                let module = read_line(r)?;
                let name = read_line(r)?;
                let global = format!("{module}.{name}");
                budget.spend(global.len())?;
                Value::Global(Rc::from(global))
            }
            0x93 => {
                let name = stack.pop()?;
                let module = stack.pop()?;
                let global = format!("{}.{}", module.text()?, name.text()?);
                budget.spend(global.len())?;
                Value::Global(Rc::from(global))
            }
            b't' => Value::Tuple(seq(stack.pop_mark()?)?),
            0x85 => {
                let a = stack.pop()?;
                Value::Tuple(seq(vec![a])?)
            }
            0x86 => {
                let b = stack.pop()?;
                let a = stack.pop()?;
                Value::Tuple(seq(vec![a, b])?)
            }
            0x87 => {
                let c = stack.pop()?;
                let b = stack.pop()?;
                let a = stack.pop()?;
                Value::Tuple(seq(vec![a, b, c])?)
            }
            b'l' => Value::List(seq(stack.pop_mark()?)?),
            b'd' => Value::Dict(Rc::new(map(pairs(stack.pop_mark()?)?)?)),
            b'a' => {
                let v = stack.pop()?;
                match stack.top()? {
                    Value::List(l) => extend_list(l, vec![v], budget)?,
                    _ => return Err(bad("APPEND to a non-list")),
                }
                continue;
            }
            b'e' => {
                let items = stack.pop_mark()?;
                match stack.top()? {
                    Value::List(l) => extend_list(l, items, budget)?,
                    _ => return Err(bad("APPENDS to a non-list")),
                }
                continue;
            }
            b's' => {
                let v = stack.pop()?;
                let k = stack.pop()?;
                match stack.top()? {
                    Value::Dict(d) => extend_dict(d, vec![(k, v)], budget)?,
                    _ => return Err(bad("SETITEM on a non-dict")),
                }
                continue;
            }
            b'u' => {
                let items = pairs(stack.pop_mark()?)?;
                match stack.top()? {
                    Value::Dict(d) => extend_dict(d, items, budget)?,
                    _ => return Err(bad("SETITEMS on a non-dict")),
                }
                continue;
            }
            b'q' | b'r' | 0x94 => {
                let k = match op {
                    b'q' => u32::from(read_u8(r)?),
                    b'r' => u32::from_le_bytes(arr(r)?),
                    _ => u32::try_from(memo.len()).map_err(|_| bad("memo too large"))?,
                };
                let v = stack
                    .top()
                    .map_err(|_| bad("BINPUT, LONG_BINPUT or MEMOIZE on an empty stack"))?
                    .clone();
                budget.spend(1)?;
                memo.insert(k, v);
                continue;
            }
            b'h' | b'j' => {
                let k = if op == b'h' {
                    u32::from(read_u8(r)?)
                } else {
                    u32::from_le_bytes(arr(r)?)
                };
                memo.get(&k)
                    .cloned()
                    .ok_or_else(|| bad(format!("BINGET of an unknown memo {k}")))?
            }
            b'Q' => {
                let pid = stack.pop()?;
                persistent(&pid, budget)?
            }
            b'R' | 0x81 => {
                let args = stack.pop()?;
                let callable = stack.pop()?;
                reduce(&callable, &args, budget)?
            }
            b'b' => {
                // BUILD: state for the object below; a state dict's `_metadata` is not needed.
                stack.pop()?;
                continue;
            }
            other => return Err(bad(format!("unsupported pickle opcode 0x{other:02x}"))),
        };
        stack.push(v, budget)?;
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, TorchFileError> {
    if !items.len().is_multiple_of(2) {
        return Err(bad("odd number of dict items"));
    }
    let mut it = items.into_iter();
    let mut out = Vec::with_capacity(it.len() / 2);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// `('storage', torch.FloatStorage, key, location, numel[, view])`.
fn persistent(pid: &Value, budget: &mut Budget) -> Result<Value, TorchFileError> {
    let Value::Tuple(t) = pid else {
        return Err(bad(format!("unexpected persistent id {}", describe(pid))));
    };
    match t.items.as_slice() {
        [Value::Str(kind), Value::Global(dtype), key, ..] if &**kind == "storage" => {
            let key: Rc<str> = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => Rc::from(i.to_string()),
                other => return Err(bad(format!("storage key {}", describe(other)))),
            };
            let dtype = dtype.rsplit('.').next().unwrap_or_default();
            if key.len() > MAX_KEY || dtype.len() > MAX_KEY {
                return Err(bad(format!(
                    "storage key or dtype longer than {MAX_KEY} bytes"
                )));
            }
            budget.spend(key.len() + dtype.len())?;
            Ok(Value::Storage(Rc::new(StorageRef {
                key,
                dtype: Rc::from(dtype),
            })))
        }
        _ => Err(bad(format!("unexpected persistent id {}", describe(pid)))),
    }
}

fn reduce(callable: &Value, args: &Value, budget: &mut Budget) -> Result<Value, TorchFileError> {
    let Value::Global(name) = callable else {
        return Err(bad(format!("cannot call {}", describe(callable))));
    };
    let Value::Tuple(args) = args else {
        return Err(bad(format!("{}: arguments are not a tuple", clip(name))));
    };
    let args = &args.items;
    match &**name {
        "collections.OrderedDict" => Ok(Value::Dict(Rc::new(map(Vec::new())?))),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let (Some(Value::Storage(storage)), Some(offset), Some(size), Some(stride)) =
                (args.first(), args.get(1), args.get(2), args.get(3))
            else {
                return Err(bad(format!("{name}: unexpected arguments")));
            };
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage: storage.clone(),
                offset: usize::try_from(offset.int()?).map_err(|_| bad("negative offset"))?,
                size: size.usizes(budget)?,
                stride: stride.usizes(budget)?,
            })))
        }
        "torch._utils._rebuild_parameter" => args
            .first()
            .cloned()
            .ok_or_else(|| bad("_rebuild_parameter without a tensor")),
        _ => Err(bad(format!("unsupported class or function {}", clip(name)))),
    }
}

/// The state dict's tensors, by name, before their storages are read. A name given
/// twice keeps its last tensor, as a dict does.
fn tensors(v: &Value) -> Result<BTreeMap<Rc<str>, Rc<TensorRef>>, TorchFileError> {
    let Value::Dict(dict) = v else {
        return Err(bad(
            "the checkpoint is not a state dict (a mapping of names to tensors)",
        ));
    };
    // Memo references can repeat one long name many times: entries naming the very same
    // string are settled first, so that each string is compared by content only once.
    let mut last: HashMap<*const u8, usize> = HashMap::new();
    for (i, (k, _)) in dict.items.iter().enumerate() {
        last.insert(k.text()?.as_ptr(), i);
    }
    let mut out = BTreeMap::new();
    for (i, (k, t)) in dict.items.iter().enumerate() {
        let name = k.text()?;
        if last.get(&name.as_ptr()) != Some(&i) {
            continue;
        }
        match t {
            Value::Tensor(t) => {
                out.insert(name.clone(), t.clone());
            }
            // Buffers such as `num_batches_tracked` scalars: not features.
            Value::Int(_) | Value::Float(_) | Value::None => {
                out.remove(name);
            }
            other => {
                return Err(bad(format!(
                    "{}: not a tensor ({})",
                    clip(name),
                    describe(other)
                )))
            }
        }
    }
    Ok(out)
}

/// Bytes of tensors still allowed, by [`TENSOR_BYTES_PER_BYTE`].
struct TensorBudget {
    left: usize,
    file_len: usize,
}

impl TensorBudget {
    fn for_file(file_len: usize) -> Self {
        Self {
            left: file_len
                .saturating_mul(TENSOR_BYTES_PER_BYTE)
                .saturating_add(TENSOR_BYTES_EXTRA),
            file_len,
        }
    }
}

/// Copies a tensor's elements (any strides) out of its storage, once.
fn materialize(
    name: &str,
    t: &TensorRef,
    data: &[u8],
    budget: &mut TensorBudget,
) -> Result<RawTensor, TorchFileError> {
    let TensorRef {
        storage,
        offset,
        size,
        stride,
    } = t;
    let offset = *offset;
    if &*storage.dtype != "FloatStorage" {
        return Err(bad(format!(
            "{name}: {} tensors are not supported (float32 only)",
            clip(&storage.dtype)
        )));
    }
    if size.len() != stride.len() {
        return Err(bad(format!("{name}: shape and strides differ in rank")));
    }
    // A copy costs elements x rank; no network's weight has more than a few dimensions.
    if size.len() > MAX_RANK {
        return Err(bad(format!(
            "{name}: {} dimensions; a weight has at most {MAX_RANK}",
            size.len()
        )));
    }
    let elements = data.len() / 4;
    let too_large = || {
        bad(format!(
            "{name}: a shape of {} dimensions holding more elements than its storage ({elements})",
            size.len()
        ))
    };
    let numel = size
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d))
        .filter(|n| *n <= elements)
        .ok_or_else(too_large)?;
    if numel == 0 {
        return Ok(RawTensor {
            shape: size.clone(),
            data: Vec::new(),
        });
    }
    // The last element the view reaches: all others are before it, so once it lies in
    // the storage no index below can overflow or fall outside.
    let last = size
        .iter()
        .zip(stride)
        .try_fold(offset, |at, (d, s)| {
            at.checked_add((d - 1).checked_mul(*s)?)
        })
        .filter(|at| *at < elements)
        .ok_or_else(|| {
            bad(format!(
                "{name}: offset and strides reach past its storage of {elements} elements"
            ))
        })?;
    debug_assert!(last < elements);
    let bytes = numel * 4;
    budget.left = budget.left.checked_sub(bytes).ok_or_else(|| {
        bad(format!(
            "{name}: the tensors would take more than {} bytes, more than a file of {} \
             bytes can hold (one storage viewed by many tensors?)",
            budget
                .file_len
                .saturating_mul(TENSOR_BYTES_PER_BYTE)
                .saturating_add(TENSOR_BYTES_EXTRA),
            budget.file_len
        ))
    })?;
    let contiguous = {
        let mut expected = 1usize;
        let mut ok = true;
        for (d, s) in size.iter().zip(stride).rev() {
            ok &= *d == 1 || *s == expected;
            expected *= d;
        }
        ok
    };
    let out = if contiguous {
        data.get(offset * 4..offset * 4 + bytes)
            .ok_or_else(|| bad(format!("{name}: reads past its storage")))?
            .to_vec()
    } else {
        let mut out = Vec::with_capacity(bytes);
        let mut index = vec![0usize; size.len()];
        for _ in 0..numel {
            let at = offset + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
            let element = data
                .get(at * 4..at * 4 + 4)
                .ok_or_else(|| bad(format!("{name}: reads past its storage")))?;
            out.extend_from_slice(element);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < size[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        out
    };
    Ok(RawTensor {
        shape: size.clone(),
        data: out,
    })
}

/// Materializes every tensor from the storages (`storage` finds one by key).
fn materialize_all<'a>(
    root: &BTreeMap<Rc<str>, Rc<TensorRef>>,
    storage: impl Fn(&str) -> Option<&'a [u8]>,
    file_len: usize,
) -> Result<BTreeMap<String, RawTensor>, TorchFileError> {
    let mut budget = TensorBudget::for_file(file_len);
    let mut out = BTreeMap::new();
    for (name, t) in root {
        let shown = clip(name);
        let data = storage(&t.storage.key).ok_or_else(|| {
            bad(format!(
                "{shown}: storage {} is missing",
                clip(&t.storage.key)
            ))
        })?;
        out.insert(name.to_string(), materialize(&shown, t, data, &mut budget)?);
    }
    Ok(out)
}

/// 0x1950a86a20f9469cfc6c, little-endian, as the legacy format's first pickle holds it.
const LEGACY_MAGIC: &[u8] = &[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

fn read_legacy(
    bytes: &[u8],
    budget: &mut Budget,
) -> Result<BTreeMap<String, RawTensor>, TorchFileError> {
    let mut r = Cursor::new(bytes);
    // torch/serialization.py: MAGIC_NUMBER, PROTOCOL_VERSION, then system information.
    let magic = unpickle(&mut r, budget)?;
    if !matches!(&magic, Value::BigInt(b) if &**b == LEGACY_MAGIC) {
        return Err(bad(
            "neither a zip archive nor a legacy torch.save file (no magic number)",
        ));
    }
    if unpickle(&mut r, budget)?.int()? != 1001 {
        return Err(bad("unknown legacy protocol version"));
    }
    drop(unpickle(&mut r, budget)?); // sys_info
    let root = tensors(&unpickle(&mut r, budget)?)?;
    let Value::List(keys) = unpickle(&mut r, budget)? else {
        return Err(bad("no storage key list"));
    };
    // Each storage is its element count and then its bytes: kept as a range of the
    // file, which the tensors viewing it share.
    let mut storages: HashMap<Rc<str>, &[u8]> = HashMap::new();
    for key in &keys.items {
        let key = key.text()?;
        let numel = u64::from_le_bytes(arr(&mut r)?);
        let start = usize::try_from(r.position()).unwrap_or(usize::MAX);
        let left = bytes.len().saturating_sub(start);
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(4))
            .filter(|n| *n <= left)
            .ok_or_else(|| {
                bad(format!(
                    "storage {} holds {numel} floats but only {left} bytes are left in the file",
                    clip(key)
                ))
            })?;
        storages.insert(key.clone(), &bytes[start..start + len]);
        r.set_position(r.position() + len as u64);
    }
    materialize_all(&root, |key| storages.get(key).copied(), bytes.len())
}

fn read_zip(
    bytes: &[u8],
    budget: &mut Budget,
) -> Result<BTreeMap<String, RawTensor>, TorchFileError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| bad(format!("zip: {e}")))?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .ok_or_else(|| bad("the zip holds no data.pkl"))?
        .to_owned();
    let prefix = pkl.trim_end_matches("data.pkl").to_owned();
    // Entries are stored, not compressed, so together they cannot hold more than the
    // file; entries that overlap (one stretch of the file named many times) could.
    let mut read_so_far = 0usize;
    let mut entry =
        |zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str| -> Result<Vec<u8>, TorchFileError> {
            let f = zip.by_name(name).map_err(|e| bad(format!("{name}: {e}")))?;
            let left = bytes.len().saturating_sub(read_so_far);
            let too_much = || {
                bad(format!(
                    "{name}: the zip's entries hold more than the {} bytes of the file \
                 (entries overlap?)",
                    bytes.len()
                ))
            };
            let size = usize::try_from(f.size())
                .ok()
                .filter(|n| *n <= left)
                .ok_or_else(too_much)?;
            let mut out = Vec::with_capacity(size);
            f.take(left as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            if out.len() > left {
                return Err(too_much());
            }
            read_so_far += out.len();
            Ok(out)
        };
    let data = entry(&mut zip, &pkl)?;
    let root = tensors(&unpickle(&mut Cursor::new(&data[..]), budget)?)?;
    drop(data);
    // Each storage is read once, however many tensors view it.
    let mut storages: HashMap<Rc<str>, Vec<u8>> = HashMap::new();
    for t in root.values() {
        let key = &t.storage.key;
        if !storages.contains_key(key) {
            let bytes = entry(&mut zip, &format!("{prefix}data/{key}"))?;
            storages.insert(key.clone(), bytes);
        }
    }
    materialize_all(
        &root,
        |key| storages.get(key).map(Vec::as_slice),
        bytes.len(),
    )
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

/// Bytes left to read.
fn left_in(r: &Cursor<&[u8]>) -> usize {
    r.get_ref()
        .len()
        .saturating_sub(usize::try_from(r.position()).unwrap_or(usize::MAX))
}

fn read_n(r: &mut Cursor<&[u8]>, n: usize) -> Result<Vec<u8>, TorchFileError> {
    if n > left_in(r) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    /// BINUNICODE.
    fn s(text: &str) -> Vec<u8> {
        let mut out = vec![b'X'];
        out.extend_from_slice(&u32::try_from(text.len()).expect("short").to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// LONG1 with 8 bytes: any integer.
    fn int(v: u64) -> Vec<u8> {
        let mut out = vec![0x8a, 8];
        out.extend_from_slice(&v.to_le_bytes());
        out
    }

    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`
    /// over the float32 storage `key`, as `torch.save` pickles it (protocol 2).
    fn tensor(key: &str, offset: u64, size: &[u64], stride: &[u64]) -> Vec<u8> {
        let mut p = b"ctorch._utils\n_rebuild_tensor_v2\n((".to_vec();
        p.extend(s("storage"));
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        p.extend(s(key));
        p.extend(s("cpu"));
        p.extend(int(0)); // numel: unused
        p.extend_from_slice(b"tQ");
        p.extend(int(offset));
        for dims in [size, stride] {
            p.push(b'(');
            for d in dims {
                p.extend(int(*d));
            }
            p.push(b't');
        }
        p.push(0x89);
        p.extend_from_slice(b"ccollections\nOrderedDict\n)RtR");
        p
    }

    /// `{name: value, ...}` (values are pickle fragments).
    fn state_dict(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut p = b"\x80\x02}(".to_vec();
        for (name, value) in entries {
            p.extend(s(name));
            p.extend_from_slice(value);
        }
        p.extend_from_slice(b"u.");
        p
    }

    /// An empty `sys_info` pickle.
    const EMPTY: &[u8] = b"\x80\x02}.";

    /// A legacy `torch.save` file: magic number, protocol, `sys_info`, the state dict,
    /// the storage keys and the storages.
    fn legacy(sys_info: &[u8], root: &[u8], storages: &[(&str, &[f32])]) -> Vec<u8> {
        let mut f = b"\x80\x02\x8a\x0a".to_vec();
        f.extend_from_slice(LEGACY_MAGIC);
        f.extend_from_slice(b".\x80\x02M\xe9\x03.");
        f.extend_from_slice(sys_info);
        f.extend_from_slice(root);
        f.extend_from_slice(b"\x80\x02](");
        for (key, _) in storages {
            f.extend(s(key));
        }
        f.extend_from_slice(b"e.");
        for (_, values) in storages {
            f.extend_from_slice(&(values.len() as u64).to_le_bytes());
            for v in *values {
                f.extend_from_slice(&v.to_le_bytes());
            }
        }
        f
    }

    /// A zip `torch.save` file (entries stored, as torch writes them).
    fn zip_file(root: &[u8], storages: &[(&str, &[f32])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("archive/data.pkl", stored).expect("zip");
        w.write_all(root).expect("zip");
        for (key, values) in storages {
            w.start_file(format!("archive/data/{key}"), stored)
                .expect("zip");
            for v in *values {
                w.write_all(&v.to_le_bytes()).expect("zip");
            }
        }
        w.finish().expect("zip").into_inner()
    }

    fn floats(t: &RawTensor) -> Vec<f32> {
        t.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// `[]`, then `levels` times: memoize the top of the stack and replace it by a pair
    /// of (memo references to) itself. 2^levels leaves if each reference were a copy.
    fn memo_bomb(levels: u8) -> Vec<u8> {
        let mut p = b"]q\x00".to_vec();
        for i in 0..levels {
            p.extend_from_slice(&[b'h', i, 0x86, b'q', i + 1]);
        }
        p
    }

    #[test]
    fn small_legacy_and_zip_files_read() {
        let root = state_dict(&[
            ("features.0.weight", tensor("0", 0, &[2, 2], &[2, 1])),
            ("features.0.bias", tensor("1", 0, &[2], &[1])),
            ("features.0.num_batches_tracked", b"K\x07".to_vec()),
        ]);
        let storages: &[(&str, &[f32])] = &[("0", &[1.0, 2.0, 3.0, 4.0]), ("1", &[0.5, -0.5])];
        for file in [legacy(EMPTY, &root, storages), zip_file(&root, storages)] {
            let state = read_state_dict(&file).expect("readable");
            assert_eq!(state.len(), 2);
            let w = &state["features.0.weight"];
            assert_eq!(w.shape, [2, 2]);
            assert_eq!(floats(w), [1.0, 2.0, 3.0, 4.0]);
            let b = &state["features.0.bias"];
            assert_eq!(b.shape, [2]);
            assert_eq!(floats(b), [0.5, -0.5]);
        }
    }

    #[test]
    fn memo_references_are_shared_not_copied() {
        let started = Instant::now();
        // In `sys_info`, which is read and dropped: the file reads.
        let mut sys_info = b"\x80\x02".to_vec();
        sys_info.extend(memo_bomb(30));
        sys_info.push(b'.');
        let root = state_dict(&[("w", tensor("0", 0, &[2], &[1]))]);
        let state = read_state_dict(&legacy(&sys_info, &root, &[("0", &[1.0, 2.0])]))
            .expect("the bomb is made of memo references only");
        assert_eq!(floats(&state["w"]), [1.0, 2.0]);
        // As a state dict entry: refused, with an error that describes it briefly.
        let mut root = b"\x80\x02}".to_vec();
        root.extend(s("w"));
        root.extend(memo_bomb(30));
        root.extend_from_slice(b"s.");
        let e = read_state_dict(&legacy(EMPTY, &root, &[]))
            .expect_err("not a tensor")
            .to_string();
        assert!(e.contains("w: not a tensor"), "{e}");
        assert!(e.len() < 300, "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn copies_of_memoized_lists_count_against_the_budget() {
        // `[]`, then 20,000 times: get the memoized list, append to it (a copy: the memo
        // keeps its own), memoize the longer list. Each copy is as long as the last:
        // 200 million items from a 100 kB pickle.
        let mut sys_info = b"\x80\x02]q\x00".to_vec();
        for _ in 0..20_000 {
            sys_info.extend_from_slice(b"h\x00Naq\x00");
        }
        sys_info.push(b'.');
        let started = Instant::now();
        let e = read_state_dict(&legacy(&sys_info, &state_dict(&[]), &[]))
            .expect_err("quadratic")
            .to_string();
        assert!(
            e.contains("pickle builds more values than a file of") && e.contains("bytes can hold"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        // Appending to a list nothing else holds copies nothing: a long list is fine.
        let mut sys_info = b"\x80\x02]q\x00".to_vec();
        for _ in 0..20_000 {
            sys_info.extend_from_slice(b"Na");
        }
        sys_info.push(b'.');
        read_state_dict(&legacy(&sys_info, &state_dict(&[]), &[])).expect("linear");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let n = 100_000;
        let mut lists = b"\x80\x02".to_vec();
        lists.extend(vec![b']'; n + 1]);
        lists.extend(vec![b'a'; n]);
        lists.push(b'.');
        let mut tuples = b"\x80\x02".to_vec();
        tuples.extend(vec![b'('; n]);
        tuples.push(b')');
        tuples.extend(vec![b't'; n]);
        tuples.push(b'.');
        let root = state_dict(&[]);
        for sys_info in [lists, tuples] {
            let e = read_state_dict(&legacy(&sys_info, &root, &[]))
                .expect_err("too deep")
                .to_string();
            assert!(e.contains("pickle nests deeper than 100 levels"), "{e}");
        }
        // 100 levels are fine, 101 are not.
        for (levels, ok) in [(100, true), (101, false)] {
            let mut sys_info = b"\x80\x02".to_vec();
            sys_info.extend(vec![b']'; levels]);
            sys_info.extend(vec![b'a'; levels - 1]);
            sys_info.push(b'.');
            assert_eq!(
                read_state_dict(&legacy(&sys_info, &root, &[])).is_ok(),
                ok,
                "{levels}"
            );
        }
    }

    #[test]
    fn tensors_sharing_a_storage_each_get_their_own_values() {
        let root = state_dict(&[
            ("whole", tensor("0", 0, &[2, 3], &[3, 1])),
            ("transposed", tensor("0", 0, &[3, 2], &[1, 3])),
            ("row", tensor("0", 3, &[3], &[1])),
            ("column", tensor("0", 1, &[2], &[3])),
            ("tied", tensor("0", 0, &[2, 3], &[3, 1])),
        ]);
        let storages: &[(&str, &[f32])] = &[("0", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])];
        for file in [legacy(EMPTY, &root, storages), zip_file(&root, storages)] {
            let state = read_state_dict(&file).expect("readable");
            for (name, shape, values) in [
                ("whole", &[2, 3][..], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0][..]),
                ("transposed", &[3, 2], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]),
                ("row", &[3], &[4.0, 5.0, 6.0]),
                ("column", &[2], &[2.0, 5.0]),
                ("tied", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ] {
                assert_eq!(state[name].shape, shape, "{name}");
                assert_eq!(floats(&state[name]), values, "{name}");
            }
        }
    }

    #[test]
    fn one_storage_viewed_by_thousands_of_tensors_is_refused() {
        // A 1 MiB storage and 4000 names for one memoized tensor viewing all of it:
        // 4000 MiB of tensors from a file of about 1 MiB.
        let numel = 1 << 18;
        let mut root = b"\x80\x02}(".to_vec();
        root.extend(s("t0000"));
        root.extend(tensor("0", 0, &[numel], &[1]));
        root.extend_from_slice(b"q\x01");
        for i in 1..4000 {
            root.extend(s(&format!("t{i:04}")));
            root.extend_from_slice(b"h\x01");
        }
        root.extend_from_slice(b"u.");
        let storage = vec![0.5f32; 1 << 18];
        let started = Instant::now();
        let e = read_state_dict(&legacy(EMPTY, &root, &[("0", &storage)]))
            .expect_err("4000 MiB from 1 MiB")
            .to_string();
        assert!(e.contains("more than a file of"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn overlapping_zip_entries_are_not_read_over_and_over() {
        // 1000 storages, all entries of the zip's central directory pointing at the
        // same 1 MiB of data (a zip bomb without compression).
        let numel = 1 << 18;
        let keys: Vec<String> = (0..1000).map(|i| format!("{i:04}")).collect();
        let entries: Vec<(&str, Vec<u8>)> = keys
            .iter()
            .map(|k| (k.as_str(), tensor(k, 0, &[numel], &[1])))
            .collect();
        let root = state_dict(&entries);
        let storage = vec![0.5f32; 1 << 18];
        let mut file = zip_file(&root, &[("0000", &storage)]);
        // Central directory: EOCD (22 bytes, no comment) gives its size and offset.
        let eocd = file.len() - 22;
        let u32_at = |f: &[u8], at: usize| {
            u32::from_le_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]) as usize
        };
        let (cd_size, cd_at) = (u32_at(&file, eocd + 12), u32_at(&file, eocd + 16));
        let cd = file[cd_at..cd_at + cd_size].to_vec();
        // The second record is archive/data/0000's.
        let first = 46
            + usize::from(u16::from_le_bytes([cd[28], cd[29]]))
            + usize::from(u16::from_le_bytes([cd[30], cd[31]]))
            + usize::from(u16::from_le_bytes([cd[32], cd[33]]));
        let record = cd[first..].to_vec();
        assert!(record.windows(4).any(|w| w == b"0000"));
        let mut new_cd = cd.clone();
        for k in &keys[1..] {
            let mut r = record.clone();
            let at = r
                .windows(4)
                .position(|w| w == b"0000")
                .expect("the record names its file");
            r[at..at + 4].copy_from_slice(k.as_bytes());
            new_cd.extend(r);
        }
        file.truncate(cd_at);
        file.extend_from_slice(&new_cd);
        let mut end = b"PK\x05\x06\0\0\0\0".to_vec();
        let count = u16::try_from(keys.len() + 1).expect("fits");
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&u32::try_from(new_cd.len()).expect("fits").to_le_bytes());
        end.extend_from_slice(&u32::try_from(cd_at).expect("fits").to_le_bytes());
        end.extend_from_slice(&[0, 0]);
        file.extend(end);
        let started = Instant::now();
        let e = read_state_dict(&file)
            .expect_err("1000 MiB from 1 MiB")
            .to_string();
        assert!(e.contains("more than"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn lengths_beyond_the_file_are_refused_by_name() {
        let root = state_dict(&[]);
        for (sys_info, length) in [
            (&b"\x80\x02X\xff\xff\xff\x7fabc"[..], "2147483647"),
            (b"\x80\x02B\xff\xff\xff\xffabc", "4294967295"),
            (
                b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xffabc",
                "18446744073709551615",
            ),
        ] {
            let e = read_state_dict(&legacy(sys_info, &root, &[]))
                .expect_err("longer than the file")
                .to_string();
            assert!(e.contains(length) && e.contains("left"), "{e}");
        }
        // A storage whose element count is larger than what follows it.
        let root = state_dict(&[("w", tensor("0", 0, &[2], &[1]))]);
        let mut file = legacy(EMPTY, &root, &[("0", &[1.0, 2.0])]);
        let at = file.len() - 16;
        file[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let e = read_state_dict(&file)
            .expect_err("longer than the file")
            .to_string();
        assert!(
            e.contains("storage 0") && e.contains("1099511627776"),
            "{e}"
        );
    }

    #[test]
    fn hostile_shapes_strides_and_offsets_are_errors_not_panics() {
        let storages: &[(&str, &[f32])] = &[("0", &[1.0, 2.0, 3.0, 4.0])];
        for (offset, size, stride) in [
            (0, &[2][..], &[1u64 << 62][..]),
            (0, &[2], &[u64::MAX >> 1]),
            (i64::MAX as u64, &[1], &[1]),
            (1u64 << 62, &[1], &[1]),
            (0, &[1 << 32, 1 << 32], &[1, 1]),
            (0, &[1 << 62, 4], &[0, 1]),
            (0, &[5], &[1]),
            (1, &[4], &[1]),
            (0, &[2, 2], &[3, 1]),
            (0, &[2, 2], &[1 << 62, 1 << 62]),
            (0, &[2], &[1, 1]),
        ] {
            let root = state_dict(&[("w", tensor("0", offset, size, stride))]);
            for file in [legacy(EMPTY, &root, storages), zip_file(&root, storages)] {
                let e = read_state_dict(&file)
                    .expect_err("outside its storage")
                    .to_string();
                assert!(e.contains("w:"), "{offset} {size:?} {stride:?}: {e}");
            }
        }
    }
}
