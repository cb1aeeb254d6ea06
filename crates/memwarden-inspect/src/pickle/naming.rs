//! One walk of a pickle's object tree, to name what it holds by where it sits.

use std::rc::Rc;

use std::collections::HashSet;

use super::{Scan, Value};
use crate::ArrayInfo;

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

/// Finds `_rebuild_tensor_v2` calls under `value`, named by the dict keys on the way.
pub fn collect_tensors(
    value: &Value,
    path: &str,
    out: &mut Vec<ArrayInfo>,
    visited: &mut HashSet<usize>,
    depth: u32,
) {
    if depth > 64 {
        return;
    }
    match value {
        Value::Dict(items) => {
            if !visited.insert(Rc::as_ptr(items) as usize) {
                return;
            }
            for (key, item) in items.borrow().iter() {
                let name = match key {
                    Value::Str(Some(k)) if path.is_empty() => k.to_string(),
                    Value::Str(Some(k)) => format!("{path}.{k}"),
                    Value::Int(i) => format!("{path}[{i}]"),
                    _ => path.to_owned(),
                };
                collect_tensors(item, &name, out, visited, depth + 1);
            }
        }
        Value::List(items) => {
            if !visited.insert(Rc::as_ptr(items) as usize) {
                return;
            }
            for (i, item) in items.borrow().iter().enumerate() {
                collect_tensors(item, &format!("{path}[{i}]"), out, visited, depth + 1);
            }
        }
        Value::Tuple(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_tensors(item, &format!("{path}[{i}]"), out, visited, depth + 1);
            }
        }
        Value::Call { func, args, state } => {
            let target = match func.as_ref() {
                Value::Global(m, n) => Some((m.as_ref(), n.as_ref())),
                _ => None,
            };
            let items = match args.as_ref() {
                Value::Tuple(items) => items.as_ref().clone(),
                _ => Vec::new(),
            };
            match target {
                Some(("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor"))
                    if items.len() >= 3 =>
                {
                    let dtype = match &items[0] {
                        Value::Persistent(id) => match id.as_ref() {
                            Value::Tuple(t) => match t.get(1) {
                                Some(Value::Global(_, name)) => crate::formats::torch_dtype(name),
                                _ => "unknown".to_owned(),
                            },
                            _ => "unknown".to_owned(),
                        },
                        _ => "unknown".to_owned(),
                    };
                    let shape: Option<Vec<u64>> = match &items[2] {
                        Value::Tuple(dims) => dims
                            .iter()
                            .map(|d| match d {
                                Value::Int(i) => u64::try_from(*i).ok(),
                                _ => None,
                            })
                            .collect(),
                        _ => None,
                    };
                    let size = crate::formats::torch_itemsize(&dtype);
                    let bytes = shape
                        .as_ref()
                        .and_then(|s| super::arrays::element_bytes(Some(s), size))
                        .unwrap_or(0);
                    out.push(ArrayInfo {
                        name: (!path.is_empty()).then(|| path.to_owned()),
                        dtype,
                        shape,
                        bytes,
                        kind: "torch".to_owned(),
                    });
                }
                _ => {
                    for item in &items {
                        collect_tensors(item, path, out, visited, depth + 1);
                    }
                    if let Some(state) = state {
                        collect_tensors(state, path, out, visited, depth + 1);
                    }
                }
            }
        }
        _ => {}
    }
}
