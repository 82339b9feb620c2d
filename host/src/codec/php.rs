//! PHP's `serialize()` format: a value model, a parser and a writer. Strings are bytes.
//!
//! The parser is written for hostile input: every length is checked against what is left
//! before anything is allocated, nesting is bounded, and it never panics.
//!
//! Hand-written: the PHP serde crates (`serde_php`, `php_serde`) cannot read objects (`O:`,
//! `C:`), and every Messenger envelope is one.

/// Deepest nesting accepted (arrays and objects inside each other).
pub const MAX_DEPTH: usize = 128;

/// A PHP value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `N;`
    Null,
    /// `b:0;` / `b:1;`
    Bool(bool),
    /// `i:…;`
    Int(i64),
    /// `d:…;`
    Float(f64),
    /// `s:n:"…";`
    Str(Vec<u8>),
    /// `a:n:{…}`
    Array(Vec<(Key, Value)>),
    /// `O:n:"class":n:{…}`: class and (mangled name, value) pairs.
    Object(Vec<u8>, Vec<(Vec<u8>, Value)>),
    /// `E:n:"Class:Case";`
    Enum(Vec<u8>),
    /// `r:n;` / `R:n;`: a back-reference, kept as is.
    Ref(i64),
    /// `C:n:"class":n:{…}`: a custom-serialized object, kept opaque.
    Custom(Vec<u8>, Vec<u8>),
}

/// An array key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `i:…;`
    Int(i64),
    /// `s:n:"…";`
    Str(Vec<u8>),
}

/// Where and why parsing stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PHP serialize data at byte {at}: {what}")]
pub struct ParseError {
    /// Byte offset.
    pub at: usize,
    /// What was wrong.
    pub what: &'static str,
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn err<T>(&self, what: &'static str) -> Result<T, ParseError> {
        Err(ParseError { at: self.i, what })
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), ParseError> {
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    /// Bytes up to (not including) `end`, which is consumed.
    fn until(&mut self, end: u8) -> Result<&'a [u8], ParseError> {
        let rest = &self.s[self.i..];
        match rest.iter().position(|&b| b == end) {
            Some(n) if n <= 400 => {
                self.i += n + 1;
                Ok(&rest[..n])
            }
            _ => self.err("unterminated number"),
        }
    }

    fn int(&mut self, end: u8) -> Result<i64, ParseError> {
        let at = self.i;
        let t = self.until(end)?;
        std::str::from_utf8(t)
            .ok()
            .and_then(|t| t.strip_prefix('+').unwrap_or(t).parse::<i64>().ok())
            .ok_or(ParseError {
                at,
                what: "bad integer",
            })
    }

    fn len(&mut self, end: u8) -> Result<usize, ParseError> {
        let at = self.i;
        let n = self.int(end)?;
        usize::try_from(n).map_err(|_| ParseError {
            at,
            what: "negative length",
        })
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.s.len() - self.i < n {
            return self.err("string longer than the data");
        }
        let b = &self.s[self.i..self.i + n];
        self.i += n;
        Ok(b)
    }

    /// `"<n bytes>"`
    fn quoted(&mut self, n: usize) -> Result<Vec<u8>, ParseError> {
        self.expect(b'"', "expected '\"'")?;
        let b = self.bytes(n)?.to_vec();
        self.expect(b'"', "string length does not match")?;
        Ok(b)
    }

