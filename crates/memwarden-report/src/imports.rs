//! Import folding: memory allocated while a module is imported is charged to the line that
//! imported it, named with the module.
//!
//! Raw, an `import numpy` is the user's line followed by five or six frames of CPython's
//! import machinery (`<frozen importlib._bootstrap>`...), then numpy's own `__init__.py`,
//! more machinery for each submodule, and so on: the stack tables show machinery, not the
//! line to change. Walking a stack from the outside in, each run of machinery frames is
//! removed and the frame that started the import is marked with the module's name
//! ([`StackFrame::imports`]). When the imported module is a library (under site-packages,
//! dist-packages or the standard library, a frozen module, or a compiled extension with no
//! frame at all), everything inside the import is folded into that line too: the 70 MiB
//! OpenBLAS maps while numpy is imported are charged to `train.py:1 [import numpy]`. The
//! user's own modules keep their lines, so a module-level `DATA = load()` stays visible.

use std::collections::{BTreeSet, HashMap};

use memwarden_format::capture::{kind, Capture, Frame};
use memwarden_format::report::StackFrame;

use crate::profile::stack_frame;

/// How stacks are reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Frames {
    /// Import machinery folded into the importing line (the default).
    #[default]
    Folded,
    /// Every frame as it was recorded (`--raw-frames`).
    Raw,
}

impl Frames {
    /// [`Frames::Raw`] when asked for every frame as recorded (`--raw-frames`), else
    /// [`Frames::Folded`].
    pub fn raw_if(raw: bool) -> Frames {
        if raw {
            Frames::Raw
        } else {
            Frames::Folded
        }
    }
}

/// Files of CPython's import system, frozen (3.11+ and the bootstrap of every version) or
/// read from source (`-X frozen_modules=off`).
const MACHINERY_FILES: [&str; 4] = [
    "<frozen importlib._bootstrap>",
    "<frozen importlib._bootstrap_external>",
    "<frozen importlib.util>",
    "<frozen zipimport>",
];
const MACHINERY_SUFFIXES: [&str; 5] = [
    "/importlib/_bootstrap.py",
    "/importlib/_bootstrap_external.py",
    "/importlib/util.py",
    "/importlib/__init__.py",
    "/zipimport.py",
];

/// Whether `frame` belongs to the import system (`importlib.import_module` included).
pub fn is_machinery(frame: &Frame) -> bool {
    frame.kind == kind::PYTHON
        && (MACHINERY_FILES.contains(&frame.file.as_str())
            || MACHINERY_SUFFIXES.iter().any(|s| frame.file.ends_with(s)))
}

/// Where the standard library or installed packages start in `file`: the offset of the
/// module's path (`numpy/__init__.py`), if `file` is in one.
pub(crate) fn library_root(file: &str) -> Option<usize> {
    for marker in ["/site-packages/", "/dist-packages/"] {
        if let Some(at) = file.rfind(marker) {
            return Some(at + marker.len());
        }
    }
    // `/usr/lib/python3.11/`, `.../lib64/python3.12/`, `.../lib/pypy3.10/`.
    for marker in ["/lib/python", "/lib64/python", "/lib/pypy"] {
        let mut from = 0;
        while let Some(found) = file[from..].find(marker) {
            let after = from + found + marker.len();
            let rest = &file[after..];
            if rest.starts_with(|c: char| c.is_ascii_digit()) {
                if let Some(slash) = rest.find('/') {
                    return Some(after + slash + 1);
                }
            }
            from = after;
        }
    }
    None
}

/// Whether a module's file is library code rather than the user's own, for folding
/// imports: the report's rule (`crate::lines::is_library`), and any other pseudo-file
/// (`<string>`, `<stdin>`) too.
fn is_library(file: &str) -> bool {
    file.starts_with('<') || crate::lines::is_library(file)
}

