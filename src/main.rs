fn main() {
    println!("labelfree");
}
