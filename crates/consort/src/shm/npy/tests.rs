//! Unit tests for `shm::npy`: headers byte for byte, round trips, and refusals.

use super::*;

fn npy_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn headers_are_what_numpy_writes() {
    // numpy 2.x: np.save of np.zeros((7, 512, 512), np.float32) and of np.zeros(3, bool).
    let header = encode_header(DType::Float32, &[7, 512, 512]);
    assert_eq!(header.len() % 64, 0);
    let text = std::str::from_utf8(&header[10..]).expect("ascii");
    assert_eq!(
        text.trim_end(),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (7, 512, 512), }"
    );
    assert!(text.ends_with('\n'));
    let header = encode_header(DType::Bool, &[3]);
    assert!(std::str::from_utf8(&header[10..])
        .expect("ascii")
        .starts_with("{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }"));
    let header = encode_header(DType::Complex128, &[]);
    assert!(std::str::from_utf8(&header[10..])
        .expect("ascii")
        .starts_with("{'descr': '<c16', 'fortran_order': False, 'shape': (), }"));
}

#[test]
fn every_dtype_round_trips() {
    for dtype in DType::ALL {
        let mut array = NDArray::create(dtype, &[3, 2]).expect("create");
        for (idx, byte) in array.as_mut_bytes().iter_mut().enumerate() {
            // Bytes valid for bool too.
            *byte = if dtype == DType::Bool {
                (idx % 2) as u8
            } else {
                idx as u8
            };
        }
        let mut file = Vec::new();
        write(&array, &mut file).expect("write");
        let header = read_header(file.as_slice()).expect("header");
        assert_eq!(
            header,
            Header {
                dtype,
                shape: vec![3, 2]
            }
        );
        let back = read(file.as_slice()).expect("read");
        assert_eq!((back.dtype(), back.shape()), (dtype, &[3, 2][..]));
        assert_eq!(back.as_bytes(), array.as_bytes(), "{dtype}");
    }
}

#[test]
fn headers_numpy_may_write_are_read() {
    for (header, dtype, shape) in [
        (
            "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
            DType::Int64,
            vec![2],
        ),
        (
            "{\"shape\": (1, 2), \"fortran_order\": False, \"descr\": \"|u1\"}",
            DType::Uint8,
            vec![1, 2],
        ),
        (
            "{'descr': '=f8', 'fortran_order': False, 'shape': (2L, 1L)}",
            DType::Float64,
            vec![2, 1],
        ),
        (
            "{'descr': '|i1', 'fortran_order': False, 'shape': (), }    \n",
            DType::Int8,
            vec![],
        ),
        (
            "{'descr': '>u1', 'fortran_order': False, 'shape': (0, 4), }",
            DType::Uint8,
            vec![0, 4],
        ),
    ] {
        let parsed = read_header(npy_bytes(header, &[]).as_slice()).expect(header);
        assert_eq!(parsed, Header { dtype, shape }, "{header}");
    }
    // Version 2: a 4-byte header length.
    let dict = "{'descr': '<u2', 'fortran_order': False, 'shape': (1,), }\n";
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend_from_slice(&513u16.to_le_bytes());
    let array = read(bytes.as_slice()).expect("version 2");
    assert_eq!(array.view::<u16>().expect("view")[[0]], 513);
}

#[test]
fn files_appose_arrays_cannot_be_are_refused_clearly() {
    let cases = [
        (
            npy_bytes(
                "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
                &[0; 16],
            ),
            "Fortran order",
        ),
        (
            npy_bytes(
                "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
                &[0; 8],
            ),
            "byte order",
        ),
        (
            npy_bytes(
                "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
                &[0; 4],
            ),
            "dtype \"<f2\"",
        ),
        (
            npy_bytes(
                "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,), }",
                &[0; 4],
            ),
            "structured",
        ),
        (
            npy_bytes(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
                &[0; 15],
            ),
            "ends before the 16 bytes",
        ),
        (
            npy_bytes(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-4,), }",
                &[],
            ),
            "dimension 0 of the shape is -4, and a dimension cannot be negative",
        ),
        (
            npy_bytes(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, -1), }",
                &[],
            ),
            "dimension 2 of the shape is -1, and a dimension cannot be negative",
        ),
        (
            npy_bytes(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3.5), }",
                &[],
            ),
            "dimension 1 of the shape is \"3.5\", not an integer",
        ),
        (
            npy_bytes(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
                &[],
            ),
            "dimension 0 of the shape is 99999999999999999999999, too large",
        ),
        (
            npy_bytes(
                "{'descr': '<f4', 'fortran_order': False, 'shape': 4, }",
                &[],
            ),
            "the shape is not a tuple",
        ),
        (
            npy_bytes("{'descr': '<f4', 'shape': (4,), }", &[0; 16]),
            "no fortran_order",
        ),
        (b"\x93NUMPX\x01\x00".to_vec(), "magic"),
        (b"\x93NUMPY\x01".to_vec(), "inside the header"),
        (b"\x93NUMPY\x04\x00\x00\x00".to_vec(), "version 4"),
    ];
    for (bytes, expected) in cases {
        let err = read(bytes.as_slice()).expect_err("refused");
        assert!(
            err.to_string().contains(expected),
            "{err} should say {expected:?}"
        );
    }
}

#[test]
fn save_and_load_go_through_a_file() {
    let dir = std::env::temp_dir().join(format!("consort-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("a.npy");
    let mut array = NDArray::create(DType::Float64, &[4]).expect("create");
    array
        .view_mut::<f64>()
        .expect("view")
        .assign(&ndarray::arr1(&[1.0, 2.5, -3.0, 1e300]).into_dyn());
    save(&array, &path).expect("save");
    let loaded = load(&path).expect("load");
    assert_eq!(
        loaded.view::<f64>().expect("view"),
        array.view::<f64>().expect("view")
    );
    assert!(loaded.shm().is_owner());
    let missing = dir.join("missing.npy");
    match load(&missing) {
        Err(err @ NpyError::File { .. }) => {
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("{}: ", missing.display())),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    match save(&array, dir.join("no-such-dir").join("a.npy")) {
        Err(err @ NpyError::File { .. }) => assert!(err.to_string().contains("no-such-dir")),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}