/// The module a file holds, as well as its path tells: its path under a library root or
/// under the main script's directory, else its file name (`numpy/_core/__init__.py` →
/// `numpy._core`).
fn module_name(file: &str, main_dir: Option<&str>) -> String {
    if let Some(name) = file
        .strip_prefix("<frozen ")
        .and_then(|rest| rest.strip_suffix('>'))
    {
        return name.to_owned();
    }
    let rooted = library_root(file).map(|at| &file[at..]).or_else(|| {
        main_dir
            .and_then(|dir| file.strip_prefix(dir))
            .and_then(|rest| rest.strip_prefix('/'))
    });
    let relative = rooted.unwrap_or(file);
    let path = [".py", ".pyc", ".pyw"]
        .iter()
        .find_map(|ext| relative.strip_suffix(ext))
        .unwrap_or(relative);
    let path = match path.strip_suffix("/__init__") {
        Some(package) => package,
        None if path == "__init__" => return file.to_owned(),
        None => path,
    };
    // Outside any known root only the last component is a module name.
    let path = match path.rsplit_once('/') {
        Some((_, last)) if rooted.is_none() && !last.is_empty() => last,
        _ => path,
    };
    path.trim_start_matches('/').replace('/', ".")
}

/// The directory of the main script: the outermost module-level frame's (`stack`
/// outermost first).
fn main_dir<'a>(outer_first: &[&'a Frame]) -> Option<&'a str> {
    outer_first
        .iter()
        .find(|f| f.kind == kind::PYTHON && f.function == "<module>" && !f.file.starts_with('<'))
        .and_then(|f| f.file.rsplit_once('/'))
        .map(|(dir, _)| dir)
}

fn is_module_frame(frame: &Frame) -> bool {
    frame.kind == kind::PYTHON && frame.function == "<module>" && !is_machinery(frame)
}

/// The modules each importing line was seen to import (over all captures of a run). It
/// names an import in a stack that holds no frame of the module itself: memory allocated
/// while the module was being found, before its code ran, or by a compiled extension.
#[derive(Debug, Default)]
pub struct ImportNames(HashMap<(String, u32, String), BTreeSet<String>>);

impl ImportNames {
    /// Learns the imports of one capture: each module-level frame right under import
    /// machinery, and the line above that machinery.
    pub fn learn(&mut self, capture: &Capture) {
        let frame_of = |node: u32| {
            capture
                .nodes
                .get(node as usize)
                .and_then(|&(_, frame)| capture.frames.get(frame as usize))
        };
        for (node, &(parent, _)) in capture.nodes.iter().enumerate().skip(1) {
            if !frame_of(node as u32).is_some_and(is_module_frame) {
                continue;
            }
            let mut above = parent;
            let mut machinery = 0;
            while above != 0 && frame_of(above).is_some_and(is_machinery) {
                machinery += 1;
                above = capture.nodes[above as usize].0;
            }
            if above == 0 || machinery == 0 {
                continue;
            }
            let Some(importer) = frame_of(above) else {
                continue;
            };
            let stack = capture.stack(node as u32);
            let outer_first: Vec<&Frame> = stack.iter().rev().copied().collect();
            let module = module_name(&stack[0].file, main_dir(&outer_first));
            let importer = stack_frame(importer);
            self.0
                .entry((importer.file, importer.line, importer.function))
                .or_default()
                .insert(module);
        }
    }

    /// The one module `importer` was seen to import, if it imports exactly one.
    fn only_module(&self, importer: &StackFrame) -> Option<String> {
        let key = (
            importer.file.clone(),
            importer.line,
            importer.function.clone(),
        );
        let modules = self.0.get(&key)?;
        (modules.len() == 1)
            .then(|| modules.iter().next().cloned())
            .flatten()
    }
}

