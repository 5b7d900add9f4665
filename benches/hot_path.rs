// bench placeholder
fn main() {}
