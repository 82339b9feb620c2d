//! Golden files captured from real Symfony 5.4 (tests/fixtures/codec), and fuzzing.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::message::EntityKind;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/codec/");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}{name}")).unwrap()
}

fn encoded(name: &str) -> (String, String) {
    let v: Json = serde_json::from_slice(&fixture(name)).unwrap();
    let body = v["body"].as_str().unwrap().to_owned();
    // The transport stores the header map with json_encode.
    let headers = match v.get("headers") {
        Some(h) => php_json(h),
        None => "[]".to_owned(),
    };
    (body, headers)
}

fn fixture_request() -> ManagerRequest {
    ManagerRequest::new("0b9e3d2a-5f1c-4c8e-9a77-3f2d1e0c4b5a", "c0ffee42", "exec")
        .with_command(Some("ls -la".into()))
        .with_args(json!({"0": "-l", "1": "/tmp", "opts": {"depth": 2, "follow": false}}))
        .with_timeout(30)
}

fn fixture_response() -> ManagerResponse {
    ManagerResponse {
        correlation_id: "0b9e3d2a-5f1c-4c8e-9a77-3f2d1e0c4b5a".into(),
        entity_type: EntityKind::Container,
        entity_id: "c0ffee42".into(),
        action: "exec".into(),
        success: true,
        output: Some("total 0\nCafé ✓ 日本\n".into()),
        error: None,
        metadata: json!({"exitCode": 0, "duration": 0.25, "tags": ["a", "b"]})
            .as_object()
            .unwrap()
            .clone(),
    }
}

#[test]
fn raw_serialize_round_trips_byte_for_byte() {
    for name in ["request.serialize.bin", "response.serialize.bin"] {
        let raw = fixture(name);
        let v = php::parse(&raw).unwrap();
        let mut out = Vec::new();
        php::write(&v, &mut out);
        assert_eq!(out, raw, "{name}");
    }
}

#[test]
fn decodes_requests_of_both_serializers() {
    for (name, format) in [
        ("request.php-serializer.encoded.json", Format::Php),
        ("request.json-serializer.encoded.json", Format::Json),
    ] {
        let (body, headers) = encoded(name);
        let d = decode(body.as_bytes(), &headers).unwrap();
        assert_eq!(d.format, format, "{name}");
        assert_eq!(d.class, REQUEST_CLASS);
        assert_eq!(d.bus_name.as_deref(), Some("messenger.bus.default"));
        assert_eq!(d.request.unwrap().unwrap(), fixture_request(), "{name}");
    }
}

#[test]
fn encodes_responses_exactly_as_symfony() {
    let (body, headers) = encoded("response.php-serializer.encoded.json");
    let e = encode_response(
        &fixture_response(),
        Format::Php,
        Some("messenger.bus.default"),
    );
    assert_eq!(e.body, body);
    assert_eq!(e.headers, headers);
    let (body, headers) = encoded("response.json-serializer.encoded.json");
    let e = encode_response(
        &fixture_response(),
        Format::Json,
        Some("messenger.bus.default"),
    );
    assert_eq!(e.body, body);
    assert_eq!(e.headers, headers);
}

#[test]
fn encodes_requests_exactly_as_symfony() {
    let (body, _) = encoded("request.php-serializer.encoded.json");
    let mut req = fixture_request();
    // PHP keeps the integer keys of this mixed array.
    req.args = json!({"0": "-l", "1": "/tmp", "opts": {"depth": 2, "follow": false}});
    let e = encode_request(&req, Format::Php, Some("messenger.bus.default"));
    assert_eq!(e.body, body);
}

#[test]
fn responses_decode_back() {
    for format in [Format::Php, Format::Json] {
        let e = encode_response(&fixture_response(), format, None);
        assert_eq!(
            decode_response(e.body.as_bytes(), &e.headers).unwrap(),
            fixture_response()
        );
    }
}

