//! Parse and validate the function under `#[pool_entry]`, collecting every error with the span
//! of the offending token.

use proc_macro2::TokenStream;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Type};

/// A validated entry: the function, its arguments' names and types, and its return type.
pub(crate) struct Entry {
    pub(crate) func: ItemFn,
    pub(crate) args: Vec<(Ident, Type)>,
    pub(crate) output: Option<Type>,
    /// `crate = path` override for the runtime crate, for crates that re-export ppool.
    pub(crate) krate: syn::Path,
}

/// Parses `#[pool_entry]` / `#[pool_entry(crate = path)]`.
fn parse_args(args: TokenStream) -> syn::Result<syn::Path> {
    let mut krate: syn::Path = syn::parse_quote!(::ppool);
    if args.is_empty() {
        return Ok(krate);
    }
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            krate = meta.value()?.parse()?;
            Ok(())
        } else {
            Err(meta.error("unknown `pool_entry` option; the only option is `crate = path`"))
        }
    });
    syn::parse::Parser::parse2(parser, args)?;
    Ok(krate)
}

/// The head of an item that is not a function, such as `struct Point` or `impl`, to point at.
fn item_head(input: &TokenStream) -> Option<TokenStream> {
    use quote::ToTokens;
    use syn::Item;
    fn head(keyword: &dyn ToTokens, ident: &Ident) -> TokenStream {
        let mut tokens = keyword.to_token_stream();
        ident.to_tokens(&mut tokens);
        tokens
    }
    Some(match syn::parse2::<Item>(input.clone()).ok()? {
        Item::Struct(i) => head(&i.struct_token, &i.ident),
        Item::Enum(i) => head(&i.enum_token, &i.ident),
        Item::Union(i) => head(&i.union_token, &i.ident),
        Item::Trait(i) => head(&i.trait_token, &i.ident),
        Item::Type(i) => head(&i.type_token, &i.ident),
        Item::Const(i) => head(&i.const_token, &i.ident),
        Item::Static(i) => head(&i.static_token, &i.ident),
        Item::Mod(i) => head(&i.mod_token, &i.ident),
        Item::Impl(i) => i.impl_token.to_token_stream(),
        Item::Use(i) => i.use_token.to_token_stream(),
        _ => return None,
    })
}

/// An error at a reference or `impl Trait` type, which cannot cross a process boundary.
fn not_portable(ty: &Type, reference: &str, impl_trait: &str) -> Option<syn::Error> {
    match ty {
        Type::Reference(r) => Some(syn::Error::new_spanned(r, reference)),
        Type::ImplTrait(t) => Some(syn::Error::new_spanned(t, impl_trait)),
        _ => None,
    }
}

/// Adds `error` to `acc`.
fn push(acc: &mut Option<syn::Error>, error: syn::Error) {
    match acc {
        Some(existing) => existing.combine(error),
        None => *acc = Some(error),
    }
}

/// Why an item was rejected: every error, the item's tokens to emit unchanged, and the
/// function with the runtime crate's path when the item is a function.
pub(crate) type Rejected = (syn::Error, TokenStream, Option<Box<(ItemFn, syn::Path)>>);

/// Parses the item and checks every rule, so that all mistakes are reported at once.
pub(crate) fn entry(args: TokenStream, input: TokenStream) -> Result<Entry, Rejected> {
    let func = syn::parse2::<ItemFn>(input.clone()).ok();
    let krate = match parse_args(args) {
        Ok(k) => k,
        Err(e) => {
            let fallback = func.map(|f| Box::new((f, syn::parse_quote!(::ppool))));
            return Err((e, input, fallback));
        }
    };
    let func: ItemFn = match func {
        Some(f) => f,
        None => {
            let message =
                "#[pool_entry] goes on a free function, such as `fn square(x: u64) -> u64`";
            let e = match item_head(&input) {
                Some(head) => syn::Error::new_spanned(head, message),
                None => syn::Error::new(proc_macro2::Span::call_site(), message),
            };
            return Err((e, input, None));
        }
    };
    let mut err = None;
    let sig = &func.sig;
    if let Some(t) = &sig.asyncness {
        push(
            &mut err,
            syn::Error::new_spanned(
                t,
                "a pool entry cannot be `async`: workers run it to completion on their own thread",
            ),
        );
    }
    if let syn::Safety::Unsafe(t) = &sig.safety {
        push(
            &mut err,
            syn::Error::new_spanned(
                t,
                "a pool entry cannot be `unsafe fn`: nothing could uphold its safety contract across a process boundary",
            ),
        );
    }
    if let Some(t) = &sig.constness {
        push(
            &mut err,
            syn::Error::new_spanned(t, "a pool entry cannot be `const fn`"),
        );
    }
    if let Some(abi) = &sig.abi {
        push(
            &mut err,
            syn::Error::new_spanned(abi, "a pool entry cannot have an `extern` ABI"),
        );
    }
    if !sig.generics.params.is_empty() {
        push(
            &mut err,
            syn::Error::new_spanned(
                &sig.generics.params,
                "a pool entry cannot be generic: a worker must know the concrete argument and return types",
            ),
        );
    } else if let Some(w) = &sig.generics.where_clause {
        push(
            &mut err,
            syn::Error::new_spanned(w, "a pool entry cannot have a `where` clause"),
        );
    }
    if let Some(v) = &sig.variadic {
        push(
            &mut err,
            syn::Error::new_spanned(v, "a pool entry cannot be variadic"),
        );
    }
    let mut args = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => push(
                &mut err,
                syn::Error::new_spanned(
                    r,
                    "a pool entry cannot be a method: `self` cannot be sent to a worker; use a free function",
                ),
            ),
            FnArg::Typed(pt) => {
                if let Some(e) = not_portable(
                    &pt.ty,
                    "a pool entry cannot take a reference: arguments are sent to another process; take an owned type such as `String` or `Vec<T>`",
                    "a pool entry cannot take `impl Trait`: a worker must know the concrete type",
                ) {
                    push(&mut err, e);
                }
                match pt.pat.as_ref() {
                    Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                        args.push((pi.ident.clone(), (*pt.ty).clone()));
                    }
                    other => push(
                        &mut err,
                        syn::Error::new_spanned(
                            other,
                            "a pool entry's arguments must be plain names such as `x: u64`; destructure inside the body instead",
                        ),
                    ),
                }
            }
        }
    }
    let output = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) => {
            if let Some(e) = not_portable(
                ty,
                "a pool entry cannot return a reference: the result is sent to another process",
                "a pool entry cannot return `impl Trait`: the supervisor must know the concrete type",
            ) {
                push(&mut err, e);
            }
            Some((**ty).clone())
        }
    };
    match err {
        Some(e) => {
            let tokens = quote::ToTokens::to_token_stream(&func);
            // A method sits in an `impl` or a trait, where no marker type can go.
            let is_method = sig.receiver().is_some();
            let fallback = (!is_method).then(|| Box::new((func, krate)));
            Err((e, tokens, fallback))
        }
        None => Ok(Entry {
            func,
            args,
            output,
            krate,
        }),
    }
}
