//! Unit tests for `shm::array`: dtypes, descriptors, views, and every bad input as an error.

use serde_json::json;

use super::*;

#[test]
fn every_appose_dtype_has_its_name_and_size() {
    let expected = [
        ("int8", 1),
        ("uint8", 1),
        ("int16", 2),
        ("uint16", 2),
        ("int32", 4),
        ("uint32", 4),
        ("int64", 8),
        ("uint64", 8),
        ("float32", 4),
        ("float64", 8),
        ("complex64", 8),
        ("complex128", 16),
        ("bool", 1),
    ];
    for (dtype, (name, size)) in DType::ALL.into_iter().zip(expected) {
        assert_eq!((dtype.name(), dtype.itemsize()), (name, size));
        assert_eq!(DType::from_name(name).expect("known"), dtype);
    }
    for unknown in ["float16", "<f4", "Float32", "", "object"] {
        assert!(
            matches!(DType::from_name(unknown), Err(ShmError::UnknownDType(name)) if name == unknown)
        );
    }
}

#[test]
fn element_types_match_their_dtype_sizes() {
    fn check<T: Element>() {
        assert_eq!(
            std::mem::size_of::<T>(),
            T::DTYPE.itemsize(),
            "{}",
            T::DTYPE
        );
    }
    check::<i8>();
    check::<i16>();
    check::<i32>();
    check::<i64>();
    check::<u8>();
    check::<u16>();
    check::<u32>();
    check::<u64>();
    check::<f32>();
    check::<f64>();
    check::<Complex<f32>>();
    check::<Complex<f64>>();
    check::<bool>();
}

#[test]
fn a_created_array_is_viewed_written_and_described_as_appose_does() {
    let mut array = NDArray::create(DType::Float32, &[2, 3, 4]).expect("create");
    assert_eq!(
        (array.len(), array.n_bytes(), array.shm().rsize()),
        (24, 96, 96)
    );
    {
        let mut view = array.view_mut::<f32>().expect("view_mut");
        assert_eq!(view.shape(), &[2, 3, 4]);
        view[[1, 2, 3]] = 7.5;
        view[[0, 0, 1]] = -1.0;
    }
    // C order: [1, 2, 3] is the last element, [0, 0, 1] the second.
    let bytes = array.as_bytes();
    assert_eq!(&bytes[92..96], &7.5f32.to_ne_bytes());
    assert_eq!(&bytes[4..8], &(-1.0f32).to_ne_bytes());
    let descriptor = array.to_json();
    assert_eq!(
        descriptor.to_string(),
        format!(
            r#"{{"appose_type":"ndarray","dtype":"float32","shape":[2,3,4],"shm":{{"appose_type":"shm","name":"{}","rsize":96}}}}"#,
            array.shm().name()
        )
    );
    assert_eq!(serde_json::to_value(&array).expect("serialize"), descriptor);
    let attached = NDArray::from_json(&descriptor).expect("from_json");
    assert!(!attached.shm().is_owner());
    assert_eq!(attached.view::<f32>().expect("view")[[1, 2, 3]], 7.5);
    assert!(matches!(
        attached.view::<f64>(),
        Err(ShmError::DTypeMismatch {
            actual: DType::Float32,
            requested: DType::Float64
        })
    ));
}

#[test]
fn complex_and_bool_arrays_view_as_their_rust_types() {
    let mut complex = NDArray::create(DType::Complex128, &[3]).expect("create");
    complex.view_mut::<Complex<f64>>().expect("view")[1] = Complex::new(1.5, -2.0);
    assert_eq!(&complex.as_bytes()[16..24], &1.5f64.to_ne_bytes());
    assert_eq!(&complex.as_bytes()[24..32], &(-2.0f64).to_ne_bytes());

    let mut flags = NDArray::create(DType::Bool, &[2, 2]).expect("create");
    flags.view_mut::<bool>().expect("view")[[1, 0]] = true;
    assert_eq!(flags.as_bytes(), &[0, 0, 1, 0]);
    // A peer that writes 2 into a bool array gets an error here, not undefined behaviour.
    flags.as_mut_bytes()[3] = 2;
    assert!(matches!(
        flags.view::<bool>(),
        Err(ShmError::InvalidBool {
            offset: 3,
            byte: 2,
            ..
        })
    ));
    assert!(matches!(
        flags.view_mut::<bool>(),
        Err(ShmError::InvalidBool { .. })
    ));
}

