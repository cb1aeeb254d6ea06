//! Judging what a pickle would do when loaded: the calls it makes (REDUCE, NEWOBJ, INST,
//! OBJ) and the state it sets (BUILD), on the machine's symbolic values.

use super::*;

impl<R: Skip> Machine<'_, R> {
    /// Judges what a call calls. The callee must be an imported name (judged with the
    /// imports); the result of another call, or any other value, cannot be verified without
    /// running the pickle. An allowlisted callee that calls some of its arguments in turn
    /// (`copyreg._reconstructor` calls `base`) has each of them judged the same way.
    pub(super) fn judge_call(&mut self, func: &Value, args: &Value, at: u64) {
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
    pub(super) fn call(&mut self, func: Value, args: Value, at: u64) -> Value {
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
    pub(super) fn after_build(&mut self, built: &Value, at: u64) -> Result<(), InspectError> {
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
    pub(super) fn judge_state(&mut self, target: Option<(&str, &str)>, state: &Value, at: u64) {
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
