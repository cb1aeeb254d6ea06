//! A pickle reader that never executes anything.
//!
//! It walks the opcode stream of protocols 0 to 5 with a symbolic stack: values are
//! literals (numbers, strings, byte lengths), containers, and *calls* (`REDUCE`, `NEWOBJ`,
//! `OBJ`, `INST`) of *globals* (`GLOBAL`, `STACK_GLOBAL`, `INST`), so it sees every import a
//! real unpickler would perform and what each is called with, while payloads are skipped
//! by seeking (a 2 GB pickle costs a few reads). From the calls it recognises the arrays
//! the file holds: numpy's `_reconstruct` + `BUILD`, protocol 5's `_frombuffer`, joblib's
//! `NumpyArrayWrapper` (whose array bytes follow the `BUILD` in the file), and PyTorch's
//! `_rebuild_tensor_v2` over persistent storages.
//!
//! Hostile input is bounded: opcodes, memo entries, stack depth, string lengths and the
//! depth of analysis are all limited ([`Limits`]), and malformed input is an error with
//! the offset, never a panic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;

use crate::source::Skip;
use crate::{ArrayInfo, Finding, InspectError, Limits, Severity};

/// A symbolic value on the unpickler's stack.
#[derive(Debug, Clone)]
pub enum Value {
    /// `None`.
    None,
    /// `True`/`False`.
    Bool(bool),
    /// An integer that fits in 64 bits (larger ones are `Unknown`).
    Int(i64),
    /// A float.
    Float(f64),
    /// A text string (`None` content when too long to keep).
    Str(Option<Rc<str>>),
    /// A bytes-like payload of this many bytes, at this file offset.
    Bytes {
        /// Length.
        len: u64,
        /// Offset of the first byte.
        offset: u64,
    },
    /// An out-of-band buffer (protocol 5 `NEXT_BUFFER`).
    Buffer,
    /// A module attribute an unpickler would import.
    Global(Rc<str>, Rc<str>),
    /// A call of `func` with `args` (`REDUCE`, `NEWOBJ`...), then `state` when built.
    Call {
        /// The callable.
        func: Rc<Value>,
        /// Its arguments.
        args: Rc<Value>,
        /// `BUILD` state, when one followed.
        state: Option<Rc<Value>>,
    },
    /// A tuple.
    Tuple(Rc<Vec<Value>>),
    /// A list (mutable through the memo).
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict (mutable through the memo).
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A set or frozenset.
    Set,
    /// A persistent id (`PERSID`, `BINPERSID`).
    Persistent(Rc<Value>),
    /// Anything else.
    Unknown,
}

impl Value {
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(Some(s)) => Some(s),
            _ => None,
        }
    }

    fn global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global(m, n) => Some((m, n)),
            _ => None,
        }
    }

    fn items(&self) -> Vec<Value> {
        match self {
            Value::Tuple(items) => items.as_ref().clone(),
            Value::List(items) => items.borrow().clone(),
            _ => Vec::new(),
        }
    }

    fn dict_get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(items) => items
                .borrow()
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }
}

/// An import the pickle performs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Import {
    /// Module.
    pub module: String,
    /// Attribute.
    pub name: String,
    /// File offset of the opcode.
    pub offset: u64,
}

/// How to treat the bytes that follow certain objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// A plain pickle.
    Plain,
    /// A joblib file: array bytes follow each `NumpyArrayWrapper`'s `BUILD`.
    Joblib,
}

/// What a pickle holds.
#[derive(Debug, Default)]
pub struct Scan {
    /// Protocol from `PROTO` (0 or 1 when absent: text or binary without marker).
    pub protocol: u8,
    /// Every import, in order.
    pub imports: Vec<Import>,
    /// Things a reviewer must see.
    pub findings: Vec<Finding>,
    /// Arrays recognised.
    pub arrays: Vec<ArrayInfo>,
    /// Bytes of raw payload (bytes, bytearray, joblib array data).
    pub payload_bytes: u64,
    /// Bytes of payload in protocol-5 in-band `BYTEARRAY8` (loaded without a copy).
    pub zero_copy_bytes: u64,
    /// Opcodes executed.
    pub opcodes: u64,
    /// The longest text payload (protocol 2 carries numpy's bytes as latin-1 text).
    pub largest_text_bytes: u64,
    /// Array bytes that the objects holding them copy again when they are rebuilt
    /// (scikit-learn's `Tree` copies its `nodes` and `values` into its own buffers).
    pub copied_on_load_bytes: u64,
    /// Persistent ids, in order (PyTorch's storages).
    pub persistent_ids: Vec<Value>,
    /// The value left on the stack by `STOP`.
    pub root: Option<Value>,
    /// Every list and dict built, so that dropping the scan can empty them: a pickle can
    /// make a container hold itself through the memo, a cycle reference counting never
    /// frees (found by fuzzing).
    containers: Vec<Container>,
    /// Offset just after `STOP`.
    pub end: u64,
}

