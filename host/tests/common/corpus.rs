//! Hostile rows, both serializers, each with what must become of it: answered (successfully or
//! with an error naming the problem), parked in the failure queue with a reason, or left alone
//! (another class's row). Built here rather than stored as files: PHP's serialized form
//! carries byte lengths, which a generator gets right and a hand-edited file does not.
//!
//! What Symfony's transport would decode as a request (class names in any letter case, base64
//! bodies, repeated properties: the last wins) is answered; what no Symfony serializer can
//! decode (truncated or never-addslashed envelopes, a JSON row without a `type` header) is
//! parked, since no consumer of the queue could take it.

use marvin_manager::codec::{Encoded, REQUEST_CLASS};

/// What must become of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Answered with success (the echo guest ran it).
    Ok,
    /// Answered with an error containing this text.
    Error(&'static str),
    /// Parked with a reason containing this text.
    Parked(&'static str),
    /// Left on the queue as it was.
    Foreign,
}

/// One row of the corpus.
#[derive(Debug, Clone)]
pub struct Case {
    /// What it tries.
    pub name: &'static str,
    /// The row.
    pub row: Encoded,
    /// The correlation id its answer carries, when it is answered.
    pub correlation_id: String,
    /// What must become of it.
    pub expect: Expect,
}

const ENVELOPE: &str = "Symfony\\Component\\Messenger\\Envelope";

fn s(v: &str) -> String {
    format!("s:{}:\"{v}\";", v.len())
}

fn object(class: &str, props: &[(String, String)]) -> String {
    let body: String = props.iter().map(|(k, v)| format!("{}{v}", s(k))).collect();
    format!("O:{}:\"{class}\":{}:{{{body}}}", class.len(), props.len())
}

/// `serialize()` of an envelope holding `message` (already serialized), no stamps.
fn envelope_with(envelope_class: &str, message: &str) -> String {
    format!(
        "O:{}:\"{envelope_class}\":2:{{{}a:0:{{}}{}{message}}}",
        envelope_class.len(),
        s(&format!("\0{ENVELOPE}\0stamps")),
        s(&format!("\0{ENVELOPE}\0message")),
    )
}

fn envelope(message: &str) -> String {
    envelope_with(ENVELOPE, message)
}

/// PHP's `addslashes`, as the Doctrine transport applies it.
fn addslashes(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        match c {
            '\\' | '"' | '\'' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out
}

fn php(raw: &str) -> Encoded {
    Encoded {
        body: addslashes(raw),
        headers: "[]".into(),
    }
}

/// The properties of a request (as Core's `ManagerRequestCommand` holds them).
fn props(correlation_id: &str, entity: &str, action: &str) -> Vec<(String, String)> {
    vec![
        ("containerId".into(), s(entity)),
        ("correlationId".into(), s(correlation_id)),
        ("action".into(), s(action)),
        ("command".into(), "N;".into()),
        ("args".into(), "a:0:{}".into()),
        ("timeout".into(), "i:10;".into()),
    ]
}

fn set(mut p: Vec<(String, String)>, name: &str, value: String) -> Vec<(String, String)> {
    match p.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => p.push((name.into(), value)),
    }
    p
}

fn without(mut p: Vec<(String, String)>, name: &str) -> Vec<(String, String)> {
    p.retain(|(k, _)| k != name);
    p
}

fn request(p: &[(String, String)]) -> String {
    envelope(&object(REQUEST_CLASS, p))
}

fn json(class: Option<&str>, body: &str) -> Encoded {
    let mut headers = serde_json::Map::new();
    if let Some(class) = class {
        headers.insert("type".into(), class.into());
    }
    headers.insert("Content-Type".into(), "application/json".into());
    Encoded {
        body: body.into(),
        headers: serde_json::Value::Object(headers).to_string(),
    }
}

fn json_request(id: &str, entity: &str, action: &str) -> serde_json::Value {
    serde_json::json!({
        "containerId": entity, "correlationId": id, "action": action,
        "command": null, "args": [], "timeout": 10
    })
}

fn with(mut v: serde_json::Value, key: &str, value: serde_json::Value) -> String {
    v[key] = value;
    v.to_string()
}

fn case(name: &'static str, id: &str, row: Encoded, expect: Expect) -> Case {
    Case {
        name,
        row,
        correlation_id: id.into(),
        expect,
    }
}

/// Every case; correlation ids are unique (`h-p..` PHP, `h-j..` JSON).
pub fn cases() -> Vec<Case> {
    use Expect::{Error, Foreign, Ok, Parked};
    let class = REQUEST_CLASS;
    let lower = class.to_ascii_lowercase();
    let upper = class.to_ascii_uppercase();
    let p = |id: &str| props(id, "c1", "start");
    let long = |prefix: &str, n: usize| format!("{prefix}{}", "x".repeat(n - prefix.len()));
    let response_class = class.replace("Request", "Response");
    let v2 = format!("{class}V2");
    let valid = request(&p("h-p-trunc"));
    let cut_after_stamps = valid[..valid.find("message").unwrap_or(0) - 40].to_owned();
    let mut c = vec![
        // Symfony decodes these as requests: answered.
        case(
            "class in lower case",
            "h-p01",
            php(&envelope(&object(&lower, &p("h-p01")))),
            Ok,
        ),
        case(
            "class in upper case",
            "h-p02",
            php(&envelope(&object(&upper, &p("h-p02")))),
            Ok,
        ),
        case(
            "envelope class in lower case",
            "h-p03",
            php(&envelope_with(
                &ENVELOPE.to_ascii_lowercase(),
                &object(class, &p("h-p03")),
            )),
            Ok,
        ),
        case(
            "base64 body (non-UTF-8 bodies are sent so)",
            "h-p04",
            Encoded {
                body: base64_encode(addslashes(&request(&p("h-p04"))).as_bytes()),
                headers: "[]".into(),
            },
            Ok,
        ),
        case(
            "correlationId repeated: the last wins",
            "h-p05",
            php(&request(&{
                let mut x = p("h-p05-first");
                x.push(("correlationId".into(), s("h-p05")));
                x
            })),
            Ok,
        ),
        case(
            "args holding an object",
            "h-p06",
            php(&request(&set(
                p("h-p06"),
                "args",
                "a:1:{s:1:\"o\";O:8:\"stdClass\":1:{s:1:\"k\";i:1;}}".into(),
            ))),
            Ok,
        ),
        case(
            "args holding INF and NAN",
            "h-p07",
            php(&request(&set(
                p("h-p07"),
                "args",
                "a:2:{i:0;d:INF;i:1;d:NAN;}".into(),
            ))),
            Ok,
        ),
        case(
            "args holding a reference",
            "h-p08",
            php(&request(&set(
                p("h-p08"),
                "args",
                "a:2:{i:0;s:1:\"x\";i:1;R:3;}".into(),
            ))),
            Ok,
        ),
        case(
            "correlation id of exactly 190 bytes",
            &long("h-p09-", 190),
            php(&request(&p(&long("h-p09-", 190)))),
            Ok,
        ),
        case(
            "correlation id of 186 bytes in 96 characters",
            &format!("h-p10-{}", "é".repeat(90)),
            php(&request(&p(&format!("h-p10-{}", "é".repeat(90))))),
            Ok,
        ),
        case(
            "timeout missing: the default",
            "h-p11",
            php(&request(&without(p("h-p11"), "timeout"))),
            Ok,
        ),
        case(
            "command missing",
            "h-p12",
            php(&request(&without(p("h-p12"), "command"))),
            Ok,
        ),
        case(
            "properties with private visibility mangling",
            "h-p13",
            php(&request(
                &p("h-p13")
                    .into_iter()
                    .map(|(k, v)| (format!("\0{class}\0{k}"), v))
                    .collect::<Vec<_>>(),
            )),
            Ok,
        ),
        // Decoded, with a correlation id to answer to: an error naming the problem.
        case(
            "unknown action",
            "h-p14",
            php(&request(&props("h-p14", "c1", "explode"))),
            Error("explode"),
        ),
        case(
            "empty action",
            "h-p15",
            php(&request(&props("h-p15", "c1", ""))),
            Error(""),
        ),
        case(
            "unknown entity",
            "h-p16",
            php(&request(&props("h-p16", "nope", "start"))),
            Error("unknown entity"),
        ),
        case(
            "entity with a NUL",
            "h-p17",
            php(&request(&props("h-p17", "c\0x", "start"))),
            Error("unknown entity"),
        ),
        case(
            "entity of 10,000 bytes",
            "h-p18",
            php(&request(&props("h-p18", &"e".repeat(10_000), "start"))),
            Error("unknown entity"),
        ),
        case(
            "timeout as a string",
            "h-p19",
            php(&request(&set(p("h-p19"), "timeout", s("soon")))),
            Error("`timeout` is not an integer"),
        ),
        case(
            "command as an integer",
            "h-p20",
            php(&request(&set(p("h-p20"), "command", "i:5;".into()))),
            Error("`command` is not a string or null"),
        ),
        case(
            "args as a string",
            "h-p21",
            php(&request(&set(p("h-p21"), "args", s("-l")))),
            Error("`args` is not an array"),
        ),
        case(
            "containerId missing",
            "h-p22",
            php(&request(&without(p("h-p22"), "containerId"))),
            Error("`containerId` is missing"),
        ),
        case(
            "action missing",
            "h-p23",
            php(&request(&without(p("h-p23"), "action"))),
            Error("`action` is missing"),
        ),
        case(
            "containerId as an integer",
            "h-p24",
            php(&request(&set(p("h-p24"), "containerId", "i:7;".into()))),
            Error("`containerId` is not a string"),
        ),
        // Nothing to answer to, or nothing the ledger can hold: parked.
        case(
            "correlationId missing",
            "",
            php(&request(&without(p("h-p25"), "correlationId"))),
            Parked("`correlationId` is missing"),
        ),
        case(
            "correlationId as an integer",
            "",
            php(&request(&set(p("h-p26"), "correlationId", "i:26;".into()))),
            Parked("`correlationId` is not a string"),
        ),
        case(
            "correlation id of 191 bytes",
            "",
            php(&request(&p(&long("h-p27-", 191)))),
            Parked("longer than the ledger"),
        ),
        case(
            "correlation id with a NUL",
            "",
            php(&request(&p("h-p28\0x"))),
            Parked("NUL"),
        ),
        case(
            "correlation id of 64 three-byte characters",
            "",
            php(&request(&p(&"€".repeat(64)))),
            Parked("longer than the ledger"),
        ),
        case(
            "body truncated after the stamps",
            "",
            php(&cut_after_stamps),
            Parked(""),
        ),
        case(
            "body truncated inside the message",
            "",
            php(&valid[..valid.len() - 30]),
            Parked(""),
        ),
        case(
            "body never addslashed",
            "",
            Encoded {
                body: valid.replace('\0', ""),
                headers: "[]".into(),
            },
            Parked(""),
        ),
        case(
            "neither serialized PHP nor base64",
            "",
            Encoded {
                body: "!!not base64!!".into(),
                headers: "[]".into(),
            },
            Parked("neither serialized PHP nor base64"),
        ),
        case(
            "empty body",
            "",
            Encoded {
                body: String::new(),
                headers: "[]".into(),
            },
            Parked("empty body"),
        ),
        case(
            "a string claiming a billion bytes",
            "",
            php(&request(&set(
                p("h-p35"),
                "args",
                "a:1:{i:0;s:999999999:\"x\";}".into(),
            ))),
            Parked(""),
        ),
        case(
            "a negative string length",
            "",
            php(&request(&set(
                p("h-p36"),
                "args",
                "a:1:{i:0;s:-1:\"\";}".into(),
            ))),
            Parked(""),
        ),
        case(
            "args nested 100,000 deep",
            "",
            php(&request(&set(
                p("h-p37"),
                "args",
                format!("{}i:1;{}", "a:1:{i:0;".repeat(100_000), "}".repeat(100_000)),
            ))),
            Parked(""),
        ),
        case(
            "object claiming more properties than it has",
            "",
            php(&envelope(
                &object(class, &p("h-p38")).replacen(":6:{", ":9:{", 1),
            )),
            Parked(""),
        ),
        case(
            "message is a string",
            "",
            php(&envelope(&s(&format!("{class} h-p39")))),
            Parked("envelope has no message object"),
        ),
        case(
            "an array, not an envelope",
            "",
            php(&format!("a:1:{{i:0;{}}}", s(class))),
            Parked("not a serialized object"),
        ),
        case(
            "body over 4 MiB",
            "",
            php(&request(&set(
                p("h-p41"),
                "args",
                format!("a:1:{{i:0;{}}}", s(&"z".repeat(5 << 20))),
            ))),
            Parked("over the 4 MiB limit"),
        ),
        case(
            "the request class in a custom-serialized (C:) form",
            "",
            php(&envelope(&format!(
                "C:{}:\"{class}\":4:{{h-42}}",
                class.len()
            ))),
            Parked("envelope has no message object"),
        ),
        // Another class's rows: left alone, even when they name the request class.
        case(
            "a response",
            "",
            php(&envelope(&object(&response_class, &p("h-p43")))),
            Foreign,
        ),
        case(
            "a …CommandV2",
            "",
            php(&envelope(&object(&v2, &p("h-p44")))),
            Foreign,
        ),
        case(
            "another application's message",
            "",
            php(&envelope(&object(
                "App\\Message\\Ping",
                &[("at".into(), "i:1;".into())],
            ))),
            Foreign,
        ),
        case(
            "another class whose text names the request class",
            "",
            php(&envelope(&object(
                "App\\Message\\Log",
                &[("line".into(), s(&format!("saw {class}")))],
            ))),
            Foreign,
        ),
    ];
    let j = |id: &str| json_request(id, "c1", "start");
    c.extend([
        case("JSON: type in lower case", "h-j01", json(Some(&lower), &j("h-j01").to_string()), Ok),
        case("JSON: unknown fields", "h-j02", json(Some(class), &with(j("h-j02"), "extra", serde_json::json!({"a": [1, 2]}))), Ok),
        case(
            "JSON: correlationId repeated, the last wins",
            "h-j03",
            json(Some(class), &j("h-j03").to_string().replacen('{', "{\"correlationId\":\"h-j03-first\",", 1)),
            Ok,
        ),
        case(
            "JSON: a malformed stamp header (ignored)",
            "h-j04",
            Encoded {
                body: j("h-j04").to_string(),
                headers: serde_json::json!({
                    "type": class,
                    "X-Message-Stamp-Symfony\\Component\\Messenger\\Stamp\\BusNameStamp": "not json",
                })
                .to_string(),
            },
            Ok,
        ),
        case(
            "JSON: timeout as a string",
            "h-j05",
            json(Some(class), &with(j("h-j05"), "timeout", "soon".into())),
            Error("`timeout` is not an integer"),
        ),
        case(
            "JSON: containerId missing",
            "h-j06",
            json(Some(class), &{
                let mut v = j("h-j06");
                v.as_object_mut().map(|m| m.remove("containerId"));
                v.to_string()
            }),
            Error("`containerId` is missing"),
        ),
        case("JSON: action a number", "h-j07", json(Some(class), &with(j("h-j07"), "action", 7.into())), Error("`action` is not a string")),
        case("JSON: args a string", "h-j08", json(Some(class), &with(j("h-j08"), "args", "-l".into())), Error("`args`")),
        case(
            "JSON: unknown entity",
            "h-j09",
            json(Some(class), &json_request("h-j09", "nope", "start").to_string()),
            Error("unknown entity"),
        ),
        case("JSON: no type header", "", json(None, &j("h-j10").to_string()), Parked("no `type` header")),
        case("JSON: body not JSON", "", json(Some(class), "correlationId=h-j11"), Parked("body is not JSON")),
        case("JSON: body an array", "", json(Some(class), "[\"h-j12\"]"), Parked("not a JSON object")),
        case(
            "JSON: correlationId missing",
            "",
            json(Some(class), &{
                let mut v = j("h-j13");
                v.as_object_mut().map(|m| m.remove("correlationId"));
                v.to_string()
            }),
            Parked("`correlationId` is missing"),
        ),
        case(
            "JSON: correlationId a number",
            "",
            json(Some(class), &with(j("h-j14"), "correlationId", 14.into())),
            Parked("`correlationId` is not a string"),
        ),
        case(
            "JSON: correlation id of 300 bytes",
            "",
            json(Some(class), &j(&long("h-j15-", 300)).to_string()),
            Parked("longer than the ledger"),
        ),
        case("JSON: correlation id with a NUL", "", json(Some(class), &j("h-j16\u{0}x").to_string()), Parked("NUL")),
        case(
            "JSON: args nested 10,000 deep",
            "",
            json(Some(class), &j("h-j17").to_string().replace("\"args\":[]", &format!("\"args\":{}{}", "[".repeat(10_000), "]".repeat(10_000)))),
            Parked("body is not JSON"),
        ),
        case(
            "JSON: a byte-order mark before the body",
            "",
            json(Some(class), &format!("\u{feff}{}", j("h-j18"))),
            Parked("body is not JSON"),
        ),
        case(
            "JSON: headers not JSON",
            "",
            Encoded { body: j("h-j19").to_string(), headers: "type=request".into() },
            Parked(""),
        ),
        case("JSON: a response", "", json(Some(&response_class), &j("h-j20").to_string()), Foreign),
        case("JSON: a …CommandV2", "", json(Some(&v2), &j("h-j21").to_string()), Foreign),
        case(
            "JSON: another class, not JSON, naming the request class",
            "",
            json(Some("App\\Message\\Xml"), &format!("<log>{}</log>", class.replace('\\', "\\\\"))),
            Foreign,
        ),
        case(
            "JSON: body empty",
            "",
            json(Some(class), ""),
            Parked("empty body"),
        ),
        case(
            "JSON: correlation id of 64 three-byte characters",
            "",
            json(Some(class), &j(&"€".repeat(64)).to_string()),
            Parked("longer than the ledger"),
        ),
        case(
            "JSON: type header with a leading backslash (PHP resolves it)",
            "h-j25",
            json(Some(&format!("\\{class}")), &j("h-j25").to_string()),
            Ok,
        ),
    ]);
    c
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
