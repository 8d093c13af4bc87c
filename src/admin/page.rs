//! The status page: one self-contained HTML file (styles and script inline,
//! no external assets, works offline). Its script polls `api/stats` and
//! `api/connections` every second and builds the tables in the DOM, setting
//! only `textContent`, so nothing a peer controls (an address, a path) is
//! ever parsed as HTML.

/// The page, as served at `/`.
pub(crate) const HTML: &str = include_str!("page.html");

/// Its `Content-Type`.
pub(crate) const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Its `Content-Security-Policy`: its own inline script and style, requests
/// to its own origin only, no frames, no forms, nothing else.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_contained() {
        // No external script, style, image or font.
        for needle in ["src=\"http", "href=\"http", "url(", "@import", "//cdn"] {
            assert!(!HTML.contains(needle), "{needle}");
        }
        // Text goes in with textContent only.
        assert!(!HTML.contains("innerHTML"));
        assert!(!HTML.contains("insertAdjacentHTML"));
        assert!(!HTML.contains("document.write"));
    }
}
