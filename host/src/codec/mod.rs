//! Symfony Messenger envelopes, both serializers, both directions: PHP `serialize()` (the
//! default `PhpSerializer`) and the Symfony Serializer's JSON. Pure: bytes in, values out.
//!
//! Start with [`decode`] (a row's body and headers -> a [`Decoded`] message) and
//! [`encode_response`]. The format is detected per row; unknown stamps of any shape are
//! skipped; the bus name stamp is kept so the response goes to the bus Core expects.

pub mod php;

use base64::Engine as _;
use serde_json::{Map, Value as Json};

use crate::message::{DEFAULT_TIMEOUT_SECS, ManagerRequest, ManagerResponse};
use php::{Key, Value};

/// The request class.
pub const REQUEST_CLASS: &str = "EnderLab\\MarvinManagerBundle\\Messenger\\ManagerRequestCommand";
/// The response class.
pub const RESPONSE_CLASS: &str = "EnderLab\\MarvinManagerBundle\\Messenger\\ManagerResponseCommand";
const ENVELOPE_CLASS: &str = "Symfony\\Component\\Messenger\\Envelope";
const BUS_NAME_STAMP: &str = "Symfony\\Component\\Messenger\\Stamp\\BusNameStamp";
const STAMP_HEADER: &str = "X-Message-Stamp-";

/// PHP's `base64_decode` is not strict about padding.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The request class as it appears in stored rows (both formats escape the backslashes), for
/// filtering a shared queue in SQL.
pub fn request_class_needle() -> String {
    REQUEST_CLASS.replace('\\', "\\\\")
}

/// What the SQL filter of a fetch looks for, so that a row of another class on a shared queue
/// is not read while every row Symfony could take for a request, or that no Symfony
/// serializer can decode (so no consumer of the queue would take it), is: then decoded, and
/// answered or parked.
#[derive(Debug, Clone)]
pub struct Needles {
    /// The class as stored (backslashes doubled by `addslashes` or JSON): the fast path.
    pub exact: String,
    /// The same, lower-case: PHP compares class names without regard to case.
    pub lower: String,
    /// The class with single backslashes, lower-case: a body never addslashed.
    pub lower_plain: String,
    /// What every PHP-serialized envelope holds (its `message` property, addslashed): a body
    /// that names `Envelope` without it is a truncated or broken envelope.
    pub message_marker: &'static str,
}

impl Needles {
    /// For [`REQUEST_CLASS`].
    pub fn new() -> Self {
        let exact = request_class_needle();
        Self {
            lower: exact.to_ascii_lowercase(),
            lower_plain: REQUEST_CLASS.to_ascii_lowercase(),
            exact,
            message_marker: "Envelope\\0message",
        }
    }
}

impl Default for Needles {
    fn default() -> Self {
        Self::new()
    }
}

/// Which serializer wrote a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `PhpSerializer`: `serialize()` of the envelope.
    Php,
    /// The Symfony Serializer with JSON.
    Json,
}

/// A decoded row.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Which serializer wrote it.
    pub format: Format,
    /// The message class.
    pub class: String,
    /// The bus name stamp, when there is one.
    pub bus_name: Option<String>,
    /// The request, when the class is [`REQUEST_CLASS`]; `Err` when its fields are wrong.
    pub request: Option<Result<ManagerRequest, Malformed>>,
}

/// A request whose fields are not what the contract says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The correlation id, if it could be read: then Core can get an error response.
    pub correlation_id: Option<String>,
    /// The entity id, if it could be read.
    pub entity_id: Option<String>,
    /// The action, if it could be read.
    pub action: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// Decodes a row. `Err` means undecodable: not an envelope of either format.
pub fn decode(body: &[u8], headers: &str) -> Result<Decoded, String> {
    if body.is_empty() {
        return Err("empty body".into());
    }
    let header_map = match serde_json::from_str::<Json>(headers) {
        Ok(Json::Object(m)) if m.contains_key("type") => Some(m),
        _ => None,
    };
    match header_map {
        Some(h) => decode_json(body, &h),
        None => decode_php(body).map_err(|e| {
            match serde_json::from_str::<Json>(headers) {
                // Headers of the JSON serializer, without the one it needs.
                Ok(Json::Object(m)) if !m.is_empty() => format!(
                    "no `type` header (Symfony's Serializer needs it) and the body is not serialized PHP: {e}"
                ),
                _ => e,
            }
        }),
    }
}