#[test]
fn non_utf8_bodies_are_base64() {
    let mut r = fixture_response();
    r.output = None;
    // A PHP body that is not UTF-8 after addslashes: build one by hand with a raw 0xFF byte.
    let mut raw = Vec::new();
    php::write(
        &Value::Object(
            ENVELOPE_CLASS.as_bytes().to_vec(),
            vec![
                (php::private(ENVELOPE_CLASS, "stamps"), Value::Array(vec![])),
                (
                    php::private(ENVELOPE_CLASS, "message"),
                    Value::Object(
                        REQUEST_CLASS.as_bytes().to_vec(),
                        vec![
                            (b"containerId".to_vec(), Value::Str(b"c".to_vec())),
                            (b"correlationId".to_vec(), Value::Str(b"id-1".to_vec())),
                            (b"action".to_vec(), Value::Str(b"exec_cmd".to_vec())),
                            (b"command".to_vec(), Value::Str(b"echo \xff".to_vec())),
                            (b"args".to_vec(), Value::Array(vec![])),
                            (b"timeout".to_vec(), Value::Int(10)),
                        ],
                    ),
                ),
            ],
        ),
        &mut raw,
    );
    let body = base64::engine::general_purpose::STANDARD.encode(php::addslashes(&raw));
    let d = decode(body.as_bytes(), "[]").unwrap();
    let req = d.request.unwrap().unwrap();
    assert_eq!(req.correlation_id, "id-1");
    assert_eq!(req.command.as_deref(), Some("echo \u{fffd}"));
}

#[test]
fn other_classes_and_malformed_requests() {
    let (body, headers) = encoded("response.php-serializer.encoded.json");
    let d = decode(body.as_bytes(), &headers).unwrap();
    assert_eq!(d.class, RESPONSE_CLASS);
    assert!(d.request.is_none());

    let body = r#"{"containerId":"c","correlationId":"id-9","action":"start","timeout":"soon"}"#;
    let headers = format!(r#"{{"type":{}}}"#, php_json(&json!(REQUEST_CLASS)));
    let m = decode(body.as_bytes(), &headers)
        .unwrap()
        .request
        .unwrap()
        .unwrap_err();
    assert_eq!(m.correlation_id.as_deref(), Some("id-9"));
    assert!(
        m.reason.contains("`timeout` is not an integer"),
        "{}",
        m.reason
    );

    assert!(decode(b"", "[]").is_err());
    assert!(
        decode(b"O:8:\"stdClass\":0:{}", "[]")
            .unwrap_err()
            .contains("not an Envelope")
    );
}

#[test]
fn json_keys_follow_php() {
    let mut w = php::Writer::new(64, false);
    write_json(&mut w, &json!({"7": 1, "07": 2, "-3": 3, "x": 4, "-0": 5}));
    let Value::Array(items) = php::parse(&w.finish()).unwrap() else {
        panic!()
    };
    let keys: Vec<Key> = items.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            Key::Int(7),
            Key::Str(b"07".to_vec()),
            Key::Int(-3),
            Key::Str(b"x".to_vec()),
            Key::Str(b"-0".to_vec())
        ]
    );
}

fn arb_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..6)
                .prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512), headers in ".{0,40}") {
        let _ = decode(&body, &headers);
        let _ = decode_response(&body, &headers);
        let _ = php::parse(&body);
    }

    #[test]
    fn decode_never_panics_on_mutated_rows(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let (body, headers) = encoded("request.php-serializer.encoded.json");
        let mut b = body.into_bytes();
        let i = pos.index(b.len());
        b[i] = byte;
        let _ = decode(&b, &headers);
        b.truncate(cut.index(b.len()));
        let _ = decode(&b, &headers);
    }

    #[test]
    fn requests_round_trip(cid in ".{0,40}", action in "[a-z_]{1,12}", command in proptest::option::of(".{0,40}"), args in arb_json(), timeout in any::<i64>(), json_format in any::<bool>()) {
        let format = if json_format { Format::Json } else { Format::Php };
        let args = match args { a @ (Json::Array(_) | Json::Object(_)) => a, other => json!([other]) };
        let req = ManagerRequest::new(cid, "e", action).with_command(command).with_args(args).with_timeout(timeout);
        let e = encode_request(&req, format, Some("bus"));
        let d = decode(e.body.as_bytes(), &e.headers).unwrap();
        prop_assert_eq!(d.bus_name.as_deref(), Some("bus"));
        let back = d.request.unwrap().unwrap();
        prop_assert_eq!(&back.correlation_id, &req.correlation_id);
        prop_assert_eq!(&back.command, &req.command);
        prop_assert_eq!(back.timeout, req.timeout);
    }

    #[test]
    fn slashes_match_php_byte_by_byte(raw in prop::collection::vec(prop::sample::select(vec![0u8, b'\'', b'"', b'\\', b'0', b'a', 0xFF]), 0..64)) {
        // PHP's definitions, one byte at a time.
        let mut added = Vec::new();
        for &b in &raw {
            match b {
                0 => added.extend_from_slice(b"\\0"),
                b'\'' | b'"' | b'\\' => added.extend_from_slice(&[b'\\', b]),
                _ => added.push(b),
            }
        }
        prop_assert_eq!(&php::addslashes(&raw), &added);
        prop_assert_eq!(&php::stripslashes(&added), &raw);
        let mut stripped = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'\\' {
                match raw.get(i + 1) {
                    Some(b'0') => stripped.push(0),
                    Some(&c) => stripped.push(c),
                    None => {}
                }
                i += 2;
            } else {
                stripped.push(raw[i]);
                i += 1;
            }
        }
        prop_assert_eq!(php::stripslashes(&raw), stripped);
    }

    #[test]
    fn slashed_writing_is_addslashes_of_the_text(v in arb_json(), class in ".{0,12}") {
        let write = |slashed: bool| {
            let mut w = php::Writer::new(64, slashed);
            w.object(class.as_bytes(), 2);
            w.private(&class, "p\"q");
            write_json(&mut w, &v);
            w.str(b"k");
            write_json(&mut w, &json!({"x'": [v.clone()]}));
            w.end();
            w.finish()
        };
        let plain = write(false);
        prop_assert!(php::parse(&plain).is_ok());
        prop_assert_eq!(write(true), php::addslashes(&plain));
    }

    #[test]
    fn responses_round_trip(output in proptest::option::of(".{0,60}"), meta in prop::collection::vec(("[a-z]{1,6}", arb_json()), 0..5), json_format in any::<bool>()) {
        let format = if json_format { Format::Json } else { Format::Php };
        let mut r = fixture_response();
        r.output = output;
        r.metadata = meta.into_iter().collect();
        let e = encode_response(&r, format, None);
        let back = decode_response(e.body.as_bytes(), &e.headers).unwrap();
        prop_assert_eq!(back.output, r.output);
        prop_assert_eq!(back.metadata.len(), r.metadata.len());
    }
}

