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
                    // An unparsable or non-finite weight (`nan`, `inf`) makes the item
                    // unusable rather than preferred.
                    q = v
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| q.is_finite())
                        .unwrap_or(0.0)
                        .clamp(0.0, 1.0);
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
pub(super) fn wants_openmetrics(headers: &HeaderMap) -> bool {
    let list = items(headers, ACCEPT);
    let om = weight(&list, "application/openmetrics-text").unwrap_or(0.0);
    let text = weight(&list, "text/plain").unwrap_or(0.0);
    om > 0.0 && om > text
}

/// Whether the client accepts gzip (then it is sent: the body is pre-compressed).
pub(super) fn wants_gzip(headers: &HeaderMap) -> bool {
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

    /// Hostile headers (fuzzed with proptest: any bytes a header value may hold).
    mod hostile {
        use super::*;
        use proptest::prelude::*;

        fn header_value() -> impl Strategy<Value = HeaderValue> {
            proptest::collection::vec(
                prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')],
                0..200,
            )
            .prop_filter_map("a valid header value", |b| HeaderValue::from_bytes(&b).ok())
        }

        fn q_like() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("nan".to_owned()),
                Just("NaN".to_owned()),
                Just("inf".to_owned()),
                Just("-inf".to_owned()),
                Just("1e99".to_owned()),
                Just("-1".to_owned()),
                Just("".to_owned()),
                "[0-9.eE+-]{0,8}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_header_value_is_answered_without_a_panic(
                accept in header_value(),
                encoding in header_value(),
            ) {
                let mut map = HeaderMap::new();
                map.append(ACCEPT, accept);
                map.append(ACCEPT_ENCODING, encoding);
                let _ = (wants_openmetrics(&map), wants_gzip(&map));
            }

            #[test]
            fn a_weight_that_is_not_a_number_in_0_to_1_never_makes_an_item_preferred(q in q_like()) {
                let valid = q.trim().parse::<f32>().ok().filter(|v| v.is_finite() && *v > 0.0);
                let map = h(ACCEPT_ENCODING, &format!("gzip;q={q}"));
                prop_assert_eq!(wants_gzip(&map), valid.is_some());
                let map = h(ACCEPT, &format!("application/openmetrics-text;q={q}"));
                prop_assert_eq!(wants_openmetrics(&map), valid.is_some());
            }
        }
    }
}