fn decode_php(body: &[u8]) -> Result<Decoded, String> {
    let decoded;
    let text = if body.last() == Some(&b'}') {
        body
    } else {
        let clean: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        decoded = LENIENT_BASE64
            .decode(&clean)
            .map_err(|_| "body is neither serialized PHP nor base64".to_owned())?;
        &decoded
    };
    let raw = php::stripslashes(text);
    let value = php::parse(&raw).map_err(|e| e.to_string())?;
    let Value::Object(class, props) = value else {
        return Err("body is not a serialized object".into());
    };
    if !eq_class(&class, ENVELOPE_CLASS) {
        return Err(format!("body is a {}, not an Envelope", lossy(&class)));
    }
    let mut stamps = None;
    let mut message = None;
    for (name, v) in props {
        match php::unmangle(&name) {
            b"stamps" => stamps = Some(v),
            b"message" => message = Some(v),
            _ => {}
        }
    }
    let Some(Value::Object(class, props)) = message else {
        return Err("envelope has no message object".into());
    };
    let bus_name = stamps.as_ref().and_then(php_bus_name);
    let class = lossy(&class);
    let request = eq_class(class.as_bytes(), REQUEST_CLASS).then(|| php_request(&props));
    Ok(Decoded {
        format: Format::Php,
        class,
        bus_name,
        request,
    })
}

