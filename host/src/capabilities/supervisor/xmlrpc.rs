//! XML-RPC, the part supervisord speaks: a method call out, a response or fault back.
//!
//! The reader takes the XML Python's `xmlrpc` writes (and any well-formed XML-RPC): values
//! with or without a type tag (a bare value is a string), `i4`/`int`/`i8`, `boolean`,
//! `double`, `string`, `base64`, `dateTime.iso8601`, `nil`, `array`, `struct`; entity and
//! character references; comments and the XML declaration skipped. Depth is bounded.

use std::fmt::Write as _;

/// An XML-RPC value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `int`, `i4`, `i8`.
    Int(i64),
    /// `boolean`.
    Bool(bool),
    /// `string`, or a value with no type tag.
    Str(String),
    /// `double`.
    Double(f64),
    /// `base64`, left encoded.
    Base64(String),
    /// `dateTime.iso8601`, as written.
    DateTime(String),
    /// `nil`.
    Nil,
    /// `array`.
    Array(Vec<Value>),
    /// `struct`, members in order.
    Struct(Vec<(String, Value)>),
}

impl Value {
    /// A struct member.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Struct(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// As text (strings only).
    pub fn str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// As an integer (ints, and booleans as 0/1).
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// A struct member as text, empty when absent.
    pub fn text_of(&self, key: &str) -> String {
        self.get(key)
            .and_then(Value::str)
            .unwrap_or_default()
            .to_owned()
    }

    /// A struct member as an integer, 0 when absent.
    pub fn int_of(&self, key: &str) -> i64 {
        self.get(key).and_then(Value::int).unwrap_or(0)
    }
}

/// What came back instead of a value.
#[derive(Debug, Clone, PartialEq)]
pub enum RpcError {
    /// A `<fault>`: the server's code and text.
    Fault {
        /// `faultCode`.
        code: i64,
        /// `faultString`.
        text: String,
    },
    /// Not an XML-RPC response.
    Malformed(String),
}

fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
}

