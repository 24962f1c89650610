//! The page's files, embedded in the binary (no build step, nothing
//! fetched from anywhere else): one HTML page, its script, its styles, the
//! manifest and icon that let a phone install it to its home screen.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../web/index.html");
const SCRIPT: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/app.css");
const MANIFEST: &str = include_str!("../../web/manifest.webmanifest");
const ICON: &str = include_str!("../../web/icon.svg");

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidated on each load, so an upgraded hub serves its new
            // page at once.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

pub(super) async fn script() -> Response {
    file("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}

pub(super) async fn manifest() -> Response {
    file("application/manifest+json", MANIFEST)
}

pub(super) async fn icon() -> Response {
    file("image/svg+xml", ICON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_and_names_no_other_host() {
        for (name, text) in [
            ("index.html", INDEX),
            ("app.js", SCRIPT),
            ("app.css", STYLE),
        ] {
            assert!(
                !text.contains("http://"),
                "{name} names a plain-HTTP address"
            );
            assert!(!text.contains("https://"), "{name} names another host");
            assert!(!text.contains("//cdn"), "{name} loads from a CDN");
        }
        // Every <script> has a src and no body; no inline handlers.
        for piece in INDEX.split("<script").skip(1) {
            let tag_end = piece.find('>').unwrap();
            assert!(
                piece[..tag_end].contains("src="),
                "inline <script> in index.html"
            );
            assert!(piece[tag_end + 1..].starts_with("</script>"));
        }
        assert!(!INDEX.contains(" onclick="));
        assert!(!INDEX.contains(" onload="));
        assert!(!INDEX.contains(" style="));
    }
}
