//! The shape of one CPython version's structures, as offsets (values in `layouts.rs`,
//! which is generated; this file only declares the fields).

/// A field this version does not have.
pub const ABSENT: usize = usize::MAX;

/// Byte offsets (and a few constants) of the interpreter structures the frame reader
/// follows. Field names say which structure and member; see `layouts/generate.py`.
#[derive(Debug)]
pub struct Layout {
    /// CPython 3.`minor`.
    pub minor: usize,
    /// `PyThreadState.frame` (3.10), `.cframe` (3.11, 3.12) or `.current_frame` (3.13).
    pub thread_frame: usize,
    /// `_PyCFrame.current_frame` (3.11, 3.12).
    pub cframe_current_frame: usize,
    /// The frame's code object: `f_code`, or `f_executable` (3.13).
    pub frame_code: usize,
    /// The calling frame: `f_back` (3.10) or `previous`.
    pub frame_previous: usize,
    /// `f_lasti` (3.10, an `int`), `prev_instr` (3.11, 3.12) or `instr_ptr` (3.13).
    pub frame_instr: usize,
    /// `_PyInterpreterFrame.owner` (a `char`, 3.11+).
    pub frame_owner: usize,
    /// `FRAME_OWNED_BY_GENERATOR`.
    pub owner_generator: usize,
    /// `FRAME_OWNED_BY_CSTACK` (3.12+): entry frames that are not Python code.
    pub owner_cstack: usize,
    /// `PyCodeObject.co_filename`.
    pub code_filename: usize,
    /// `co_qualname` (3.11+) or `co_name` (3.10).
    pub code_name: usize,
    /// `co_code_adaptive`: where the instructions start (3.11+).
    pub code_adaptive: usize,
    /// `_co_firsttraceable`, in code units (3.11+).
    pub code_firsttraceable: usize,
    /// `co_firstlineno` (an `int`).
    pub code_firstlineno: usize,
    /// `co_linetable` (a `bytes`).
    pub code_linetable: usize,
    /// `PyObject.ob_type`.
    pub object_type: usize,
    /// `PyVarObject.ob_size`.
    pub bytes_size: usize,
    /// `PyBytesObject.ob_sval`.
    pub bytes_data: usize,
    /// `PyASCIIObject.length`.
    pub str_length: usize,
    /// `PyASCIIObject.state` (a bit field).
    pub str_state: usize,
    /// `sizeof(PyASCIIObject)`: where compact ASCII text starts.
    pub str_ascii_data: usize,
    /// `sizeof(PyCompactUnicodeObject)`: where other compact text starts.
    pub str_compact_data: usize,
    /// Bit position of `state.kind` (3 bits).
    pub state_kind_shift: usize,
    /// Bit position of `state.compact`.
    pub state_compact_shift: usize,
    /// Bit position of `state.ascii`.
    pub state_ascii_shift: usize,
    /// Where `_Py_DebugOffsets` (at the start of `_PyRuntime`, 3.13+) says
    /// `interpreter_frame.previous` is: checked against `frame_previous` at run time.
    pub debug_frame_previous: usize,
    /// Where `_Py_DebugOffsets` keeps its `free_threaded` flag.
    pub debug_free_threaded: usize,
}