/// A weak handle on a container built during a scan.
#[derive(Debug)]
enum Container {
    List(std::rc::Weak<RefCell<Vec<Value>>>),
    Dict(std::rc::Weak<RefCell<Vec<(Value, Value)>>>),
}

impl Drop for Scan {
    fn drop(&mut self) {
        for container in self.containers.drain(..) {
            match container {
                Container::List(weak) => {
                    if let Some(list) = weak.upgrade() {
                        list.borrow_mut().clear();
                    }
                }
                Container::Dict(weak) => {
                    if let Some(dict) = weak.upgrade() {
                        dict.borrow_mut().clear();
                    }
                }
            }
        }
    }
}

struct Machine<'r, R> {
    reader: &'r mut R,
    offset: u64,
    limits: &'r Limits,
    flavor: Flavor,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    scan: Scan,
    depth: u32,
    kept_text_bytes: u64,
}

const MAX_KEPT_STRING: u64 = 64 * 1024;

/// Scans one pickle from the reader's position (`offset` bytes into the file) to its `STOP`.
pub fn scan<R: Skip>(
    reader: &mut R,
    offset: u64,
    limits: &Limits,
    flavor: Flavor,
) -> Result<Scan, InspectError> {
    let mut machine = Machine {
        reader,
        offset,
        limits,
        flavor,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        scan: Scan::default(),
        depth: 0,
        kept_text_bytes: 0,
    };
    machine.run()?;
    Ok(machine.scan)
}