/// A stack's report frames, innermost first, from its capture frames (innermost first).
/// `names` names imports whose module left no frame in this stack.
pub fn report_stack(stack: &[&Frame], frames: Frames, names: &ImportNames) -> Vec<StackFrame> {
    if frames == Frames::Raw || !stack.iter().any(|f| is_machinery(f)) {
        return stack.iter().map(|f| stack_frame(f)).collect();
    }
    let outer_first: Vec<&Frame> = stack.iter().rev().copied().collect();
    let main_dir = main_dir(&outer_first);
    let mut out: Vec<StackFrame> = Vec::with_capacity(outer_first.len());
    let mut at = 0;
    while at < outer_first.len() {
        let frame = outer_first[at];
        if !is_machinery(frame) {
            out.push(stack_frame(frame));
            at += 1;
            continue;
        }
        let end = (at..outer_first.len())
            .find(|&i| !is_machinery(outer_first[i]))
            .unwrap_or(outer_first.len());
        // The imported module's own code: the first module-level frame inside the import
        // (a finder or loader of a package may run before it).
        let module = (end..outer_first.len()).find(|&i| is_module_frame(outer_first[i]));
        let name = match module {
            Some(i) => Some(module_name(&outer_first[i].file, main_dir)),
            None => out.last().and_then(|importer| names.only_module(importer)),
        };
        let name = name.unwrap_or_else(|| "?".to_owned());
        match out.last_mut() {
            Some(importer) if importer.imports.is_none() => importer.imports = Some(name),
            // An import started with no Python frame of its own (from C, at start-up).
            _ => out.push(StackFrame {
                file: "<import>".to_owned(),
                line: 0,
                function: "[no Python caller]".to_owned(),
                imports: Some(name),
            }),
        }
        match module {
            Some(i) if !is_library(&outer_first[i].file) => at = i,
            _ => break,
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(file: &str, function: &str, line: u32) -> Frame {
        Frame {
            file: file.to_owned(),
            function: function.to_owned(),
            line,
            kind: kind::PYTHON,
        }
    }

    fn machinery() -> Vec<Frame> {
        vec![
            frame("<frozen importlib._bootstrap>", "_find_and_load", 1176),
            frame(
                "<frozen importlib._bootstrap>",
                "_find_and_load_unlocked",
                1147,
            ),
            frame("<frozen importlib._bootstrap>", "_load_unlocked", 690),
            frame(
                "<frozen importlib._bootstrap_external>",
                "_LoaderBasics.exec_module",
                940,
            ),
            frame(
                "<frozen importlib._bootstrap>",
                "_call_with_frames_removed",
                241,
            ),
        ]
    }

    /// A stack from its frames written outermost first, as one reads a traceback.
    fn fold(outer_first: Vec<Frame>, frames: Frames) -> Vec<String> {
        let inner_first: Vec<&Frame> = outer_first.iter().rev().collect();
        report_stack(&inner_first, frames, &ImportNames::default())
            .iter()
            .map(|f| {
                let imports = f
                    .imports
                    .as_ref()
                    .map(|m| format!(" [import {m}]"))
                    .unwrap_or_default();
                format!("{}:{} {}{imports}", f.file, f.line, f.function)
            })
            .collect()
    }

    const NUMPY: &str = "/venv/lib/python3.11/site-packages/numpy";

    #[test]
    fn a_library_import_is_charged_to_the_importing_line() {
        let mut stack = vec![frame("/proj/train.py", "<module>", 1)];
        stack.extend(machinery());
        stack.push(frame(&format!("{NUMPY}/__init__.py"), "<module>", 112));
        stack.extend(machinery());
        stack.push(frame(
            &format!("{NUMPY}/_core/multiarray.py"),
            "<module>",
            11,
        ));
        stack.extend(machinery());
        assert_eq!(
            fold(stack.clone(), Frames::Folded),
            ["/proj/train.py:1 <module> [import numpy]"]
        );
        let raw = fold(stack, Frames::Raw);
        assert_eq!(raw.len(), 18);
        assert!(raw[0].starts_with("<frozen importlib._bootstrap>"));
    }

    #[test]
    fn small_objects_taken_during_a_library_import_fold_into_it() {
        let small = Frame {
            file: "<python objects>".to_owned(),
            function: "[small objects]".to_owned(),
            line: 0,
            kind: kind::SMALL_OBJECTS,
        };
        let mut stack = vec![frame("/proj/train.py", "<module>", 1)];
        stack.extend(machinery());
        stack.push(frame(&format!("{NUMPY}/__init__.py"), "<module>", 112));
        stack.push(small.clone());
        // Like everything a library's import allocated: one stack, the importing line.
        assert_eq!(
            fold(stack.clone(), Frames::Folded),
            ["/proj/train.py:1 <module> [import numpy]"]
        );
        assert_eq!(
            fold(stack, Frames::Raw)[0],
            "<python objects>:0 [small objects]"
        );
        // Without an import: the frame as recorded, innermost.
        let plain = vec![frame("/proj/train.py", "build", 7), small];
        assert_eq!(
            fold(plain, Frames::Folded),
            [
                "<python objects>:0 [small objects]",
                "/proj/train.py:7 build"
            ]
        );
    }

    #[test]
    fn the_users_own_module_keeps_its_lines() {
        let mut stack = vec![
            frame("/proj/train.py", "<module>", 3),
            frame("/proj/train.py", "main", 9),
        ];
        stack.extend(machinery());
        stack.push(frame("/proj/features/build.py", "<module>", 5));
        stack.push(frame("/proj/features/build.py", "load", 20));
        stack.extend(machinery());
        stack.push(frame(&format!("{NUMPY}/__init__.py"), "<module>", 112));
        assert_eq!(
            fold(stack, Frames::Folded),
            [
                "/proj/features/build.py:20 load [import numpy]",
                "/proj/features/build.py:5 <module>",
                "/proj/train.py:9 main [import features.build]",
                "/proj/train.py:3 <module>",
            ]
        );
    }

    #[test]
    fn import_module_and_extensions() {
        // importlib.import_module("json") from a function; json is the standard library.
        let mut stack = vec![frame("/proj/run.py", "load_plugin", 4)];
        stack.push(frame(
            "/usr/lib/python3.11/importlib/__init__.py",
            "import_module",
            126,
        ));
        stack.extend(machinery());
        stack.push(frame(
            "/usr/lib/python3.11/json/__init__.py",
            "<module>",
            106,
        ));
        stack.push(frame("/usr/lib/python3.11/json/decoder.py", "<module>", 3));
        assert_eq!(
            fold(stack, Frames::Folded),
            ["/proj/run.py:4 load_plugin [import json]"]
        );
        // A compiled extension: nothing of the module runs as Python.
        let mut stack = vec![frame("/proj/run.py", "<module>", 2)];
        stack.extend(machinery());
        assert_eq!(
            fold(stack, Frames::Folded),
            ["/proj/run.py:2 <module> [import ?]"]
        );
        // No importing frame at all (an import started from C).
        let mut stack = machinery();
        stack.push(frame("<frozen os>", "<module>", 1));
        assert_eq!(
            fold(stack, Frames::Folded),
            ["<import>:0 [no Python caller] [import os]"]
        );
    }

    #[test]
    fn module_names_from_paths() {
        let main = Some("/proj");
        assert_eq!(module_name(&format!("{NUMPY}/__init__.py"), main), "numpy");
        assert_eq!(
            module_name(&format!("{NUMPY}/_core/_methods.py"), main),
            "numpy._core._methods"
        );
        assert_eq!(
            module_name("/usr/lib/python3/dist-packages/yaml/__init__.py", main),
            "yaml"
        );
        assert_eq!(
            module_name("/usr/lib/python3.11/json/decoder.py", main),
            "json.decoder"
        );
        assert_eq!(module_name("/opt/py/lib64/python3.12/csv.py", main), "csv");
        assert_eq!(module_name("<frozen os>", main), "os");
        assert_eq!(module_name("/proj/pkg/mod.py", main), "pkg.mod");
        assert_eq!(module_name("/proj/pkg/__init__.py", main), "pkg");
        assert_eq!(module_name("/elsewhere/tools/helpers.py", main), "helpers");
        assert_eq!(module_name("/elsewhere/tools/__init__.py", main), "tools");
        assert_eq!(module_name("/home/me/lib/python-utils/u.py", None), "u");
        assert!(!is_library("/home/me/lib/python-utils/u.py"));
        assert!(is_library("/usr/lib/python3.11/json/decoder.py"));
    }
}
