//! A process that creates shared-memory blocks and waits to be SIGKILLed: the test of
//! "`consort shm gc` removes exactly the blocks of a dead creator".
//!
//! `shm_creator <n blocks> <n kept>` creates the blocks (the last `n kept` of them kept),
//! registered in `$CONSORT_SHM_REGISTRY`, prints one name per line, then `ready`, and waits
//! for stdin to close; then it exits normally, unlinking the blocks it did not keep.

use std::io::{Read, Write};

use consort::SharedMemory;

fn main() {
    let mut args = std::env::args().skip(1).map(|arg| arg.parse::<usize>());
    let (Some(Ok(n_blocks)), Some(Ok(n_kept))) = (args.next(), args.next()) else {
        eprintln!("usage: shm_creator <n blocks> <n kept>");
        std::process::exit(2);
    };
    let mut blocks = Vec::new();
    let mut stdout = std::io::stdout().lock();
    for block_idx in 0..n_blocks {
        let mut block = SharedMemory::create(4096 + block_idx).expect("create a block");
        if block_idx >= n_blocks - n_kept.min(n_blocks) {
            block.keep();
        }
        writeln!(stdout, "{}", block.name()).expect("stdout");
        blocks.push(block);
    }
    writeln!(stdout, "ready").expect("stdout");
    stdout.flush().expect("stdout");
    drop(stdout);
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}