fn write_value(v: &Value, out: &mut String) {
    out.push_str("<value>");
    match v {
        Value::Int(i) => {
            let _ = write!(out, "<int>{i}</int>");
        }
        Value::Bool(b) => {
            let _ = write!(out, "<boolean>{}</boolean>", u8::from(*b));
        }
        Value::Str(s) => {
            out.push_str("<string>");
            escape(s, out);
            out.push_str("</string>");
        }
        Value::Double(d) => {
            let _ = write!(out, "<double>{d}</double>");
        }
        Value::Base64(b) => {
            let _ = write!(out, "<base64>{b}</base64>");
        }
        Value::DateTime(d) => {
            out.push_str("<dateTime.iso8601>");
            escape(d, out);
            out.push_str("</dateTime.iso8601>");
        }
        Value::Nil => out.push_str("<nil/>"),
        Value::Array(items) => {
            out.push_str("<array><data>");
            for i in items {
                write_value(i, out);
            }
            out.push_str("</data></array>");
        }
        Value::Struct(members) => {
            out.push_str("<struct>");
            for (k, v) in members {
                out.push_str("<member><name>");
                escape(k, out);
                out.push_str("</name>");
                write_value(v, out);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

/// The body of a call of `method` with `params`.
pub fn call(method: &str, params: &[Value]) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodCall><methodName>");
    escape(method, &mut out);
    out.push_str("</methodName><params>");
    for p in params {
        out.push_str("<param>");
        write_value(p, &mut out);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>\n");
    out
}

/// One piece of XML.
#[derive(Debug, PartialEq)]
enum Token {
    Open(String),
    Close(String),
    /// `<x/>`.
    Empty(String),
    Text(String),
}

const MAX_DEPTH: usize = 64;

struct Lexer<'a> {
    s: &'a str,
    pos: usize,
    peeked: Option<Token>,
}

fn unescape(raw: &str) -> Result<String, RpcError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(end) = after.find(';') else {
            return Err(RpcError::Malformed(
                "an unterminated entity reference".into(),
            ));
        };
        let name = &after[..end];
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = name.strip_prefix("#x").or(name.strip_prefix("#X")) {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = name.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32).ok_or_else(|| {
                    RpcError::Malformed(format!("an unknown entity reference &{name};"))
                })?
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl<'a> Lexer<'a> {
    fn new(s: &'a str) -> Self {
        Self {
            s,
            pos: 0,
            peeked: None,
        }
    }

    fn next(&mut self) -> Result<Option<Token>, RpcError> {
        if let Some(t) = self.peeked.take() {
            return Ok(Some(t));
        }
        loop {
            let rest = &self.s[self.pos..];
            if rest.is_empty() {
                return Ok(None);
            }
            if !rest.starts_with('<') {
                let end = rest.find('<').unwrap_or(rest.len());
                self.pos += end;
                return Ok(Some(Token::Text(unescape(&rest[..end])?)));
            }
            for (open, close) in [("<?", "?>"), ("<!--", "-->")] {
                if rest.starts_with(open) {
                    let end = rest
                        .find(close)
                        .ok_or_else(|| RpcError::Malformed(format!("an unterminated {open}")))?;
                    self.pos += end + close.len();
                }
            }
            if rest.starts_with("<?") || rest.starts_with("<!--") {
                continue;
            }
            if let Some(body) = rest.strip_prefix("<![CDATA[") {
                let end = body
                    .find("]]>")
                    .ok_or_else(|| RpcError::Malformed("an unterminated CDATA section".into()))?;
                self.pos += 9 + end + 3;
                return Ok(Some(Token::Text(body[..end].to_owned())));
            }
            let end = rest
                .find('>')
                .ok_or_else(|| RpcError::Malformed("an unterminated tag".into()))?;
            let inner = &rest[1..end];
            self.pos += end + 1;
            let token = if let Some(name) = inner.strip_prefix('/') {
                Token::Close(name.trim().to_owned())
            } else if let Some(name) = inner.strip_suffix('/') {
                Token::Empty(tag_name(name))
            } else {
                Token::Open(tag_name(inner))
            };
            return Ok(Some(token));
        }
    }

    fn peek(&mut self) -> Result<Option<&Token>, RpcError> {
        if self.peeked.is_none() {
            self.peeked = self.next()?;
        }
        Ok(self.peeked.as_ref())
    }

    /// The next token that is not whitespace.
    fn significant(&mut self) -> Result<Token, RpcError> {
        loop {
            match self.next()? {
                Some(Token::Text(t)) if t.trim().is_empty() => continue,
                Some(t) => return Ok(t),
                None => return Err(RpcError::Malformed("the document ends early".into())),
            }
        }
    }

    fn expect_open(&mut self, name: &str) -> Result<(), RpcError> {
        match self.significant()? {
            Token::Open(n) if n == name => Ok(()),
            other => Err(RpcError::Malformed(format!(
                "expected <{name}>, found {other:?}"
            ))),
        }
    }

    fn expect_close(&mut self, name: &str) -> Result<(), RpcError> {
        match self.significant()? {
            Token::Close(n) if n == name => Ok(()),
            other => Err(RpcError::Malformed(format!(
                "expected </{name}>, found {other:?}"
            ))),
        }
    }

    /// Text up to `</name>` (empty when none).
    fn text_until(&mut self, name: &str) -> Result<String, RpcError> {
        let mut text = String::new();
        loop {
            match self.next()? {
                Some(Token::Text(t)) => text.push_str(&t),
                Some(Token::Close(n)) if n == name => return Ok(text),
                other => {
                    return Err(RpcError::Malformed(format!(
                        "expected text in <{name}>, found {other:?}"
                    )));
                }
            }
        }
    }

    /// A `<value>…</value>`, its opening tag already read.
    fn value_body(&mut self, depth: usize) -> Result<Value, RpcError> {
        if depth > MAX_DEPTH {
            return Err(RpcError::Malformed("values nest too deep".into()));
        }
        // A bare value: text only, a string.
        let mut text = String::new();
        loop {
            match self.peek()? {
                Some(Token::Text(_)) => {
                    if let Some(Token::Text(t)) = self.next()? {
                        text.push_str(&t);
                    }
                }
                Some(Token::Close(n)) if n == "value" => {
                    self.next()?;
                    return Ok(Value::Str(text));
                }
                Some(_) => break,
                None => return Err(RpcError::Malformed("the document ends early".into())),
            }
        }
        let v = match self.significant()? {
            Token::Empty(n) => match n.as_str() {
                "nil" => Value::Nil,
                "string" => Value::Str(String::new()),
                other => return Err(RpcError::Malformed(format!("an empty <{other}/>"))),
            },
            Token::Open(n) => match n.as_str() {
                "int" | "i4" | "i8" => {
                    let t = self.text_until(&n)?;
                    Value::Int(t.trim().parse().map_err(|_| {
                        RpcError::Malformed(format!("<{n}>{t}</{n}> is not an integer"))
                    })?)
                }
                "boolean" => Value::Bool(self.text_until(&n)?.trim() == "1"),
                "double" => {
                    let t = self.text_until(&n)?;
                    Value::Double(t.trim().parse().map_err(|_| {
                        RpcError::Malformed(format!("<double>{t}</double> is not a number"))
                    })?)
                }
                "string" => Value::Str(self.text_until(&n)?),
                "base64" => Value::Base64(self.text_until(&n)?.trim().to_owned()),
                "dateTime.iso8601" => Value::DateTime(self.text_until(&n)?.trim().to_owned()),
                "nil" => {
                    self.expect_close("nil")?;
                    Value::Nil
                }
                "array" => {
                    let mut items = Vec::new();
                    match self.significant()? {
                        Token::Empty(d) if d == "data" => {}
                        Token::Open(d) if d == "data" => loop {
                            match self.significant()? {
                                Token::Open(v) if v == "value" => {
                                    items.push(self.value_body(depth + 1)?)
                                }
                                Token::Close(d) if d == "data" => break,
                                other => {
                                    return Err(RpcError::Malformed(format!(
                                        "expected <value> in <data>, found {other:?}"
                                    )));
                                }
                            }
                        },
                        other => {
                            return Err(RpcError::Malformed(format!(
                                "expected <data>, found {other:?}"
                            )));
                        }
                    }
                    self.expect_close("array")?;
                    Value::Array(items)
                }
                "struct" => {
                    let mut members = Vec::new();
                    loop {
                        match self.significant()? {
                            Token::Open(m) if m == "member" => {
                                self.expect_open("name")?;
                                let key = self.text_until("name")?;
                                self.expect_open("value")?;
                                let v = self.value_body(depth + 1)?;
                                self.expect_close("member")?;
                                members.push((key, v));
                            }
                            Token::Close(s) if s == "struct" => break,
                            other => {
                                return Err(RpcError::Malformed(format!(
                                    "expected <member>, found {other:?}"
                                )));
                            }
                        }
                    }
                    Value::Struct(members)
                }
                other => return Err(RpcError::Malformed(format!("an unknown type <{other}>"))),
            },
            other => {
                return Err(RpcError::Malformed(format!(
                    "expected a type, found {other:?}"
                )));
            }
        };
        self.expect_close("value")?;
        Ok(v)
    }
}

fn tag_name(inner: &str) -> String {
    inner
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The value of a `<methodResponse>`, or its fault.
pub fn response(xml: &str) -> Result<Value, RpcError> {
    let mut lx = Lexer::new(xml);
    lx.expect_open("methodResponse")?;
    match lx.significant()? {
        Token::Open(p) if p == "params" => {
            lx.expect_open("param")?;
            lx.expect_open("value")?;
            let v = lx.value_body(0)?;
            lx.expect_close("param")?;
            lx.expect_close("params")?;
            Ok(v)
        }
        Token::Open(f) if f == "fault" => {
            lx.expect_open("value")?;
            let v = lx.value_body(0)?;
            Err(RpcError::Fault {
                code: v.int_of("faultCode"),
                text: v.text_of("faultString"),
            })
        }
        other => Err(RpcError::Malformed(format!(
            "expected <params> or <fault>, found {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_written_with_typed_escaped_params() {
        let body = call(
            "supervisor.startProcess",
            &[Value::Str("a<&>b".into()), Value::Bool(true)],
        );
        assert!(body.contains("<methodName>supervisor.startProcess</methodName>"));
        assert!(body.contains("<value><string>a&lt;&amp;&gt;b</string></value>"));
        assert!(body.contains("<value><boolean>1</boolean></value>"));
    }

    #[test]
    fn reads_what_python_writes() {
        // As supervisord 4 (Python's xmlrpc.client.dumps) answers getProcessInfo.
        let xml = "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><struct>\n\
            <member>\n<name>name</name>\n<value><string>web</string></value>\n</member>\n\
            <member>\n<name>pid</name>\n<value><int>42</int></value>\n</member>\n\
            <member>\n<name>description</name>\n<value><string>pid 42, uptime 0:00:01 &amp; &#233;</string></value>\n</member>\n\
            <member>\n<name>bare</name>\n<value>plain</value>\n</member>\n\
            <member>\n<name>empty</name>\n<value><string></string></value>\n</member>\n\
            <member>\n<name>list</name>\n<value><array><data>\n<value><int>1</int></value>\n<value><boolean>0</boolean></value>\n</data></array></value>\n</member>\n\
            </struct></value>\n</param>\n</params>\n</methodResponse>\n";
        let v = response(xml).unwrap();
        assert_eq!(v.text_of("name"), "web");
        assert_eq!(v.int_of("pid"), 42);
        assert_eq!(v.text_of("description"), "pid 42, uptime 0:00:01 & é");
        assert_eq!(v.text_of("bare"), "plain");
        assert_eq!(v.text_of("empty"), "");
        assert_eq!(
            v.get("list"),
            Some(&Value::Array(vec![Value::Int(1), Value::Bool(false)]))
        );
        let empty = "<methodResponse><params><param><value><array><data/></array></value></param></params></methodResponse>";
        assert_eq!(response(empty).unwrap(), Value::Array(vec![]));
    }

    #[test]
    fn faults_and_garbage() {
        let xml = "<?xml version='1.0'?><methodResponse><fault><value><struct>\
            <member><name>faultCode</name><value><int>10</int></value></member>\
            <member><name>faultString</name><value><string>BAD_NAME: nope</string></value></member>\
            </struct></value></fault></methodResponse>";
        assert_eq!(
            response(xml),
            Err(RpcError::Fault {
                code: 10,
                text: "BAD_NAME: nope".into()
            })
        );
        for bad in [
            "",
            "<html>502</html>",
            "<methodResponse><params><param><value><int>x</int></value></param></params></methodResponse>",
            "<methodResponse><params><param><value><int>1</int>",
            "<methodResponse><params><param><value>&bogus;</value></param></params></methodResponse>",
        ] {
            assert!(
                matches!(response(bad), Err(RpcError::Malformed(_))),
                "{bad}"
            );
        }
        let deep = format!(
            "<methodResponse><params><param><value>{}",
            "<array><data><value>".repeat(100)
        );
        assert!(matches!(response(&deep), Err(RpcError::Malformed(m)) if m.contains("deep")));
    }
}
