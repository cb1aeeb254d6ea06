//! Python literals as `ast.literal_eval` reads them, for the `.npy` header.
//!
//! numpy reads an `.npy` header with `ast.literal_eval`, so a scanner must too: a dict whose
//! repeated key keeps its *last* value, strings in either quote with escapes, tuples and
//! lists nested to any depth (structured dtypes), `True`/`False`/`None`, integers with
//! Python 2's `L`. Anything else is an error: numpy would refuse the header as well.

/// A Python literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `'text'` or `"text"` (`b'...'` too: numpy rejects it, we keep its text).
    Str(String),
    /// An integer (larger ones are refused).
    Int(i128),
    /// `True` or `False`.
    Bool(bool),
    /// `None`.
    None,
    /// `(a, b)`.
    Tuple(Vec<Literal>),
    /// `[a, b]`.
    List(Vec<Literal>),
    /// `{k: v}`: pairs in order, a repeated key replacing the earlier value where it stood.
    Dict(Vec<(Literal, Literal)>),
}

impl Literal {
    /// The value of `key` in a dict.
    pub fn get(&self, key: &str) -> Option<&Literal> {
        match self {
            Literal::Dict(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(k, Literal::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

const MAX_DEPTH: u32 = 64;

/// Parses one literal that makes up the whole of `text` (surrounding white space allowed).
pub fn parse(text: &str) -> Result<Literal, String> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        at: 0,
    };
    let value = parser.value(0)?;
    parser.space();
    if parser.at != parser.bytes.len() {
        return Err(format!("unexpected text at character {}", parser.at));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn space(&mut self) {
        while self.at < self.bytes.len() && self.bytes[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.space();
        self.bytes.get(self.at).copied()
    }

    fn value(&mut self, depth: u32) -> Result<Literal, String> {
        if depth > MAX_DEPTH {
            return Err("literal nested too deeply".to_owned());
        }
        match self.peek() {
            Some(b'{') => {
                self.at += 1;
                let mut pairs: Vec<(Literal, Literal)> = Vec::new();
                for item in self.sequence(b'}', depth, true)? {
                    let (key, value) = item;
                    let value = value.ok_or("a dict entry without a value")?;
                    match pairs.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = value,
                        None => pairs.push((key, value)),
                    }
                }
                Ok(Literal::Dict(pairs))
            }
            Some(b'(') => {
                self.at += 1;
                let start = self.at;
                let items = self.sequence(b')', depth, false)?;
                let trailing_comma = self.bytes[start..self.at].contains(&b',');
                let items: Vec<Literal> = items.into_iter().map(|(k, _)| k).collect();
                // `(x)` is x itself; `(x,)` and `()` are tuples.
                if items.len() == 1 && !trailing_comma {
                    Ok(items.into_iter().next().unwrap_or(Literal::None))
                } else {
                    Ok(Literal::Tuple(items))
                }
            }
            Some(b'[') => {
                self.at += 1;
                let items = self.sequence(b']', depth, false)?;
                Ok(Literal::List(items.into_iter().map(|(k, _)| k).collect()))
            }
            Some(b'\'' | b'"') => self.string(),
            Some(b'b' | b'u' | b'B' | b'U')
                if matches!(self.bytes.get(self.at + 1), Some(b'\'' | b'"')) =>
            {
                self.at += 1;
                self.string()
            }
            Some(c) if c == b'-' || c == b'+' || c.is_ascii_digit() => self.int(),
            Some(_) => {
                let start = self.at;
                while self.at < self.bytes.len() && self.bytes[self.at].is_ascii_alphanumeric() {
                    self.at += 1;
                }
                match &self.bytes[start..self.at] {
                    b"True" => Ok(Literal::Bool(true)),
                    b"False" => Ok(Literal::Bool(false)),
                    b"None" => Ok(Literal::None),
                    other => Err(format!(
                        "'{}' is not a literal",
                        String::from_utf8_lossy(other)
                    )),
                }
            }
            None => Err("the literal ends early".to_owned()),
        }
    }

    /// Items up to `close`, separated by commas (a trailing comma allowed); `pairs` reads
    /// `key: value`.
    fn sequence(
        &mut self,
        close: u8,
        depth: u32,
        pairs: bool,
    ) -> Result<Vec<(Literal, Option<Literal>)>, String> {
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.at += 1;
                return Ok(items);
            }
            let key = self.value(depth + 1)?;
            let value = if pairs {
                if self.peek() != Some(b':') {
                    return Err(format!("expected ':' at character {}", self.at));
                }
                self.at += 1;
                Some(self.value(depth + 1)?)
            } else {
                None
            };
            items.push((key, value));
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(c) if c == close => {}
                _ => return Err(format!("expected ',' at character {}", self.at)),
            }
        }
    }

    fn string(&mut self) -> Result<Literal, String> {
        let quote = self.bytes[self.at];
        self.at += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.bytes.get(self.at) {
            self.at += 1;
            if c == quote {
                return Ok(Literal::Str(String::from_utf8_lossy(&out).into_owned()));
            }
            if c == b'\\' {
                let escaped = *self.bytes.get(self.at).ok_or("a string ends in '\\'")?;
                self.at += 1;
                out.push(match escaped {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'0' => 0,
                    other => other,
                });
            } else {
                out.push(c);
            }
        }
        Err("a string is not closed".to_owned())
    }

    fn int(&mut self) -> Result<Literal, String> {
        let start = self.at;
        if matches!(self.bytes.get(self.at), Some(b'-' | b'+')) {
            self.at += 1;
        }
        while self.at < self.bytes.len() && self.bytes[self.at].is_ascii_digit() {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).map_err(|e| e.to_string())?;
        if matches!(self.bytes.get(self.at), Some(b'L' | b'l')) {
            self.at += 1;
        }
        text.parse()
            .map(Literal::Int)
            .map_err(|_| format!("'{text}' is not an integer numpy accepts"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers_as_literal_eval_reads_them() {
        let header =
            parse("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }").expect("parses");
        assert_eq!(header.get("descr"), Some(&Literal::Str("<f8".into())));
        assert_eq!(
            header.get("shape"),
            Some(&Literal::Tuple(vec![Literal::Int(3), Literal::Int(4)]))
        );
        // A repeated key: the last value wins, as in a Python dict display.
        let header = parse("{'descr': '<f8', 'shape': (1,), 'descr': '|O'}").expect("parses");
        assert_eq!(header.get("descr"), Some(&Literal::Str("|O".into())));
        assert_eq!(parse("(5,)"), Ok(Literal::Tuple(vec![Literal::Int(5)])));
        assert_eq!(parse("(5)"), Ok(Literal::Int(5)));
        assert_eq!(parse("()"), Ok(Literal::Tuple(vec![])));
        let structured = parse("[('a', '<f8'), ('b', '|O', (2,))]").expect("parses");
        assert!(matches!(structured, Literal::List(ref items) if items.len() == 2));
        assert_eq!(parse("\"it\\'s\""), Ok(Literal::Str("it's".into())));
        assert!(parse("{'a': __import__('os')}").is_err());
        assert!(parse(&"[".repeat(1000)).is_err());
        assert!(parse("{'a': 1").is_err());
        assert!(parse("99999999999999999999999999999999999999999999").is_err());
    }
}
