//! An `async fn main` needs a runtime's attribute: without one nothing would run its body.
ppool::main! {
    async fn main() {
        println!("never");
    }
}
