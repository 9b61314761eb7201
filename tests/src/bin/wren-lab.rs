//! `wren-lab`: a whole wren cluster on one machine, in network namespaces.

fn main() {
    eprintln!("wren-lab: the lab is not built yet (see issue: wren-lab); nothing was started");
    std::process::exit(2);
}
