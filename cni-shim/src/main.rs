//! The `wren-cni` plugin: reads a CNI request, hands it to the local agent, prints the result.

fn main() {
    eprintln!("wren-cni: not built yet");
    std::process::exit(1);
}
