//! `.npy` files: what numpy writes, consort reads into shared memory, and what consort
//! writes, numpy reads back equal; Fortran order and foreign byte order are refused.

use std::path::PathBuf;
use std::process::Command;

use consort::shm::npy;
use consort::DType;

use super::watchdog;

fn temp_dir(tag: &str) -> PathBuf {
    let random = consort::sys::random_u64().expect("random");
    let dir = std::env::temp_dir().join(format!("consort-npy-{tag}-{random:016x}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[track_caller]
fn python(script: &str, dir: &std::path::Path) -> String {
    let output = Command::new(consort_tests::python())
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn numpy_files_round_trip_through_shared_memory() {
    let _watchdog = watchdog("npy-round-trip");
    let dir = temp_dir("rt");
    let written = python(
        "import sys, numpy
d = sys.argv[1]
for name in ['int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64',
             'float32', 'float64', 'complex64', 'complex128', 'bool']:
    a = (numpy.arange(24) % 7).reshape(2, 3, 4).astype(name)
    if name.startswith('complex'):
        a = a + 1j * a[::-1]
    numpy.save(f'{d}/{name}.npy', a)
    print(name, a.tobytes().hex())
numpy.save(f'{d}/fortran.npy', numpy.asfortranarray(numpy.ones((3, 2), 'float32')))
numpy.save(f'{d}/big.npy', numpy.ones(3, '>f8'))
numpy.save(f'{d}/half.npy', numpy.ones(3, 'float16'))
",
        &dir,
    );
    for line in written.lines() {
        let (name, hex) = line.split_once(' ').expect("name hex");
        let array = npy::load(dir.join(format!("{name}.npy"))).expect(name);
        assert_eq!(array.dtype(), DType::from_name(name).expect("dtype"));
        assert_eq!(array.shape(), &[2, 3, 4]);
        let bytes: String = array
            .as_bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(bytes, hex, "{name}: the bytes numpy wrote");
        npy::save(&array, dir.join(format!("{name}.back.npy"))).expect("save");
    }
    let checked = python(
        "import sys, glob, numpy
d = sys.argv[1]
n = 0
for path in sorted(glob.glob(f'{d}/*.back.npy')):
    back = numpy.load(path)
    orig = numpy.load(path.replace('.back', ''))
    assert back.dtype == orig.dtype and back.shape == orig.shape, path
    assert numpy.array_equal(back, orig), path
    n += 1
print(n)
",
        &dir,
    );
    assert_eq!(checked.trim(), "13");
    for (file, expected) in [
        ("fortran.npy", "Fortran order"),
        ("big.npy", "byte order"),
        ("half.npy", "dtype \"<f2\""),
    ] {
        let err = npy::load(dir.join(file)).expect_err(file);
        assert!(err.to_string().contains(expected), "{file}: {err}");
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}