/// Class names as PHP compares them: without regard to ASCII case, a leading `\` (a fully
/// qualified name) allowed.
fn eq_class(a: &[u8], b: &str) -> bool {
    a.strip_prefix(b"\\")
        .unwrap_or(a)
        .eq_ignore_ascii_case(b.as_bytes())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn php_bus_name(stamps: &Value) -> Option<String> {
    let Value::Array(by_class) = stamps else {
        return None;
    };
    by_class.iter().find_map(|(k, list)| {
        let Key::Str(class) = k else { return None };
        if !eq_class(class, BUS_NAME_STAMP) {
            return None;
        }
        let Value::Array(list) = list else {
            return None;
        };
        // The last stamp of a class wins, as in Symfony.
        list.iter().rev().find_map(|(_, stamp)| match stamp {
            Value::Object(_, props) => {
                props.iter().find_map(|(n, v)| match (php::unmangle(n), v) {
                    (b"busName", Value::Str(s)) => Some(lossy(s)),
                    _ => None,
                })
            }
            _ => None,
        })
    })
}

fn php_request(props: &[(Vec<u8>, Value)]) -> Result<ManagerRequest, Malformed> {
    // The last of a repeated property wins, as `unserialize` sets them in order.
    let get = |name: &str| {
        props
            .iter()
            .rfind(|(n, _)| php::unmangle(n) == name.as_bytes())
            .map(|(_, v)| v)
    };
    let string = |name: &str| match get(name) {
        Some(Value::Str(s)) => Ok(lossy(s)),
        Some(_) => Err(format!("`{name}` is not a string")),
        None => Err(format!("`{name}` is missing")),
    };
    let correlation_id = string("correlationId");
    let entity_id = string("containerId");
    let action = string("action");
    let rest = (|| {
        let command = match get("command") {
            None | Some(Value::Null) => None,
            Some(Value::Str(s)) => Some(lossy(s)),
            Some(_) => return Err("`command` is not a string or null".to_owned()),
        };
        let args = match get("args") {
            None => Json::Array(vec![]),
            Some(v @ Value::Array(_)) => php_to_json(v),
            Some(_) => return Err("`args` is not an array".to_owned()),
        };
        let timeout = match get("timeout") {
            None => DEFAULT_TIMEOUT_SECS,
            Some(Value::Int(i)) => *i,
            Some(_) => return Err("`timeout` is not an integer".to_owned()),
        };
        Ok((command, args, timeout))
    })();
    assemble(correlation_id, entity_id, action, rest)
}

type Field = Result<String, String>;

/// A request from its decoded fields, or what is wrong with them (keeping what was readable).
fn assemble(
    correlation_id: Field,
    entity_id: Field,
    action: Field,
    rest: Result<(Option<String>, Json, i64), String>,
) -> Result<ManagerRequest, Malformed> {
    match (correlation_id, entity_id, action, rest) {
        (Ok(correlation_id), Ok(entity_id), Ok(action), Ok((command, args, timeout))) => {
            Ok(ManagerRequest::new(correlation_id, entity_id, action)
                .with_command(command)
                .with_args(args)
                .with_timeout(timeout))
        }
        (c, e, a, r) => {
            let reason = [&c, &e, &a]
                .iter()
                .filter_map(|r| r.as_ref().err().cloned())
                .chain(r.err())
                .collect::<Vec<_>>()
                .join(", ");
            Err(Malformed {
                correlation_id: c.ok(),
                entity_id: e.ok(),
                action: a.ok(),
                reason: format!("malformed ManagerRequestCommand: {reason}"),
            })
        }
    }
}

/// A PHP value as JSON: lists become arrays, other arrays objects, objects their properties.
pub fn php_to_json(v: &Value) -> Json {
    match v {
        Value::Null | Value::Ref(_) | Value::Custom(..) => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Str(s) | Value::Enum(s) => Json::String(lossy(s)),
        Value::Array(items) => {
            let is_list = items
                .iter()
                .enumerate()
                .all(|(i, (k, _))| matches!(k, Key::Int(n) if usize::try_from(*n) == Ok(i)));
            if is_list {
                Json::Array(items.iter().map(|(_, v)| php_to_json(v)).collect())
            } else {
                Json::Object(
                    items
                        .iter()
                        .map(|(k, v)| {
                            let k = match k {
                                Key::Int(i) => i.to_string(),
                                Key::Str(s) => lossy(s),
                            };
                            (k, php_to_json(v))
                        })
                        .collect(),
                )
            }
        }
        Value::Object(_, props) => Json::Object(
            props
                .iter()
                .map(|(n, v)| (lossy(php::unmangle(n)), php_to_json(v)))
                .collect(),
        ),
    }
}

/// PHP canonicalises decimal integer strings to integer keys ("7" -> 7, "07" stays a string).
fn php_key(k: &str) -> Key {
    let canonical = k == "0"
        || (!k.starts_with('0') && !k.starts_with("-0") && k != "-" && {
            let digits = k.strip_prefix('-').unwrap_or(k);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        });
    match k.parse::<i64>() {
        Ok(i) if canonical => Key::Int(i),
        _ => Key::Str(k.as_bytes().to_vec()),
    }
}

fn decode_json(body: &[u8], headers: &Map<String, Json>) -> Result<Decoded, String> {
    let class = headers
        .get("type")
        .and_then(Json::as_str)
        .ok_or("the `type` header is not a string")?
        .to_owned();
    let bus_name = headers
        .iter()
        .find(|(k, _)| {
            k.strip_prefix(STAMP_HEADER)
                .is_some_and(|c| c.eq_ignore_ascii_case(BUS_NAME_STAMP))
        })
        .and_then(|(_, v)| v.as_str())
        .and_then(|s| serde_json::from_str::<Json>(s).ok())
        .and_then(|v| {
            v.as_array()?
                .iter()
                .rev()
                .find_map(|s| s.get("busName")?.as_str().map(str::to_owned))
        });
    // Another class's row is not ours to judge: its body may be in any format.
    if !eq_class(class.as_bytes(), REQUEST_CLASS) {
        return Ok(Decoded {
            format: Format::Json,
            class,
            bus_name,
            request: None,
        });
    }
    let body: Json = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let Json::Object(fields) = body else {
        return Err("body is not a JSON object".into());
    };
    let request = Some(json_request(&fields));
    Ok(Decoded {
        format: Format::Json,
        class,
        bus_name,
        request,
    })
}

fn json_request(f: &Map<String, Json>) -> Result<ManagerRequest, Malformed> {
    let string = |name: &str| match f.get(name) {
        Some(Json::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{name}` is not a string")),
        None => Err(format!("`{name}` is missing")),
    };
    let correlation_id = string("correlationId");
    let entity_id = string("containerId");
    let action = string("action");
    let rest = (|| {
        let command = match f.get("command") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err("`command` is not a string or null".to_owned()),
        };
        let args = match f.get("args") {
            None => Json::Array(vec![]),
            Some(v @ (Json::Array(_) | Json::Object(_))) => v.clone(),
            Some(_) => return Err("`args` is not an array".to_owned()),
        };
        let timeout = match f.get("timeout") {
            None => DEFAULT_TIMEOUT_SECS,
            Some(Json::Number(n)) if n.is_i64() => n.as_i64().unwrap_or(DEFAULT_TIMEOUT_SECS),
            Some(_) => return Err("`timeout` is not an integer".to_owned()),
        };
        Ok((command, args, timeout))
    })();
    assemble(correlation_id, entity_id, action, rest)
}

/// A row to insert: body and headers columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The `body` column.
    pub body: String,
    /// The `headers` column.
    pub headers: String,
}

/// `PhpSerializer::encode` of an envelope around the message `message` writes (an object),
/// with a `BusNameStamp` when `bus_name` is given: serialize and addslashes in one pass;
/// base64 when not UTF-8.
fn php_body(bus_name: Option<&str>, message: impl FnOnce(&mut php::Writer)) -> String {
    let mut w = php::Writer::after(envelope_head(bus_name), true);
    message(&mut w);
    w.end();
    match String::from_utf8(w.finish()) {
        Ok(s) => s,
        Err(e) => base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
    }
}

/// How many envelope heads (one per bus name) a thread keeps.
const ENVELOPE_HEADS: usize = 4;

thread_local! {
    /// The envelope's text before its message, by bus name, as [`php_body`] writes it: the
    /// same for every answer, its class names half of an answer's bytes and most of its
    /// escapes (written each time, it was about a third of the encoding).
    static HEADS: std::cell::RefCell<Vec<(Option<String>, Vec<u8>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer that starts with the envelope's text up to its message (see [`HEADS`]).
fn envelope_head(bus_name: Option<&str>) -> Vec<u8> {
    HEADS.with_borrow_mut(|heads| {
        let at = match heads.iter().position(|(b, _)| b.as_deref() == bus_name) {
            Some(at) => at,
            None => {
                if heads.len() >= ENVELOPE_HEADS {
                    heads.remove(0);
                }
                heads.push((bus_name.map(str::to_owned), write_envelope_head(bus_name)));
                heads.len() - 1
            }
        };
        let head = &heads[at].1;
        let mut out = Vec::with_capacity(head.len() + 1024);
        out.extend_from_slice(head);
        out
    })
}

fn write_envelope_head(bus_name: Option<&str>) -> Vec<u8> {
    let mut w = php::Writer::new(512, true);
    w.object(ENVELOPE_CLASS.as_bytes(), 2);
    w.private(ENVELOPE_CLASS, "stamps");
    match bus_name {
        Some(bus) => {
            w.array(1);
            w.str(BUS_NAME_STAMP.as_bytes());
            w.array(1);
            w.int(0);
            w.object(BUS_NAME_STAMP.as_bytes(), 1);
            w.private(BUS_NAME_STAMP, "busName");
            w.str(bus.as_bytes());
            w.end();
            w.end();
            w.end();
        }
        None => {
            w.array(0);
            w.end();
        }
    }
    w.private(ENVELOPE_CLASS, "message");
    w.finish()
}

/// Writes a JSON value as `json_decode(…, true)` builds it in PHP (objects as arrays).
fn write_json(w: &mut php::Writer, v: &Json) {
    match v {
        Json::Null => w.null(),
        Json::Bool(b) => w.bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => w.int(i),
            None => w.float(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => w.str(s.as_bytes()),
        Json::Array(a) => {
            w.array(a.len());
            for (i, v) in a.iter().enumerate() {
                w.int(i64::try_from(i).unwrap_or(i64::MAX));
                write_json(w, v);
            }
            w.end();
        }
        Json::Object(m) => write_json_object(w, m),
    }
}

/// A JSON object as a PHP array, its keys as PHP canonicalises them.
fn write_json_object(w: &mut php::Writer, m: &Map<String, Json>) {
    w.array(m.len());
    for (k, v) in m {
        match php_key(k) {
            Key::Int(i) => w.int(i),
            Key::Str(s) => w.str(&s),
        }
        write_json(w, v);
    }
    w.end();
}

/// PHP's `json_encode` escaping: `/` as `\/`, non-ASCII as `\uXXXX`.
pub fn php_json(v: &Json) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '/' => out.push_str("\\/"),
            c if c.is_ascii() => out.push(c),
            c => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out
}

fn json_headers(class: &str, bus_name: Option<&str>) -> String {
    let mut h = format!("{{\"type\":{}", php_json(&Json::String(class.into())));
    if let Some(bus) = bus_name {
        let stamps = php_json(&serde_json::json!([{ "busName": bus }]));
        h.push_str(&format!(
            ",{}:{}",
            php_json(&Json::String(format!("{STAMP_HEADER}{BUS_NAME_STAMP}"))),
            php_json(&Json::String(stamps))
        ));
    }
    h.push_str(",\"Content-Type\":\"application\\/json\"}");
    h
}

/// Encodes a message of `class` whose public properties are `fields`, in declaration order.
/// One description serves both formats: PHP gets the fields as `json_decode(…, true)` would
/// build them, JSON gets them as `json_encode` writes them.
fn encode_message(
    class: &str,
    fields: Map<String, Json>,
    format: Format,
    bus_name: Option<&str>,
) -> Encoded {
    match format {
        Format::Php => Encoded {
            body: php_body(bus_name, |w| {
                w.object(class.as_bytes(), fields.len());
                for (k, v) in &fields {
                    w.str(k.as_bytes());
                    write_json(w, v);
                }
                w.end();
            }),
            headers: "[]".into(),
        },
        Format::Json => Encoded {
            body: php_json(&Json::Object(fields)),
            headers: json_headers(class, bus_name),
        },
    }
}

fn fields(v: Json) -> Map<String, Json> {
    match v {
        Json::Object(m) => m,
        _ => Map::new(),
    }
}

/// Encodes a response in `format`, with the request's bus name stamp.
pub fn encode_response(r: &ManagerResponse, format: Format, bus_name: Option<&str>) -> Encoded {
    if format == Format::Php {
        // Straight to PHP's text, no JSON or PHP values in between (this is on every answer's
        // path): the same properties, in the same order, as the JSON form below.
        let text = |w: &mut php::Writer, v: &str| w.str(v.as_bytes());
        let maybe = |w: &mut php::Writer, v: &Option<String>| match v {
            Some(v) => w.str(v.as_bytes()),
            None => w.null(),
        };
        let body = php_body(bus_name, |w| {
            w.object(RESPONSE_CLASS.as_bytes(), 8);
            w.str(b"correlationId");
            text(w, &r.correlation_id);
            w.str(b"entityType");
            text(w, r.entity_type.as_str());
            w.str(b"entityId");
            text(w, &r.entity_id);
            w.str(b"action");
            text(w, &r.action);
            w.str(b"success");
            w.bool(r.success);
            w.str(b"output");
            maybe(w, &r.output);
            w.str(b"error");
            maybe(w, &r.error);
            w.str(b"metadata");
            write_json_object(w, &r.metadata);
            w.end();
        });
        return Encoded {
            body,
            headers: "[]".into(),
        };
    }
    encode_message(RESPONSE_CLASS, response_fields(r), format, bus_name)
}

/// A response's properties as JSON values, in Symfony's order.
fn response_fields(r: &ManagerResponse) -> Map<String, Json> {
    fields(serde_json::json!({
        "correlationId": r.correlation_id,
        "entityType": r.entity_type.as_str(),
        "entityId": r.entity_id,
        "action": r.action,
        "success": r.success,
        "output": r.output,
        "error": r.error,
        // An empty PHP array is `[]` in JSON, whatever it means.
        "metadata": if r.metadata.is_empty() { Json::Array(vec![]) } else { Json::Object(r.metadata.clone()) },
    }))
}

/// Encodes a request as Core dispatches it (for `dispatch` and tests).
pub fn encode_request(r: &ManagerRequest, format: Format, bus_name: Option<&str>) -> Encoded {
    let body = serde_json::json!({
        "containerId": r.entity_id,
        "correlationId": r.correlation_id,
        "action": r.action,
        "command": r.command,
        "args": r.args,
        "timeout": r.timeout,
    });
    encode_message(REQUEST_CLASS, fields(body), format, bus_name)
}

/// Decodes a response row (for `dispatch --wait` and tests).
pub fn decode_response(body: &[u8], headers: &str) -> Result<ManagerResponse, String> {
    let json = match serde_json::from_str::<Json>(headers) {
        Ok(Json::Object(m)) if m.contains_key("type") => {
            serde_json::from_slice::<Json>(body).map_err(|e| e.to_string())?
        }
        _ => {
            let text = if body.last() == Some(&b'}') {
                body.to_vec()
            } else {
                LENIENT_BASE64.decode(body).map_err(|e| e.to_string())?
            };
            match php::parse(&php::stripslashes(&text)).map_err(|e| e.to_string())? {
                Value::Object(_, props) => props
                    .into_iter()
                    .find(|(n, _)| php::unmangle(n) == b"message")
                    .map(|(_, v)| php_to_json(&v))
                    .ok_or("no message")?,
                _ => return Err("not an envelope".into()),
            }
        }
    };
    let mut json = json;
    if let Some(m) = json.get_mut("metadata")
        && (m.is_null() || m.as_array().is_some_and(Vec::is_empty))
    {
        *m = Json::Object(Map::new());
    }
    serde_json::from_value(json).map_err(|e| format!("not a ManagerResponseCommand: {e}"))
}

#[cfg(test)]
mod tests;
