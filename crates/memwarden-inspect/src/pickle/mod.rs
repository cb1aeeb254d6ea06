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
//! depth of analysis are all limited ([`crate::Limits`]), and malformed input is an error with
//! the offset, never a panic.

use std::cell::RefCell;
use std::rc::Rc;

use crate::{ArrayInfo, Finding, InspectError};

mod arrays;
mod machine;
mod naming;

pub use arrays::element_bytes;
pub use arrays::{dtype_name, itemsize};
pub use machine::{scan, Extent};
pub use naming::{collect_tensors, name_arrays};

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
    /// Offset just after the last `STOP` read.
    pub end: u64,
    /// Pickles read to their `STOP`.
    pub pickles: u32,
    /// Why the stream stopped before its end, when it did: everything before the break
    /// was seen (and a loader would have run it).
    pub broken: Option<InspectError>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SliceSource;
    use crate::{Limits, Options, Severity};

    fn scan_with(bytes: &[u8], limits: Limits) -> Scan {
        let options = Options {
            limits,
            ..Options::default()
        };
        scan(
            &mut SliceSource::new(bytes),
            0,
            &options,
            Flavor::Plain,
            Extent::All,
        )
    }

    fn run(bytes: &[u8]) -> Result<Scan, InspectError> {
        let mut scan = scan_with(bytes, Limits::default());
        match scan.broken.take() {
            Some(error) => Err(error),
            None => Ok(scan),
        }
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
        let err = scan_with(&bytes, limits).broken.take().expect("limited");
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
        let scan = scan_with(&bytes, limits);
        assert!(scan.broken.is_none());
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
    fn absurd_shapes_do_not_overflow() {
        // numpy's _frombuffer of a (2**40, 2**40) float64 array: its size overflows 64 bits.
        let bytes = b"cnumpy.core.numeric\n_frombuffer\n(S'x'\nS'<f8'\n(I1099511627776\nI1099511627776\ntS'C'\ntR.";
        let scan = run(bytes).expect("scans");
        assert_eq!(scan.arrays.len(), 1);
        assert_eq!(
            scan.arrays[0].bytes, 0,
            "an unknowable size is not a wrapped one"
        );
    }

    #[test]
    fn itemsizes() {
        assert_eq!(itemsize(Some("<f8")), Some(8));
        assert_eq!(itemsize(Some("|b1")), Some(1));
        assert_eq!(itemsize(Some("<U10")), Some(40));
        assert_eq!(itemsize(Some("|O")), None);
    }
}
