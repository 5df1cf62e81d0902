fn main() {
    println!("cargo bench --bench compare: not yet available");
}
