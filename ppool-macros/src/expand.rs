//! Expand an entry: the function itself, a same-named marker type that implements
//! `ppool::Entry`, and its record in the link-time table. The user's types are written with
//! their own tokens, so that a type that cannot travel is one error, there (`Entry`'s bounds).
//! An entry the attribute rejected still gets its marker type, with placeholder types and no
//! record, so that naming it as `ProcessPool::<f>` adds no error of its own.

use crate::parse::{self, Entry};
use proc_macro2::{Delimiter, Group, TokenStream};
use quote::quote;

pub(crate) fn pool_entry(args: TokenStream, input: TokenStream) -> TokenStream {
    match parse::entry(args, input) {
        Ok(entry) => expand(&entry),
        // Fail soft: keep the function, and the marker type if there is a function, so that one
        // mistake does not cascade into many.
        Err((error, item, func)) => {
            let error = error.to_compile_error();
            let marker = func.map(|boxed| placeholder(&boxed.0, &boxed.1));
            quote! { #error #item #marker }
        }
    }
}

fn expand(entry: &Entry) -> TokenStream {
    let Entry {
        func,
        args,
        output,
        krate,
    } = entry;
    let ident = &func.sig.ident;
    let private = quote!(#krate::__private);

    let names: Vec<_> = args.iter().map(|(name, _)| name).collect();
    let types: Vec<_> = args.iter().map(|(_, ty)| ty).collect();
    let (args_ty, call) = match args.len() {
        0 => (quote!(()), quote!(#ident())),
        1 => {
            let ty = types[0];
            (quote!(#ty), quote!(#ident(args)))
        }
        _ => {
            // The tuple's parentheses take the span of the function's own, so that an error
            // about the tuple as a whole (the `Entry::Args` bound) points at the argument list
            // rather than at the attribute.
            let mut tuple = Group::new(Delimiter::Parenthesis, quote!(#(#types,)*));
            tuple.set_span(func.sig.paren_token.span.join());
            (
                quote!(#tuple),
                quote!({ let (#(#names,)*) = args; #ident(#(#names),*) }),
            )
        }
    };
    let output_ty = match output {
        Some(ty) => quote!(#ty),
        None => quote!(()),
    };
    let bind = if args.is_empty() {
        quote!(_args)
    } else {
        quote!(args)
    };

    let marker = marker(func, krate);
    let failure = quote! {
        fn failure(output: &Self::Output) -> ::core::option::Option<::std::string::String> {
            #[allow(unused_imports)]
            use #private::{ViaAny as _, ViaDebug as _, ViaDisplay as _};
            (&&&#private::Probe(output)).failure()
        }
    };
    let entry_impl = entry_impl(
        ident,
        &private,
        &args_ty,
        &output_ty,
        quote! {
            #[inline]
            fn call(#bind: Self::Args) -> Self::Output {
                #call
            }
            #failure
        },
    );

    quote! {
        #func

        #marker

        const _: () = {
            #entry_impl

            #[#private::linkme::distributed_slice(#private::ENTRIES)]
            #[linkme(crate = #private::linkme)]
            static ENTRY: #private::EntryRecord = #private::EntryRecord::of::<#ident>(
                ::core::file!(),
                ::core::line!(),
            );
        };
    }
}

/// The sealing impl and the `Entry` impl of marker type `ident`, with `methods` in it.
fn entry_impl(
    ident: &syn::Ident,
    private: &TokenStream,
    args_ty: &TokenStream,
    output_ty: &TokenStream,
    methods: TokenStream,
) -> TokenStream {
    quote! {
        #[automatically_derived]
        impl #private::MadeByPoolEntry for #ident {}

        #[automatically_derived]
        impl #private::Entry for #ident {
            type Args = #args_ty;
            type Output = #output_ty;
            const NAME: &'static str = ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident));
            #methods
        }
    }
}

/// The marker type that names the entry, next to the function.
fn marker(func: &syn::ItemFn, _krate: &syn::Path) -> TokenStream {
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let doc =
        format!("The pool entry [`{ident}()`](fn@{ident}): name it as `ProcessPool::<{ident}>`.");
    quote! {
        #[doc = #doc]
        #[allow(non_camel_case_types, dead_code)]
        #[derive(Clone, Copy, Debug)]
        #vis struct #ident {}
    }
}

/// The marker type of a rejected entry, with placeholder types and no record: it can be named,
/// but a pool of it has no worker that could run it.
fn placeholder(func: &syn::ItemFn, krate: &syn::Path) -> TokenStream {
    let ident = &func.sig.ident;
    let private = quote!(#krate::__private);
    let marker = marker(func, krate);
    let invalid = quote!(#private::InvalidEntry);
    let entry_impl = entry_impl(
        ident,
        &private,
        &invalid,
        &invalid,
        quote! {
            fn call(_: Self::Args) -> Self::Output {
                #private::InvalidEntry
            }
        },
    );
    quote! {
        #marker

        const _: () = {
            #entry_impl
        };
    }
}
