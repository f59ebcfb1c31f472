//! `embed_migrations!` reads `migrations/` at compile time; without this, a migration added
//! to an already-built crate would be left out of the binaries until some source file changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