    /// The count of an array or object, bounded by what is left (each entry takes ≥ 4 bytes).
    fn count(&mut self) -> Result<usize, ParseError> {
        let n = self.len(b':')?;
        if n > (self.s.len() - self.i) / 4 {
            return self.err("more entries than the data can hold");
        }
        Ok(n)
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return self.err("nested too deep");
        }
        let Some(&tag) = self.s.get(self.i) else {
            return self.err("unexpected end");
        };
        self.i += 1;
        if tag == b'N' {
            self.expect(b';', "expected ';'")?;
            return Ok(Value::Null);
        }
        self.expect(b':', "expected ':'")?;
        match tag {
            b'b' => match self.int(b';')? {
                0 => Ok(Value::Bool(false)),
                1 => Ok(Value::Bool(true)),
                _ => self.err("bad boolean"),
            },
            b'i' => Ok(Value::Int(self.int(b';')?)),
            b'd' => {
                let at = self.i;
                let t = self.until(b';')?;
                parse_float(t).map(Value::Float).ok_or(ParseError {
                    at,
                    what: "bad float",
                })
            }
            b's' => {
                let n = self.len(b':')?;
                let b = self.quoted(n)?;
                self.expect(b';', "expected ';'")?;
                Ok(Value::Str(b))
            }
            b'a' => {
                let n = self.count()?;
                self.expect(b'{', "expected '{'")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    let key = self.key()?;
                    let v = self.value(depth + 1)?;
                    items.push((key, v));
                }
                self.expect(b'}', "expected '}'")?;
                Ok(Value::Array(items))
            }
            b'O' => {
                let n = self.len(b':')?;
                let class = self.quoted(n)?;
                self.expect(b':', "expected ':'")?;
                let n = self.count()?;
                self.expect(b'{', "expected '{'")?;
                let mut props = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = match self.key()? {
                        Key::Str(s) => s,
                        Key::Int(i) => i.to_string().into_bytes(),
                    };
                    let v = self.value(depth + 1)?;
                    props.push((name, v));
                }
                self.expect(b'}', "expected '}'")?;
                Ok(Value::Object(class, props))
            }
            b'E' => {
                let n = self.len(b':')?;
                let b = self.quoted(n)?;
                self.expect(b';', "expected ';'")?;
                Ok(Value::Enum(b))
            }
            b'r' | b'R' => Ok(Value::Ref(self.int(b';')?)),
            b'C' => {
                let n = self.len(b':')?;
                let class = self.quoted(n)?;
                self.expect(b':', "expected ':'")?;
                let n = self.len(b':')?;
                self.expect(b'{', "expected '{'")?;
                let raw = self.bytes(n)?.to_vec();
                self.expect(b'}', "expected '}'")?;
                Ok(Value::Custom(class, raw))
            }
            _ => {
                self.i -= 2;
                self.err("unknown type tag")
            }
        }
    }

    fn key(&mut self) -> Result<Key, ParseError> {
        match self.value(MAX_DEPTH)? {
            Value::Int(i) => Ok(Key::Int(i)),
            Value::Str(s) => Ok(Key::Str(s)),
            _ => self.err("array key must be an integer or a string"),
        }
    }
}

fn parse_float(t: &[u8]) -> Option<f64> {
    match t {
        b"INF" => Some(f64::INFINITY),
        b"-INF" => Some(f64::NEG_INFINITY),
        b"NAN" => Some(f64::NAN),
        _ => std::str::from_utf8(t).ok()?.parse::<f64>().ok(),
    }
}

/// Parses one value; bytes after it are ignored, as PHP 8.2 does.
pub fn parse(s: &[u8]) -> Result<Value, ParseError> {
    Parser { s, i: 0 }.value(0)
}

/// Writes `v` as `serialize()` does.
pub fn write(v: &Value, out: &mut Vec<u8>) {
    let mut w = Writer {
        out: std::mem::take(out),
        slashed: false,
    };
    w.value(v);
    *out = w.out;
}

/// Writes `serialize()` text item by item, straight into its buffer: from a [`Value`] or from
/// the caller's own data without building one. `slashed`: every byte written as `addslashes`
/// leaves it (Symfony's `PhpSerializer` stores that), in the same pass.
#[derive(Debug)]
pub struct Writer {
    out: Vec<u8>,
    slashed: bool,
}

impl Writer {
    /// An empty text; `slashed` as [`addslashes`] leaves it.
    pub fn new(capacity: usize, slashed: bool) -> Self {
        Self {
            out: Vec::with_capacity(capacity),
            slashed,
        }
    }

    /// Goes on writing after `out` (text this kind of writer wrote).
    pub fn after(out: Vec<u8>, slashed: bool) -> Self {
        Self { out, slashed }
    }

