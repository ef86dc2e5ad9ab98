//! Content negotiation for `/metrics`: which format (`Accept`) and which encoding
//! (`Accept-Encoding`), from the listed items and their q-values (RFC 9110 §12.4.2; `q=0`
//! in any spelling means "not acceptable", the most specific match decides an item's q).

use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, ACCEPT_ENCODING, HeaderName};

/// One listed item and its weight.
#[derive(Debug, Clone, PartialEq)]
struct Item {
    token: String,
    q: f32,
}

/// Parses every value of header `name` into items (lower-cased tokens, q in 0..=1).
fn items(headers: &HeaderMap, name: HeaderName) -> Vec<Item> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| {
            let mut params = part.split(';');
            let token = params.next()?.trim().to_ascii_lowercase();
            if token.is_empty() {
                return None;
            }
            let mut q = 1.0;
            for p in params {
                if let Some((k, v)) = p.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    // An unparsable weight makes the item unusable rather than preferred.
                    q = v.trim().parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0);
                }
            }
            Some(Item { token, q })
        })
        .collect()
}

/// The weight of `token` among `items`: the exact item, else the best wildcard match
/// (`type/*`, then `*/*` or `*`); `None` when nothing matches.
fn weight(items: &[Item], token: &str) -> Option<f32> {
    if let Some(i) = items.iter().find(|i| i.token == token) {
        return Some(i.q);
    }
    let family = token.split_once('/').map(|(t, _)| format!("{t}/*"));
    if let Some(f) = family
        && let Some(i) = items.iter().find(|i| i.token == f)
    {
        return Some(i.q);
    }
    items
        .iter()
        .find(|i| i.token == "*/*" || i.token == "*")
        .map(|i| i.q)
}

/// Whether the client prefers OpenMetrics over the Prometheus text format; ties and an absent
/// header choose the text format.
pub fn wants_openmetrics(headers: &HeaderMap) -> bool {
    let list = items(headers, ACCEPT);
    let om = weight(&list, "application/openmetrics-text").unwrap_or(0.0);
    let text = weight(&list, "text/plain").unwrap_or(0.0);
    om > 0.0 && om > text
}

/// Whether the client accepts gzip (then it is sent: the body is pre-compressed).
pub fn wants_gzip(headers: &HeaderMap) -> bool {
    let list = items(headers, ACCEPT_ENCODING);
    weight(&list, "gzip").unwrap_or(0.0) > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(name: HeaderName, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn openmetrics_wins_only_with_the_higher_weight() {
        assert!(!wants_openmetrics(&HeaderMap::new()));
        assert!(wants_openmetrics(&h(
            ACCEPT,
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(&h(
            ACCEPT,
            "application/openmetrics-text;q=0.2,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(&h(ACCEPT, "*/*")));
        assert!(!wants_openmetrics(&h(
            ACCEPT,
            "application/openmetrics-text; Q = 0.000"
        )));
        assert!(wants_openmetrics(&h(
            ACCEPT,
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
    }

    #[test]
    fn gzip_is_chosen_unless_refused_in_any_spelling() {
        assert!(!wants_gzip(&HeaderMap::new()));
        assert!(wants_gzip(&h(ACCEPT_ENCODING, "br, gzip;q=0.8")));
        assert!(wants_gzip(&h(ACCEPT_ENCODING, "*")));
        for refused in ["gzip;q=0", "gzip; q=0.0", "GZIP;Q=0.000", "gzip;q=x"] {
            assert!(!wants_gzip(&h(ACCEPT_ENCODING, refused)), "{refused}");
        }
        assert!(!wants_gzip(&h(ACCEPT_ENCODING, "identity, *;q=0")));
    }
}
