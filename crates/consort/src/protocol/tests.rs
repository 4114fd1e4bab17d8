//! Unit tests for `protocol`: Python-exact encoding, the resynchronising decoder, framing.

use proptest::prelude::*;
use serde_json::json;

use super::*;

#[track_caller]
fn check_decode(line: &[u8], expect: &[Decoded]) {
    let mut out = Vec::new();
    decode_line(line, &mut out);
    assert_eq!(out, expect, "decoding {:?}", String::from_utf8_lossy(line));
}

fn resp(task: &str, kind: ResponseKind) -> Decoded {
    Decoded::Response(Response {
        task: TaskId::new(task),
        kind,
    })
}

fn noise(text: &str) -> Decoded {
    Decoded::Noise(text.to_owned())
}

fn args(value: Value) -> Args {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

// -- encoding -------------------------------------------------------------------------

// appose-python's golden message (`tests/util/test_message.py`), with a real NDArray, is
// checked byte for byte by the Appose port in tests/appose/message.rs.

#[test]
fn execute_request_has_python_key_order_and_null_queue() {
    let request = Request::Execute {
        task: TaskId::new("9ae50ed3b4ef4a4f9f68d8246093dac5"),
        script: "task.outputs['result'] = 1".to_owned(),
        inputs: Args::new(),
        queue: None,
    };
    assert_eq!(
        request.encode(),
        r#"{"task":"9ae50ed3b4ef4a4f9f68d8246093dac5","requestType":"EXECUTE","script":"task.outputs['result'] = 1","inputs":{},"queue":null}"#
    );
    let request = Request::Execute {
        task: TaskId::new("t"),
        script: "x".to_owned(),
        inputs: args(json!({"b": 1, "a": [true, null]})),
        queue: Some("main".to_owned()),
    };
    assert_eq!(
        request.encode(),
        r#"{"task":"t","requestType":"EXECUTE","script":"x","inputs":{"b":1,"a":[true,null]},"queue":"main"}"#
    );
    assert_eq!(
        Request::Cancel {
            task: TaskId::new("t")
        }
        .encode(),
        r#"{"task":"t","requestType":"CANCEL"}"#
    );
}

#[test]
fn strings_are_escaped_to_ascii_like_python_ensure_ascii() {
    let mut out = String::new();
    write_json(&mut out, &json!("é€😀\n\t\u{7f}\u{1}"));
    assert_eq!(out, r#""\u00e9\u20ac\ud83d\ude00\n\t\u007f\u0001""#);
    assert!(out.is_ascii());
}

#[test]
fn floats_use_python_repr() {
    let cases: &[(f64, &str)] = &[
        (1.0, "1.0"),
        (0.5, "0.5"),
        (-0.0, "-0.0"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1e16, "1e+16"),
        (1234567890123456.0, "1234567890123456.0"),
        (123456789012345680.0, "1.2345678901234568e+17"),
        (1.5e300, "1.5e+300"),
        (5e-324, "5e-324"),
        (0.1 + 0.2, "0.30000000000000004"),
        (100.0, "100.0"),
    ];
    for (float, expect) in cases {
        let mut out = String::new();
        write_json(&mut out, &json!(float));
        assert_eq!(&out, expect, "repr of {float:e}");
    }
}

#[test]
fn responses_encode_as_python_worker_writes_them() {
    let cases = [
        (
            ResponseKind::Launch,
            r#"{"task":"t1","responseType":"LAUNCH"}"#,
        ),
        (
            ResponseKind::Update(Progress {
                message: Some("hi".to_owned()),
                current: Some(1),
                maximum: Some(3),
                info: Some(json!({"a": 1})),
            }),
            r#"{"message":"hi","current":1,"maximum":3,"info":{"a":1},"task":"t1","responseType":"UPDATE"}"#,
        ),
        (
            ResponseKind::Update(Progress {
                message: Some("x".to_owned()),
                ..Progress::default()
            }),
            r#"{"message":"x","info":null,"task":"t1","responseType":"UPDATE"}"#,
        ),
        (
            ResponseKind::Completion(args(json!({"result": 11}))),
            r#"{"outputs":{"result":11},"task":"t1","responseType":"COMPLETION"}"#,
        ),
        (
            ResponseKind::Cancelation,
            r#"{"task":"t1","responseType":"CANCELATION"}"#,
        ),
        (
            ResponseKind::Failure(Some("custom".to_owned())),
            r#"{"error":"custom","task":"t1","responseType":"FAILURE"}"#,
        ),
        (
            ResponseKind::Failure(None),
            r#"{"task":"t1","responseType":"FAILURE"}"#,
        ),
    ];
    for (kind, expect) in cases {
        let response = Response {
            task: TaskId::new("t1"),
            kind,
        };
        assert_eq!(response.encode(), expect);
        check_decode(expect.as_bytes(), &[Decoded::Response(response)]);
    }
}

// -- decoding -------------------------------------------------------------------------

#[test]
fn two_responses_glued_on_one_line_are_both_recovered() {
    // What appose 0.12.0's worker writes when two threads print at once (appose.md §1.7).
    check_decode(
        br#"{"task":"a","responseType":"LAUNCH"}{"outputs":{"result":1},"task":"b","responseType":"COMPLETION"}"#,
        &[
            resp("a", ResponseKind::Launch),
            resp("b", ResponseKind::Completion(args(json!({"result": 1})))),
        ],
    );
}

#[test]
fn noise_before_between_and_after_responses_is_kept_as_noise() {
    check_decode(
        br#"partial{"task":"a","responseType":"LAUNCH"} junk {"task":"b","responseType":"CANCELATION"}tail"#,
        &[
            noise("partial"),
            resp("a", ResponseKind::Launch),
            noise("junk"),
            resp("b", ResponseKind::Cancelation),
            noise("tail"),
        ],
    );
}

#[test]
fn blank_and_whitespace_lines_yield_nothing() {
    check_decode(b"", &[]);
    check_decode(b"   \r\n", &[]);
}

#[test]
fn crlf_is_stripped() {
    check_decode(
        b"{\"task\":\"a\",\"responseType\":\"LAUNCH\"}\r\n",
        &[resp("a", ResponseKind::Launch)],
    );
}

#[test]
fn python_nan_and_infinity_decode_as_null() {
    check_decode(
        br#"{"outputs":{"n":NaN,"p":Infinity,"m":-Infinity,"s":"NaN Infinity"},"task":"a","responseType":"COMPLETION"}"#,
        &[resp(
            "a",
            ResponseKind::Completion(args(
                json!({"n": null, "p": null, "m": null, "s": "NaN Infinity"}),
            )),
        )],
    );
}

#[test]
fn integers_beyond_64_bits_are_accepted() {
    let mut out = Vec::new();
    decode_line(
        br#"{"outputs":{"big":1180591620717411303424,"neg":-1180591620717411303424},"task":"a","responseType":"COMPLETION"}"#,
        &mut out,
    );
    let [Decoded::Response(Response {
        kind: ResponseKind::Completion(outputs),
        ..
    })] = out.as_slice()
    else {
        panic!("expected one completion, got {out:?}");
    };
    assert_eq!(outputs["big"].as_f64(), Some(1180591620717411303424.0));
    assert_eq!(outputs["neg"].as_f64(), Some(-1180591620717411303424.0));
}

#[test]
fn invalid_utf8_is_replaced_not_fatal() {
    let mut line = br#"{"outputs":{"s":"a"#.to_vec();
    line.extend_from_slice(&[0xff, 0xfe]);
    line.extend_from_slice(br#""},"task":"a","responseType":"COMPLETION"} "#);
    line.extend_from_slice(&[0xc3]);
    check_decode(
        &line,
        &[
            resp(
                "a",
                ResponseKind::Completion(args(json!({"s": "a\u{fffd}\u{fffd}"}))),
            ),
            noise("\u{fffd}"),
        ],
    );
}

#[test]
fn json_that_is_not_a_response_is_noise() {
    check_decode(br#"{"hello":"world"}"#, &[noise(r#"{"hello":"world"}"#)]);
    check_decode(
        br#"{"task":"a","responseType":"PING"}"#,
        &[noise(r#"{"task":"a","responseType":"PING"}"#)],
    );
    check_decode(b"42", &[noise("42")]);
    check_decode(b"{not json", &[noise("{not json")]);
}

#[test]
fn update_fields_are_read_as_python_int_would() {
    check_decode(
        br#"{"message":5,"current":2.9,"maximum":"x","info":null,"task":"a","responseType":"UPDATE"}"#,
        &[resp(
            "a",
            ResponseKind::Update(Progress {
                message: Some("5".to_owned()),
                current: Some(2),
                maximum: None,
                info: None,
            }),
        )],
    );
}

#[test]
fn failure_without_error_and_completion_without_outputs_are_accepted() {
    check_decode(
        br#"{"task":"a","responseType":"FAILURE"}{"task":"b","responseType":"COMPLETION"}"#,
        &[
            resp("a", ResponseKind::Failure(None)),
            resp("b", ResponseKind::Completion(Args::new())),
        ],
    );
}

#[test]
fn requests_decode_with_task_id_kept_on_error() {
    let execute = Request::Execute {
        task: TaskId::new("t"),
        script: "1".to_owned(),
        inputs: args(json!({"x": 1})),
        queue: Some("main".to_owned()),
    };
    assert_eq!(decode_request(execute.encode().as_bytes()), Ok(execute));
    assert_eq!(
        decode_request(br#"{"task":"t","requestType":"PING"}"#),
        Err((
            Some(TaskId::new("t")),
            "unknown requestType \"PING\"".to_owned()
        ))
    );
    assert!(matches!(decode_request(b"garbage"), Err((None, _))));
    assert!(matches!(
        decode_request(br#"{"task":"t","requestType":"EXECUTE","inputs":[1]}"#),
        Err((Some(_), _))
    ));
}

// -- framing --------------------------------------------------------------------------

fn frames(max_line: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, usize>> {
    let mut framer = Framer::new(max_line);
    let mut out = Vec::new();
    let mut sink = |frame: Frame<'_>| match frame {
        Frame::Line(line) => out.push(Ok(line.to_vec())),
        Frame::Oversize { len } => out.push(Err(len)),
    };
    for chunk in chunks {
        framer.push(chunk, &mut sink);
        assert!(framer.buffered() <= max_line);
    }
    framer.finish(&mut sink);
    out
}

#[test]
fn framer_splits_lines_across_chunks_and_flushes_the_last_one() {
    assert_eq!(
        frames(100, &[b"ab", b"c\nde", b"f\n\ngh"]),
        vec![
            Ok(b"abc".to_vec()),
            Ok(b"def".to_vec()),
            Ok(Vec::new()),
            Ok(b"gh".to_vec())
        ]
    );
}

#[test]
fn framer_drops_oversize_lines_without_holding_them() {
    assert_eq!(
        frames(4, &[b"12", b"345", b"67\nok\n", b"123456789\nx"]),
        vec![Err(7), Ok(b"ok".to_vec()), Err(9), Ok(b"x".to_vec())]
    );
    assert_eq!(frames(4, &[b"1234567"]), vec![Err(7)]);
    assert_eq!(frames(4, &[b"1234\n"]), vec![Ok(b"1234".to_vec())]);
}

proptest! {
    /// Any split of a stream into chunks gives the same lines.
    #[test]
    fn framing_is_independent_of_chunking(
        lines in prop::collection::vec("[a-z{}\":]{0,12}", 0..8),
        cuts in prop::collection::vec(0usize..200, 0..6),
    ) {
        let stream = lines.iter().map(|line| format!("{line}\n")).collect::<String>();
        let bytes = stream.as_bytes();
        let mut points: Vec<usize> = cuts.into_iter().map(|cut| cut % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for point in points {
            chunks.push(&bytes[start..point]);
            start = point;
        }
        chunks.push(&bytes[start..]);
        let expect: Vec<_> = lines.iter().map(|line| Ok(line.as_bytes().to_vec())).collect();
        prop_assert_eq!(frames(64, &chunks), expect);
    }

    /// Responses survive being glued together with arbitrary noise between them.
    #[test]
    fn responses_survive_noise(
        ids in prop::collection::vec("[a-f0-9]{1,8}", 1..5),
        junk in prop::collection::vec("[ a-zA-Z0-9.,;!?]{0,10}", 5),
    ) {
        let mut line = String::new();
        let mut expect = Vec::new();
        for (idx, id) in ids.iter().enumerate() {
            line.push_str(&junk[idx]);
            let response = Response { task: TaskId::new(id.clone()), kind: ResponseKind::Launch };
            line.push_str(&response.encode());
            expect.push(response);
        }
        line.push_str(&junk[4]);
        let mut out = Vec::new();
        decode_line(line.as_bytes(), &mut out);
        let got: Vec<_> = out.into_iter().filter_map(|item| match item {
            Decoded::Response(response) => Some(response),
            Decoded::Undecodable { .. } | Decoded::Noise(_) => None,
        }).collect();
        prop_assert_eq!(got, expect);
    }

    /// Decoding arbitrary bytes never panics.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut out = Vec::new();
        decode_line(&bytes, &mut out);
        let _ = decode_request(&bytes);
    }

    /// Every encoded value decodes back to itself (floats exactly).
    #[test]
    fn encoded_outputs_round_trip(
        keys in prop::collection::vec("\\PC{0,6}", 0..5),
        numbers in prop::collection::vec(any::<f64>().prop_filter("finite", |f| f.is_finite()), 5),
        ints in prop::collection::vec(any::<i64>(), 5),
    ) {
        let mut outputs = Args::new();
        for (idx, key) in keys.iter().enumerate() {
            outputs.insert(key.clone(), json!([numbers[idx], ints[idx], key]));
        }
        let response = Response { task: TaskId::new("t"), kind: ResponseKind::Completion(outputs) };
        let line = response.encode();
        prop_assert!(line.is_ascii());
        let mut out = Vec::new();
        decode_line(line.as_bytes(), &mut out);
        prop_assert_eq!(out, vec![Decoded::Response(response)]);
    }
}

// Inputs found by the fault-injection tests that turned whole responses into noise.

#[test]
fn integers_beyond_f64_range_decode_as_null_not_noise() {
    // Python writes 10**400 in full.
    let line = format!(
        r#"{{"outputs":{{"x":1{zeros},"y":-1{zeros},"z":1e400,"ok":2}},"task":"a","responseType":"COMPLETION"}}"#,
        zeros = "0".repeat(400)
    );
    check_decode(
        line.as_bytes(),
        &[resp(
            "a",
            ResponseKind::Completion(args(json!({"x": null, "y": null, "z": null, "ok": 2}))),
        )],
    );
}

#[test]
fn lone_surrogate_escapes_decode_as_replacement_characters() {
    // Python writes these for surrogate-escaped file names; a valid pair stays as it is.
    check_decode(
        br#"{"outputs":{"x":"a\udcffb","y":"\ud83d\ude00","z":"\ud83d"},"task":"a","responseType":"COMPLETION"}"#,
        &[resp(
            "a",
            ResponseKind::Completion(args(json!({"x": "a\u{fffd}b", "y": "\u{1f600}", "z": "\u{fffd}"}))),
        )],
    );
}

#[test]
fn blanks_after_the_opening_brace_do_not_hide_a_response() {
    check_decode(
        br#"noise{ "task":"a","responseType":"LAUNCH"}"#,
        &[noise("noise"), resp("a", ResponseKind::Launch)],
    );
}

/// Decodes `text` only through the general path (the one `decode_single` must agree with).
fn decode_general(text: &str) -> Vec<Decoded> {
    let mut out = Vec::new();
    if !decode_text(text, false, &mut out) {
        out.clear();
        decode_text(&sanitize(text), true, &mut out);
    }
    out
}

#[test]
fn the_single_response_fast_path_agrees_with_the_general_path() {
    let lines = [
        r#"{"task":"a","responseType":"LAUNCH"}"#,
        r#"{"task":"a","responseType":"UPDATE","message":"half","current":1,"maximum":2,"info":{"k":[1,2]}}"#,
        r#"{"task":"a","responseType":"UPDATE","message":7,"current":1.9,"maximum":"x","info":null}"#,
        r#"{"task":"a","responseType":"UPDATE"}"#,
        r#"{"outputs":{"result":42,"nested":{"b":1,"a":2}},"task":"a","responseType":"COMPLETION"}"#,
        r#"{"outputs":null,"task":"a","responseType":"COMPLETION"}"#,
        r#"{"task":"a","responseType":"COMPLETION"}"#,
        r#"{"outputs":[1],"task":"a","responseType":"COMPLETION"}"#,
        r#"{"task":"a","responseType":"CANCELATION"}"#,
        r#"{"error":"Traceback...","task":"a","responseType":"FAILURE"}"#,
        r#"{"error":{"code":3},"task":"a","responseType":"FAILURE"}"#,
        r#"{"task":"a","responseType":"FAILURE"}"#,
        r#"{"task":"a","responseType":"HEARTBEAT"}"#,
        r#"{"task":1,"responseType":"LAUNCH"}"#,
        r#"{"responseType":"LAUNCH"}"#,
        r#"{"task":"a","responseType":"LAUNCH","extra":[1,{"x":null}]}"#,
        r#"{"task":"a","task":"b","responseType":"LAUNCH"}"#,
        r#"  {"task":"a","responseType":"LAUNCH"}  "#,
        r#"{"task":"a","responseType":"LAUNCH"}{"task":"b","responseType":"LAUNCH"}"#,
        r#"{"task":"a","responseType":"LAUNCH"} trailing noise"#,
        r#"{"task":"\u00e9\ud83d\ude00","responseType":"LAUNCH"}"#,
        r#"{"task":"a","responseType":"COMPLETION","outputs":{"big":123456789012345678901234567890}}"#,
    ];
    for line in lines {
        let general = decode_general(line);
        // `None` leaves the line to the general path: nothing to compare.
        if let Some(response) = decode_single(line) {
            assert_eq!(
                vec![Decoded::Response(response)],
                general,
                "fast path differs on {line}"
            );
        }
        let mut via_decode_line = Vec::new();
        decode_line(line.as_bytes(), &mut via_decode_line);
        assert_eq!(via_decode_line, general, "decode_line differs on {line}");
    }
}

#[test]
fn task_ids_are_the_prefix_and_serial_in_32_hex_digits() {
    let first = new_task_id();
    let second = new_task_id();
    for id in [&first, &second] {
        let text = id.to_string();
        assert_eq!(text.len(), 32, "{text}");
        assert!(text
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(text[..16], format!("{:016x}", task_prefix()));
    }
    let serial = |id: &TaskId| u64::from_str_radix(&id.to_string()[16..], 16).unwrap();
    assert!(serial(&second) > serial(&first));
}

// -- nesting deeper than serde_json's limit (issue 14) ---------------------------------

/// `depth` arrays around `1`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// `depth` arrays around `1`, built without recursion.
fn nested_value(depth: usize) -> Value {
    (0..depth).fold(Value::from(1), |inner, _| Value::Array(vec![inner]))
}

/// A COMPLETION whose output `x` is `depth` arrays deep: `depth + 2` levels in all.
fn deep_completion(task: &str, depth: usize) -> String {
    format!(
        r#"{{"outputs":{{"x":{}}},"task":"{task}","responseType":"COMPLETION"}}"#,
        nested(depth)
    )
}

fn undecodable(task: &str, response_type: &str, reason: &str, text: &str) -> Decoded {
    Decoded::Undecodable {
        task: TaskId::new(task),
        response_type: response_type.to_owned(),
        reason: reason.to_owned(),
        text: text.to_owned(),
    }
}

#[test]
fn issue_14_responses_deeper_than_serde_json_s_limit_decode_up_to_max_depth() {
    // 126 arrays: the 128 levels the issue found dropped as noise.
    for depth in [125, 126, 127, 500, MAX_DEPTH - 2] {
        let line = deep_completion("a", depth);
        let expect = resp(
            "a",
            ResponseKind::Completion(args(json!({"x": nested_value(depth)}))),
        );
        check_decode(line.as_bytes(), std::slice::from_ref(&expect));
        // Glued to noise and to another response, through the general path.
        let glued = format!("noise {line}{}", r#"{"task":"b","responseType":"LAUNCH"}"#);
        check_decode(
            glued.as_bytes(),
            &[noise("noise"), expect, resp("b", ResponseKind::Launch)],
        );
    }
}

#[test]
fn issue_14_a_response_deeper_than_max_depth_is_undecodable_with_the_reason() {
    let line = deep_completion("a", MAX_DEPTH - 1);
    check_decode(
        line.as_bytes(),
        &[undecodable(
            "a",
            "COMPLETION",
            &format!(
                "the worker's COMPLETION could not be decoded: it is nested {} levels deep, \
                 over the limit of {MAX_DEPTH}",
                MAX_DEPTH + 1
            ),
            &line,
        )],
    );
    // 8 million levels: measured, not parsed (nor recursed into).
    let line = deep_completion("a", 8 << 20);
    let mut out = Vec::new();
    decode_line(line.as_bytes(), &mut out);
    assert!(
        matches!(&out[..], [Decoded::Undecodable { reason, .. }]
            if reason.ends_with(&format!("nested {} levels deep, over the limit of {MAX_DEPTH}", (8 << 20) + 2))),
        "{:.300?}",
        out
    );
}

#[test]
fn issue_14_a_response_that_is_not_valid_json_is_undecodable_and_what_follows_is_kept() {
    let broken = r#"{"outputs":{"a":1,},"task":"a","responseType":"COMPLETION"}"#;
    let line = format!(r#"{broken} {{"task":"b","responseType":"LAUNCH"}}"#);
    check_decode(
        line.as_bytes(),
        &[
            undecodable(
                "a",
                "COMPLETION",
                "the worker's COMPLETION could not be decoded: it is not valid JSON \
                 (trailing comma at line 1 column 19)",
                broken,
            ),
            resp("b", ResponseKind::Launch),
        ],
    );
    // A response type of its own: still named, and still undecodable.
    let odd = r#"{"task":"a","responseType":"ODD","x":[1 2]}"#;
    let mut out = Vec::new();
    decode_line(odd.as_bytes(), &mut out);
    assert!(
        matches!(&out[..], [Decoded::Undecodable { response_type, .. }] if response_type == "ODD"),
        "{out:?}"
    );
}

#[test]
fn broken_json_that_names_no_task_and_response_type_is_still_noise() {
    check_decode(
        br#"{"task":"a","outputs":{,}} {"responseType":"LAUNCH",} {"task": 7,"responseType":"X",}"#,
        &[noise(
            r#"{"task":"a","outputs":{,}} {"responseType":"LAUNCH",} {"task": 7,"responseType":"X",}"#,
        )],
    );
    // Keys below the top level do not make the outer object a response; the inner one is
    // looked at on its own, as any response glued to noise is.
    check_decode(
        br#"{"inner":{"task":"a","responseType":"LAUNCH","x":[,]},}"#,
        &[
            noise(r#"{"inner":"#),
            undecodable(
                "a",
                "LAUNCH",
                "the worker's LAUNCH could not be decoded: it is not valid JSON (expected value \
                 at line 1 column 42)",
                r#"{"task":"a","responseType":"LAUNCH","x":[,]}"#,
            ),
            noise(",}"),
        ],
    );
}

#[test]
fn a_deep_object_that_is_not_a_response_is_one_noise_fragment() {
    let deep = format!(r#"{{"x":{}}}"#, nested(300));
    let line = format!(r#"{deep}{{"task":"b","responseType":"LAUNCH"}}"#);
    check_decode(
        line.as_bytes(),
        &[noise(&deep), resp("b", ResponseKind::Launch)],
    );
}

#[test]
fn many_failing_candidates_on_one_line_cost_linear_time() {
    // Each `{"a` starts a candidate that never closes; skimming each to the end of the
    // line would be quadratic (about 10^11 steps here), and never finish.
    let line = format!(
        r#"{}{{"task":"b","responseType":"LAUNCH"}}"#,
        r#"{"a"#.repeat(300_000)
    );
    let mut out = Vec::new();
    decode_line(line.as_bytes(), &mut out);
    // (Not assert_eq!: the noise fragment is a megabyte.)
    assert!(
        out.last() == Some(&resp("b", ResponseKind::Launch)),
        "the response at the end was lost"
    );
}

#[test]
fn skim_reads_depth_end_and_top_level_names_without_parsing() {
    let mut budget = usize::MAX;
    let text =
        r#"{"outputs":{"task":"no"},"t\"x":"{[","task":"a\u0062","responseType":"LAUNCH"} tail"#;
    let found = skim(text, &mut budget).expect("budget");
    assert_eq!(
        found,
        Skim {
            depth: 2,
            end: Some(text.len() - " tail".len()),
            task: Some("ab".to_owned()),
            response_type: Some("LAUNCH".to_owned()),
        }
    );
    let mut budget = 10;
    assert_eq!(skim(text, &mut budget), None, "a spent budget says so");
    assert_eq!(budget, 0);
}

#[test]
fn issue_14_deep_requests_decode_up_to_max_depth_and_fail_with_their_task_beyond() {
    let request = |depth: usize| {
        format!(
            r#"{{"task":"t","requestType":"EXECUTE","script":"s","inputs":{{"x":{}}},"queue":null}}"#,
            nested(depth)
        )
    };
    assert_eq!(
        decode_request(request(500).as_bytes()),
        Ok(Request::Execute {
            task: TaskId::new("t"),
            script: "s".to_owned(),
            inputs: args(json!({"x": nested_value(500)})),
            queue: None,
        })
    );
    assert_eq!(
        decode_request(request(MAX_DEPTH).as_bytes()),
        Err((
            Some(TaskId::new("t")),
            format!(
                "request could not be decoded: it is nested {} levels deep, over the limit \
                 of {MAX_DEPTH}",
                MAX_DEPTH + 2
            )
        ))
    );
    // Broken JSON that names its task fails that task, instead of going unanswered.
    assert!(matches!(
        decode_request(br#"{"task":"t","requestType":"EXECUTE","inputs":{,}}"#),
        Err((Some(task), reason)) if task.as_str() == "t"
            && reason.starts_with("request is not a JSON object")
    ));
    // A deep request followed by something else is not one object.
    let trailing = format!("{} x", request(300));
    assert!(matches!(
        decode_request(trailing.as_bytes()),
        Err((Some(_), _))
    ));
}