impl<R: Skip> Machine<'_, R> {
    fn malformed(&self, at: u64, what: impl Into<String>) -> InspectError {
        InspectError::Malformed {
            offset: at,
            message: what.into(),
        }
    }

    fn byte(&mut self) -> Result<u8, InspectError> {
        let mut b = [0u8; 1];
        self.reader.read_exact(&mut b).map_err(|e| self.eof(e))?;
        self.offset += 1;
        Ok(b[0])
    }

    fn eof(&self, e: io::Error) -> InspectError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            InspectError::Truncated {
                offset: self.offset,
            }
        } else {
            InspectError::io(self.offset, e)
        }
    }

    fn bytes_n<const N: usize>(&mut self) -> Result<[u8; N], InspectError> {
        let mut b = [0u8; N];
        self.reader.read_exact(&mut b).map_err(|e| self.eof(e))?;
        self.offset += N as u64;
        Ok(b)
    }

    fn line(&mut self) -> Result<String, InspectError> {
        let mut out = Vec::new();
        loop {
            let b = self.byte()?;
            if b == b'\n' {
                break;
            }
            out.push(b);
            if out.len() as u64 > MAX_KEPT_STRING {
                return Err(self.malformed(self.offset, "a text-protocol line longer than 64 KiB"));
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Reads `len` bytes into memory when small, else skips them; returns the text when kept.
    fn payload(
        &mut self,
        len: u64,
        keep_text: bool,
    ) -> Result<(u64, Option<Vec<u8>>), InspectError> {
        let at = self.offset;
        if keep_text
            && len <= MAX_KEPT_STRING
            && self.kept_text_bytes + len <= self.limits.max_kept_text_bytes
        {
            self.kept_text_bytes += len;
            let mut buf = vec![0u8; len as usize];
            self.reader.read_exact(&mut buf).map_err(|e| self.eof(e))?;
            self.offset += len;
            return Ok((at, Some(buf)));
        }
        self.skip(len)?;
        Ok((at, None))
    }

    fn skip(&mut self, len: u64) -> Result<(), InspectError> {
        let target = self
            .offset
            .checked_add(len)
            .ok_or_else(|| self.malformed(self.offset, "length overflows"))?;
        self.reader.skip(len).map_err(|e| self.eof(e))?;
        self.offset = target;
        Ok(())
    }

    fn push(&mut self, value: Value) -> Result<(), InspectError> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(InspectError::LimitExceeded {
                what: "pickle stack depth",
                limit: self.limits.max_stack as u64,
            });
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self, at: u64) -> Result<Value, InspectError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.malformed(at, "pop across a MARK"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed(at, "stack underflow"))
    }

    fn pop_mark(&mut self, at: u64) -> Result<Vec<Value>, InspectError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed(at, "no MARK to pop to"))?;
        if mark > self.stack.len() {
            return Err(self.malformed(at, "MARK above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self, at: u64) -> Result<&mut Value, InspectError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed(at, "stack underflow"));
        }
        Ok(self.stack.last_mut().expect("checked non-empty"))
    }

    fn memo_put(&mut self, key: u64, at: u64) -> Result<(), InspectError> {
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&key) {
            return Err(InspectError::LimitExceeded {
                what: "pickle memo entries",
                limit: self.limits.max_memo as u64,
            });
        }
        let value = self.top(at)?.clone();
        self.memo.insert(key, value);
        Ok(())
    }

    fn memo_get(&mut self, key: u64, at: u64) -> Result<(), InspectError> {
        let value = self.memo.get(&key).cloned().ok_or_else(|| {
            self.malformed(at, format!("memo key {key} read before it was written"))
        })?;
        self.push(value)
    }

    fn import(&mut self, module: &str, name: &str, at: u64) -> Value {
        self.scan.imports.push(Import {
            module: module.to_owned(),
            name: name.to_owned(),
            offset: at,
        });
        Value::Global(Rc::from(module), Rc::from(name))
    }

    fn run(&mut self) -> Result<(), InspectError> {
        loop {
            self.scan.opcodes += 1;
            if self.scan.opcodes > self.limits.max_opcodes {
                return Err(InspectError::LimitExceeded {
                    what: "pickle opcodes",
                    limit: self.limits.max_opcodes,
                });
            }
            let at = self.offset;
            let op = self.byte()?;
            match op {
                b'.' => {
                    self.scan.root = self.stack.pop();
                    self.scan.end = self.offset;
                    return Ok(());
                }
                0x80 => self.scan.protocol = self.byte()?,
                0x95 => {
                    self.bytes_n::<8>()?; // FRAME: a length hint only
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop(at)?;
                }
                b'1' => {
                    self.pop_mark(at)?;
                }
                b'2' => {
                    let v = self.top(at)?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'I' => {
                    let line = self.line()?;
                    let v = match line.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => s.trim().parse().map_or(Value::Unknown, Value::Int),
                    };
                    self.push(v)?;
                }
                b'L' => {
                    let line = self.line()?;
                    let v = line
                        .trim()
                        .trim_end_matches('L')
                        .parse()
                        .map_or(Value::Unknown, Value::Int);
                    self.push(v)?;
                }
                b'F' => {
                    let line = self.line()?;
                    self.push(line.trim().parse().map_or(Value::Unknown, Value::Float))?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.bytes_n::<4>()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.bytes_n::<2>()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.bytes_n::<8>()?);
                    self.push(Value::Float(v))?;
                }
                0x8a | 0x8b => {
                    let len = if op == 0x8a {
                        u64::from(self.byte()?)
                    } else {
                        u64::from(u32::from_le_bytes(self.bytes_n::<4>()?))
                    };
                    let (_, bytes) = self.payload(len, true)?;
                    let v = match bytes {
                        Some(b) if b.len() <= 8 => {
                            let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                                [0xffu8; 8]
                            } else {
                                [0u8; 8]
                            };
                            buf[..b.len()].copy_from_slice(&b);
                            Value::Int(i64::from_le_bytes(buf))
                        }
                        _ => Value::Unknown,
                    };
                    self.push(v)?;
                }
                b'S' | b'V' => {
                    let line = self.line()?;
                    let text = if op == b'S' {
                        line.trim()
                            .trim_matches(|c| c == '\'' || c == '"')
                            .to_owned()
                    } else {
                        line
                    };
                    self.push(Value::Str(Some(Rc::from(text.as_str()))))?;
                }
                b'T' | b'U' | b'X' | 0x8c | 0x8d => {
                    let len = match op {
                        b'U' | 0x8c => u64::from(self.byte()?),
                        0x8d => u64::from_le_bytes(self.bytes_n::<8>()?),
                        _ => u64::from(u32::from_le_bytes(self.bytes_n::<4>()?)),
                    };
                    let (_, text) = self.payload(len, true)?;
                    if text.is_none() {
                        // A long string is data, not a name: protocol 2 carries numpy's bytes as
                        // latin-1 text for `_codecs.encode`.
                        self.scan.payload_bytes += len;
                        self.scan.largest_text_bytes = self.scan.largest_text_bytes.max(len);
                    }
                    let v =
                        Value::Str(text.map(|t| Rc::from(String::from_utf8_lossy(&t).as_ref())));
                    self.push(v)?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let len = match op {
                        b'C' => u64::from(self.byte()?),
                        b'B' => u64::from(u32::from_le_bytes(self.bytes_n::<4>()?)),
                        _ => u64::from_le_bytes(self.bytes_n::<8>()?),
                    };
                    let (offset, _) = self.payload(len, false)?;
                    self.scan.payload_bytes += len;
                    if op == 0x96 {
                        self.scan.zero_copy_bytes += len;
                    }
                    self.push(Value::Bytes { len, offset })?;
                }
                0x97 => self.push(Value::Buffer)?,
                0x98 => {}
                b')' => self.push(Value::Tuple(Rc::new(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.push(Value::Tuple(Rc::new(items)))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Rc::new(items)))?;
                }
                b']' => {
                    let list = self.new_list(Vec::new());
                    self.push(list)?;
                }
                b'l' => {
                    let items = self.pop_mark(at)?;
                    let list = self.new_list(items);
                    self.push(list)?;
                }
                b'}' => {
                    let dict = self.new_dict(Vec::new());
                    self.push(dict)?;
                }
                b'd' => {
                    let items = self.pop_mark(at)?;
                    let pairs = items
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0].clone(), c[1].clone()))
                        .collect();
                    let dict = self.new_dict(pairs);
                    self.push(dict)?;
                }
                0x8f => self.push(Value::Set)?,
                0x91 => {
                    self.pop_mark(at)?;
                    self.push(Value::Set)?;
                }
                0x90 => {
                    self.pop_mark(at)?;
                    self.top(at)?;
                }
                b'a' => {
                    let item = self.pop(at)?;
                    if let Value::List(list) = self.top(at)? {
                        list.borrow_mut().push(item);
                    }
                }
                b'e' => {
                    let items = self.pop_mark(at)?;
                    if let Value::List(list) = self.top(at)? {
                        list.borrow_mut().extend(items);
                    }
                }
                b's' => {
                    let value = self.pop(at)?;
                    let key = self.pop(at)?;
                    if let Value::Dict(dict) = self.top(at)? {
                        dict.borrow_mut().push((key, value));
                    }
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    if let Value::Dict(dict) = self.top(at)? {
                        let mut dict = dict.borrow_mut();
                        for pair in items.chunks(2).filter(|c| c.len() == 2) {
                            dict.push((pair[0].clone(), pair[1].clone()));
                        }
                    }
                }
                b'p' => {
                    let key = self
                        .line()?
                        .trim()
                        .parse()
                        .map_err(|_| self.malformed(at, "PUT with a non-numeric key"))?;
                    self.memo_put(key, at)?;
                }
                b'q' => {
                    let key = u64::from(self.byte()?);
                    self.memo_put(key, at)?;
                }
                b'r' => {
                    let key = u64::from(u32::from_le_bytes(self.bytes_n::<4>()?));
                    self.memo_put(key, at)?;
                }
                0x94 => {
                    let key = self.memo.len() as u64;
                    self.memo_put(key, at)?;
                }
                b'g' => {
                    let key = self
                        .line()?
                        .trim()
                        .parse()
                        .map_err(|_| self.malformed(at, "GET with a non-numeric key"))?;
                    self.memo_get(key, at)?;
                }
                b'h' => {
                    let key = u64::from(self.byte()?);
                    self.memo_get(key, at)?;
                }
                b'j' => {
                    let key = u64::from(u32::from_le_bytes(self.bytes_n::<4>()?));
                    self.memo_get(key, at)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = self.import(&module, &name, at);
                    self.push(v)?;
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let v = match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => {
                            let (m, n) = (m.to_owned(), n.to_owned());
                            self.import(&m, &n, at)
                        }
                        _ => {
                            self.scan.findings.push(Finding {
                                severity: Severity::Critical,
                                offset: Some(at),
                                message: "STACK_GLOBAL imports a name built at load time rather than a literal string: what it imports cannot be known without executing the pickle".to_owned(),
                            });
                            Value::Global(Rc::from("?"), Rc::from("?"))
                        }
                    };
                    self.push(v)?;
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let args = self.pop_mark(at)?;
                    let func = self.import(&module, &name, at);
                    self.push(Value::Call {
                        func: Rc::new(func),
                        args: Rc::new(Value::Tuple(Rc::new(args))),
                        state: None,
                    })?;
                }
                b'o' => {
                    let mut items = self.pop_mark(at)?;
                    if items.is_empty() {
                        return Err(self.malformed(at, "OBJ without a class"));
                    }
                    let func = items.remove(0);
                    self.push(Value::Call {
                        func: Rc::new(func),
                        args: Rc::new(Value::Tuple(Rc::new(items))),
                        state: None,
                    })?;
                }
                b'R' | 0x81 => {
                    let args = self.pop(at)?;
                    let func = self.pop(at)?;
                    let call = self.call(func, args, at);
                    self.push(call)?;
                }
                0x92 => {
                    let _kwargs = self.pop(at)?;
                    let args = self.pop(at)?;
                    let func = self.pop(at)?;
                    let call = self.call(func, args, at);
                    self.push(call)?;
                }
                b'b' => {
                    let state = self.pop(at)?;
                    let target = self.pop(at)?;
                    let built = match target {
                        Value::Call { func, args, .. } => Value::Call {
                            func,
                            args,
                            state: Some(Rc::new(state)),
                        },
                        other => other,
                    };
                    self.after_build(&built, at)?;
                    self.push(built)?;
                }
                b'P' => {
                    let id = self.line()?;
                    let v = Value::Persistent(Rc::new(Value::Str(Some(Rc::from(id.as_str())))));
                    self.scan.persistent_ids.push(v.clone());
                    self.push(v)?;
                }
                b'Q' => {
                    let id = self.pop(at)?;
                    let v = Value::Persistent(Rc::new(id));
                    self.scan.persistent_ids.push(v.clone());
                    self.push(v)?;
                }
                0x82..=0x84 => {
                    match op {
                        0x82 => {
                            self.byte()?;
                        }
                        0x83 => {
                            self.bytes_n::<2>()?;
                        }
                        _ => {
                            self.bytes_n::<4>()?;
                        }
                    }
                    self.scan.findings.push(Finding {
                        severity: Severity::High,
                        offset: Some(at),
                        message: "EXT opcode: imports whatever the copyreg extension registry maps this code to at load time".to_owned(),
                    });
                    self.push(Value::Global(Rc::from("?copyreg-extension"), Rc::from("?")))?;
                }
                other => return Err(self.malformed(at, format!("unknown opcode 0x{other:02x}"))),
            }
        }
    }

    /// A call: recognise numpy's protocol-5 `_frombuffer`; an `OrderedDict()` becomes a dict
    /// so that the items `SETITEMS` adds to it (a PyTorch state dict's) stay visible.
    fn call(&mut self, func: Value, args: Value, _at: u64) -> Value {
        if func.global() == Some(("collections", "OrderedDict")) && args.items().is_empty() {
            return self.new_dict(Vec::new());
        }
        if let Some((module, name)) = func.global() {
            let items = args.items();
            if name == "_frombuffer" && module.starts_with("numpy") && items.len() >= 3 {
                let dtype = dtype_name(&items[1]);
                let shape = shape_of(&items[2]);
                let bytes = match &items[0] {
                    Value::Bytes { len, .. } => Some(*len),
                    _ => itemsize(dtype.as_deref())
                        .zip(shape.as_ref())
                        .map(|(size, s)| size * s.iter().product::<u64>()),
                };
                self.scan.arrays.push(ArrayInfo {
                    name: None,
                    dtype: dtype.unwrap_or_default(),
                    shape,
                    bytes: bytes.unwrap_or(0),
                    kind: "numpy".to_owned(),
                });
            }
        }
        Value::Call {
            func: Rc::new(func),
            args: Rc::new(args),
            state: None,
        }
    }

    /// After `BUILD`: numpy arrays, and joblib's wrappers whose bytes follow in the file.
    fn after_build(&mut self, built: &Value, at: u64) -> Result<(), InspectError> {
        let Value::Call {
            func,
            args,
            state: Some(state),
        } = built
        else {
            return Ok(());
        };
        let target = match func.as_ref() {
            Value::Global(m, n) => Some((m.as_ref(), n.as_ref())),
            _ => None,
        };
        match target {
            Some(("sklearn.tree._tree", "Tree")) => {
                for key in ["nodes", "values"] {
                    if let Some(array) = state.dict_get(key) {
                        self.scan.copied_on_load_bytes += array_bytes(&array).unwrap_or(0);
                    }
                }
            }
            Some((m, "_reconstruct")) if m.starts_with("numpy") => {
                // state: (version, shape, dtype, is_fortran, raw bytes or list)
                let items = state.items();
                if items.len() >= 5 {
                    let shape = shape_of(&items[1]);
                    let dtype = dtype_name(&items[2]).unwrap_or_default();
                    let bytes = match &items[4] {
                        Value::Bytes { len, .. } => *len,
                        _ => itemsize(Some(&dtype))
                            .zip(shape.as_ref())
                            .map_or(0, |(size, s)| size * s.iter().product::<u64>()),
                    };
                    self.scan.arrays.push(ArrayInfo {
                        name: None,
                        dtype,
                        shape,
                        bytes,
                        kind: "numpy".to_owned(),
                    });
                }
                let _ = args;
            }
            Some((m, "NumpyArrayWrapper"))
                if m.starts_with("joblib") && self.flavor == Flavor::Joblib =>
            {
                let shape = state.dict_get("shape").and_then(|s| shape_of(&s));
                let dtype = state
                    .dict_get("dtype")
                    .and_then(|d| dtype_name(&d))
                    .unwrap_or_default();
                let aligned = state
                    .dict_get("numpy_array_alignment_bytes")
                    .and_then(|v| v.int());
                if dtype == "|O" || dtype == "O" {
                    // Object arrays are a nested pickle (protocol 5), right here in the stream.
                    self.depth += 1;
                    if self.depth > self.limits.max_nesting {
                        return Err(InspectError::LimitExceeded {
                            what: "nested pickles",
                            limit: u64::from(self.limits.max_nesting),
                        });
                    }
                    let nested = scan(&mut *self.reader, self.offset, self.limits, Flavor::Plain)?;
                    self.offset = nested.end;
                    self.depth -= 1;
                    self.scan.findings.push(Finding {
                        severity: Severity::Info,
                        offset: Some(at),
                        message: "an object array stored as a nested pickle".to_owned(),
                    });
                    self.absorb(nested);
                    self.scan.arrays.push(ArrayInfo {
                        name: None,
                        dtype,
                        shape,
                        bytes: 0,
                        kind: "joblib".to_owned(),
                    });
                    return Ok(());
                }
                if aligned.is_some() {
                    let padding = u64::from(self.byte()?);
                    self.skip(padding)?;
                }
                let size = itemsize(Some(&dtype)).ok_or_else(|| {
                    self.malformed(at, format!("joblib array of unknown dtype '{dtype}'"))
                })?;
                let count = shape.as_ref().map_or(Some(1), |s| {
                    s.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
                });
                let bytes = count
                    .and_then(|c| c.checked_mul(size))
                    .ok_or_else(|| self.malformed(at, "joblib array size overflows"))?;
                self.skip(bytes)?;
                self.scan.payload_bytes += bytes;
                self.scan.arrays.push(ArrayInfo {
                    name: None,
                    dtype,
                    shape,
                    bytes,
                    kind: "joblib".to_owned(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn absorb(&mut self, mut nested: Scan) {
        self.scan.imports.append(&mut nested.imports);
        self.scan.findings.append(&mut nested.findings);
        self.scan.arrays.append(&mut nested.arrays);
        self.scan.payload_bytes += nested.payload_bytes;
        self.scan.opcodes += nested.opcodes;
    }

    fn new_list(&mut self, items: Vec<Value>) -> Value {
        let list = Rc::new(RefCell::new(items));
        self.scan
            .containers
            .push(Container::List(Rc::downgrade(&list)));
        Value::List(list)
    }

    fn new_dict(&mut self, pairs: Vec<(Value, Value)>) -> Value {
        let dict = Rc::new(RefCell::new(pairs));
        self.scan
            .containers
            .push(Container::Dict(Rc::downgrade(&dict)));
        Value::Dict(dict)
    }
}

/// Names the arrays of a scan by where they sit under its root (`estimators_[3].tree_.nodes`),
/// when the walk finds exactly as many arrays as the stream recorded, in the same order
/// (a pickle writes objects depth-first, as the walk visits them). Otherwise the arrays
/// stay unnamed rather than risk wrong names.
pub fn name_arrays(scan: &mut Scan) {
    let Some(root) = &scan.root else { return };
    let mut paths = Vec::new();
    let mut seen = std::collections::HashSet::new();
    array_paths(root, "", &mut paths, &mut seen, 0);
    let unnamed: Vec<usize> = (0..scan.arrays.len())
        .filter(|&i| scan.arrays[i].name.is_none())
        .collect();
    if paths.len() == unnamed.len() {
        for (index, path) in unnamed.into_iter().zip(paths) {
            scan.arrays[index].name = Some(if path.is_empty() {
                "(root)".to_owned()
            } else {
                path
            });
        }
    }
}

fn is_array(value: &Value) -> bool {
    matches!(value, Value::Call { func, state: Some(_), .. }
        if matches!(func.global(), Some((m, "_reconstruct")) if m.starts_with("numpy"))
            || matches!(func.global(), Some((m, "NumpyArrayWrapper")) if m.starts_with("joblib")))
        || matches!(value, Value::Call { func, .. } if matches!(func.global(), Some((m, "_frombuffer")) if m.starts_with("numpy")))
}

fn array_paths(
    value: &Value,
    path: &str,
    out: &mut Vec<String>,
    seen: &mut std::collections::HashSet<usize>,
    depth: u32,
) {
    if depth > 200 {
        return;
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        _ if is_array(value) => {
            if let Value::Call { args, .. } = value {
                if seen.insert(Rc::as_ptr(args) as usize) {
                    out.push(path.to_owned());
                }
            }
        }
        Value::Dict(items) => {
            if !seen.insert(Rc::as_ptr(items) as usize) {
                return;
            }
            for (key, item) in items.borrow().iter() {
                let name = match key {
                    Value::Str(Some(k)) => join(k),
                    Value::Int(i) => format!("{path}[{i}]"),
                    _ => join("?"),
                };
                array_paths(item, &name, out, seen, depth + 1);
            }
        }
        Value::List(items) => {
            if !seen.insert(Rc::as_ptr(items) as usize) {
                return;
            }
            for (i, item) in items.borrow().iter().enumerate() {
                array_paths(item, &format!("{path}[{i}]"), out, seen, depth + 1);
            }
        }
        Value::Tuple(items) => {
            for (i, item) in items.iter().enumerate() {
                array_paths(item, &format!("{path}[{i}]"), out, seen, depth + 1);
            }
        }
        Value::Call { args, state, .. } => {
            if !seen.insert(Rc::as_ptr(args) as usize) {
                return;
            }
            for (i, item) in args.items().iter().enumerate() {
                array_paths(item, &format!("{path}(arg {i})"), out, seen, depth + 1);
            }
            if let Some(state) = state {
                array_paths(state, path, out, seen, depth + 1);
            }
        }
        _ => {}
    }
}

/// Bytes of an array value: numpy's `_reconstruct` + `BUILD`, or joblib's wrapper.
fn array_bytes(value: &Value) -> Option<u64> {
    let Value::Call {
        func,
        state: Some(state),
        ..
    } = value
    else {
        return None;
    };
    let (module, name) = func.global()?;
    let (shape, dtype) = match (module, name) {
        (m, "_reconstruct") if m.starts_with("numpy") => {
            let items = state.items();
            if let Some(Value::Bytes { len, .. }) = items.get(4) {
                return Some(*len);
            }
            (shape_of(items.get(1)?)?, dtype_name(items.get(2)?)?)
        }
        (m, "NumpyArrayWrapper") if m.starts_with("joblib") => (
            shape_of(&state.dict_get("shape")?)?,
            dtype_name(&state.dict_get("dtype")?)?,
        ),
        _ => return None,
    };
    itemsize(Some(&dtype)).map(|size| size * shape.iter().product::<u64>())
}

/// numpy's dtype string from `numpy.dtype('f8', ...)` + `BUILD` (endianness from the state).
pub fn dtype_name(value: &Value) -> Option<String> {
    match value {
        Value::Call { func, args, state }
            if func
                .global()
                .is_some_and(|(m, n)| m.starts_with("numpy") && n == "dtype") =>
        {
            let code = args
                .items()
                .first()
                .and_then(|v| v.as_str().map(str::to_owned))?;
            let order = state
                .as_ref()
                .and_then(|s| s.items().get(1).and_then(|v| v.as_str().map(str::to_owned)));
            Some(match order.as_deref() {
                Some(o @ ("<" | ">" | "|")) => format!("{o}{code}"),
                _ => code,
            })
        }
        Value::Str(Some(s)) => Some(s.to_string()),
        _ => None,
    }
}

/// Size in bytes of one element of a numpy dtype string (`<f8` → 8, `<U10` → 40).
pub fn itemsize(dtype: Option<&str>) -> Option<u64> {
    let code = dtype?.trim_start_matches(['<', '>', '|', '=']);
    let kind = code.chars().next()?;
    let digits: String = code
        .chars()
        .skip(1)
        .take_while(char::is_ascii_digit)
        .collect();
    let n: u64 = if digits.is_empty() {
        match kind {
            'b' | '?' => 1,
            _ => return None,
        }
    } else {
        digits.parse().ok()?
    };
    match kind {
        'U' => Some(4 * n),
        'b' | 'i' | 'u' | 'f' | 'c' | 'S' | 'V' | 'M' | 'm' | '?' => Some(n),
        _ => None,
    }
}

fn shape_of(value: &Value) -> Option<Vec<u64>> {
    match value {
        Value::Tuple(items) => items
            .iter()
            .map(|v| v.int().and_then(|i| u64::try_from(i).ok()))
            .collect(),
        Value::Int(i) => u64::try_from(*i).ok().map(|d| vec![d]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SliceSource;

    fn run(bytes: &[u8]) -> Result<Scan, InspectError> {
        scan(
            &mut SliceSource::new(bytes),
            0,
            &Limits::default(),
            Flavor::Plain,
        )
    }

    #[test]
    fn globals_and_reduce_are_seen_without_running_them() {
        // pickle.dumps of a class that reduces to os.system('echo hi'), protocol 0
        let bytes = b"cos\nsystem\n(S'echo hi'\ntR.";
        let s = run(bytes).expect("scans");
        assert_eq!(
            s.imports,
            [Import {
                module: "os".into(),
                name: "system".into(),
                offset: 0
            }]
        );
    }

    #[test]
    fn stack_global_from_memo_strings_is_resolved() {
        // protocol 4: SHORT_BINUNICODE 'os', MEMOIZE, SHORT_BINUNICODE 'system', MEMOIZE, STACK_GLOBAL
        let mut bytes = vec![0x80, 4, 0x8c, 2];
        bytes.extend(b"os");
        bytes.extend([0x94, 0x8c, 6]);
        bytes.extend(b"system");
        bytes.extend([0x94, 0x93, 0x94, b'h', 0, b'0', b'0', b'.']);
        let s = run(&bytes).expect("scans");
        assert_eq!(s.imports[0].module, "os");
        assert_eq!(s.imports[0].name, "system");
        assert!(s.findings.is_empty());
    }

    #[test]
    fn stack_global_from_a_computed_string_is_flagged() {
        // the module name comes from a call result, not a literal
        let mut bytes = vec![0x80, 4, 0x8c, 8];
        bytes.extend(b"builtins");
        bytes.extend([0x8c, 3]);
        bytes.extend(b"str");
        bytes.extend([0x93, 0x8c, 2]);
        bytes.extend(b"os");
        bytes.extend([0x85, b'R', 0x8c, 6]);
        bytes.extend(b"system");
        bytes.extend([0x93, b'.']);
        let s = run(&bytes).expect("scans");
        assert!(
            s.findings
                .iter()
                .any(|f| f.severity == Severity::Critical && f.message.contains("STACK_GLOBAL")),
            "{:?}",
            s.findings
        );
    }

    #[test]
    fn malformed_input_is_an_error_with_an_offset_never_a_panic() {
        assert!(matches!(run(b""), Err(InspectError::Truncated { .. })));
        assert!(matches!(
            run(b"\x80\x04\xff"),
            Err(InspectError::Malformed { offset: 2, .. })
        ));
        assert!(matches!(run(b"0."), Err(InspectError::Malformed { .. })));
        assert!(matches!(
            run(b"h\x05."),
            Err(InspectError::Malformed { .. })
        ));
        assert!(matches!(
            run(b"B\xff\xff\xff\x7f"),
            Err(InspectError::Truncated { .. })
        ));
        assert!(run(b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
    }

    #[test]
    fn limits_bound_hostile_streams() {
        let limits = Limits {
            max_opcodes: 1000,
            ..Limits::default()
        };
        let bytes: Vec<u8> = std::iter::repeat_n(b'N', 5000).chain([b'.']).collect();
        let err =
            scan(&mut SliceSource::new(&bytes), 0, &limits, Flavor::Plain).expect_err("limited");
        assert!(matches!(
            err,
            InspectError::LimitExceeded {
                what: "pickle opcodes",
                ..
            }
        ));
        // A self-referencing list doubled through the memo stays cheap (shared, not copied).
        let mut bytes = vec![b']', b'q', 0];
        for _ in 0..10_000 {
            bytes.extend([b'h', 0, b'a']);
        }
        bytes.push(b'.');
        assert!(run(&bytes).is_ok());
    }

    #[test]
    fn self_referencing_containers_are_freed() {
        // ] q0 h0 a . : a list appended to itself through the memo.
        let scan = run(b"]q\x00h\x00a.").expect("scans");
        let Some(Value::List(list)) = &scan.root else {
            panic!("a list")
        };
        let weak = Rc::downgrade(list);
        drop(scan);
        assert!(
            weak.upgrade().is_none(),
            "the cycle was broken and the list freed"
        );
    }

    #[test]
    fn kept_strings_are_bounded_in_total() {
        let limits = Limits {
            max_kept_text_bytes: 100,
            ..Limits::default()
        };
        // Three 60-byte strings: only the first fits the budget; the others are skipped, so
        // a STACK_GLOBAL built from them is flagged rather than resolved.
        let mut bytes = vec![0x80, 4];
        for _ in 0..3 {
            bytes.extend([0x8c, 60]);
            bytes.extend([b'a'; 60]);
        }
        bytes.extend([0x93, b'.']);
        let scan = scan(&mut SliceSource::new(&bytes), 0, &limits, Flavor::Plain).expect("scans");
        assert!(
            scan.findings
                .iter()
                .any(|f| f.message.contains("STACK_GLOBAL")),
            "{:?}",
            scan.findings
        );
        assert_eq!(scan.payload_bytes, 120);
    }

    #[test]
    fn itemsizes() {
        assert_eq!(itemsize(Some("<f8")), Some(8));
        assert_eq!(itemsize(Some("|b1")), Some(1));
        assert_eq!(itemsize(Some("<U10")), Some(40));
        assert_eq!(itemsize(Some("|O")), None);
    }
}
