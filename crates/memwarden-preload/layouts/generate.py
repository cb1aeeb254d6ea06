#!/usr/bin/env python3
"""Generate src/python/layouts.rs: the CPython struct offsets the frame reader needs.

For every CPython minor version we support, a small C program is compiled against that
version's own headers (internal ones included, with Py_BUILD_CORE) and prints `offsetof`
values, so no offset is ever typed by hand. Interpreters are found with `pyenv prefix`.

    python3 layouts/generate.py           # rewrite src/python/layouts.rs
    python3 layouts/generate.py --check   # exit 1 if the checked-in file is stale

Run it from anywhere; paths are relative to this script.
"""

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(HERE, "..", "src", "python", "layouts.rs")
VERSIONS = ["3.10", "3.11", "3.12", "3.13"]

# One C program for every version; the preprocessor picks each version's field names.
PROGRAM = r"""
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stdio.h>
#include <stddef.h>
#include <string.h>
#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#else
#include <frameobject.h>
#endif
#if PY_VERSION_HEX >= 0x030D0000
#include "internal/pycore_runtime.h"
#endif

#define FIELD(name, value) printf("    %s: %zu,\n", name, (size_t)(value))
#define ABSENT(name) printf("    %s: ABSENT,\n", name)

/* Bit position of a one-bit or multi-bit field of PyASCIIObject.state, found by setting it. */
static unsigned state_shift(int which) {
    PyASCIIObject o;
    unsigned int bits = 0;
    memset(&o, 0, sizeof o);
    if (which == 0) o.state.kind = 1;
    if (which == 1) o.state.compact = 1;
    if (which == 2) o.state.ascii = 1;
    memcpy(&bits, &o.state, sizeof bits);
    return (unsigned)__builtin_ctz(bits);
}

int main(void) {
    printf("  Layout {\n");
    FIELD("minor", PY_MINOR_VERSION);
#if PY_VERSION_HEX >= 0x030D0000
    FIELD("thread_frame", offsetof(PyThreadState, current_frame));
    ABSENT("cframe_current_frame");
    FIELD("frame_code", offsetof(_PyInterpreterFrame, f_executable));
    FIELD("frame_previous", offsetof(_PyInterpreterFrame, previous));
    FIELD("frame_instr", offsetof(_PyInterpreterFrame, instr_ptr));
    FIELD("frame_owner", offsetof(_PyInterpreterFrame, owner));
#elif PY_VERSION_HEX >= 0x030B0000
    FIELD("thread_frame", offsetof(PyThreadState, cframe));
    FIELD("cframe_current_frame", offsetof(_PyCFrame, current_frame));
    FIELD("frame_code", offsetof(_PyInterpreterFrame, f_code));
    FIELD("frame_previous", offsetof(_PyInterpreterFrame, previous));
    FIELD("frame_instr", offsetof(_PyInterpreterFrame, prev_instr));
    FIELD("frame_owner", offsetof(_PyInterpreterFrame, owner));
#else
    FIELD("thread_frame", offsetof(PyThreadState, frame));
    ABSENT("cframe_current_frame");
    FIELD("frame_code", offsetof(PyFrameObject, f_code));
    FIELD("frame_previous", offsetof(PyFrameObject, f_back));
    FIELD("frame_instr", offsetof(PyFrameObject, f_lasti));
    ABSENT("frame_owner");
#endif
#if PY_VERSION_HEX >= 0x030B0000
    FIELD("owner_generator", FRAME_OWNED_BY_GENERATOR);
#else
    ABSENT("owner_generator");
#endif
#if PY_VERSION_HEX >= 0x030C0000
    FIELD("owner_cstack", FRAME_OWNED_BY_CSTACK);
#else
    ABSENT("owner_cstack");
#endif
    FIELD("code_filename", offsetof(PyCodeObject, co_filename));
#if PY_VERSION_HEX >= 0x030B0000
    FIELD("code_name", offsetof(PyCodeObject, co_qualname));
    FIELD("code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    FIELD("code_firsttraceable", offsetof(PyCodeObject, _co_firsttraceable));
#else
    FIELD("code_name", offsetof(PyCodeObject, co_name));
    ABSENT("code_adaptive");
    ABSENT("code_firsttraceable");
#endif
    FIELD("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
    FIELD("code_linetable", offsetof(PyCodeObject, co_linetable));
    FIELD("object_type", offsetof(PyObject, ob_type));
    FIELD("bytes_size", offsetof(PyVarObject, ob_size));
    FIELD("bytes_data", offsetof(PyBytesObject, ob_sval));
    FIELD("str_length", offsetof(PyASCIIObject, length));
    FIELD("str_state", offsetof(PyASCIIObject, state));
    FIELD("str_ascii_data", sizeof(PyASCIIObject));
    FIELD("str_compact_data", sizeof(PyCompactUnicodeObject));
    FIELD("state_kind_shift", state_shift(0));
    FIELD("state_compact_shift", state_shift(1));
    FIELD("state_ascii_shift", state_shift(2));
#if PY_VERSION_HEX >= 0x030D0000
    FIELD("debug_frame_previous", offsetof(_Py_DebugOffsets, interpreter_frame.previous));
    FIELD("debug_free_threaded", offsetof(_Py_DebugOffsets, free_threaded));
#else
    ABSENT("debug_frame_previous");
    ABSENT("debug_free_threaded");
#endif
    printf("  },\n");
    return 0;
}
"""


def prefix(version):
    """The root of the newest pyenv install of `version` (e.g. 3.12 -> ~/.pyenv/versions/3.12.1)."""
    installed = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True,
                               check=True).stdout.split()
    matching = [v for v in installed if v.startswith(version + ".") and v.replace(".", "").isdigit()]
    if not matching:
        sys.exit(f"generate.py: no pyenv install of Python {version}; install it with `pyenv install {version}`")
    best = max(matching, key=lambda v: tuple(int(p) for p in v.split(".")))
    root = subprocess.run(["pyenv", "prefix", best], capture_output=True, text=True, check=True).stdout.strip()
    return best, root


def layout(version, workdir):
    full, root = prefix(version)
    include = os.path.join(root, "include", f"python{version}")
    source = os.path.join(workdir, "offsets.c")
    binary = os.path.join(workdir, f"offsets-{version}")
    with open(source, "w") as f:
        f.write(PROGRAM)
    subprocess.run(["gcc", "-I", include, "-I", os.path.join(include, "internal"), source, "-o", binary],
                   check=True)
    body = subprocess.run([binary], capture_output=True, text=True, check=True).stdout
    return f"  // CPython {full}\n{body}"


def render():
    with tempfile.TemporaryDirectory() as workdir:
        bodies = [layout(v, workdir) for v in VERSIONS]
    return (
        "// @generated by crates/memwarden-preload/layouts/generate.py from each CPython's own\n"
        "// headers. Do not edit; rerun the script.\n\n"
        "use super::layout::{Layout, ABSENT};\n\n"
        "/// Offsets for every supported CPython minor version.\n"
        "pub(crate) const LAYOUTS: &[Layout] = &[\n" + "".join(bodies) + "];\n"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the checked-in file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        with open(OUTPUT) as f:
            if f.read() != text:
                sys.exit("generate.py: src/python/layouts.rs is stale; rerun crates/memwarden-preload/layouts/generate.py")
        return
    os.makedirs(os.path.dirname(OUTPUT), exist_ok=True)
    with open(OUTPUT, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