/// The PHP response is written straight from the response: byte for byte what the generic
/// path (through JSON values) writes, with and without metadata, NULs, quotes, numbers.
#[test]
fn php_responses_match_the_generic_encoding() {
    let mut metadata = Map::new();
    metadata.insert("plugin".into(), json!("echo"));
    metadata.insert(
        "7".into(),
        json!([1, 2.5, null, true, {"x": "a\"b\\c\u{0}"}]),
    );
    for (metadata, output) in [
        (Map::new(), None),
        (metadata, Some("l'un\n\"deux\"".to_owned())),
    ] {
        let r = ManagerResponse {
            correlation_id: "c-1".into(),
            entity_type: EntityKind::Worker,
            entity_id: "w\u{e9}".into(),
            action: "restart".into(),
            success: output.is_some(),
            output: output.clone(),
            error: output.is_none().then(|| "bad 'thing'".to_owned()),
            metadata,
        };
        for bus in [None, Some("messenger.bus.default")] {
            assert_eq!(
                encode_response(&r, Format::Php, bus),
                encode_message(RESPONSE_CLASS, response_fields(&r), Format::Php, bus)
            );
        }
    }
}

/// The envelope's head is kept per bus name (a few of them): every answer carries its own
/// bus's stamp, however many buses come and go, and none when it has no bus.
#[test]
fn every_answer_carries_its_own_bus_name() {
    fn bus_of(body: &str) -> Option<String> {
        let php::Value::Object(class, props) =
            php::parse(&php::stripslashes(body.as_bytes())).unwrap()
        else {
            panic!("not an object: {body}");
        };
        assert_eq!(class, ENVELOPE_CLASS.as_bytes());
        let stamps = props
            .iter()
            .find(|(n, _)| php::unmangle(n) == b"stamps")
            .map(|(_, v)| v)
            .unwrap();
        let php::Value::Array(stamps) = stamps else {
            panic!("stamps: {stamps:?}")
        };
        let (_, php::Value::Array(list)) = stamps.first()? else {
            panic!("{stamps:?}")
        };
        let (_, php::Value::Object(_, props)) = &list[0] else {
            panic!("{list:?}")
        };
        match &props[0].1 {
            php::Value::Str(s) => Some(String::from_utf8(s.clone()).unwrap()),
            v => panic!("{v:?}"),
        }
    }
    let r = fixture_response();
    let buses: Vec<Option<String>> = std::iter::once(None)
        .chain((0..2 * ENVELOPE_HEADS).map(|i| Some(format!("bus.{i}'\"\\"))))
        .collect();
    for _ in 0..2 {
        for bus in &buses {
            let e = encode_response(&r, Format::Php, bus.as_deref());
            assert_eq!(bus_of(&e.body), *bus);
            assert_eq!(decode_response(e.body.as_bytes(), &e.headers).unwrap(), r);
        }
    }
}
