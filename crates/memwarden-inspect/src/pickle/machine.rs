//! The opcode machine: one pickle, opcode by opcode, on a symbolic stack.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;

use super::arrays::{array_bytes, dtype_has_object, dtype_name, element_bytes, itemsize, shape_of};
use super::{Container, Flavor, Import, Scan, Value};
use crate::source::Skip;
use crate::{ArrayInfo, Finding, InspectError, Limits, Options, Severity};

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

    /// Judges what a call calls. The callee must be an imported name (judged with the
    /// imports); the result of another call, or any other value, cannot be verified without
    /// running the pickle. An allowlisted callee that calls some of its arguments in turn
    /// (`copyreg._reconstructor` calls `base`) has each of them judged the same way.
    fn judge_call(&mut self, func: &Value, args: &Value, at: u64) {
        let (module, name) = match func {
            Value::Global(module, name) => (module.clone(), name.clone()),
            Value::Call { func: inner, .. } => {
                let callee = describe(inner);
                self.scan.findings.push(Finding {
                    severity: Severity::Critical,
                    offset: Some(at),
                    message: format!("calls the value returned by {callee}(...): what runs cannot be known without executing the pickle"),
                });
                return;
            }
            other => {
                self.scan.findings.push(Finding {
                    severity: Severity::High,
                    offset: Some(at),
                    message: format!(
                        "calls {}, not an imported name: cannot be verified",
                        describe(other)
                    ),
                });
                return;
            }
        };
        let called = self.options.allowlist.called_arguments(&module, &name);
        if called.is_empty()
            || self
                .options
                .allowlist
                .judge(&module, &name)
                .severity
                .is_some()
        {
            return;
        }
        let items = args.items();
        for &index in called {
            let acceptable = match items.get(index) {
                None | Some(Value::None | Value::Str(Some(_))) => true,
                Some(Value::Global(m, n)) => self.options.allowlist.judge(m, n).severity.is_none(),
                Some(_) => false,
            };
            if !acceptable {
                let what = items.get(index).map_or_else(String::new, describe);
                self.scan.findings.push(Finding {
                    severity: Severity::Critical,
                    offset: Some(at),
                    message: format!("`{module}.{name}` calls its argument {index}, which is {what}, not an allowlisted callable"),
                });
            }
        }
    }

    /// A call: judged, then numpy's protocol-5 `_frombuffer` recognised; an `OrderedDict()`
    /// becomes a dict so that the items `SETITEMS` adds to it (a PyTorch state dict's) stay
    /// visible.
    fn call(&mut self, func: Value, args: Value, at: u64) -> Value {
        self.judge_call(&func, &args, at);
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
                        .and_then(|(size, s)| element_bytes(Some(s), size)),
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
        self.judge_state(target, state, at);
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
                            .and_then(|(size, s)| element_bytes(Some(s), size))
                            .unwrap_or(0),
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
                let dtype_value = state.dict_get("dtype");
                let dtype = dtype_value
                    .as_ref()
                    .and_then(dtype_name)
                    .unwrap_or_default();
                let aligned = state
                    .dict_get("numpy_array_alignment_bytes")
                    .and_then(|v| v.int());
                match dtype_value.as_ref().and_then(dtype_has_object) {
                    // joblib pickles arrays with object fields (`O8`, or structured dtypes
                    // holding one) right here in the stream, and `pickle.load`s them back.
                    Some(true) => {
                        let mut nested = scan(
                            &mut *self.reader,
                            self.offset,
                            self.options,
                            Flavor::Plain,
                            Extent::One,
                        );
                        let broken = nested.broken.take();
                        self.offset = nested.end;
                        self.absorb(nested);
                        if let Some(error) = broken {
                            return Err(error);
                        }
                        self.scan.arrays.push(ArrayInfo {
                            name: None,
                            dtype,
                            shape,
                            bytes: 0,
                            kind: "joblib".to_owned(),
                        });
                    }
                    Some(false) => {
                        if aligned.is_some() {
                            let padding = u64::from(self.byte()?);
                            self.skip(padding)?;
                        }
                        let bytes = itemsize(Some(&dtype))
                            .and_then(|size| element_bytes(shape.as_deref(), size))
                            .ok_or_else(|| {
                                self.malformed(
                                    at,
                                    format!("joblib array of dtype '{dtype}' and shape {shape:?}: its size cannot be computed, so where the pickle resumes cannot be known"),
                                )
                            })?;
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
                    None => {
                        return Err(self.malformed(
                            at,
                            "a joblib array whose dtype is not a literal numpy dtype: whether joblib reads its data or a nested pickle cannot be known",
                        ))
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// What a `BUILD` state sets on an object: a dunder attribute (`__array_interface__`
    /// makes numpy read any address, `__class__` swaps the type) is never ordinary state,
    /// and joblib's legacy wrappers name a side file that `np.load(allow_pickle=True)` reads.
    fn judge_state(&mut self, target: Option<(&str, &str)>, state: &Value, at: u64) {
        let mut dicts = vec![state.clone()];
        if let Value::Tuple(parts) = state {
            dicts = parts.as_ref().clone();
        }
        for dict in &dicts {
            let Value::Dict(pairs) = dict else { continue };
            for (key, _) in pairs.borrow().iter() {
                if let Some(key) = key.as_str() {
                    if key.len() > 4 && key.starts_with("__") && key.ends_with("__") {
                        self.scan.findings.push(Finding {
                            severity: Severity::High,
                            offset: Some(at),
                            message: format!("BUILD sets the attribute `{key}`, which is interpreter machinery, not model state"),
                        });
                    }
                }
            }
        }
        if matches!(target, Some((m, "NDArrayWrapper" | "ZNDArrayWrapper")) if m.starts_with("joblib"))
        {
            let file = state.dict_get("filename");
            let escapes = match file.as_ref().and_then(Value::as_str) {
                Some(name) => {
                    name.starts_with('/') || name.split(['/', '\\']).any(|part| part == "..")
                }
                None => true,
            };
            if escapes {
                self.scan.findings.push(Finding {
                    severity: Severity::High,
                    offset: Some(at),
                    message: "a legacy joblib array wrapper names a side file outside the model's directory (or not as a literal): joblib np.loads it with allow_pickle=True".to_owned(),
                });
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

/// A value as a reviewer reads it in a finding.
fn describe(value: &Value) -> String {
    match value {
        Value::Global(module, name) => format!("`{module}.{name}`"),
        Value::Call { func, .. } => format!("the result of {}(...)", describe(func)),
        Value::Persistent(_) => "an object the loader's persistent_load returns".to_owned(),
        Value::Str(_) => "a string".to_owned(),
        Value::Bytes { .. } => "bytes".to_owned(),
        Value::Tuple(_) => "a tuple".to_owned(),
        Value::List(_) => "a list".to_owned(),
        Value::Dict(_) => "a dict".to_owned(),
        Value::None => "None".to_owned(),
        Value::Bool(_) | Value::Int(_) | Value::Float(_) => "a number".to_owned(),
        Value::Set => "a set".to_owned(),
        Value::Buffer => "an out-of-band buffer".to_owned(),
        Value::Unknown => "a value built at load time".to_owned(),
    }
}
