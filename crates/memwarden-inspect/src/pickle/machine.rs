//! The opcode machine: one pickle, opcode by opcode, on a symbolic stack.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;

use super::arrays::{array_bytes, dtype_has_object, dtype_name, element_bytes, itemsize, shape_of};
use super::{Container, Flavor, Import, Scan, Value};
use crate::source::Skip;
use crate::{ArrayInfo, Finding, InspectError, Limits, Options, Severity};

mod judging;

struct Machine<'r, R> {
    reader: &'r mut R,
    offset: u64,
    options: &'r Options,
    limits: &'r Limits,
    flavor: Flavor,
    /// A byte read to learn whether another pickle follows, not yet executed.
    peeked: Option<u8>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    scan: Scan,
    kept_text_bytes: u64,
}

const MAX_KEPT_STRING: u64 = 64 * 1024;

/// How much of a stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// One pickle, to its `STOP` (what one `pickle.load` reads).
    One,
    /// Every pickle until the end of the stream, as repeated `load` calls on one unpickler
    /// read them (the memo carries over from one to the next).
    All,
}

/// Scans the pickle(s) from the reader's position (`offset` bytes into the file). The scan
/// never fails: a stream that breaks is returned with [`Scan::broken`] set, holding
/// everything seen before the break (a loader runs what precedes a break, then fails).
pub fn scan<R: Skip>(
    reader: &mut R,
    offset: u64,
    options: &Options,
    flavor: Flavor,
    extent: Extent,
) -> Scan {
    let mut machine = Machine {
        reader,
        offset,
        options,
        limits: &options.limits,
        flavor,
        peeked: None,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        scan: Scan::default(),
        kept_text_bytes: 0,
    };
    loop {
        let start = machine.offset;
        if let Err(error) = machine.run() {
            // Bytes after a complete pickle that are not one: a further `load` fails on its
            // first opcode, having run nothing.
            if machine.scan.pickles > 0
                && machine.offset <= start + 1
                && matches!(error, InspectError::Malformed { .. })
            {
                machine.scan.findings.push(Finding {
                    severity: Severity::Info,
                    offset: Some(start),
                    message: format!("the bytes after the last STOP are not a pickle ({error}): an unpickler fails on them at once"),
                });
            } else {
                machine.scan.broken = Some(error);
            }
            break;
        }
        machine.scan.pickles += 1;
        if extent == Extent::One {
            break;
        }
        match machine.peek() {
            Ok(true) => {
                machine.stack.clear();
                machine.marks.clear();
            }
            Ok(false) => break,
            Err(error) => {
                machine.scan.broken = Some(error);
                break;
            }
        }
    }
    machine.scan
}

impl<R: Skip> Machine<'_, R> {
    fn malformed(&self, at: u64, what: impl Into<String>) -> InspectError {
        InspectError::Malformed {
            offset: at,
            message: what.into(),
        }
    }

    /// Whether another byte follows (kept for the next opcode read).
    fn peek(&mut self) -> Result<bool, InspectError> {
        let mut b = [0u8; 1];
        loop {
            match self.reader.read(&mut b) {
                Ok(0) => return Ok(false),
                Ok(_) => {
                    self.peeked = Some(b[0]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(InspectError::io(self.offset, e)),
            }
        }
    }

    fn byte(&mut self) -> Result<u8, InspectError> {
        if let Some(b) = self.peeked.take() {
            self.offset += 1;
            return Ok(b);
        }
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
                    let root = self.stack.pop();
                    if self.scan.pickles == 0 {
                        self.scan.root = root;
                    }
                    self.scan.end = self.offset;
                    return Ok(());
                }
                0x80 => {
                    let protocol = self.byte()?;
                    if self.scan.pickles == 0 {
                        self.scan.protocol = protocol;
                    }
                }
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
                    let call = self.call(func, Value::Tuple(Rc::new(args)), at);
                    self.push(call)?;
                }
                b'o' => {
                    let mut items = self.pop_mark(at)?;
                    if items.is_empty() {
                        return Err(self.malformed(at, "OBJ without a class"));
                    }
                    let func = items.remove(0);
                    let call = self.call(func, Value::Tuple(Rc::new(items)), at);
                    self.push(call)?;
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
                    if let Value::Global(module, name) = &target {
                        self.scan.findings.push(Finding {
                            severity: Severity::High,
                            offset: Some(at),
                            message: format!("BUILD sets attributes on `{module}.{name}` itself, not on an object built from it: it rewrites code that later calls run"),
                        });
                    }
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
