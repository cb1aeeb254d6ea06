//! Recognising numpy arrays, dtypes and shapes among a pickle's values.

use super::Value;

/// Bytes of an array value: numpy's `_reconstruct` + `BUILD`, or joblib's wrapper.
pub(crate) fn array_bytes(value: &Value) -> Option<u64> {
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
    itemsize(Some(&dtype)).and_then(|size| element_bytes(Some(&shape), size))
}

/// numpy's dtype string from `numpy.dtype('f8', ...)` + `BUILD` (endianness from the state).
pub fn dtype_name(value: &Value) -> Option<String> {
    match value {
        Value::Call { state, .. } if numpy_dtype_code(value).is_some() => {
            let code = numpy_dtype_code(value)?;
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

pub(crate) fn shape_of(value: &Value) -> Option<Vec<u64>> {
    match value {
        Value::Tuple(items) => items
            .iter()
            .map(|v| v.int().and_then(|i| u64::try_from(i).ok()))
            .collect(),
        Value::Int(i) => u64::try_from(*i).ok().map(|d| vec![d]),
        _ => None,
    }
}

/// Bytes of `shape` elements of `size` bytes each (a scalar when there is no shape), or
/// `None` when that overflows 64 bits: a hostile header's `(2**40, 2**40)`.
pub fn element_bytes(shape: Option<&[u64]>, size: u64) -> Option<u64> {
    shape
        .unwrap_or(&[])
        .iter()
        .try_fold(size, |acc, &dim| acc.checked_mul(dim))
}

/// Whether a pickled numpy dtype holds Python objects (`O`, `O8`, or a structured or
/// sub-array dtype with such a field): numpy and joblib then pickle the array's data.
/// `None` when the value is not a dtype whose layout the pickle spells out.
pub fn dtype_has_object(value: &Value) -> Option<bool> {
    match value {
        Value::Str(Some(code)) => Some(
            code.trim_start_matches(['<', '>', '|', '='])
                .starts_with('O'),
        ),
        Value::Call { state, .. } if numpy_dtype_code(value).is_some() => {
            let code = numpy_dtype_code(value)?;
            if code
                .trim_start_matches(['<', '>', '|', '='])
                .starts_with('O')
            {
                return Some(true);
            }
            // state: (version, byte order, subarray, names, fields, itemsize, alignment, flags)
            let Some(state) = state else {
                return Some(false);
            };
            let items = state.items();
            if items
                .get(7)
                .and_then(Value::int)
                .is_some_and(|flags| flags & 1 != 0)
            {
                return Some(true);
            }
            if let Some(Value::Tuple(subarray)) = items.get(2) {
                if subarray.first().and_then(dtype_has_object) != Some(false) {
                    return Some(true);
                }
            }
            if let Some(Value::Dict(fields)) = items.get(4) {
                for (_, field) in fields.borrow().iter() {
                    if field.items().first().and_then(dtype_has_object) != Some(false) {
                        return Some(true);
                    }
                }
            }
            Some(false)
        }
        _ => None,
    }
}

/// The type code of `numpy.dtype('f8', ...)`, when `value` is such a call.
fn numpy_dtype_code(value: &Value) -> Option<String> {
    match value {
        Value::Call { func, args, .. }
            if func
                .global()
                .is_some_and(|(m, n)| m.starts_with("numpy") && n == "dtype") =>
        {
            args.items()
                .first()
                .and_then(|v| v.as_str().map(str::to_owned))
        }
        _ => None,
    }
}
