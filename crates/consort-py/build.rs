//! Build script: PyO3's configuration flags (`Py_GIL_DISABLED` among them) for the crate's
//! own `cfg`s: the memory backend borrows its store without a locked instruction where the
//! GIL orders every access, and with one on a free-threaded interpreter.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
