//! A partner's "test your postback" tool: errors, lints, the currency move, and a preview with
//! sample values.
//!
//! Run: `cargo run --example lint -- 'https://tracker.example/pb?cid={sub1}&cur={currency}&p={payout}'`

use postback::model::{Method, Postback, PostbackId};
use postback::template::{Dialect, Options, Template};

fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: cargo run --example lint -- '<postback url>'");
        std::process::exit(2);
    };
    println!("postback URL: {url}\n");

    // Parse as written, in the dialect the text looks like it uses.
    let dialect = guess_dialect(&url);
    if dialect != Dialect::Brace {
        println!("note: reading macros in the {dialect} dialect");
    }
    let template = match Template::compile(
        &url,
        Default::default(),
        &Default::default(),
        Options::default().dialect(dialect),
    ) {
        Ok(t) => t,
        Err(e) => {
            println!("error: {e}");
            std::process::exit(1);
        }
    };

    // The rules a server-to-server postback must also pass (click id, levels aside).
    let as_postback = Postback::builder(PostbackId::new(1))
        .partner(1.into())
        .method(Method::S2S)
        .template_options(Options::default().dialect(dialect))
        .url(url.clone())
        .build();
    match &as_postback {
        Ok(_) => println!("ok: valid server-to-server postback"),
        Err(e) => println!("error: {e}"),
    }

    if template.lints().is_empty() {
        println!("no warnings");
    }
    for lint in template.lints() {
        println!("warning: {lint}");
    }
    if dialect != Dialect::Brace {
        if let Ok(brace) = template.to_dialect(Dialect::Brace) {
            println!("in the {{x}} dialect: {brace}");
        }
    }
    match template.preview() {
        Ok(preview) => println!("\npreview with sample values:\n  {preview}"),
        Err(e) => println!("\npreview failed: {e}"),
    }
    if as_postback.is_err() {
        std::process::exit(1);
    }
}

/// The dialect whose tokens appear in the text, `{x}` when unsure.
fn guess_dialect(url: &str) -> Dialect {
    let known = |d: Dialect| {
        Template::compile(
            url,
            Default::default(),
            &Default::default(),
            Options::default().dialect(d),
        )
        .map(|t| t.macros().count())
        .unwrap_or(0)
    };
    Dialect::ALL
        .into_iter()
        .max_by_key(|d| (known(*d), *d == Dialect::Brace))
        .unwrap_or_default()
}
