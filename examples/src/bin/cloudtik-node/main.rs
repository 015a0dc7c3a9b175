//! `cloudtik-node`: what runs on every node of a cluster (see
//! [`cloudtik_examples::node`]), with the built-in providers and runtimes.

fn main() -> std::process::ExitCode {
    cloudtik_examples::node::NodeProgram::builtin().main()
}
