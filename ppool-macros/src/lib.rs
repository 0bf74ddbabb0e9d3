//! Procedural macros for [`ppool`](https://docs.rs/ppool). Use them through `ppool`, which
//! re-exports them; this crate is an implementation detail.

mod expand;
mod parse;

use proc_macro::TokenStream;

/// Registers a free function as a pool entry. See `ppool::pool_entry` for the documentation.
#[proc_macro_attribute]
pub fn pool_entry(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::pool_entry(args.into(), input.into()).into()
}
