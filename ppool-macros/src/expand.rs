//! Expand a validated entry: the function itself, a same-named marker type that implements
//! `ppool::Entry`, its record in the link-time table, and the serde checks spanned at the
//! user's types.

use crate::parse::{self, Entry};
use proc_macro2::{Delimiter, Group, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

pub(crate) fn pool_entry(args: TokenStream, input: TokenStream) -> TokenStream {
    match parse::entry(args, input) {
        Ok(entry) => expand(&entry),
        // Fail soft: keep the function so that one mistake does not cascade into many.
        Err((error, item)) => {
            let error = error.to_compile_error();
            quote! { #error #item }
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
    let vis = &func.vis;
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

    // One check per user type, spanned at that type, so "`Serialize` is not implemented"
    // lands on the offending argument or return type.
    let checks = types.iter().copied().chain(output.iter()).map(|ty| {
        quote_spanned! {ty.span()=>
            #private::assert_portable::<#ty>();
        }
    });

    let doc =
        format!("The pool entry [`{ident}()`](fn@{ident}): name it as `ProcessPool::<{ident}>`.");

    quote! {
        #func

        #[doc = #doc]
        #[allow(non_camel_case_types, dead_code)]
        #[derive(Clone, Copy, Debug)]
        #vis struct #ident {}

        const _: () = {
            #[automatically_derived]
            impl #private::Entry for #ident {
                type Args = #args_ty;
                type Output = #output_ty;
                const NAME: &'static str = ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident));
                #[inline]
                fn call(#bind: Self::Args) -> Self::Output {
                    #call
                }
            }

            #[#private::linkme::distributed_slice(#private::ENTRIES)]
            #[linkme(crate = #private::linkme)]
            static ENTRY: #private::EntryRecord = #private::EntryRecord::of::<#ident>(
                ::core::file!(),
                ::core::line!(),
            );

            #[allow(dead_code)]
            fn __check_types() {
                #(#checks)*
            }
        };
    }
}
