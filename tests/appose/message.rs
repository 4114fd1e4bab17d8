//! Port of appose-python's tests/util/test_message.py (the golden compact-JSON string),
//! and a check that consort writes the same EXECUTE and CANCEL bytes as appose's service.
//!
//! Provenance: apposed/appose-python at 57885bb6be07be9efbf120e275c7e202c0d01e7e.
//! Licence: BSD-2-Clause, "Copyright (c) 2023 - 2026, Appose developers. All rights
//! reserved."; the full text is in main.rs.
//!
//! Changes:
//! - `message.encode(data)` becomes `consort::protocol::write_json`, and the same data as
//!   the inputs of an EXECUTE request (`Request::encode`), which must embed it unchanged;
//! - `message.decode(json)` becomes the two decoders consort has: `decode_request` (the
//!   golden string as a request's inputs, as a worker reads them) and `decode_line` (as a
//!   COMPLETION's outputs, as the service reads them); both must give the same values;
//! - `appose.NDArray("float32", [2, 20, 25])` becomes `NDArray::create`, and
//!   `appose.SharedMemory(create=True, rsize=4000)` `SharedMemory::create(4000)`; the decoded
//!   `ndArray` object is attached with `NDArray::from_json`;
//! - added, `test_request_bytes_match_appose_service`: the real appose 0.12.0 `Service`
//!   and consort's `Service` both drive a worker that only copies its stdin to a file;
//!   the requests for the same scripts, inputs and queues must be the same bytes (task ids
//!   aside), and `Request::encode` must give them too.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use consort::protocol::{self, Args, Decoded, Request, Response, ResponseKind};
use consort::{DType, NDArray, Service, SharedMemory, TaskId};
use consort_tests::{python, wait_until};
use serde_json::{json, Value};

use super::{finish, watchdog};

/// `MessageTest.JSON`.
const JSON: &str = concat!(
    "{",
    r#""posByte":123,"negByte":-98,"#,
    r#""posDouble":9.876543210123456,"negDouble":-1.234567890987654e+302,"#,
    r#""posFloat":9.876543,"negFloat":-1.2345678,"#,
    r#""posInt":1234567890,"negInt":-987654321,"#,
    r#""posLong":12345678987654321,"negLong":-98765432123456789,"#,
    r#""posShort":32109,"negShort":-23456,"#,
    r#""trueBoolean":true,"falseBoolean":false,"#,
    r#""nullChar":"\u0000","#,
    r#""aString":"-=[]\\;',./_+{}|:\"<>?"#,
    "AaBbCcDdEeFfGgHhIiJjKkLlMmNnOoPpQqRrSsTtUuVvWwXxYyZz",
    r#"~!@#$%^&*()","#,
    r#""numbers":[1,1,2,3,5,8],"#,
    r#""words":["quick","brown","fox"],"#,
    r#""ndArray":{"#,
    r#""appose_type":"ndarray","#,
    r#""dtype":"float32","#,
    r#""shape":[2,20,25],"#,
    r#""shm":{"#,
    r#""appose_type":"shm","#,
    r#""name":"SHM_NAME","#,
    r#""rsize":4000"#,
    "}",
    "}",
    "}",
);

/// `MessageTest.STRING`.
const STRING: &str = concat!(
    r#"-=[]\;',./_+{}|:"<>?"#,
    "AaBbCcDdEeFfGgHhIiJjKkLlMmNnOoPpQqRrSsTtUuVvWwXxYyZz",
    "~!@#$%^&*()",
);

#[test]
fn test_encode() {
    let ndarray = NDArray::create(DType::Float32, &[2, 20, 25]).expect("create ndarray");
    let shm_name = ndarray.shm().name().to_owned();
    let data = json!({
        "posByte": 123,
        "negByte": -98,
        "posDouble": 9.876543210123456,
        "negDouble": -1.234567890987654e302,
        "posFloat": 9.876543,
        "negFloat": -1.2345678,
        "posInt": 1234567890,
        "negInt": -987654321,
        "posLong": 12345678987654321_i64,
        "negLong": -98765432123456789_i64,
        "posShort": 32109,
        "negShort": -23456,
        "trueBoolean": true,
        "falseBoolean": false,
        "nullChar": "\0",
        "aString": STRING,
        "numbers": [1, 1, 2, 3, 5, 8],
        "words": ["quick", "brown", "fox"],
        "ndArray": ndarray,
    });
    let mut json_str = String::new();
    protocol::write_json(&mut json_str, &data);
    let expected = JSON.replace("SHM_NAME", &shm_name);
    assert_eq!(expected, json_str);

    // Added: the same data as a request's inputs is embedded as it is.
    let Value::Object(inputs) = data else {
        unreachable!()
    };
    let request = Request::Execute {
        task: TaskId::new("0123456789abcdef0123456789abcdef"),
        script: "task.outputs['result'] = 1".to_owned(),
        inputs,
        queue: None,
    };
    assert_eq!(
        request.encode(),
        format!(
            r#"{{"task":"0123456789abcdef0123456789abcdef","requestType":"EXECUTE","script":"task.outputs['result'] = 1","inputs":{expected},"queue":null}}"#
        )
    );
}