#[test]
fn empty_and_scalar_arrays_work() {
    let empty = NDArray::create(DType::Int64, &[0, 5]).expect("create");
    assert_eq!(
        (empty.len(), empty.n_bytes(), empty.shm().rsize()),
        (0, 0, 1)
    );
    assert_eq!(empty.view::<i64>().expect("view").shape(), &[0, 5]);
    let scalar = NDArray::create(DType::Uint16, &[]).expect("create");
    assert_eq!((scalar.len(), scalar.n_bytes()), (1, 2));
    assert_eq!(scalar.view::<u16>().expect("view").ndim(), 0);
}

#[test]
fn from_array_copies_into_a_new_block() {
    let source = ndarray::Array::from_shape_fn((2, 3), |(row, col)| (row * 10 + col) as i32);
    let array = NDArray::from_array(source.view().into_dyn()).expect("from_array");
    assert_eq!(array.dtype(), DType::Int32);
    assert_eq!(array.view::<i32>().expect("view"), source.into_dyn());
}

#[test]
fn a_shape_that_does_not_fit_its_block_is_an_error() {
    let creator = SharedMemory::create(2000).expect("create");
    let attach = || SharedMemory::attach(creator.name()).expect("attach");
    assert!(NDArray::new(DType::Uint16, &[2, 20, 25], attach()).is_ok());
    assert!(matches!(
        NDArray::new(DType::Uint16, &[2, 20, 26], attach()),
        Err(ShmError::ShapeMismatch {
            needed: 2080,
            rsize: 2000,
            ..
        })
    ));
    assert!(matches!(
        NDArray::new(DType::Float64, &[usize::MAX / 2, 3], attach()),
        Err(ShmError::ShapeMismatch {
            needed: usize::MAX,
            ..
        })
    ));
    assert!(matches!(
        NDArray::create(DType::Int8, &[usize::MAX, 2]),
        Err(ShmError::ShapeMismatch { .. })
    ));
}

#[test]
fn bad_descriptors_are_clear_errors() {
    let array = NDArray::create(DType::Uint8, &[10]).expect("create");
    let shm = array.shm().to_json();
    let cases = [
        (
            json!({"appose_type": "ndarray", "dtype": "float16", "shape": [1], "shm": shm}),
            "unknown dtype",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": "uint8", "shape": [11], "shm": shm}),
            "needs 11 bytes",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": "uint8", "shape": [-1], "shm": shm}),
            "non-negative",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": "uint8", "shape": [1.5], "shm": shm}),
            "non-negative",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": 8, "shape": [1], "shm": shm}),
            "dtype",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": "uint8", "shape": [1]}),
            "no \"shm\"",
        ),
        (
            json!({"appose_type": "shm", "name": "psm_0", "rsize": 1}),
            "not a shared-memory descriptor",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": "uint8", "shape": [1],
                   "shm": {"appose_type": "shm", "name": "../etc/passwd", "rsize": 1}}),
            "contains '/'",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": "uint8", "shape": [1],
                   "shm": {"appose_type": "shm", "name": "psm..x", "rsize": 1}}),
            "contains '..'",
        ),
    ];
    for (descriptor, expected) in cases {
        let err = NDArray::from_json(&descriptor).expect_err("a bad descriptor");
        assert!(
            err.to_string().contains(expected),
            "{descriptor}: {err} should say {expected:?}"
        );
    }
}