    /// The text written.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    /// Bytes of the format or of a string's content.
    fn bytes(&mut self, b: &[u8]) {
        if !self.slashed {
            self.out.extend_from_slice(b);
            return;
        }
        // Runs between special bytes are copied whole (this is on every answer's path).
        let mut rest = b;
        while let Some(i) = rest
            .iter()
            .position(|&b| matches!(b, 0 | b'\'' | b'"' | b'\\'))
        {
            self.out.extend_from_slice(&rest[..i]);
            self.out.push(b'\\');
            self.out.push(if rest[i] == 0 { b'0' } else { rest[i] });
            rest = &rest[i + 1..];
        }
        self.out.extend_from_slice(rest);
    }

    /// A number as text (no special bytes in it).
    fn number(&mut self, n: impl itoa::Integer) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    /// `N;`
    pub fn null(&mut self) {
        self.out.extend_from_slice(b"N;");
    }

    /// `b:0;` / `b:1;`
    pub fn bool(&mut self, b: bool) {
        self.out
            .extend_from_slice(if b { b"b:1;" } else { b"b:0;" });
    }

    /// `i:…;`, a value or an array key.
    pub fn int(&mut self, i: i64) {
        self.out.extend_from_slice(b"i:");
        self.number(i);
        self.out.push(b';');
    }

    /// `d:…;`
    pub fn float(&mut self, f: f64) {
        self.out.extend_from_slice(b"d:");
        self.out.extend_from_slice(php_float(f).as_bytes());
        self.out.push(b';');
    }

    /// `s:n:"…";`, a value, an array key or a property name.
    pub fn str(&mut self, s: &[u8]) {
        self.out.extend_from_slice(b"s:");
        self.number(s.len());
        self.bytes(b":\"");
        self.bytes(s);
        self.bytes(b"\";");
    }

    /// `a:n:{`: `n` (key, value) pairs follow, then [`Writer::end`].
    pub fn array(&mut self, n: usize) {
        self.out.extend_from_slice(b"a:");
        self.number(n);
        self.out.extend_from_slice(b":{");
    }

    /// `O:n:"class":n:{`: `n` (property name, value) pairs follow, then [`Writer::end`].
    pub fn object(&mut self, class: &[u8], n: usize) {
        self.out.extend_from_slice(b"O:");
        self.number(class.len());
        self.bytes(b":\"");
        self.bytes(class);
        self.bytes(b"\":");
        self.number(n);
        self.out.extend_from_slice(b":{");
    }

    /// The private property `name` of `class`, as its mangled name.
    pub fn private(&mut self, class: &str, name: &str) {
        self.out.extend_from_slice(b"s:");
        self.number(class.len() + name.len() + 2);
        self.bytes(b":\"\0");
        self.bytes(class.as_bytes());
        self.bytes(b"\0");
        self.bytes(name.as_bytes());
        self.bytes(b"\";");
    }

    /// `}` of an array or an object.
    pub fn end(&mut self) {
        self.out.push(b'}');
    }

    /// A whole value.
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.null(),
            Value::Bool(b) => self.bool(*b),
            Value::Int(i) => self.int(*i),
            Value::Float(f) => self.float(*f),
            Value::Str(s) => self.str(s),
            Value::Array(items) => {
                self.array(items.len());
                for (k, v) in items {
                    match k {
                        Key::Int(i) => self.int(*i),
                        Key::Str(s) => self.str(s),
                    }
                    self.value(v);
                }
                self.end();
            }
            Value::Object(class, props) => {
                self.object(class, props.len());
                for (name, v) in props {
                    self.str(name);
                    self.value(v);
                }
                self.end();
            }
            Value::Enum(b) => {
                self.out.extend_from_slice(b"E:");
                self.number(b.len());
                self.bytes(b":\"");
                self.bytes(b);
                self.bytes(b"\";");
            }
            Value::Ref(i) => {
                self.out.extend_from_slice(b"r:");
                self.number(*i);
                self.out.push(b';');
            }
            Value::Custom(class, raw) => {
                self.out.extend_from_slice(b"C:");
                self.number(class.len());
                self.bytes(b":\"");
                self.bytes(class);
                self.bytes(b"\":");
                self.number(raw.len());
                self.out.extend_from_slice(b":{");
                self.bytes(raw);
                self.end();
            }
        }
    }
}

