//! The worker of the `service` benchmarks: answers every task with its inputs.

fn main() -> std::io::Result<()> {
    consort::worker::serve(|task: &consort::worker::TaskContext| Ok(task.inputs().clone()))
}