#[test]
fn test_decode() {
    let shm = SharedMemory::create(4000).expect("create shm");
    let golden = JSON.replace("SHM_NAME", shm.name());

    // As a worker reads a request's inputs.
    let request = format!(
        r#"{{"task":"t","requestType":"EXECUTE","script":"","inputs":{golden},"queue":null}}"#
    );
    let data = match protocol::decode_request(request.as_bytes()) {
        Ok(Request::Execute { inputs, .. }) => inputs,
        other => panic!("{other:?}"),
    };
    // As the service reads a COMPLETION's outputs.
    let mut decoded = Vec::new();
    protocol::decode_line(
        format!(r#"{{"outputs":{golden},"task":"t","responseType":"COMPLETION"}}"#).as_bytes(),
        &mut decoded,
    );
    match decoded.as_slice() {
        [Decoded::Response(Response {
            kind: ResponseKind::Completion(outputs),
            ..
        })] => assert_eq!(outputs, &data, "both decoders agree"),
        other => panic!("{other:?}"),
    }

    check_decoded(&data);
    let nd_array = NDArray::from_json(&data["ndArray"]).expect("attach ndArray");
    assert_eq!(nd_array.dtype(), DType::Float32);
    assert_eq!(nd_array.shape(), [2, 20, 25]);
    assert_eq!(nd_array.shm().name(), shm.name());
}

fn check_decoded(data: &Args) {
    assert_eq!(19, data.len());
    assert_eq!(Some(123), data["posByte"].as_i64());
    assert_eq!(Some(-98), data["negByte"].as_i64());
    assert_eq!(Some(9.876543210123456), data["posDouble"].as_f64());
    assert_eq!(Some(-1.234567890987654e302), data["negDouble"].as_f64());
    assert_eq!(Some(9.876543), data["posFloat"].as_f64());
    assert_eq!(Some(-1.2345678), data["negFloat"].as_f64());
    assert_eq!(Some(1234567890), data["posInt"].as_i64());
    assert_eq!(Some(-987654321), data["negInt"].as_i64());
    assert_eq!(Some(12345678987654321), data["posLong"].as_i64());
    assert_eq!(Some(-98765432123456789), data["negLong"].as_i64());
    assert_eq!(Some(32109), data["posShort"].as_i64());
    assert_eq!(Some(-23456), data["negShort"].as_i64());
    assert_eq!(data["trueBoolean"], true);
    assert_eq!(data["falseBoolean"], false);
    assert_eq!(data["nullChar"], "\0");
    assert_eq!(data["aString"], STRING);
    assert_eq!(data["numbers"], json!([1, 1, 2, 3, 5, 8]));
    assert_eq!(data["words"], json!(["quick", "brown", "fox"]));
}

/// Scripts, inputs and queues for both services, as JSON text that Python's `json` and
/// serde_json read into the same values. Tricky on purpose: non-ASCII and astral text,
/// control characters, Python's float notation boundaries (1e16, 0.0001), extreme
/// integers, key order that is not sorted, nesting, empty keys.
const CASES: &str = r##"[
  {"script": "task.outputs['result'] = 1", "inputs": {}, "queue": null},
  {"script": "# h\u00e9llo \u2713 \ud834\udd1e \"quoted\" \\ back\n\ttab\r\nx = '\u0000\u007f\u2028'\n",
   "inputs": {
     "zeta": "h\u00e9llo w\u00f6rld \u2713 \u043a\u043b\u044e\u0447 \u4e2d\u6587",
     "alpha": "\ud834\udd1e\ud83d\ude00",
     "nul": "\u0000",
     "controls": "\u0001\u001f\u007f\u0080\u00ff\u2028\u2029\ufeff\uffff",
     "escapes": "\"\\/\b\f\n\r\t",
     "floats": [-1.234567890987654e+302, 1e16, 1e15, 1e22, 0.0001, 0.00001, 1.5, -0.0,
                0.0, 0.1, 0.30000000000000004, 5e-324, 1.7976931348623157e308, 2.5e-5,
                123456789012345.6, 1.0, -2.0, 9.876543, 1e-7, 9999999999999998.0],
     "ints": [0, -1, 9007199254740993, 9223372036854775807, -9223372036854775808,
              18446744073709551615],
     "nested": {"b": {"a": [{"c": null}, true, false, [], {}]}, "": "",
                "\u043a\u043b\u044e\u0447": [[[]]]},
     "ndArray": {"appose_type": "ndarray", "dtype": "float32", "shape": [2, 20, 25],
                 "shm": {"appose_type": "shm", "name": "psm_0123abcd", "rsize": 4000}}
   },
   "queue": "main"},
  {"script": "", "inputs": {"x": 1}, "queue": "other"}
]"##;