/// PHP's shortest round-trip rendering (`serialize_precision = -1`).
fn php_float(f: f64) -> String {
    if f.is_nan() {
        return "NAN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "INF".into() } else { "-INF".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let abs = f.abs();
    if (1e-4..1e15).contains(&abs) {
        // Rust's Display is the shortest round-trip text, without exponent in this range.
        format!("{f}")
    } else {
        // PHP writes 1.0E+25 / 1.0E-5 style exponents.
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = if mantissa.contains('.') {
            mantissa.to_owned()
        } else {
            format!("{mantissa}.0")
        };
        let exp: i32 = exp.parse().unwrap_or(0);
        format!(
            "{mantissa}E{}{}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

/// `addslashes`: a backslash before `'`, `"` and `\`, NUL as `\0`.
pub fn addslashes(s: &[u8]) -> Vec<u8> {
    let mut w = Writer::new(s.len() + s.len() / 8, true);
    w.bytes(s);
    w.finish()
}

/// `stripslashes`: `\0` is NUL, `\x` is `x`, a trailing lone backslash is dropped.
pub fn stripslashes(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.iter().position(|&b| b == b'\\') {
        out.extend_from_slice(&rest[..i]);
        match rest.get(i + 1) {
            Some(b'0') => out.push(0),
            Some(&c) => out.push(c),
            None => {}
        }
        rest = rest.get(i + 2..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    out
}

/// The mangled name of a private property.
pub fn private(class: &str, name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(class.len() + name.len() + 2);
    v.push(0);
    v.extend_from_slice(class.as_bytes());
    v.push(0);
    v.extend_from_slice(name.as_bytes());
    v
}

/// A property's plain name: `name`, `\0*\0name` and `\0Class\0name` all give `name`.
pub fn unmangle(name: &[u8]) -> &[u8] {
    if name.first() == Some(&0)
        && let Some(p) = name[1..].iter().position(|&b| b == 0)
    {
        return &name[p + 2..];
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_form() {
        let v = Value::Array(vec![
            (Key::Int(0), Value::Null),
            (Key::Int(1), Value::Bool(true)),
            (Key::Str(b"i".to_vec()), Value::Int(-42)),
            (Key::Str(b"f".to_vec()), Value::Float(0.25)),
            (
                Key::Str(b"s".to_vec()),
                Value::Str("Café \"x\";}\n\0".as_bytes().to_vec()),
            ),
            (
                Key::Str(b"o".to_vec()),
                Value::Object(
                    b"A\\B".to_vec(),
                    vec![(private("A\\B", "p"), Value::Enum(b"E:C".to_vec()))],
                ),
            ),
            (Key::Int(7), Value::Ref(2)),
            (Key::Int(8), Value::Custom(b"X".to_vec(), b"raw}{".to_vec())),
        ]);
        let mut out = Vec::new();
        write(&v, &mut out);
        assert_eq!(parse(&out).unwrap(), v);
    }

    #[test]
    fn floats_as_php_writes_them() {
        for (f, s) in [
            (0.25, "0.25"),
            (1.0, "1"),
            (-0.0, "-0"),
            (1e25, "1.0E+25"),
            (1.5e-7, "1.5E-7"),
            (123456.789, "123456.789"),
            (f64::INFINITY, "INF"),
        ] {
            assert_eq!(php_float(f), s);
            assert_eq!(parse_float(s.as_bytes()), Some(f));
        }
    }

    #[test]
    fn slashes_round_trip() {
        let raw = b"a\"b'c\\d\0e\nf";
        let s = addslashes(raw);
        assert_eq!(s, b"a\\\"b\\'c\\\\d\\0e\nf");
        assert_eq!(stripslashes(&s), raw);
        assert_eq!(stripslashes(b"x\\"), b"x");
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            &b"s:5:\"abc\";"[..],
            b"b:2;",
            b"a:1:{i:0;}",
            b"a:99999999999:{}",
            b"i:12",
            b"O:1:\"A\":1:{N;N;}",
            b"s:-1:\"\";",
            b"x:1;",
            b"",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = "a:1:{i:0;".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn unmangles_names() {
        assert_eq!(unmangle(b"\0A\\B\0stamps"), b"stamps");
        assert_eq!(unmangle(b"\0*\0x"), b"x");
        assert_eq!(unmangle(b"plain"), b"plain");
    }
}
