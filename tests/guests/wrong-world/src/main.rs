//! A WASI command: a valid component, but not of the plugin world.
fn main() {
    println!("hello");
}