/// Writes all of its stdin, once closed, to the file named by its first argument.
const DUMP_STDIN: &str = "import sys\nopen(sys.argv[1], 'wb').write(sys.stdin.buffer.read())";

/// Submits the cases with appose's own `Service`, cancels the first task, closes; prints
/// the task ids.
const APPOSE_DRIVER: &str = r#"
import json, sys
from appose.service import Service
cases = json.loads(sys.stdin.buffer.read())
dump = sys.argv[2]
service = Service(".", None, sys.executable, "-c", dump, sys.argv[1])
service.start()
tasks = [service.task(c["script"], c["inputs"], c["queue"]) for c in cases]
for task in tasks:
    task.start()
tasks[0].cancel()
service.close()
service.wait_for()
print(json.dumps([task.uuid for task in tasks]))
"#;

struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "consort-appose-requests-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn lines(bytes: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(bytes).expect("requests are UTF-8");
    assert!(text.is_ascii(), "requests are ASCII: {text}");
    let body = text.strip_suffix('\n').expect("ends with a newline");
    body.split('\n').map(str::to_owned).collect()
}

#[test]
fn test_request_bytes_match_appose_service() {
    let _watchdog = watchdog("test_request_bytes_match_appose_service");
    let cases: Vec<Value> = serde_json::from_str(CASES).expect("cases");

    // appose's service.
    let appose_out = TempFile::new("appose");
    let mut driver = Command::new(python())
        .args(["-c", APPOSE_DRIVER])
        .arg(&appose_out.0)
        .arg(DUMP_STDIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the appose driver");
    driver
        .stdin
        .take()
        .unwrap()
        .write_all(CASES.as_bytes())
        .expect("write cases");
    let output = driver.wait_with_output().expect("appose driver");
    assert!(output.status.success(), "appose driver: {output:?}");
    let appose_ids: Vec<String> =
        serde_json::from_slice(output.stdout.trim_ascii()).expect("task ids");
    let appose_lines = lines(&std::fs::read(&appose_out.0).expect("appose's requests"));

    // consort's service, with the same worker.
    let consort_out = TempFile::new("consort");
    let mut command = Command::new(python());
    command.args(["-c", DUMP_STDIN]).arg(&consort_out.0);
    let service = Service::new(command).start().expect("start");
    let mut requests = Vec::new();
    let mut tasks = Vec::new();
    for (case, appose_id) in cases.iter().zip(&appose_ids) {
        let script = case["script"].as_str().unwrap().to_owned();
        let inputs = case["inputs"].as_object().unwrap().clone();
        let queue = case["queue"].as_str().map(str::to_owned);
        let mut task = service.task(script.clone()).inputs(inputs.clone());
        if let Some(queue) = &queue {
            task = task.queue(queue.clone());
        }
        tasks.push(task.submit().expect("submit"));
        requests.push(Request::Execute {
            task: TaskId::new(appose_id.clone()),
            script,
            inputs,
            queue,
        });
    }
    tasks[0].cancel();
    requests.push(Request::Cancel {
        task: TaskId::new(appose_ids[0].clone()),
    });
    service.close();
    for task in &tasks {
        assert!(finish(task).is_err(), "the dump worker answers nothing");
    }
    assert!(
        wait_until(Duration::from_secs(30), || consort_out.0.exists()),
        "the dump worker wrote nothing"
    );
    let consort_lines = lines(&std::fs::read(&consort_out.0).expect("consort's requests"));

    assert_eq!(appose_lines.len(), cases.len() + 1, "{appose_lines:#?}");
    assert_eq!(
        consort_lines.len(),
        appose_lines.len(),
        "{consort_lines:#?}"
    );
    for (idx, appose_line) in appose_lines.iter().enumerate() {
        let (task, appose_id) = if idx < tasks.len() {
            (&tasks[idx], &appose_ids[idx])
        } else {
            (&tasks[0], &appose_ids[0])
        };
        let consort_line = consort_lines[idx].replacen(
            &format!(r#"{{"task":"{}","#, task.id()),
            &format!(r#"{{"task":"{appose_id}","#),
            1,
        );
        assert_eq!(
            &consort_line, appose_line,
            "request {idx}, consort's service"
        );
        assert_eq!(
            &requests[idx].encode(),
            appose_line,
            "request {idx}, Request::encode"
        );
    }
}
