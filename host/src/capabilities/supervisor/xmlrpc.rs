//! XML-RPC, the part supervisord speaks: a method call out, a response or fault back. The XML
//! is read and written by `dxr` (with `i8` and `nil`); this module keeps the small value model
//! the supervisord client works with (struct members in order, `base64` and dates as text)
//! and bounds the nesting of what it reads.

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

/// Deepest nesting of arrays and structs read from an answer.
const MAX_DEPTH: usize = 64;

fn to_dxr(v: &Value) -> dxr::Value {
    match v {
        Value::Int(i) => match i32::try_from(*i) {
            Ok(small) => dxr::Value::Integer(small),
            Err(_) => dxr::Value::Long(*i),
        },
        Value::Bool(b) => dxr::Value::Boolean(*b),
        Value::Str(s) | Value::DateTime(s) => dxr::Value::String(s.clone()),
        Value::Double(d) => dxr::Value::Double(*d),
        Value::Base64(b) => dxr::Value::String(b.clone()),
        Value::Nil => dxr::Value::Nil,
        Value::Array(items) => dxr::Value::Array(items.iter().map(to_dxr).collect()),
        Value::Struct(members) => dxr::Value::Struct(
            members
                .iter()
                .map(|(k, v)| (k.clone(), to_dxr(v)))
                .collect(),
        ),
    }
}

fn from_dxr(v: dxr::Value, depth: usize) -> Result<Value, RpcError> {
    if depth > MAX_DEPTH {
        return Err(RpcError::Malformed(format!(
            "values nested deeper than {MAX_DEPTH}"
        )));
    }
    Ok(match v {
        dxr::Value::Integer(i) => Value::Int(i64::from(i)),
        dxr::Value::Long(i) => Value::Int(i),
        dxr::Value::Boolean(b) => Value::Bool(b),
        dxr::Value::String(s) => Value::Str(s),
        dxr::Value::Double(d) => Value::Double(d),
        dxr::Value::DateTime(d) => Value::DateTime(d.to_string()),
        dxr::Value::Base64(b) => {
            use base64::Engine as _;
            Value::Base64(base64::engine::general_purpose::STANDARD.encode(b))
        }
        dxr::Value::Nil => Value::Nil,
        dxr::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| from_dxr(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        dxr::Value::Struct(members) => Value::Struct(
            members
                .into_iter()
                .map(|(k, v)| Ok((k, from_dxr(v, depth + 1)?)))
                .collect::<Result<_, RpcError>>()?,
        ),
        other => {
            return Err(RpcError::Malformed(format!(
                "an XML-RPC value of an unknown kind: {other:?}"
            )));
        }
    })
}

/// A `<methodCall>` of `method` with `params`.
pub fn call(method: &str, params: &[Value]) -> Result<String, RpcError> {
    let call = dxr::MethodCall {
        name: method.into(),
        params: params.iter().map(to_dxr).collect(),
    };
    call.to_xml()
        .map_err(|e| RpcError::Malformed(format!("cannot write the call to {method}: {e}")))
}

/// The value of a `<methodResponse>`, or its fault.
pub fn response(xml: &str) -> Result<Value, RpcError> {
    // The nesting is bounded before the XML is handed to the parser.
    if xml.matches("<value").count() > MAX_DEPTH * 1024 || nesting(xml) > MAX_DEPTH * 3 + 8 {
        return Err(RpcError::Malformed(format!(
            "values nested deeper than {MAX_DEPTH}"
        )));
    }
    if let Ok(r) = dxr::MethodResponse::from_xml(xml) {
        return from_dxr(r.value, 0);
    }
    match dxr::FaultResponse::from_xml(xml) {
        Ok(f) => Err(RpcError::Fault {
            code: i64::from(f.fault.code()),
            text: f.fault.string().to_owned(),
        }),
        Err(_) => Err(RpcError::Malformed(format!(
            "not an XML-RPC response: {}",
            xml.chars().take(200).collect::<String>()
        ))),
    }
}

/// The deepest nesting of elements in `xml` (a scan of its tags, before parsing).
fn nesting(xml: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let b = xml.as_bytes();
    let mut i = 0;
    while let Some(at) = xml[i..].find('<') {
        let start = i + at;
        let end = xml[start..].find('>').map_or(xml.len(), |e| start + e);
        match (b.get(start + 1), b.get(end.saturating_sub(1))) {
            (Some(b'/'), _) => depth = depth.saturating_sub(1),
            (Some(b'?' | b'!'), _) | (_, Some(b'/')) => {}
            _ => {
                depth += 1;
                deepest = deepest.max(depth);
            }
        }
        i = end.min(xml.len());
        if i >= xml.len() {
            break;
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_written_with_typed_escaped_params() {
        let body = call(
            "supervisor.startProcess",
            &[Value::Str("a<&>b".into()), Value::Bool(true)],
        )
        .unwrap();
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
